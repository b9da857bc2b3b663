"""Run a Plan with Locust as a library: an Environment, a local runner (or a master with
worker processes), headless, for a fixed duration; then reports, gates and the summary.

Locust is imported here without gevent's monkey patching (LOCUST_SKIP_MONKEY_PATCH):
opsctl calls this from its CLI and from runbook steps running in a thread pool, and
patching a process that already runs threads breaks it. FastHttpUser's client
(geventhttpclient) and Locust's runners use gevent directly, so they need no patching;
everything in this module waits with gevent.sleep, never time.sleep.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from opsctl.errors import OperationFailed, UsageError
from opsctl.loadtest import slo
from opsctl.loadtest.latencies import Recorder
from opsctl.loadtest.plan import Plan
from opsctl.loadtest.summary import RunSummary, endpoints

TICK_S = 0.5


@dataclass
class Tick:
    """What the live view shows, twice a second."""
    elapsed_s: float
    duration_s: float
    users: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    failures: int
    workers: int


def import_locust() -> None:
    """Import locust unpatched, from any thread.

    locust.stats installs a SIGWINCH handler at import (to re-measure its console table),
    which Python allows only in the main thread; runbook steps run in a worker thread. The
    handler is cosmetic for Locust's own console printer, which opsctl does not use, so off
    the main thread that one registration is skipped.
    """
    if "locust" in sys.modules:
        return
    import signal
    import threading

    before = os.environ.get("LOCUST_SKIP_MONKEY_PATCH")
    os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
    real = signal.signal
    if threading.current_thread() is not threading.main_thread():
        signal.signal = lambda sig, handler: None if sig == signal.SIGWINCH else real(sig, handler)
    try:
        import locust  # noqa: F401
    finally:
        signal.signal = real
        if before is None:
            os.environ.pop("LOCUST_SKIP_MONKEY_PATCH", None)
        else:
            os.environ["LOCUST_SKIP_MONKEY_PATCH"] = before


def _forget_stale_siblings(folder: Path) -> None:
    """Locustfiles import their siblings by bare name (`from common import ...`); a module of
    that name cached from another folder (an earlier run with another --locustfile) must not
    stand in for this folder's."""
    for py in folder.glob("*.py"):
        cached = sys.modules.get(py.stem)
        origin = getattr(cached, "__file__", None)
        if origin and Path(origin).resolve().parent != folder.resolve():
            del sys.modules[py.stem]


def _user_classes(plan: Plan) -> list:
    from locust.util.load_locustfile import load_locustfile

    _forget_stale_siblings(plan.locustfile.parent)
    found, _shapes = load_locustfile(str(plan.locustfile))
    names = plan.classes or {name: cls.weight for name, cls in found.items()}
    missing = sorted(set(names) - set(found))
    if missing:
        source = plan.classes_from or f"profile '{plan.profile}'"
        kind = "user class" if len(missing) == 1 else "user classes"
        fix = "fix --classes" if source == "--classes" else "fix the profile's classes in loadtests/profiles.yaml"
        raise UsageError(f"{source} names {kind} {', '.join(missing)} that {plan.locustfile} lacks; "
                         f"it has: {', '.join(sorted(found)) or 'none'}; {fix} or pass --locustfile PATH")
    chosen = []
    for name, weight in names.items():
        cls = found[name]
        problem = cls.preflight() if callable(getattr(cls, "preflight", None)) else None
        if problem:  # what the class needs and lacks (its speech samples): one line before any load
            raise UsageError(f"{name}: {problem}")
        cls.weight = weight  # the profile's share of users for this class (the master dispatches by it)
        if hasattr(cls, "default_headers"):  # FastHttpUser: no-cache and the API key on every request
            own = cls.__dict__.get("_opsctl_own_headers", cls.default_headers) or {}
            cls._opsctl_own_headers = own  # the locustfile's own, kept across runs in one process
            # the plan decides the key (the locustfile read its environment once, at import)
            cls.default_headers = {**{k: v for k, v in own.items() if k.lower() != "authorization"},
                                   **plan.headers()}
        chosen.append(cls)
    return chosen


