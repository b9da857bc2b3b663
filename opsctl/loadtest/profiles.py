"""Load profiles: the versioned loadtests/profiles.yaml, read and checked before a run.

A profile fixes users, spawn rate, duration, which user classes run with what weights, and
default SLO gates, so two runs of `--profile medium` months apart test the same thing.
The folder is the ops root's loadtests/ if it has one, else the one shipped beside opsctl.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from opsctl import yamltext
from opsctl.config import Project
from opsctl.errors import UsageError

SHIPPED = Path(__file__).resolve().parents[2] / "loadtests"
_SPAN = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


@dataclass
class Profile:
    """One load profile of profiles.yaml: peak users, spawn_rate (users/s), duration_s
    (seconds), user classes with their weights, default SLO text and a description."""
    name: str
    users: int
    spawn_rate: float
    duration_s: float
    classes: dict[str, int] = field(default_factory=dict)
    slo: str | None = None
    description: str = ""


def loadtests_dir(project: Project) -> Path:
    """The ops root's loadtests/ when it has a profiles.yaml, else the one shipped with opsctl."""
    own = project.root / "loadtests"
    return own if (own / "profiles.yaml").is_file() else SHIPPED


#: the longest load test or stop timeout accepted (seconds): one week
MAX_SECONDS = 7 * 86400


def parse_duration(text: str | float | int, what: str = "--duration", maximum: float | None = None) -> float:
    """'90' or '90s', '5m', '1h30m' -> seconds; anything else, or more than `maximum`
    seconds when given, is one clear UsageError."""
    raw = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    elif raw and _SPAN.sub("", raw) == "" and (parts := _SPAN.findall(raw)):
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    else:
        raise UsageError(f"{what}: '{text}' is not a duration; write e.g. 30s, 5m or 1h30m")
    if seconds <= 0:
        raise UsageError(f"{what}: must be more than 0 seconds (got '{text}')")
    if maximum is not None and seconds > maximum:
        raise UsageError(f"{what}: '{text}' is longer than the {_span(maximum)} allowed")
    return seconds


def _span(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds:g}s"


def load(project: Project) -> dict[str, Profile]:
    """Every profile of profiles.yaml by name; UsageError naming the file for unreadable YAML or a
    profile missing users, spawn_rate or duration."""
    path = loadtests_dir(project) / "profiles.yaml"
    try:
        doc = yamltext.load(path.read_text()) or {}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}; restore loadtests/profiles.yaml") from None
    except yamltext.YamlFault as exc:
        raise UsageError(f"{path}: not valid YAML ({exc}); fix it") from None
    profiles = {}
    for name, spec in (doc.get("profiles") or {}).items():
        try:
            profiles[name] = Profile(
                name=name, users=int(spec["users"]), spawn_rate=float(spec["spawn_rate"]),
                duration_s=parse_duration(spec["duration"], f"{path}: profiles.{name}.duration", MAX_SECONDS),
                classes={str(k): int(v) for k, v in (spec.get("classes") or {}).items()},
                slo=spec.get("slo"), description=spec.get("description", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{path}: profiles.{name}: missing or bad {exc}; "
                             "each profile needs users, spawn_rate, duration") from None
    return profiles


def get(project: Project, name: str) -> Profile:
    """The profile `name`; UsageError listing the known ones when there is none."""
    profiles = load(project)
    if name not in profiles:
        known = ", ".join(profiles) or "none"
        raise UsageError(f"unknown profile '{name}'; known: {known} "
                         f"(defined in {loadtests_dir(project) / 'profiles.yaml'})")
    return profiles[name]
