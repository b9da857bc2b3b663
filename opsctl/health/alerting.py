"""Flap protection and alert state, Gatus's way: fire after N failures, resolve after M successes.

Per check: consecutive failures and successes are counted; an alert fires once when the
failures reach `failure_threshold`, is repeated as a reminder every `reminder_minutes`
while the check stays down (gatus#379), and resolves once after `success_threshold`
successes. A check that flaps below the threshold never fires. UNKNOWN counts as neither:
"cannot tell" must not resolve an outage nor start one. Sending is not done here: alerts go
to a Dispatcher whose sinks run on their own threads (gatus#786).

With a `state` file the counters outlive the process: a restarted monitor neither pages
again for an alert that is already firing nor forgets to resolve it once the check recovers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from opsctl.files import write_json
from opsctl.health.model import CheckResult, Status, SweepResult

log = logging.getLogger("opsctl.health")


@dataclass
class Alert:
    """One notification: `event` trigger, reminder or resolve for `check` in `env`, with its
    status name, message and measured value; `started_at`/`at` are ISO 8601 UTC; `failures`
    the consecutive failures counted so far."""
    event: str  # "trigger" | "reminder" | "resolve"
    env: str
    check: str
    kind: str
    status: str
    message: str
    value: float | None
    unit: str
    started_at: str
    at: str
    failures: int

    @property
    def dedup_key(self) -> str:
        """Stable across trigger, reminders and resolve: PagerDuty and Alertmanager group on it."""
        return f"opsctl/{self.env}/{self.check}"

    @property
    def firing(self) -> bool:
        """True for trigger and reminder, False for resolve."""
        return self.event != "resolve"

    def summary(self) -> str:
        """One line for a subject or a chat message: '[FIRING] env: check is STATUS: message'."""
        verb = {"trigger": "FIRING", "reminder": "STILL FIRING", "resolve": "RESOLVED"}[self.event]
        return f"[{verb}] {self.env}: {self.check} is {self.status}: {self.message}"


@dataclass
class _Track:
    kind: str = ""
    failures: int = 0
    successes: int = 0
    firing: bool = False
    since: str = ""
    last_sent: float = 0.0


@dataclass
class Alerter:
    """Per-check alert state (Gatus's flap protection) across sweeps; `observe(sweep)` returns
    the alerts to send. With `state` set, the counters are saved after every sweep."""
    failure_threshold: int = 3
    success_threshold: int = 2
    send_resolved: bool = True
    reminder_minutes: float | None = 60.0
    fail_on: Status = Status.CRITICAL
    clock: Callable[[], float] = time.monotonic
    tracks: dict[str, _Track] = field(default_factory=dict)
    state: Path | None = None

    @classmethod
    def from_settings(cls, s, clock: Callable[[], float] = time.monotonic, state: Path | None = None) -> "Alerter":
        """An Alerter from opsctl.yaml's health.alerts, with the state saved in `state` (if given)
        loaded; an unreadable state file is logged and ignored."""
        alerter = cls(s.failure_threshold, s.success_threshold, s.send_resolved, s.reminder_minutes,
                      Status.WARNING if s.fail_on == "warning" else Status.CRITICAL, clock, state=state)
        alerter._load()
        return alerter

    def _load(self) -> None:
        if self.state is None or not self.state.exists():
            return
        try:
            doc = json.loads(self.state.read_text())
            away = time.time() - doc["saved_at"]  # reminders keep their cadence across the restart
            tracks = {name: _Track(**{**t, "last_sent": self.clock() - away - t["last_sent"]})
                      for name, t in doc["tracks"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("alert state %s is unreadable (%s); starting with no alert firing", self.state, exc)
            return
        self.tracks = tracks

    def _save(self) -> None:
        """Written whole and renamed into place: a monitor killed mid-write keeps the last state."""
        if self.state is None:
            return
        now = self.clock()
        write_json(self.state, {"saved_at": time.time(), "tracks": {
            name: {**asdict(t), "last_sent": now - t.last_sent} for name, t in self.tracks.items()}}, indent=1,
                   private=True)

    def _failed(self, status: Status) -> bool | None:
        if status == Status.UNKNOWN:
            return None
        return status.severity >= self.fail_on.severity

    def observe(self, sweep: SweepResult) -> list[Alert]:
        """Update every check's counters from one sweep; return the alerts to send now.
        Checks named in `sweep.silenced` are held: not counted, nothing sent for them."""
        alerts = []
        for result in sweep.results:
            if result.name in sweep.silenced:  # held by a silence: neither counted nor sent
                self.tracks.setdefault(result.name, _Track(kind=result.kind))
                continue
            alert = self._observe(sweep.env, result)
            if alert:
                alerts.append(alert)
        alerts += self._gone(sweep)
        self._save()
        return alerts

    def _gone(self, sweep: SweepResult) -> list[Alert]:
        """A check that stopped existing (a color scaled down after a deploy) resolves its
        alert instead of firing forever."""
        present = {r.name for r in sweep.results}
        alerts = []
        for name in [n for n in self.tracks if n not in present]:
            track = self.tracks.pop(name)
            if track.firing and self.send_resolved:
                gone = CheckResult(name, track.kind, Status.OK, "no longer checked: its target is gone")
                alerts.append(self._alert("resolve", sweep.env, gone, track,
                                          dt.datetime.now(dt.timezone.utc).isoformat()))
        return alerts

    def _observe(self, env: str, r: CheckResult) -> Alert | None:
        track = self.tracks.setdefault(r.name, _Track(kind=r.kind))
        failed = self._failed(r.status)
        if failed is None:
            return None
        now = self.clock()
        stamp = dt.datetime.now(dt.timezone.utc).isoformat()
        if failed:
            track.failures, track.successes = track.failures + 1, 0
            if not track.firing and track.failures >= self.failure_threshold:
                track.firing, track.since, track.last_sent = True, stamp, now
                return self._alert("trigger", env, r, track, stamp)
            if track.firing and self.reminder_minutes and now - track.last_sent >= self.reminder_minutes * 60:
                track.last_sent = now
                return self._alert("reminder", env, r, track, stamp)
            return None
        track.successes, track.failures = track.successes + 1, 0
        if track.firing and track.successes >= self.success_threshold:
            track.firing = False
            if self.send_resolved:
                return self._alert("resolve", env, r, track, stamp)
        return None

    @staticmethod
    def _alert(event: str, env: str, r: CheckResult, track: _Track, stamp: str) -> Alert:
        return Alert(event, env, r.name, r.kind, r.status.name, r.message, r.value, r.unit,
                     track.since, stamp, track.failures)
