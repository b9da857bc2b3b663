"""The two loops: continuous (`--interval` seconds) and scheduled (a cron expression).

Both run the same cycle: sweep, let the alerter judge it, hand alerts to the dispatcher,
append to the JSONL history if one is kept, tell the caller (the live dashboard). Sweeps
start on a fixed rate (a slow sweep does not shift the schedule; a missed slot is skipped,
not run twice). `iterations` bounds the loop for tests and for CI; `stop` ends it early.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from opsctl import files
from opsctl.errors import MachineFaults, OperationFailed, UsageError, fault_text
from opsctl.health.alerting import Alert, Alerter
from opsctl.health.model import SweepResult


def validate_cron(cron: str) -> str:
    """`cron` unchanged when it is a standard 5-field cron expression that fires
    (settings.cron_problem, shared with health.cron, heartbeats and runbook schedules);
    UsageError saying what is wrong with it otherwise."""
    from opsctl.health.settings import cron_problem

    problem = cron_problem(cron)
    if problem:
        raise UsageError(f"--cron {problem}")
    return cron


def _next_cron(cron: str, after: float) -> float:
    """The next time `cron` fires after `after` (both epoch seconds)."""
    from croniter import croniter

    return croniter(cron, after).get_next(float)


def append_history(path: Path, result: SweepResult, alerts: list[Alert]) -> None:
    """One JSON document per line, appended and flushed: readable while the loop runs.
    The file is 0600 (a folder created for it 0700). A line is written whole or not at all
    (files.append_line: breaker 33 B4); OperationFailed names the file."""
    doc = result.to_dict()
    doc["alerts"] = [{"event": a.event, "check": a.check, "status": a.status} for a in alerts]
    with MachineFaults(f"writing {path}"):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # a folder made here is private
    files.append_line(path, json.dumps(doc, separators=(",", ":")))


def written(write: Callable[[], None], fault: str, again: str = "", failing: bool = False) -> bool:
    """Run `write` (a sweep's history line, its JUnit report) and return whether it failed,
    never raising a machine fault (a full disk): the sweep's verdict and alerts stand. A failed
    write once ended the monitor after its first sweep, and `health --history` exited 1, a
    Nagios WARNING, over a CRITICAL sweep it did not print (breaker 34 F1, F2; breaker 35 F2).
    `failing`: the previous write failed too. A failure is logged as `fault` % its reason at
    the first of a run of them, and `again` when one succeeds after them."""
    try:
        write()
    except OperationFailed as exc:
        if not failing:
            logging.getLogger("opsctl.health").warning(fault, fault_text(exc))
        return True
    if failing:
        logging.getLogger("opsctl.health").info("%s", again)
    return False


HISTORY_FAULT = "the sweep's history line was not written (%s); sweeps and alerts go on"


def loop(sweep: Callable[[], SweepResult], alerter: Alerter, submit: Callable[[list[Alert]], None], *,
         interval: float | None = None, cron: str | None = None, iterations: int | None = None,
         history: Path | None = None, on_sweep: Callable[[SweepResult, list[Alert], float], None] | None = None,
         stop: threading.Event | None = None) -> SweepResult | None:
    """Run sweeps until `iterations` are done or `stop` is set; return the last one."""
    if (interval is None) == (cron is None):
        raise ValueError("give exactly one of interval and cron")
    stop = stop or threading.Event()
    last = None
    done = 0
    failed = False  # the last history line was not written (said once until one is again)
    next_at = time.time() if interval is not None else _next_cron(cron, time.time())
    while not stop.is_set() and (iterations is None or done < iterations):
        if stop.wait(max(0.0, next_at - time.time())):
            break
        last = sweep()
        alerts = alerter.observe(last)
        submit(alerts)
        if history is not None:
            failed = written(lambda: append_history(history, last, alerts), HISTORY_FAULT,
                             f"history lines are written again to {history}", failed)
        done += 1
        if interval is not None:
            next_at += interval
            while next_at < time.time():  # the sweep overran its slot: skip it, do not bunch up
                next_at += interval
        else:
            next_at = _next_cron(cron, time.time())
        if on_sweep:
            on_sweep(last, alerts, next_at)
    return last
