"""The entry points the CLI and runbook steps call: one sweep, or a loop with alerting.

Everything that is bad input (an unknown check pattern, a bad cron, a sink whose secret is
not exported, an exporter port in use) is raised as UsageError before the first sweep, so
a misconfigured monitor fails at start-up, in front of the person starting it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from opsctl.errors import OpsError, not_empty
from opsctl.health import checks as checks_mod
from opsctl.health import sweep as sweep_mod
from opsctl.health.alerting import Alert, Alerter
from opsctl.health.model import SweepResult
from opsctl.redact import credentials

log = logging.getLogger("opsctl.health")
JUNIT_FAULT = "the JUnit report was not written: %s"


def _checks(project, env, only, skip):
    from opsctl.endpoints import resolve

    return checks_mod.plan(project, env, resolve(project, env), only, skip)


def once(project, env, only: list[str] | None = None, skip: list[str] | None = None, *,
         junit: str | Path | None = None, history: str | Path | None = None, strict: bool = False) -> SweepResult:
    """One sweep with its reports: what `opsctl health` and the runbook `health` step call.
    `strict` (the command's --mode once): a report not written is said in `result.not_written`
    (the command says each in one line and exits non-zero), not logged.

    `only`/`skip` are check name or kind patterns; `junit` receives the sweep as JUnit XML
    (checked writable before any check runs), `history` gets one JSON line appended. A
    report or line that then can't be written (a full disk) is logged: the verdict stands.
    Raises UsageError on bad input (unknown pattern, unwritable report) before sweeping.
    """
    from opsctl.health import junit as junit_mod
    from opsctl.health.schedule import HISTORY_FAULT, append_history, written

    if junit is not None:
        junit = junit_mod.check_writable(junit)
    before = _silences_in_force(project, env)  # in force as the sweep begins (see _with_silences)
    planned = _checks(project, env, only, skip)
    result = _with_silences(project, env, sweep_mod.run(env.name, planned), before)
    if strict:  # each report that fails is one sentence in result.not_written, none logged
        _strictly(result, lambda: junit_mod.write(junit, result) if junit is not None else None, JUNIT_FAULT)
        _strictly(result, lambda: append_history(history, result, []) if history is not None else None,
                  HISTORY_ONCE_FAULT)
        return result
    if junit is not None:
        written(lambda: junit_mod.write(junit, result), JUNIT_FAULT)
    if history is not None:
        written(lambda: append_history(history, result, []), HISTORY_FAULT)
    return result


HISTORY_ONCE_FAULT = "the sweep's history line was not written (%s)"


def _strictly(result: SweepResult, write, fault: str) -> None:
    """Run `write`; a report it could not write (a machine fault, a FIFO no process reads, any
    OSError) is added to `result.not_written` as one line (`fault` % its reason). The JUnit
    report and the history line fail alike (breaker 42 R10: a full device only warned for one
    and gave "unexpected OSError" for the other; a FIFO refused one and dropped the other)."""
    from opsctl.errors import OpsError, fault_text

    try:
        write()
    except (OpsError, OSError) as exc:
        result.not_written.append(" ".join((fault % fault_text(exc)).split()))


def _silences_in_force(project, env) -> list:
    """The silences of `env` in force now; [] (with a warning) when the file is unreadable:
    an unreadable silences file must not stop the monitor."""
    from opsctl.errors import UsageError
    from opsctl.health import silences

    try:
        return silences.active(project, env.name)
    except UsageError as exc:
        log.warning("%s", exc)
        return []


def _with_silences(project, env, result: SweepResult, before: list | None = None) -> SweepResult:
    """Mark the checks a silence held while the sweep observed them.

    A check's failure is held when a silence holding it was in force at some moment of the
    sweep that observed it: read before its checks were chosen and probed (`before`) or
    read now, after they answered (silences are read afresh each sweep: set from anywhere).
    A maintenance window thus covers the failures observed inside it, as PagerDuty's and
    Datadog's do (by the event's occurrence time), also when the window closes between the
    probe and this judgement; a failure observed by a sweep begun after the window ended
    pages."""
    from opsctl.health import silences

    now_active = _silences_in_force(project, env)
    ids = {s.id for s in now_active}
    in_force = [*now_active, *(s for s in before or [] if s.id not in ids)]
    result.silences = [{"check": s.check, "until": s.until, "reason": s.reason, "id": s.id} for s in in_force]
    for r in result.results:
        held = silences.holding(in_force, r.name, r.kind)
        if held:
            result.silenced[r.name] = held.until
    return result


@dataclass
class WatchResult:
    """What a monitor loop leaves: the last sweep (None if none ran), how many sweeps, the
    alerts raised (event, check, status, at) and the delivery outcomes (dispatch.Outcome as dicts)."""
    last: SweepResult | None
    sweeps: int = 0
    alerts: list[dict] = field(default_factory=list)
    deliveries: list[dict] = field(default_factory=list)


def watch(project, env, *, interval: float | None = None, cron: str | None = None,
          iterations: int | None = None, only: list[str] | None = None, skip: list[str] | None = None,
          history: Path | None = None, metrics_port: int | None = None,
          on_sweep: Callable[[SweepResult, list[Alert], float], None] | None = None,
          stop: threading.Event | None = None) -> WatchResult:
    """Continuous (`interval`) or scheduled (`cron`) sweeps, alerting through the env's sinks."""
    from opsctl.health import schedule, sinks
    from opsctl.health.dispatch import Dispatcher

    if cron is not None:
        schedule.validate_cron(cron)
    checks = [_checks(project, env, only, skip)]  # fails here, before the loop, on bad input
    senders = [sinks.build(s) for s in env.health.sinks]
    exporter = None
    if metrics_port is not None:
        from opsctl.health.exporter import Exporter

        exporter = Exporter(metrics_port)
    state = project.state_dir / "health" / f"alerts-{env.name}.json"
    owner = _own_alert_state(state, env.name)
    dispatcher = Dispatcher(senders)
    alerter = Alerter.from_settings(env.health.alerts, state=state)
    result = WatchResult(None)

    def sweep() -> SweepResult:
        # the silences in force as the sweep begins, before its checks are chosen: a window that
        # closes while they run still holds what they observed inside it (_with_silences)
        before = _silences_in_force(project, env)
        # re-planned each time: a blue-green switch changes which worker colors exist
        try:
            checks[0] = _checks(project, env, only, skip)
        except (OpsError, OSError, ValueError) as exc:  # e.g. the state file mid-change: keep the last plan
            log.warning("could not re-plan the checks (%s); using the previous plan", credentials(str(exc)))
        return _with_silences(project, env, sweep_mod.run(env.name, checks[0]), before)

    def observed(res: SweepResult, alerts: list[Alert], next_at: float) -> None:
        result.sweeps += 1
        result.alerts.extend({"event": a.event, "check": a.check, "status": a.status, "at": a.at} for a in alerts)
        if exporter:
            exporter.update(res)
        if on_sweep:
            on_sweep(res, alerts, next_at)

    try:
        result.last = schedule.loop(sweep, alerter, dispatcher.submit, interval=interval, cron=cron,
                                    iterations=iterations, history=history, on_sweep=observed, stop=stop)
    finally:
        dispatcher.close()
        if exporter:
            exporter.close()
        owner.release()
    result.deliveries = [vars(o) for o in dispatcher.outcomes]
    return result


