"""A load test as one operation: plan, run, judge, record. What every front door calls.

`opsctl loadtest run`, the runbook `loadtest` action and the deploy `--load-gate` all call
`load_test`, so they accept the same options, judge the same way and keep the same history.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from opsctl.config import Environment, Project
from opsctl.loadtest.plan import Plan
from opsctl.loadtest.summary import RunSummary

# what a caller may pass to watch a run: given the settled plan, a context yielding on_tick
LiveView = Callable[[Plan], ContextManager[Callable]]


@dataclass
class LoadTestOutcome:
    """A finished (or interrupted) run: its summary, where it was saved, and its verdict."""

    summary: RunSummary
    saved: Path

    @property
    def passed(self) -> bool:
        """True when every gate held and the run was not interrupted."""
        return self.summary.passed

    @property
    def interrupted(self) -> bool:
        """True when Ctrl-C or SIGTERM stopped the run (its figures cover that time only)."""
        from opsctl.loadtest.runner import INTERRUPTED

        return self.summary.aborted_by == INTERRUPTED

    def verdict(self) -> str:
        """One line: 'SLO met: …' or 'SLO breached: gate (observed X over N successful requests)'.
        Its failure text is the summary's, masked when the run kept it (runner._mask_errors);
        the rest is the user's gates and opsctl's figures: the line needs no masking again."""
        s = self.summary
        if self.interrupted:
            return (f"interrupted after {s.run_seconds:.0f} s; the partial run is saved as {s.id} "
                    "(marked not passed)")
        if s.passed:
            return f"{s.total.requests} requests, SLO met: {s.slo or 'no gates'}"
        lost = "; ".join(g.describe() for g in s.breached)
        stuck = f"; {s.in_flight} requests still in flight at the end, counted as failed" if s.in_flight else ""
        why = ""
        if s.failures:
            top = s.failures[0]
            why = (f"; most frequent failure ({len(s.failures)} kinds): {top.occurrences} x "
                   f"{f'{top.method} {top.name}'.strip()}: {top.error}")
        return f"SLO breached: {lost}" + (" (stopped early)" if s.aborted_by else "") + stuck + why


    def raise_if_interrupted(self) -> None:
        """KeyboardInterrupt when Ctrl-C or SIGTERM stopped the run. The run takes the signal
        itself, to save its partial figures; a caller that is a step of a longer operation (a
        runbook's loadtest step, a deploy's load gate) raises it on, so the operation stops as
        a Ctrl-C stops it (exit 130, the step interrupted), where it judged a cut-short run as a
        failed one (exit 1, "load test failed": breaker 64 F3, the drill's case). Its message
        is `verdict` (where the partial run is saved): a runbook journals it as the step's detail."""
        if self.interrupted:
            raise KeyboardInterrupt(self.verdict())

    def error(self):
        """What the run ends on for `opsctl loadtest run`, or None when it passed: Interrupted
        (exit 130) or OperationFailed (exit 1) carrying `verdict`, marked masked (OpsError): its
        parts were masked where the run kept them, so a short key does not mask the user's own
        gates in the last line alone (breaker 45 F11)."""
        from opsctl.errors import Interrupted, OperationFailed

        if self.interrupted:
            return Interrupted(self.verdict(), masked=True)
        return None if self.passed else OperationFailed(self.verdict(), masked=True)


def prepare(project: Project, env: Environment, profile: str = "light", **options) -> Plan:
    """Check every input now (UsageError, one line); nothing is sent. Options as `load_test`."""
    from opsctl.loadtest import plan

    return plan.make(project, env, profile, **_plan_options(options))


def load_test(project: Project, env: Environment, profile: str = "light", *, users: int | None = None,
              spawn_rate: float | None = None, duration: str | None = None, slo: str | None = None,
              host: str | None = None, workers: int = 0, abort_on_fail: bool = False,
              classes: str | None = None, locustfile: str | None = None, html: str | None = None,
              csv: str | None = None, junit: str | None = None, stop_timeout: str | None = None,
              live: LiveView | None = None) -> LoadTestOutcome:
    """Run a load profile against `env` (or `host`), judge its SLO gates, save it to history.

    Options are those of `opsctl loadtest run` (durations as text: "30s", "5m"; users and
    rates as numbers; `stop_timeout`: how long requests in flight at the end get to finish,
    default 30s, after which they count as failed). Returns the outcome whether the gates held or not; the caller turns
    a breach into its own failure (`outcome.verdict()` says why). Raises UsageError on bad
    input before any load is sent, OperationFailed when Locust's workers fail.
    """
    from opsctl.loadtest import history, runner

    the_plan = prepare(project, env, profile, users=users, spawn_rate=spawn_rate, duration=duration, slo=slo,
                       host=host, workers=workers, abort_on_fail=abort_on_fail, classes=classes,
                       locustfile=locustfile, html=html, csv=csv, junit=junit, stop_timeout=stop_timeout)
    with (live(the_plan) if live else nullcontext(None)) as on_tick:
        summary = runner.run(the_plan, on_tick=on_tick)
    return LoadTestOutcome(summary, history.save(project, summary))


def _plan_options(options: dict) -> dict:
    renamed = {"slo": "slo_text", "csv": "csv_prefix"}
    return {renamed.get(k, k): v for k, v in options.items()}
