"""Alerts leave on background threads: a slow or failing sink never delays a sweep (gatus#786).

Each sink has its own queue and thread, so a Slack outage does not hold back PagerDuty
either. A send that fails is logged (redacted) and counted; it is not retried forever:
the alerter's reminders are the retry for an outage that lasts.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from opsctl.health.alerting import Alert

log = logging.getLogger("opsctl.health")
_STOP = object()


@dataclass
class Outcome:
    """One delivery attempt: which sink, which alert event for which check, whether it went
    out, and the (redacted) error when it did not."""
    sink: str
    event: str
    check: str
    ok: bool
    error: str = ""


@dataclass
class Dispatcher:
    """Sends alerts through `senders` (opsctl.health.sinks.Sender), one thread and queue per
    sink; `outcomes` lists every delivery attempt once `close()` has returned."""
    senders: list
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._lanes = []
        for sender in self.senders:
            lane: queue.Queue = queue.Queue()
            thread = threading.Thread(target=self._drain, args=(sender, lane), daemon=True,
                                      name=f"alert-sink:{sender.name}")
            thread.start()
            self._lanes.append((lane, thread))

    def submit(self, alerts: list[Alert]) -> None:
        """Queue the alerts for every sink and return at once."""
        for alert in alerts:
            for lane, _ in self._lanes:
                lane.put(alert)

    def _drain(self, sender, lane: queue.Queue) -> None:
        while True:
            alert = lane.get()
            if alert is _STOP:
                return
            try:
                sender.send(alert)
                outcome = Outcome(sender.name, alert.event, alert.check, True)
                log.info("alert %s for %s sent to %s", alert.event, alert.check, sender.describe())
            except Exception as exc:  # a sink's failure is logged, never raised into the loop
                error = sender.scrub(f"{type(exc).__name__}: {exc}")
                outcome = Outcome(sender.name, alert.event, alert.check, False, error)
                log.error("alert %s for %s not sent to %s: %s", alert.event, alert.check, sender.describe(), error)
            with self._lock:
                self.outcomes.append(outcome)

    def close(self, timeout: float = 15.0) -> None:
        """Let queued alerts go out (up to `timeout` per sink), then stop the threads."""
        for lane, _ in self._lanes:
            lane.put(_STOP)
        for _, thread in self._lanes:
            thread.join(timeout)