def run(project, env, mode: str = "once", *, interval: float | None = None, cron: str | None = None,
        iterations: int | None = None, only: list[str] | None = None, skip: list[str] | None = None,
        junit: str | Path | None = None, history: str | Path | None = None, metrics_port: int | None = None,
        on_sweep: Callable[[SweepResult, list[Alert], float], None] | None = None,
        stop: threading.Event | None = None, strict: bool = False) -> WatchResult:
    """The whole `opsctl health` operation, also the runbook `health` step's: check that the
    JUnit report can be written, settle the cadence (`cadence`: options that go together,
    health.* defaults), then one sweep (`mode` "once", no alerting, `on_sweep` not called) or
    the loop of `watch` ("continuous", "scheduled"), writing `junit` after every sweep (so it
    holds the last) and appending each to `history`.

    Returns a WatchResult; in "once" mode `last` is the sweep and `sweeps` 1. `on_sweep`
    (result, alerts raised, next sweep epoch seconds) is for progress views only. Raises
    UsageError on bad input before any check runs; KeyboardInterrupt passes through."""
    from opsctl.health import junit as junit_mod

    if junit is not None:
        junit = junit_mod.check_writable(junit)
    plan = cadence(project, env, mode, interval, cron, iterations, history, metrics_port)
    if mode == "once":
        return WatchResult(once(project, env, only, skip, junit=junit, history=plan.history, strict=strict), sweeps=1)

    from opsctl.health.schedule import written

    failing = False  # the last report was not written: said once until one is again

    def observed(res: SweepResult, alerts: list[Alert], next_at: float) -> None:
        nonlocal failing
        if junit is not None:
            failing = written(lambda: junit_mod.write(junit, res), JUNIT_FAULT,
                              f"the JUnit report is written again to {junit}", failing)
        if on_sweep:
            on_sweep(res, alerts, next_at)

    return watch(project, env, interval=plan.interval, cron=plan.cron, iterations=iterations, only=only, skip=skip,
                 history=plan.history, metrics_port=metrics_port, on_sweep=observed, stop=stop)