def _mask_errors(runner) -> None:
    """Mask secrets (opsctl.redact: the API key the plan remembered, passwords in URLs) in the
    failure texts and exception tracebacks Locust kept, in place: its HTML and CSV reports are
    written from them. A target whose error page echoes the request's Authorization header
    put the key into the console, JUnit, HTML, CSV and the saved run (breaker 42 R3)."""
    from locust.exception import CatchResponseError
    from locust.stats import StatsError

    from opsctl.redact import credentials

    errors = {}
    for e in runner.stats.errors.values():
        if isinstance(e.error, CatchResponseError):
            error = CatchResponseError(credentials(str(e.error.args[0]) if e.error.args else ""))
        else:
            error = credentials(e.error if isinstance(e.error, str) else repr(e.error))
        e.error = error
        key = StatsError.create_key(e.method, e.name, error)
        if key in errors:  # two texts that differed only by a secret: one row
            errors[key].occurrences += e.occurrences
        else:
            errors[key] = e
    runner.stats.errors.clear()
    runner.stats.errors.update(errors)
    for row in getattr(runner, "exceptions", {}).values():
        for field in ("msg", "traceback"):
            if isinstance(row.get(field), str):
                row[field] = credentials(row[field])


def _observed(runner, recorder: Recorder, seconds: float) -> slo.Observed:
    """Counts of all requests (Locust's, in-flight failures included) and the transcription
    class's exact latencies (what latency and rps gates judge)."""
    total = runner.stats.total
    return slo.Observed(total.num_requests, total.num_failures, recorder.judged(), seconds,
                        recorder.total().in_flight)


def _tick(runner, recorder: Recorder, began: float, plan: Plan) -> Tick:
    lat = recorder.judged()
    pct = lambda q: lat.percentile(q) or 0.0  # noqa: E731  (successful transcriptions, exact ms)
    total = runner.stats.total
    return Tick(elapsed_s=time.monotonic() - began, duration_s=plan.duration_s, users=runner.user_count,
                rps=total.current_rps, p50_ms=pct(0.5), p95_ms=pct(0.95), p99_ms=pct(0.99),
                requests=total.num_requests, failures=total.num_failures,
                workers=len(getattr(runner, "clients", {}) or {}) if plan.workers else 0)


INTERRUPTED = "interrupted"  # aborted_by of a run stopped by Ctrl-C or SIGTERM


