"""One sweep: every check at once, each on its own thread under its own timeout.

A check that has not answered by its deadline is reported CRITICAL ("no result within
Ns") and abandoned: its thread is a daemon and every client also carries the timeout, so
it ends soon after. The sweep therefore takes about as long as its slowest check (capped
by the largest timeout) and a hung endpoint never hangs it. An exception inside a check
is that check's UNKNOWN, never the sweep's crash. Every message and detail is redacted
(opsctl.redact.credentials) before anyone sees it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time

from opsctl.health.checks import Check
from opsctl.health.model import CheckResult, Status, SweepResult
from opsctl.redact import credentials


def _run_one(check: Check, slot: list) -> None:
    began = time.perf_counter()
    try:
        result = check.run(check.timeout)
    except Exception as exc:  # a check's bug or an unexpected library error: report, carry on
        result = CheckResult("", "", Status.UNKNOWN, f"check failed: {type(exc).__name__}: {exc}")
    slot.append(dataclasses.replace(result, name=check.name, kind=check.kind, message=credentials(result.message),
                                    details=_redacted(result.details),
                                    duration_ms=(time.perf_counter() - began) * 1000))


def _redacted(value):
    """Every text a check reports passes opsctl.redact.credentials: drivers (libpq first)
    repeat connection strings, passwords included, in their errors; the table, --json,
    JUnit, history and alerts are all made from these results."""
    if isinstance(value, str):
        return credentials(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted(v) for v in value)
    return value


def run(env_name: str, checks: list[Check]) -> SweepResult:
    """Run `checks` at once, each on its own thread under its own timeout (seconds), and wait
    at most the largest timeout. Never raises for a check: a timeout is CRITICAL, an exception
    UNKNOWN. Returns the SweepResult of `env_name` in the order of `checks`."""
    started = dt.datetime.now(dt.timezone.utc)
    began = time.perf_counter()
    running = []
    for check in checks:
        slot: list[CheckResult] = []
        thread = threading.Thread(target=_run_one, args=(check, slot), name=f"health:{check.name}", daemon=True)
        thread.start()
        running.append((check, thread, slot))
    results = []
    for check, thread, slot in running:
        thread.join(max(0.0, began + check.timeout - time.perf_counter()))
        if slot:
            results.append(slot[0])
        else:
            results.append(CheckResult(check.name, check.kind, Status.CRITICAL,
                                       f"no result within {check.timeout:g}s (timed out)",
                                       duration_ms=check.timeout * 1000))
    return SweepResult(env_name, started, (time.perf_counter() - began) * 1000, results)
