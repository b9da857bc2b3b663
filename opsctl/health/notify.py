"""Operations tell people and hold their own alerts: `operation_window(...)`.

A deploy, promote, abort, rollback, restore, failover or drill runs inside
`operation_window(project, env_name, operation, subject)`:

- on enter a start event goes out through the environment's sinks
  (`environments.<env>.health.sinks`): Slack gets a message, PagerDuty a *change event*
  (Events API v2 `/v2/change/enqueue`: on the service's timeline, never an incident), a
  webhook a CloudEvents 1.0 document (`io.opsctl.operation.started`); e-mail sinks only with
  `operations: true`;
- a maintenance window (`opsctl.health.silences.maintenance`) holds the checks the operation
  disturbs, so a continuous health monitor neither pages, reminds nor resolves on them
  meanwhile; where `monitoring.alertmanager_url` is set, Alertmanager silences them too;
- on exit the end event (`io.opsctl.operation.finished`) carries `window.outcome` (the
  caller may set it; "succeeded" by default, "failed" with the redacted error when the body
  raised) and the window closes. The exception itself propagates unchanged.

Default checks held per operation (`checks=None`), per platform: those the environment's
sweep actually runs (on kubernetes there are no worker-<color>/metrics-<color> checks; the
`kubernetes` check is what goes red while preview pods are Pending). The router is never
held, so lost traffic still pages:

| operation                          | local                                          | kubernetes             |
|------------------------------------|------------------------------------------------|------------------------|
| deploy, promote, abort, rollback   | `worker-*`, `metrics-*` (the colors switched)  | `kubernetes`           |
| restore                            | `postgres`, `wal archive`                      | `postgres`             |
| failover                           | `postgres`, `wal archive`, `worker-*`, `metrics-*` | `postgres`, `kubernetes` |
| drill                              | none (it works in scratch resources)           | none                   |

The silences are bounded by `max_seconds` in case the process dies (they are released as
soon as the block ends). A caller that knows its own deadline passes it; by default
(`max_seconds=None`) `window_seconds(env, operation)` derives one from the environment's
deploy timeouts for deploy-like operations (never under an hour), from the PITR code's own
replay/RDS wait plus margin for restore, drill and failover, an hour otherwise.

A notification problem never fails the operation: a sink without its secret, a sink that
answers 500 or hangs (each has its own thread and timeout), an Alertmanager that refuses
(the local silence still holds the monitor) or an unwritable silences file are logged as
warnings and recorded in `window.deliveries` / `window.problems`. Every text sent passes
`opsctl.redact.credentials` and each sink's own secret scrub.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import secrets
import time
import queue
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from opsctl.redact import credentials, remember

log = logging.getLogger("opsctl.health")
_STOP = object()

#: checks held by default, per platform and operation (name or kind globs, as `opsctl health --check`)
DEFAULT_CHECKS_BY_PLATFORM: dict[str, dict[str, tuple[str, ...]]] = {
    "local": {
        "deploy": ("worker-*", "metrics-*"),
        "promote": ("worker-*", "metrics-*"),
        "abort": ("worker-*", "metrics-*"),
        "rollback": ("worker-*", "metrics-*"),
        "restore": ("postgres", "wal archive"),
        "failover": ("postgres", "wal archive", "worker-*", "metrics-*"),
        "drill": (),
    },
    "kubernetes": {
        "deploy": ("kubernetes",),
        "promote": ("kubernetes",),
        "abort": ("kubernetes",),
        "rollback": ("kubernetes",),
        "restore": ("postgres",),
        "failover": ("postgres", "kubernetes"),
        "drill": (),
    },
}
#: the local platform's table (kept for callers that only know the operation)
DEFAULT_CHECKS: dict[str, tuple[str, ...]] = DEFAULT_CHECKS_BY_PLATFORM["local"]
_DEPLOY_LIKE = ("deploy", "promote", "abort", "rollback")
_PITR_LIKE = ("restore", "drill", "failover")


def _pitr_wait_seconds() -> float:
    """The longest wait a restore, drill or failover bounds itself (seconds), read from the
    PITR code rather than copied: the WAL replay's default timeout and the RDS waiter's."""
    import inspect

    from opsctl.pitr import rds, restore

    replay = inspect.signature(restore.run).parameters["timeout"].default
    return max(float(replay), float(rds.WAIT_SECONDS))


def window_seconds(env, operation: str) -> float:
    """The default bound (seconds) of an operation's silences when the caller passes none:
    for deploy, promote, abort and rollback a generous worst case of its deploy settings
    (4 x ready_timeout, for the readiness waits of a blue-green deploy with room to spare,
    plus analysis_window, drain_timeout, scale_down_delay and ten minutes), never under
    3600 (opsctl.yaml's production gives 5430); for restore, drill and failover the longest wait
    they bound themselves (the WAL replay's timeout, opsctl.pitr.restore.run, or the RDS
    waiter's, opsctl.pitr.rds.WAIT_SECONDS: 3600 each) plus 4 x ready_timeout (the workers
    restarted or the drill's preview) and 30 minutes for unpacking, checks and the swap, so the
    bound is never the replay timeout alone; 3600 for other operations. A caller that knows
    its own deadline passes it as `max_seconds` instead."""
    d = env.deploy
    if operation in _PITR_LIKE:
        return _pitr_wait_seconds() + 4 * d.ready_timeout + 1800
    if operation not in _DEPLOY_LIKE:
        return 3600.0
    return max(3600.0, 4 * d.ready_timeout + d.analysis_window + d.drain_timeout + d.scale_down_delay + 600)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


class Verdict(enum.StrEnum):
    """What an operation's outcome means to the people told: every sink colours or flags an
    end event by this (Slack green/red/yellow, the webhook's and PagerDuty's `verdict`)."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEITHER = "neither"  # no verdict yet (a deploy still in progress), or an outcome not known here


#: every outcome word the callers set (opsctl.deploy.model.Outcome values, the PITR, restore and
#: drill words), by what it means; `verdict()` reads it. "aborted" depends on the operation.
OUTCOMES: dict[str, Verdict] = {
    "succeeded": Verdict.SUCCESS,  # default; restore, PITR restore, failover, drill
    "succeeded (resumed)": Verdict.SUCCESS,  # failover resumed after an interruption
    "promoted": Verdict.SUCCESS,  # deploy, promote, rollback (a rollback's record is promoted)
    "awaiting-promotion": Verdict.SUCCESS,  # deploy with auto_promote False: the preview is ready, as asked
    "failed": Verdict.FAILURE,
    "rolled-back": Verdict.FAILURE,  # the deploy failed after its switch
    "interrupted": Verdict.FAILURE,
    "aborted": Verdict.FAILURE,  # a deploy replaced/aborted; SUCCESS for the "abort" operation itself
    "in-progress": Verdict.NEITHER,
}


def verdict(operation: str, outcome: object) -> Verdict:
    """Whether `outcome` (a str or str enum such as opsctl.deploy.model.Outcome) of
    `operation` ("deploy", "abort", "restore", "drill", ...) is a success, a failure or
    neither. "targets missed: ..." (drill) and "failed..." are failures; an unknown word is
    NEITHER (never raised: a notification never fails the operation)."""
    word = str(getattr(outcome, "value", outcome)).strip().lower()
    if operation == "abort" and word == "aborted":
        return Verdict.SUCCESS
    if word in OUTCOMES:
        return OUTCOMES[word]
    if word.startswith(("failed", "targets missed")):
        return Verdict.FAILURE
    return Verdict.NEITHER


@dataclass
class OperationEvent:
    """One start or end event of an operation, as the sinks format it. `at`, `started_at`
    and `held_until` are ISO 8601 UTC; `duration_seconds` is 0 for a start event."""
    event: str  # "start" | "end"
    env: str
    operation: str
    subject: str
    started_at: str
    at: str
    outcome: str = ""
    verdict: Verdict = Verdict.NEITHER  # of the end event's outcome (`verdict()`); NEITHER on a start event
    error: str = ""
    duration_seconds: float = 0.0
    checks: list[str] = field(default_factory=list)
    held_until: str | None = None
    id: str = field(default_factory=lambda: secrets.token_hex(8))

    def summary(self) -> str:
        """One line: '[STARTED] prod: deploy worker:1.4' or '[FAILED] prod: restore … after 12 s: error'."""
        what = f"{self.env}: {self.operation} {self.subject}".rstrip()
        if self.event == "start":
            held = f" (checks held: {', '.join(self.checks)})" if self.checks else ""
            return f"[STARTED] {what}{held}"
        tail = f": {self.error}" if self.error else ""
        return f"[{self.outcome.upper()}] {what} after {self.duration_seconds:.0f} s{tail}"

    def details(self) -> dict[str, Any]:
        """The event as a JSON-safe dict (the webhook's `data`, PagerDuty's `custom_details`)."""
        doc = {"event": self.event, "env": self.env, "operation": self.operation, "subject": self.subject,
               "started_at": self.started_at, "at": self.at, "checks_held": self.checks,
               "held_until": self.held_until}
        if self.event == "end":
            doc.update(outcome=self.outcome, verdict=str(self.verdict), error=self.error or None,
                       duration_seconds=round(self.duration_seconds, 3))
        return doc

    def text(self) -> str:
        """A plain-text body (e-mail): the summary, then one `key: value` line per detail."""
        return self.summary() + "\n\n" + "".join(f"{k}: {v}\n" for k, v in self.details().items())


@dataclass
class Window:
    """An operation's notification window, yielded by `operation_window`.

    Set `outcome` (a word of OUTCOMES, e.g. "succeeded", or an opsctl.deploy.model.Outcome)
    before the block ends; the sinks judge it with `verdict()`. It is
    "failed" when the block raised, with `error` the exception's redacted text. After exit,
    `deliveries` lists each event's delivery per sink ({sink, event, ok, error}) and
    `problems` the notification problems logged (never raised)."""
    env_name: str
    operation: str
    subject: str
    checks: list[str]
    started_at: str
    held_until: str | None = None
    outcome: str | enum.StrEnum = "succeeded"
    error: str = ""
    silences: list = field(default_factory=list)  # opsctl.health.silences.Silence, opened on enter
    deliveries: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class _Lanes:
    """One daemon thread and queue per sink: events go out in order per sink, a slow or failing
    sink holds back neither the others nor the operation, and never the process's exit (a
    ThreadPoolExecutor's workers are joined at interpreter exit, whatever shutdown(wait=False)
    said). Each delivery is bounded in total by its sink's timeout (sinks.bounded_request)."""

    def __init__(self, senders: list, window: Window) -> None:
        self.window = window
        self.senders = senders
        self.lanes: list[tuple[queue.Queue, threading.Thread]] = []
        for sender in senders:
            lane: queue.Queue = queue.Queue()
            thread = threading.Thread(target=self._drain, args=(sender, lane), daemon=True,
                                      name=f"notify:{sender.name}")
            thread.start()
            self.lanes.append((lane, thread))

    def send(self, event: OperationEvent) -> None:
        for lane, _ in self.lanes:
            lane.put(event)

    def _drain(self, sender, lane: queue.Queue) -> None:
        while (event := lane.get()) is not _STOP:
            self._deliver(sender, event)

    def _deliver(self, sender, event: OperationEvent) -> None:
        try:
            sender.announce(event)
            ok, error = True, ""
            log.info("operation %s event of %s sent to %s", event.event, event.operation, sender.describe())
        except Exception as exc:  # a sink's failure is logged, never raised into the operation
            ok, error = False, sender.scrub(f"{type(exc).__name__}: {exc}")[:300]
            log.warning("operation %s event of %s not sent to %s: %s", event.event, event.operation,
                        sender.describe(), error)
        self.window.deliveries.append({"sink": sender.name, "event": event.event, "ok": ok, "error": error})

    def close(self) -> None:
        """Wait for what was queued (each send is bounded in total by its sink's timeout; two
        events per sink), then leave: a lane still busy is a daemon thread, dropped at exit."""
        for lane, _ in self.lanes:
            lane.put(_STOP)
        if not self.lanes:
            return
        deadline = time.monotonic() + 2 * max(s.settings.timeout for s in self.senders) + 5
        for _, thread in self.lanes:
            thread.join(max(0.0, deadline - time.monotonic()))


def _senders(env, window: Window) -> list:
    from opsctl.health import sinks

    out = []
    for settings in env.health.sinks:
        if not settings.operations:
            continue
        try:
            sender = sinks.build(settings)
        except Exception as exc:  # e.g. its secret is not exported: this sink is skipped, not the operation
            problem = f"sink {settings.name} skipped: {credentials(str(exc))}"
            window.problems.append(problem)
            window.deliveries.append({"sink": settings.name, "event": "start", "ok": False, "error": problem})
            log.warning("%s", problem)
            continue
        # its secrets are masked in every text sent from now on (an error quoting one included)
        remember(sender.secret, sender.target if sender.type in ("slack", "webhook") else None)
        out.append(sender)
    return out


def _default_checks(operation: str, platform: str = "local") -> list[str]:
    """The checks `operation` holds by default on `platform` (DEFAULT_CHECKS_BY_PLATFORM).
    Raises ValueError for an operation not in that table: pass `checks=` explicitly for others."""
    table = DEFAULT_CHECKS_BY_PLATFORM.get(platform, DEFAULT_CHECKS)
    try:
        return list(table[operation])
    except KeyError:
        raise ValueError(f"operation_window: no default checks for operation {operation!r} "
                         f"(known: {', '.join(table)}); pass checks=[...]") from None


@contextmanager
def operation_window(project, env_name: str, operation: str, subject: str, *,
                     checks: list[str] | None = None, max_seconds: float | None = None) -> Iterator[Window]:
    """Announce an operation and hold the alerts it causes, for as long as the block runs.

    `project` is the loaded ops root (opsctl.config), `env_name` one of its environments,
    `operation` e.g. "deploy" or "restore", `subject` what it acts on (an image, a backup id,
    a target time); `checks` the check name or kind globs to hold (None: the operation's
    defaults on the environment's platform, DEFAULT_CHECKS_BY_PLATFORM; [] holds none);
    `max_seconds` bounds the silences in case the process dies: pass the operation's own
    deadline when it has one (None: `window_seconds(env, operation)`).
    Yields a `Window`. Raises ValueError only for an unknown `operation` with `checks=None`
    (a programming error, raised before anything is sent); UsageError for an unknown
    environment. Notification problems are never raised."""
    from opsctl.health import silences

    env = project.env(env_name)
    held = _default_checks(operation, env.platform) if checks is None else list(checks)
    if max_seconds is None:
        max_seconds = window_seconds(env, operation)
    started = dt.datetime.now(dt.timezone.utc)
    clock = time.monotonic()
    window = Window(env_name, operation, "", held, _iso(started))
    lanes = _Lanes(_senders(env, window), window)
    subject = window.subject = credentials(subject or "")
    with ExitStack() as stack:
        stack.callback(lanes.close)
        if held:
            window.held_until = _iso(started + dt.timedelta(seconds=max_seconds))
            try:
                window.silences = stack.enter_context(silences.maintenance(
                    project, env_name, held, max_seconds, f"{operation} {subject}".strip(),
                    alertmanager=env.monitoring.alertmanager_url, strict=False))
            except Exception as exc:  # never fail the operation for its maintenance window
                window.problems.append(f"maintenance window not opened: {credentials(str(exc))}")
                log.warning("%s", window.problems[-1])
            if len(window.silences) < len(held):
                opened = {s.check for s in window.silences}
                window.problems.append(f"not silenced: {', '.join(c for c in held if c not in opened)}")
        lanes.send(OperationEvent("start", env_name, operation, subject, window.started_at, window.started_at,
                                  checks=held, held_until=window.held_until))
        try:
            yield window
        except BaseException as exc:
            window.outcome = "failed"
            window.error = credentials(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:500]
            raise
        finally:
            ended = dt.datetime.now(dt.timezone.utc)
            outcome = credentials(str(getattr(window.outcome, "value", window.outcome)))  # a str or an enum
            lanes.send(OperationEvent("end", env_name, operation, subject, window.started_at, _iso(ended),
                                      outcome=outcome, verdict=verdict(operation, outcome), error=window.error, checks=held,
                                      duration_seconds=time.monotonic() - clock, held_until=window.held_until))
