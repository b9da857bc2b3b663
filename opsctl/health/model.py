"""What a check and a sweep return: a Nagios status, a measured value and a message.

The status values are the Nagios plugin exit codes, so `opsctl health --mode once` can be
dropped into Nagios, Icinga or Sensu as a plugin and a sweep's worst status is its exit code.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.IntEnum):
    """A check's verdict, numbered as the Nagios plugin exit codes (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."""
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Worst-of ordering: CRITICAL > WARNING > UNKNOWN > OK (a known fault outranks doubt)."""
        return {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}[self]


def worst(statuses) -> Status:
    """The worst of `statuses` by `Status.severity`; OK for none."""
    return max(statuses, key=lambda s: s.severity, default=Status.OK)


@dataclass
class CheckResult:
    """One check's outcome: `value` in `unit` (e.g. ms, %, hours; None when nothing was
    measured), `duration_ms` the check's own run time, `details` a JSON-safe dict of what else
    it read (already redacted when it leaves a sweep)."""
    name: str
    kind: str
    status: Status
    message: str
    value: float | None = None
    unit: str = ""
    duration_ms: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: name, kind, status (name), code (int), value, unit, message, duration_ms, details."""
        return {"name": self.name, "kind": self.kind, "status": self.status.name,
                "code": int(self.status), "value": self.value, "unit": self.unit,
                "message": self.message, "duration_ms": round(self.duration_ms, 1),
                "details": self.details}


@dataclass
class SweepResult:
    """Every check of one sweep of `env`; `started_at` is UTC, `duration_ms` the sweep's wall
    time; `silenced` maps the checks a silence held to its end (ISO 8601 UTC); `silences` lists
    every silence in force when it ran."""
    env: str
    started_at: dt.datetime
    duration_ms: float
    results: list[CheckResult]
    silenced: dict[str, str] = field(default_factory=dict)  # check name -> silenced until (ISO UTC)
    silences: list[dict[str, str]] = field(default_factory=list)  # in force: check (pattern), until, reason, id
    not_written: list[str] = field(default_factory=list)  # reports asked for that could not be written (once)

    @property
    def status(self) -> Status:
        """The sweep's verdict: the worst check status (OK for no checks)."""
        return worst(r.status for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `opsctl health --json`: env, status, code, started_at, duration_ms,
        checks (each with silenced_until, ISO UTC or null) and silences (every silence in force:
        check pattern, until, reason, id; also those holding no check of this sweep)."""
        return {"env": self.env, "status": self.status.name, "code": int(self.status),
                "started_at": self.started_at.isoformat(), "duration_ms": round(self.duration_ms, 1),
                "checks": [{**r.to_dict(), "silenced_until": self.silenced.get(r.name)} for r in self.results],
                "silences": self.silences}


class Judge:
    """Collects findings inside one check; the worst one sets the check's status."""

    def __init__(self) -> None:
        self.findings: list[tuple[Status, str]] = []

    def over(self, label: str, value: float | None, limit: float, unit: str = "",
             status: Status = Status.WARNING) -> None:
        """Add a finding when `value` (in `unit`) is above `limit`; None is never a finding."""
        if value is not None and value > limit:
            self.findings.append((status, f"{label} {value:g}{unit} above {limit:g}{unit}"))

    def add(self, status: Status, message: str) -> None:
        """Add a finding of `status` with `message`."""
        self.findings.append((status, message))

    def status(self) -> Status:
        """The worst finding's status; OK without findings."""
        return worst(s for s, _ in self.findings)

    def message(self, ok: str) -> str:
        """The non-OK findings joined with '; ', or `ok` when there are none."""
        bad = [m for s, m in self.findings if s != Status.OK]
        return "; ".join(bad) if bad else ok
