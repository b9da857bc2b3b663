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
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Worst-of ordering: CRITICAL > WARNING > UNKNOWN > OK (a known fault outranks doubt)."""
        return {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}[self]


def worst(statuses) -> Status:
    return max(statuses, key=lambda s: s.severity, default=Status.OK)


@dataclass
class CheckResult:
    name: str
    kind: str
    status: Status
    message: str
    value: float | None = None
    unit: str = ""
    duration_ms: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "status": self.status.name,
                "code": int(self.status), "value": self.value, "unit": self.unit,
                "message": self.message, "duration_ms": round(self.duration_ms, 1),
                "details": self.details}


@dataclass
class SweepResult:
    env: str
    started_at: dt.datetime
    duration_ms: float
    results: list[CheckResult]
    silenced: dict[str, str] = field(default_factory=dict)  # check name -> silenced until (ISO UTC)

    @property
    def status(self) -> Status:
        return worst(r.status for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "status": self.status.name, "code": int(self.status),
                "started_at": self.started_at.isoformat(), "duration_ms": round(self.duration_ms, 1),
                "checks": [{**r.to_dict(), "silenced_until": self.silenced.get(r.name)} for r in self.results]}


class Judge:
    """Collects findings inside one check; the worst one sets the check's status."""

    def __init__(self) -> None:
        self.findings: list[tuple[Status, str]] = []

    def over(self, label: str, value: float | None, limit: float, unit: str = "",
             status: Status = Status.WARNING) -> None:
        if value is not None and value > limit:
            self.findings.append((status, f"{label} {value:g}{unit} above {limit:g}{unit}"))

    def add(self, status: Status, message: str) -> None:
        self.findings.append((status, message))

    def status(self) -> Status:
        return worst(s for s, _ in self.findings)

    def message(self, ok: str) -> str:
        bad = [m for s, m in self.findings if s != Status.OK]
        return "; ".join(bad) if bad else ok
