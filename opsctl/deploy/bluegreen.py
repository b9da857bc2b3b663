"""The blue-green algorithm, written once above the platform drivers.

validate → lock → (pre-deploy backup) → bring up the inactive color → wait ready →
pre-promotion analysis → switch (or wait for `promote`) → post-promotion analysis →
scale the old color down after the delay. Traffic only ever moves to a color that passed
its readiness and analysis; any failure after the switch switches back.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from opsctl.config import Environment
from opsctl.deploy import analysis
from opsctl.deploy.model import DeployRecord, Driver, Release, Step, now, other
from opsctl.errors import OperationFailed, UsageError

Notify = Callable[[Step], None]


@dataclass
class Options:
    strategy: str = "blue-green"
    auto_promote: bool = True
    analysis: bool = True
    wait_scale_down: bool = True
    backup: Callable[[], str] | None = None  # the pre-deploy backup hook; returns a backup id
    load_gate: Callable[[str], "analysis.Verdict"] | None = None  # a short load test of the preview
    notify: Notify = field(default=lambda step: None)


class _Run:
    """One deploy's record, saved after every step so an interrupted deploy can be found."""

    def __init__(self, driver: Driver, record: DeployRecord, notify: Notify):
        self.driver, self.record, self.notify = driver, record, notify

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.record.steps.append(step)
        self.notify(step)
        began = time.monotonic()
        try:
            yield step
            step.status = "ok" if step.status == "running" else step.status
        except BaseException as exc:
            step.status = "failed"
            step.detail = step.detail or (str(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted")
            raise
        finally:
            step.seconds = round(time.monotonic() - began, 2)
            self.notify(step)
            self.driver.save(self.record)

    def finish(self, outcome: str, reason: str = "") -> DeployRecord:
        self.record.outcome, self.record.reason, self.record.finished_at = outcome, reason, now()
        self.driver.save(self.record)
        return self.record


def reap(driver: Driver, force: bool = False) -> list[str]:
    """Finish what earlier deploys left: overdue standbys stopped, abandoned colors removed."""
    stopped = []
    active = driver.active_color()
    history = driver.history()
    keep_until = {r.from_color: r.standby_until for r in history[-1:] if r.outcome == "promoted"}
    pending = {r.to_color for r in history[-1:] if r.outcome == "awaiting-promotion"}
    for color, state in driver.colors().items():
        if color == active or not state.running or color in pending:
            continue
        until = keep_until.get(color)
        if until is not None and time.time() < until and not force:
            continue  # still the warm standby for an instant rollback
        driver.scale_down(color)
        stopped.append(color)
    for record in history:
        if record.outcome == "in-progress":
            record.outcome, record.reason = "interrupted", "the deploying process stopped; cleaned up later"
            record.finished_at = now()
            driver.save(record)
    return stopped


def deploy(driver: Driver, env: Environment, release: Release, opts: Options) -> DeployRecord:
    if opts.strategy not in ("blue-green", "rolling"):
        raise UsageError(f"--strategy {opts.strategy}: use blue-green or rolling")
    with driver.lock():
        reap(driver)
        active = driver.active_color()
        colors = driver.colors()
        current = colors.get(active) if active else None
        serving = current is not None and current.running
        target = other(active) if serving else (active or "blue")
        record = DeployRecord(env=env.name, strategy=opts.strategy, image=release.image,
                              version=release.version, settings=release.settings, to_color=target,
                              from_color=active if serving else None,
                              from_version=current.version if serving else None)
        run = _Run(driver, record, opts.notify)
        driver.save(record)
        with run.step("validate") as s:
            s.detail = f"{release.image} → {target} (active: {active or 'none'} {record.from_version or ''})".strip()
        if opts.backup is not None:
            with run.step("pre-deploy backup") as s:
                s.detail = f"backup {opts.backup()}"
        try:
            with run.step("bring up") as s:
                driver.bring_up(target, release, env.deploy.ready_timeout)
                s.detail = f"{target} started with {release.version}"
            with run.step("wait ready") as s:
                driver.wait_ready(target, env.deploy.ready_timeout)
            if opts.analysis and opts.strategy == "blue-green":
                with run.step("pre-promotion analysis") as s:
                    verdict = analysis.pre_promotion(driver.url(target), analysis.auth_headers(env.deploy.api_key_env))
                    s.detail = verdict.detail
                    s.status = "skipped" if verdict.skipped else s.status
                    if not verdict.ok:
                        raise OperationFailed(f"pre-promotion analysis failed: {verdict.detail}")
                if opts.load_gate is not None:
                    with run.step("pre-promotion load test") as s:
                        url = driver.url(target)
                        if url is None:
                            s.status, s.detail = "skipped", "the preview color is not reachable from here"
                        else:
                            verdict = opts.load_gate(url)
                            s.detail = verdict.detail
                            if not verdict.ok:
                                raise OperationFailed(f"pre-promotion load test failed: {verdict.detail}")
        except BaseException as exc:
            _discard(driver, target)
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            run.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                       f"{reason}; traffic stays on {active or 'nothing'}")
            if isinstance(exc, OperationFailed):
                raise OperationFailed(f"deploy of {release.version} failed: {reason}; "
                                      f"traffic stays on {active} ({record.from_version})") from None
            raise
        if not opts.auto_promote and opts.strategy == "blue-green":
            return run.finish("awaiting-promotion", f"preview {target} is ready; run 'opsctl promote'")
        return _promote(driver, env, run, opts)


def _discard(driver: Driver, color: str) -> None:
    try:
        driver.scale_down(color)
    except Exception:  # cleanup must not hide the failure that caused it
        pass


def _promote(driver: Driver, env: Environment, run: _Run, opts: Options) -> DeployRecord:
    record = run.record
    previous, target = record.from_color, record.to_color
    with run.step("switch") as s:
        driver.switch(target)
        s.detail = f"router → {target} ({record.version})"
    if opts.analysis and opts.strategy == "blue-green" and env.deploy.analysis_window > 0:
        try:
            with run.step("post-promotion analysis") as s:
                verdict = analysis.post_promotion(
                    driver.url(target), driver.router_url(), env.deploy.analysis_window,
                    env.deploy.max_error_rate_percent, env.deploy.max_p95_ms,
                    analysis.auth_headers(env.deploy.api_key_env))
                s.detail = verdict.detail
                s.status = "skipped" if verdict.skipped else s.status
                if not verdict.ok:
                    raise OperationFailed(verdict.detail)
        except OperationFailed as exc:
            if previous is None:
                run.finish("failed", f"post-promotion analysis failed: {exc}; no previous color to return to")
                raise OperationFailed(f"post-promotion analysis failed: {exc}") from None
            with run.step("switch back") as s:
                driver.switch(previous)
                s.detail = f"router → {previous} ({record.from_version})"
            _discard(driver, target)
            run.finish("rolled-back", f"post-promotion analysis failed: {exc}")
            raise OperationFailed(f"deploy of {record.version} rolled back to {record.from_version}: {exc}") from None
    delay = 0.0 if opts.strategy == "rolling" else env.deploy.scale_down_delay
    record.standby_until = time.time() + delay if previous else None
    return run.finish("promoted", f"{target} serves {record.version}"
                      + (f"; {previous} stays warm for {delay:.0f}s" if previous and delay else ""))


def promote(driver: Driver, env: Environment, opts: Options) -> DeployRecord:
    with driver.lock():
        pending = [r for r in driver.history()[-1:] if r.outcome == "awaiting-promotion"]
        if not pending:
            raise UsageError("nothing awaits promotion; deploy with --no-auto-promote first")
        record = pending[0]
        if not driver.colors()[record.to_color].ready:
            raise OperationFailed(f"preview {record.to_color} is no longer ready; deploy again")
        record.outcome = "in-progress"
        return _promote(driver, env, _Run(driver, record, opts.notify), opts)


def finish_scale_down(driver: Driver, record: DeployRecord, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Wait out the scale-down delay without holding the lock (a rollback may come meanwhile)."""
    if record.outcome != "promoted" or not record.standby_until:
        return []
    sleep(max(0.0, record.standby_until - time.time()))
    with driver.lock():
        return reap(driver)