def _own_alert_state(state: Path, env_name: str):
    """One monitor per environment and machine: a second would page twice for every outage
    and overwrite the first one's alert state."""
    from filelock import FileLock, Timeout

    from opsctl.errors import UsageError
    from opsctl.files import private_dir

    private_dir(state.parent)  # .opsctl/health: alert state, history, samples, silences
    lock = FileLock(state.with_suffix(".lock"), mode=0o600)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UsageError(f"another health monitor is already watching '{env_name}' on this machine "
                         f"(it holds {lock.lock_file}); stop it first: two would page twice") from None
    return lock


@dataclass
class Cadence:
    """When sweeps run and where they are recorded, settled from the options and opsctl.yaml."""

    interval: float | None
    cron: str | None
    history: Path | None


def cadence(project, env, mode: str, interval: float | None, cron: str | None, iterations: int | None,
            history: Path | None, metrics_port: int | None) -> Cadence:
    """Check the options that go together; fill in the environment's defaults (health.*)."""
    from opsctl.errors import UsageError

    if mode == "once":
        for flag, value in (("--interval", interval), ("--cron", cron), ("--iterations", iterations),
                            ("--metrics-port", metrics_port)):
            if value is not None:
                raise UsageError(f"{flag} goes with --mode continuous or scheduled, not once")
    elif iterations is not None and iterations < 1:
        raise UsageError(f"--iterations must be 1 or more, not {iterations}")
    if metrics_port is not None:  # once mode refused it above
        from opsctl.health.exporter import check_port

        check_port(metrics_port)
    if mode == "continuous":
        if cron is not None:
            raise UsageError("--cron goes with --mode scheduled; continuous mode takes --interval")
        interval = env.health.interval if interval is None else interval
        from opsctl.health.settings import MAX_INTERVAL_S, MIN_INTERVAL_S

        # also refuses nan and inf (time.sleep(inf) overflows); below a second a sweep (checks with
        # timeouts of seconds) can't end before the next, and below ~2e-7 s the clock + interval
        # rounds to the clock: the loop spun for ever (breaker 38 H4)
        if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
            raise UsageError(f"--interval must be {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds, not {interval:g}")
    elif mode == "scheduled":
        if interval is not None:
            raise UsageError("--interval goes with --mode continuous; scheduled mode takes --cron")
        cron = not_empty(cron, "--cron", "give a 5-field cron expression such as '*/5 * * * *', or leave it "
                                         "out for health.cron in opsctl.yaml") or env.health.cron
        if not cron:
            raise UsageError("--mode scheduled needs --cron '*/5 * * * *' (or health.cron in opsctl.yaml)")
        history = history if history is not None else env.health.history
    not_empty(history, "--history", "give a file path such as history.jsonl, or leave --history out"
                                    + (" for health.history" if mode == "scheduled" else ""))
    history = Path(history) if history is not None else None
    if history is not None and not history.is_absolute():
        history = project.root / history
    if history is not None:  # a folder or an unmakeable one fails now, not after the first sweep
        from opsctl.files import report_path

        history = report_path(history, "--history", make=False, example="history.jsonl",  # append_history makes it private
                              own=project.root / env.health.history)  # health's own history, in its state folder
    return Cadence(interval if mode == "continuous" else None, cron if mode == "scheduled" else None, history)
