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
# d, h, m, s, each at most once and in that order; ASCII digits only ([0-9], not \d, which
# matches other scripts' digits too, and float() reads them); a fraction only on the last
# term ("1.5h", "1h30.5m"; not "1.5h30m")
_NUM = r"[0-9]+(?:\.[0-9]+)?"
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile("".join(rf"(?:(?P<{u}>{_NUM}){u})?" for u in _UNITS))


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
#: the shortest duration parse_duration accepts by default (seconds)
MIN_SECONDS = 1.0


def parse_duration(text: str | float | int, what: str = "--duration", maximum: float | None = None,
                   minimum: float = MIN_SECONDS) -> float:
    """A duration as text -> seconds (float).

    Grammar (case-insensitive): a plain number of seconds ('90', '2.5'), or terms of a number
    and a unit, days 'd', hours 'h', minutes 'm', seconds 's', each unit at most once and in
    that order: '45s', '5m', '1h30m', '1d12h'. Digits are ASCII 0-9 only; only the last term
    may have a fraction ('1.5h'). Raises UsageError, one line naming `what`, for anything
    else ('1h1h', '5m1h', '٣m', '5 minutes'), for less than `minimum` seconds (default 1 s:
    nothing here is useful for less, and '0.0001s' reads like a typo) or, when given, more
    than `maximum` seconds."""
    raw = str(text).strip().lower()
    example = "write e.g. 30s, 5m, 1h30m or 1d"
    if re.fullmatch(_NUM, raw):
        seconds = float(raw)
    else:
        match = _DURATION.fullmatch(raw) if raw else None
        terms = [(match[u], u) for u in _UNITS if match and match[u] is not None]
        if not terms or any("." in n for n, _u in terms[:-1]):
            raise UsageError(f"{what}: '{text}' is not a duration; {example} "
                             "(each unit once, largest first, digits 0-9)")
        seconds = sum(float(n) * _UNITS[u] for n, u in terms)
    if seconds <= 0:
        raise UsageError(f"{what}: must be more than 0 seconds (got '{text}'); {example}")
    if seconds < minimum:
        raise UsageError(f"{what}: '{text}' is less than {_span(minimum)}, too short to be of use; {example}")
    if maximum is not None and seconds > maximum:
        longest, in_hours = _span(maximum), _span(maximum, hours=True)
        raise UsageError(f"{what}: '{text}' is longer than the {longest} allowed"
                         + (f" ({in_hours})" if in_hours != longest else ""))
    return seconds


def _span(seconds: float, hours: bool = False) -> str:
    """120 -> '2m', 7 * 86400 -> '7d' (or with `hours` '168h'): in the units parse_duration reads."""
    for unit, size in _UNITS.items():
        if (seconds >= size and (not hours or size <= 3600)) or unit == "s":
            return f"{seconds / size:g}{unit}"
    raise AssertionError("unreachable")


def load(project: Project) -> dict[str, Profile]:
    """Every profile of profiles.yaml by name; UsageError naming the file for unreadable YAML or a
    profile missing users, spawn_rate or duration."""
    path = loadtests_dir(project) / "profiles.yaml"
    try:
        doc = yamltext.load(yamltext.read(path)) or {}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}; restore loadtests/profiles.yaml") from None
    except yamltext.YamlFault as exc:
        raise UsageError(f"{path}: not valid YAML ({exc}); fix it") from None
    listed = doc.get("profiles") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(listed or {}, dict):
        # breaker 38 H5: a file holding a word or a list ended in "unexpected AttributeError"
        raise UsageError(f"{path}: not a mapping with 'profiles:' of name: {{users, spawn_rate, duration}}; "
                         "restore loadtests/profiles.yaml")
    profiles = {}

    def number(value, kind, key: str):
        # a number written as a number: YAML reads yes/on/true as booleans, which int() took
        # for 1 (breaker 44 T6: `users: yes` ran a 1-user test that passed its gate); "3" and
        # 3.7 for an integer are refused likewise, never truncated
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ValueError(f"{key} {value!r}: write a number{' (a whole one)' if kind is int else ''}")
        return kind(value)

    for name, spec in (listed or {}).items():
        try:
            profiles[name] = Profile(
                name=name, users=number(spec["users"], int, "users"),
                spawn_rate=number(spec["spawn_rate"], float, "spawn_rate"),
                duration_s=parse_duration(spec["duration"], f"{path}: profiles.{name}.duration", MAX_SECONDS),
                classes={str(k): number(v, int, f"classes.{k}") for k, v in (spec.get("classes") or {}).items()},
                slo=spec.get("slo"), description=spec.get("description", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
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