class _Interrupts:
    """How many Ctrl-C / SIGTERM arrived during a run; the run's loops poll `count`."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum, _frame) -> None:
        from opsctl.signals import arrived

        self.count += 1
        arrived(signum)


@contextmanager
def _interrupts() -> Iterator[_Interrupts]:
    """SIGINT and SIGTERM only count while a run goes (main thread only; elsewhere the count
    stays 0 and the caller's own handling applies).

    The default SIGINT handler raises KeyboardInterrupt in whichever greenlet runs when the
    signal lands, and Locust's stats_history, CSV writer and spawning greenlets catch
    KeyboardInterrupt and end quietly (the spawner even quits the runner): a Ctrl-C landing
    in one of them was lost and the run went on to its full duration. A handler that only
    counts is safe in any greenlet and in the hub; the run's loop reads the count every tick.
    """
    flag = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, flag) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():  # None: set outside Python, not restorable; default
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _stop(runner, interrupts: _Interrupts, local: bool) -> None:
    """runner.stop(): users in a request get the stop timeout to finish it; an interrupt
    arriving meanwhile ends that wait at once for a local run (the users are killed, their
    unanswered requests recorded in flight, opsctl.loadtest.inflight)."""
    import gevent

    stopper = gevent.spawn(runner.stop)
    seen = interrupts.count
    while not stopper.dead:
        stopper.join(timeout=TICK_S)
        if interrupts.count > seen and local:
            runner.user_greenlets.kill(block=False)
            seen = interrupts.count
    stopper.get()  # re-raises what runner.stop raised


def run(plan: Plan, on_tick: Callable[[Tick], None] | None = None, save_dir: Path | None = None) -> RunSummary:
    """Run the load, stop at the duration (or at the first lost gate with abort_on_fail).

    At the stop, users in the middle of a task get `plan.stop_timeout_s` to finish it
    (Locust's stop_timeout); requests still unanswered then are recorded as failed
    (opsctl.loadtest.inflight), in every count and in `summary.in_flight`.

    Ctrl-C or SIGTERM at any instant of the run (from the main thread) stops it the same way
    at the next tick and returns what was measured with `aborted_by` INTERRUPTED; one more
    during the stop timeout ends that wait at once (a local run's users are killed)."""
    with _interrupts() as interrupts:
        summary = _run(plan, on_tick, interrupts)
    if interrupts.count and summary.aborted_by != INTERRUPTED:  # landed after the summary was built
        summary.aborted_by, summary.passed = INTERRUPTED, False
    return summary


def _run(plan: Plan, on_tick: Callable[[Tick], None] | None, interrupts: _Interrupts) -> RunSummary:
    import_locust()
    import gevent
    from locust.env import Environment
    from locust.event import Events
    from locust.stats import stats_history

    from opsctl.loadtest import inflight, reports
    from opsctl.loadtest.summary import failures, judged

    inflight.install()
    classes = _user_classes(plan)
    environment = Environment(user_classes=classes, host=plan.host, events=Events(),
                              locustfile=str(plan.locustfile), stop_timeout=plan.stop_timeout_s)
    recorder = Recorder()  # the exact latencies the gates judge
    run_id = f"{dt.datetime.now():%Y%m%d-%H%M%S}-{plan.profile}-{uuid.uuid4().hex[:4]}"
    workers = None
    # the worker processes' logs: named by an error about them (kept then), removed otherwise
    logdir = Path(tempfile.mkdtemp(prefix=f"opsctl-loadtest-{run_id}-")) if plan.workers else None
    logs_named = False
    started = dt.datetime.now(dt.timezone.utc)
    aborted: slo.GateResult | None = None
    csv_files = None
    try:
        if plan.workers:
            from opsctl.loadtest.distributed import Workers

            workers = Workers(environment, plan.workers, plan.locustfile, logdir, recorder, plan.api_key)
            try:
                workers.wait_ready()
            except OperationFailed:
                logs_named = True
                raise
            runner = workers.runner
        else:
            recorder.attach(environment.events)
            runner = environment.create_local_runner()
        history = gevent.spawn(stats_history, runner)
        csv_files = reports.CsvFiles(environment, plan.csv_prefix) if plan.csv_prefix else None
        began = time.monotonic()
        gevent.spawn(runner.start, plan.users, plan.spawn_rate)
        while True:
            gevent.sleep(TICK_S)
            tick = _tick(runner, recorder, began, plan)
            if interrupts.count:  # Ctrl-C, or CI cancelling: what was measured is still a run
                break
            if on_tick:
                on_tick(tick)
            if tick.elapsed_s >= plan.duration_s:
                break
            if plan.abort_on_fail and (aborted := slo.lost(
                    plan.gates, _observed(runner, recorder, tick.elapsed_s))):
                break
        _stop(runner, interrupts, local=not workers)
        if workers:  # a worker answers once its users are stopped: after up to the stop timeout
            try:
                workers.flush(timeout=plan.stop_timeout_s + 30)
            except OperationFailed:
                logs_named = True
                raise
        run_seconds = time.monotonic() - began
        history.kill(block=True)
        _mask_errors(runner)  # before any report reads them (the HTML and CSV are Locust's own)
        files: dict[str, str] = {}
        if plan.html:
            files["html"] = str(reports.write_html(environment, plan.html))
        if csv_files:
            files.update(csv_files.finish())
            csv_files = None
        total, rows = endpoints(runner.stats, recorder, run_seconds)
        interrupted = interrupts.count > 0
        gates = slo.evaluate(plan.gates, _observed(runner, recorder, run_seconds))
        summary = RunSummary(
            id=run_id, env=plan.env, host=plan.host, profile=plan.profile, users=plan.users,
            spawn_rate=plan.spawn_rate, duration_s=plan.duration_s, workers=plan.workers,
            started_at=started.isoformat(timespec="seconds"),
            finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            run_seconds=round(run_seconds, 2), slo=plan.slo, passed=not interrupted and all(g.passed for g in gates),
            aborted_by=INTERRUPTED if interrupted else aborted.gate if aborted else None, gates=gates,
            total=total, endpoints=rows,
            worker_counts=workers.counts() if workers else [], reports=files,
            judged=judged(recorder, run_seconds), in_flight=recorder.total().in_flight,
            stop_timeout_s=plan.stop_timeout_s, failures=failures(runner.stats))
        if plan.junit:
            summary.reports["junit"] = str(plan.junit)
            reports.write_junit(summary, plan.junit)
        return summary
    finally:
        if csv_files:
            csv_files.close()
        if workers:
            workers.close()
        elif environment.runner is not None:
            environment.runner.quit()
        if logdir is not None and not logs_named:
            shutil.rmtree(logdir, ignore_errors=True)
