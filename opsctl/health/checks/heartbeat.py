"""Heartbeats: alert when something that should have happened did not (gatus's external
endpoints with a heartbeat; Healthchecks.io's model).

A heartbeat has a cron expression for when its event is due and a grace period. A beat is
recorded by `opsctl health --beat NAME` (the last step of a nightly job), or, for
`source: backup`, is the newest complete backup itself. The check is CRITICAL when no beat
arrived since the latest due time that is older than the grace period.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from opsctl.files import private_dir, write_json
from opsctl.health.model import CheckResult, Status


def _beats_file(state_dir: Path) -> Path:
    """Where push heartbeats are recorded: .opsctl/health/heartbeats.json (name -> ISO UTC)."""
    return state_dir / "health" / "heartbeats.json"


def record(state_dir: Path, name: str, when: dt.datetime | None = None) -> dt.datetime:
    """Write a beat (atomically: the file is read by sweeps running at the same time)."""
    from filelock import FileLock

    path = _beats_file(state_dir)
    private_dir(path.parent)
    when = when or dt.datetime.now(dt.timezone.utc)
    with FileLock(str(path) + ".lock", timeout=30, mode=0o600):
        beats = _load(path)
        beats[name] = when.isoformat()
        write_json(path, beats, private=True)
    return when


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def last_beat(state_dir: Path, name: str) -> dt.datetime | None:
    """The last recorded beat of `name` (aware UTC), or None."""
    value = _load(_beats_file(state_dir)).get(name)
    try:
        return dt.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def judge(name: str, cron: str, grace_minutes: float, last: dt.datetime | None,
          now: dt.datetime | None = None) -> CheckResult:
    """CRITICAL when `last` (the newest event) is older than the latest time `cron` says it
    should have happened plus `grace_minutes`; value: hours since the last event."""
    from croniter import croniter

    now = now or dt.datetime.now(dt.timezone.utc)
    grace = dt.timedelta(minutes=grace_minutes)
    due = croniter(cron, now - grace).get_prev(dt.datetime)
    details = {"cron": cron, "due": due.isoformat(), "grace_minutes": grace_minutes,
               "last": last.isoformat() if last else None}
    if last is None:
        return CheckResult("", "heartbeat", Status.CRITICAL,
                           f"no beat ever; due {due:%Y-%m-%d %H:%M} UTC (+{grace_minutes:g} min)", details=details)
    hours = round((now - last).total_seconds() / 3600, 2)
    if last < due:
        return CheckResult("", "heartbeat", Status.CRITICAL,
                           f"missed: due {due:%Y-%m-%d %H:%M} UTC (+{grace_minutes:g} min), last beat "
                           f"{last:%Y-%m-%d %H:%M} UTC", hours, "h", details=details)
    return CheckResult("", "heartbeat", Status.OK, f"last beat {hours:g} h ago", hours, "h", details=details)
