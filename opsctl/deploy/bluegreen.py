"""The blue-green algorithm, written once above the platform drivers.

validate → lock → (pre-deploy backup) → bring up the inactive color → wait ready →
pre-promotion analysis → switch (or wait for `promote`) → post-promotion analysis →
scale the old color down after the delay. Traffic only ever moves to a color that passed
its readiness and analysis; any failure after the switch switches back.
"""

from __future__ import annotations

import datetime as dt
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from opsctl.config import DeploySettings, Environment
from opsctl.deploy import analysis
from opsctl.deploy.model import DeployRecord, Driver, Outcome, Release, Step, StepStatus, now, other
from opsctl.errors import OperationFailed, UsageError

Progress = Callable[[Step], None]  # called with a Step when it starts and when it ends


@dataclass
class Options:
    """How the algorithm runs: strategy (blue-green | rolling), whether to switch as soon as
    analysis passes, whether to analyse at all, the pre-deploy backup hook (returns the
    backup id), the load gate (given the preview's URL, returns a Verdict) and `progress`,
    called with each Step when it starts and ends. The scale-down wait is the caller's
    (opsctl.deploy.operation)."""

    strategy: str = "blue-green"
    auto_promote: bool = True
    analysis: bool = True
    backup: Callable[[], str] | None = None  # the pre-deploy backup hook; returns a backup id
    load_gate: Callable[[str], "analysis.Verdict"] | None = None  # a short load test of the preview
    progress: Progress = field(default=lambda step: None)


class Run:
    """One deploy's record and its steps. By default the record is saved when each step
    starts and ends, so a deploy killed at any instant leaves a record the next command finds
    (and, with the driver's own view of where traffic is, knows whether the switch happened).
    `save_steps=False` saves it only at `finish` (an instant rollback: a half-written record
    would read as a deploy interrupted after its switch)."""

    def __init__(self, driver: Driver, record: DeployRecord, progress: Progress, save_steps: bool = True):
        self.driver, self.record, self.progress, self.save_steps = driver, record, progress, save_steps

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Run the `with` body as step `name`: reported through `progress` when it starts and
        ends, timed (seconds), `ok` unless the body set another status, `failed` (with the
        error as detail) when it raises; the exception propagates."""
        step = Step(name)
        self.record.steps.append(step)
        self.progress(step)
        if self.save_steps:
            self.driver.save(self.record)
        began = time.monotonic()
        try:
            yield step
            step.status = StepStatus.OK if step.status == StepStatus.RUNNING else step.status
        except KeyboardInterrupt:  # no verdict: a step cut short is judged again by the next command
            step.status, step.detail = StepStatus.INTERRUPTED, step.detail or "interrupted (Ctrl-C or SIGTERM)"
            raise
        except BaseException as exc:
            step.status = StepStatus.FAILED
            step.detail = step.detail or str(exc)
            raise
        finally:
            step.seconds = round(time.monotonic() - began, 2)
            self.progress(step)
            if self.save_steps:
                self.driver.save(self.record)

    def finish(self, outcome: Outcome, reason: str = "") -> DeployRecord:
        """Set the outcome, its reason and finished_at; save the record and return it."""
        self.record.outcome, self.record.reason, self.record.finished_at = outcome, reason, now()
        self.driver.save(self.record)
        return self.record


def unfinished(driver: Driver) -> DeployRecord | None:
    """The last deploy when it has no verdict yet (`in-progress`). Only meaningful to a caller
    holding the deploy lock (then its process is gone) or after `driver.deploy_running()`."""
    history = driver.history()
    return history[-1] if history and history[-1].outcome == Outcome.IN_PROGRESS else None


def switched(driver: Driver, record: DeployRecord) -> bool:
    """Did this deploy move traffic? Asked of the platform (router, Service), not of the record:
    a deploy killed between the switch and its next save has not written it down."""
    return record.to_color != record.from_color and driver.active_color() == record.to_color


def known_good(driver: Driver) -> tuple[str | None, str | None]:
    """(color, version) of the last release that passed post-promotion analysis and is where
    traffic must return: the previous color while a deploy that moved traffic is unresolved,
    the active color otherwise."""
    record = unfinished(driver)
    if record is not None and record.strategy != "rollback" and switched(driver, record):
        return record.from_color, record.from_version
    active = driver.active_color()
    colors = driver.colors()
    return active, (colors[active].version if active in colors else None)


# the steps that send traffic back to a record's from_color (abort and settle: "switch back";
# an instant rollback of a deploy interrupted after its switch: "return")
RETURN_STEPS = ("switch back", "return")


def went_back(driver: Driver, record: DeployRecord) -> bool:
    """Did this deploy move traffic and then return it to its previous color? Judged from its
    steps (a switch back was reached) and from the platform (traffic is on from_color): a
    process killed during or after the switch back leaves a record that says neither."""
    return (record.from_color is not None and record.to_color != record.from_color
            and any(s.name in RETURN_STEPS and s.status in (StepStatus.OK, StepStatus.RUNNING) for s in record.steps)
            and driver.active_color() == record.from_color)


def close_steps(record: DeployRecord, moved: bool, back: bool = False) -> None:
    """The steps a killed deploy left `running`: a switch the platform shows as done is ok
    (`moved`: traffic is on to_color; `back`: it went there and returned, so the switch was done
    and the switch back too), any other is failed where the process died."""
    for step in record.steps:
        if step.status not in (StepStatus.RUNNING, StepStatus.INTERRUPTED):
            continue
        if (step.name == "switch" and (moved or back)) or (step.name in RETURN_STEPS and back):
            step.status, step.detail = StepStatus.OK, f"{step.detail} (the process stopped before recording it)".strip()
        else:
            step.status, step.detail = StepStatus.FAILED, step.detail or "interrupted: the deploying process stopped"


def _brought_up(record: DeployRecord, color: str) -> bool:
    """Did this record start `color` (a deploy's bring up, reached)?"""
    return record.to_color == color and record.strategy != "rollback" and any(s.name == "bring up" for s in record.steps)


def passed_analysis(history: list[DeployRecord], color: str, release: Release) -> bool:
    """Does `color` run `release` as it passed analysis? The newest record that started
    `color` must be promoted, with the release's version and settings (so a preview a killed or
    failed deploy left with the same version but other settings never counts). A color no record
    started (the one `opsctl local up` started) counts with its version, checked by the caller."""
    for record in reversed(history):
        if _brought_up(record, color):
            return (record.outcome == Outcome.PROMOTED and record.version == release.version
                    and dict(record.settings) == dict(release.settings))
    return True


def release_of(history: list[DeployRecord], color: str, version: str | None) -> Release | None:
    """The release `color` ran when it served `version` after passing analysis: the newest
    promoted record to that color and version (image and settings); for the release `opsctl
    local up` started (no record promoted it), the image name of the records with that tag and
    no settings. None without a version."""
    if not version:
        return None
    for record in reversed(history):
        if record.outcome == Outcome.PROMOTED and record.to_color == color and record.version == version:
            return Release(record.image, dict(record.settings))
    image = next((r.image for r in reversed(history) if r.image), "worker")
    return Release(f"{Release(image).name}:{version}", {})


def make_ready(driver: Driver, env: Environment, run: "Run", color: str, release: Release | None,
               role: str = "known-good") -> None:
    """Before any switch to an earlier color (switch back, rollback, abort): `color` must run
    `release`, answer ready and have the active color's size. A stopped color (`opsctl local
    down/up` restarts only the active one; a cluster may have lost it) is started again with
    `release` and waited for (deploy.ready_timeout), as a step of `run`. Raises OperationFailed,
    with nothing switched, when it cannot be made ready or its release is unknown."""
    state = driver.colors().get(color)
    fits = state is not None and state.running and state.ready and (release is None or state.version == release.version)
    if fits and driver.switch_size(color) is None:
        return
    with run.step(f"bring back {color}") as s:
        if not fits and not (state is not None and state.running and release is not None
                             and state.version == release.version):
            if release is None:
                raise OperationFailed(f"{role} color {color} is not running and its release is unknown")
            s.detail = f"{role} {color} ({release.version}) is not running: starting it before the switch"
            driver.bring_up(color, release, env.deploy.ready_timeout)
        driver.wait_ready(color, env.deploy.ready_timeout)
        sizes = driver.switch_size(color)
        if sizes is not None:  # capacity must not drop: the active color's size first
            driver.scale(color, sizes[1])
            driver.wait_ready(color, env.deploy.ready_timeout)
        s.detail = f"{role} {color} ({release.version if release else state.version}) is running and ready"


def reap(driver: Driver, force: bool = False, overdue: bool = True) -> list[str]:
    """Finish what earlier deploys left: overdue standbys stopped, abandoned colors removed.

    Never stopped: the active color, a preview awaiting promotion, and the last known-good
    color while a deploy that moved traffic away from it has no verdict (the stable color
    stays until a newer release passed its analysis, as Argo Rollouts keeps its stable
    ReplicaSet until a rollout completes). `overdue` False keeps the warm standby of the newest
    promoted release even past its delay (rollback: it may switch to it). Call with the deploy
    lock held.
    """
    stopped = []
    close_rollback(driver)
    active = driver.active_color()
    history = driver.history()
    last = history[-1:]
    # the warm standby of the newest promoted release, unless a later deploy started that color
    promoted = next((i for i in range(len(history) - 1, -1, -1) if history[i].outcome == Outcome.PROMOTED), None)
    keep_until = {}
    if promoted is not None and history[promoted].from_color \
            and not any(_brought_up(r, history[promoted].from_color) for r in history[promoted + 1:]):
        keep_until[history[promoted].from_color] = _standby_deadline(history[promoted])
    protected = {r.to_color for r in last if r.outcome == Outcome.AWAITING_PROMOTION}
    protected |= {r.from_color for r in last if r.outcome == Outcome.IN_PROGRESS and switched(driver, r)}
    for color, state in driver.colors().items():
        if color == active or not state.running or color in protected:
            continue
        until = keep_until.get(color)
        if until is not None and (time.time() < until or not overdue) and not force:
            continue  # still the warm standby for an instant rollback
        driver.scale_down(color)
        stopped.append(color)
    for record in history:
        if record.outcome == Outcome.IN_PROGRESS and not (record is history[-1] and switched(driver, record)):
            back = record is history[-1] and went_back(driver, record)
            moved = any(s.name == "switch" and s.status == StepStatus.OK for s in record.steps)
            close_steps(record, moved=False, back=back)
            if back:  # the steps say traffic moved and came back: not "before the switch"
                record.outcome = Outcome.ROLLED_BACK
                record.reason = (f"traffic returned to {record.from_color} ({record.from_version}); the process stopped "
                                 "before recording its end; cleaned up later")
            elif moved:
                record.outcome = Outcome.INTERRUPTED
                record.reason = "the deploying process stopped after its switch; cleaned up later"
            else:
                record.outcome = Outcome.INTERRUPTED
                record.reason = "the deploying process stopped before the switch; cleaned up later"
            record.finished_at = now()
            driver.save(record)
    return stopped


def _standby_deadline(record: DeployRecord) -> float:
    """When a promoted record's old color may stop (epoch seconds). A record without
    `standby_until` (written by an older opsctl or closed after a kill) keeps it the default
    deploy.scale_down_delay from its end: None never means "stop now"."""
    if record.standby_until is not None:
        return record.standby_until
    try:
        ended = dt.datetime.fromisoformat(record.finished_at or record.started_at).timestamp()
    except (TypeError, ValueError):
        ended = time.time()
    return ended + DeploySettings.model_fields["scale_down_delay"].default


def close_rollback(driver: Driver) -> DeployRecord | None:
    """An instant rollback killed at its switch (its record, written before the switch, is
    the last and `in-progress`): done when traffic is on its color (promoted), else
    interrupted with traffic where it was. Returns the record it closed. Call with the lock."""
    history = driver.history()
    record = history[-1] if history else None
    if record is None or record.outcome != Outcome.IN_PROGRESS or record.strategy != "rollback":
        return None
    moved = driver.active_color() == record.to_color
    close_steps(record, moved=moved)
    if moved:
        record.outcome, record.reason = Outcome.PROMOTED, (f"rollback to {record.to_color} ({record.version}) "
                                                           "switched; the process stopped before recording it")
        # the color it left stays warm as after a finished rollback (rollback.py writes the
        # deadline with the intent; an older record gets the default delay from now)
        record.standby_until = record.standby_until or (
            time.time() + DeploySettings.model_fields["scale_down_delay"].default)
    else:
        record.outcome, record.reason = Outcome.INTERRUPTED, ("the rollback stopped before its switch; traffic stayed on "
                                                              f"{record.from_color}")
    record.finished_at = now()
    driver.save(record)
    return record


def settle(driver: Driver, env: Environment, opts: "Options") -> DeployRecord | None:
    """Finish a deploy that was interrupted after its switch: its post-promotion analysis runs
    now, then it is promoted or traffic returns to the known-good color. Returns that record
    (None when there was nothing to finish); raises nothing for a failed analysis, the record
    says it. Call with the deploy lock held."""
    close_rollback(driver)
    record = unfinished(driver)
    if record is None or not switched(driver, record):
        return None
    failed = _failed_verdict(record)
    close_steps(record, moved=True)
    run = Run(driver, record, opts.progress)
    if failed is None:
        with run.step("resume") as s:
            driver.switch(record.to_color)  # re-assert it: the killed process may not have recorded it
            s.detail = (f"deploy {record.id} of {record.version} was interrupted after the switch; "
                        f"finishing its post-promotion analysis ({record.from_color or 'no'} known-good color kept)")
    try:  # a failed verdict is final (killed bringing back / switching back): straight to the switch back
        return _after_switch(driver, env, run, opts, analyse=True, failed=failed)
    except OperationFailed:
        return run.record


def _failed_verdict(record: DeployRecord) -> str | None:
    """The detail of a post-promotion analysis the record already failed (None: no verdict
    against it). A failed verdict is final: resuming never re-judges it."""
    failed = [s for s in record.steps if s.name == "post-promotion analysis" and s.status == StepStatus.FAILED]
    return (failed[-1].detail or "failed") if failed else None


def _judged(analyse: Callable[[], analysis.Verdict]) -> analysis.Verdict:
    """`analyse()`, with an analysis that fails to reach a verdict (an answer it can't read, a
    bug) as a failed verdict: after the switch no verdict means back to the known-good color,
    never traffic left on a release whose checks broke (breaker 50 G5)."""
    try:
        return analyse()
    except (OperationFailed, UsageError):
        raise
    except Exception as exc:  # noqa: BLE001 - any way it fails to judge is a failed judgment
        return analysis.Verdict(False, f"the analysis could not judge the release: {type(exc).__name__}: {exc}")


def _after_switch(driver: Driver, env: Environment, run: Run, opts: "Options", analyse: bool,
                  failed: str | None = None) -> DeployRecord:
    """Post-promotion analysis on the color traffic moved to; switch back when it fails.
    `failed`: the verdict the record already holds (final: straight to the switch back)."""
    record = run.record
    previous, target = record.from_color, record.to_color
    if failed is not None or (analyse and env.deploy.analysis_window > 0):
        try:
            if failed is not None:
                raise OperationFailed(failed)
            try:
                with run.step("post-promotion analysis") as s:
                    verdict = _judged(lambda: analysis.post_promotion(
                        driver.url(target), driver.router_url(), env.deploy.analysis_window,
                        env.deploy.max_error_rate_percent, env.deploy.max_p95_ms,
                        analysis.analysis_headers(env.deploy.api_key_env)))
                    s.detail = verdict.detail
                    s.status = StepStatus.SKIPPED if verdict.skipped else s.status
                    if not verdict.ok:
                        raise OperationFailed(verdict.detail)
            except KeyboardInterrupt:
                # not a failed verdict (breaker 42 R14: promote then switched back without analysis,
                # where after a kill -9 it finishes the analysis): left as a killed deploy leaves it
                from opsctl.errors import Interrupted

                raise Interrupted(
                    f"interrupted during the post-promotion analysis of {record.version}: traffic is on {target} "
                    f"({record.version}), {previous or 'no color'} ({record.from_version or '-'}) is the known-good "
                    f"one; 'opsctl promote' finishes the analysis, 'opsctl rollback' or 'opsctl abort' returns "
                    f"traffic to {previous}") from None
        except OperationFailed as exc:
            if previous is None:
                run.finish(Outcome.FAILED, f"post-promotion analysis failed: {exc}; no previous color to return to")
                raise OperationFailed(f"post-promotion analysis failed: {exc}") from None
            switch_when_ready(
                driver, run, previous,
                lambda: make_ready(driver, env, run, previous, release_of(driver.history(), previous, record.from_version)),
                lambda why: (f"post-promotion analysis failed: {exc}; known-good {previous} cannot "
                             f"take traffic ({why}); traffic stays on {target}",
                             f"post-promotion analysis of {record.version} failed: {exc}; known-good "
                             f"{previous} cannot take traffic ({why}); traffic stays on {target}"),
                step="switch back", detail=f"router → {previous} ({record.from_version})")
            _discard(driver, target)
            run.finish(Outcome.ROLLED_BACK, f"post-promotion analysis failed: {exc}")
            raise OperationFailed(f"deploy of {record.version} rolled back to {record.from_version}: {exc}") from None
    delay = 0.0 if record.strategy == "rolling" else env.deploy.scale_down_delay
    record.standby_until = time.time() + delay if previous else None
    return run.finish(Outcome.PROMOTED, f"{target} serves {record.version}"
                      + (f"; {previous} stays warm for {delay:.0f}s" if previous and delay else ""))


def deploy(driver: Driver, env: Environment, release: Release, opts: Options) -> DeployRecord:
    """Deploy `release` to the inactive color under the deploy lock, as the module says:
    an interrupted deploy is finished or cleaned up first, then validate, backup hook, bring
    up, wait ready, pre-promotion analysis and load gate, switch (or `awaiting-promotion`
    without auto_promote), post-promotion analysis.

    Returns the saved record (outcome promoted or awaiting-promotion; `standby_until` says
    when the old color may be stopped: finish_scale_down). Raises UsageError for an unknown
    strategy, OperationFailed when the lock is held or the deploy failed: before the switch
    traffic stays where it was (record `failed`), after it traffic returns to the previous
    color (record `rolled-back`). Ctrl-C before the switch leaves the record `interrupted`.
    """
    if opts.strategy not in ("blue-green", "rolling"):
        raise UsageError(f"--strategy {opts.strategy}: use blue-green or rolling")
    with driver.lock():
        settle(driver, env, opts)
        reap(driver)
        _supersede_preview(driver)
        active = driver.active_color()
        colors = driver.colors()
        current = colors.get(active) if active else None
        serving = current is not None and current.running
        target = other(active) if serving else (active or "blue")
        record = DeployRecord(env=env.name, strategy=opts.strategy, image=release.image,
                              version=release.version, settings=release.settings, to_color=target,
                              from_color=active if serving else None,
                              from_version=current.version if serving else None)
        run = Run(driver, record, opts.progress)
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
                    verdict = _judged(lambda: analysis.pre_promotion(
                        driver.url(target), analysis.analysis_headers(env.deploy.api_key_env)))
                    s.detail = verdict.detail
                    s.status = StepStatus.SKIPPED if verdict.skipped else s.status
                    if not verdict.ok:
                        raise OperationFailed(f"pre-promotion analysis failed: {verdict.detail}")
                if opts.load_gate is not None:
                    with run.step("pre-promotion load test") as s:
                        url = driver.url(target)
                        if url is None:
                            s.status, s.detail = StepStatus.SKIPPED, "the preview color is not reachable from here"
                        else:
                            verdict = opts.load_gate(url)
                            s.detail = verdict.detail
                            if not verdict.ok:
                                raise OperationFailed(f"pre-promotion load test failed: {verdict.detail}")
        except BaseException as exc:
            _discard(driver, target)
            reason = Outcome.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else str(exc)
            run.finish(Outcome.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else Outcome.FAILED,
                       f"{reason}; traffic stays on {active or 'nothing'}")
            if isinstance(exc, OperationFailed):
                raise OperationFailed(f"deploy of {release.version} failed: {reason}; "
                                      f"traffic stays on {active} ({record.from_version})") from None
            raise
        if not opts.auto_promote and opts.strategy == "blue-green":
            return run.finish(Outcome.AWAITING_PROMOTION, f"preview {target} is ready; run 'opsctl promote'")
        return _promote(driver, env, run, opts)


def switch_when_ready(driver: Driver, run: "Run", color: str, prepare: Callable[[], None],
                      failed: Callable[[str], tuple[str | None, str]], step: str = "switch", detail: str = "") -> None:
    """Traffic moves only to a ready color: `prepare()` (e.g. make_ready, or growing a preview
    to the active size), then the router goes to `color` as step `step` of `run`, with
    `detail`. When `prepare` raises OperationFailed, the router is left alone and
    `failed(error text)` gives (the reason `run`'s record is finished FAILED with, or None to
    leave the record as it is; the one line raised as OperationFailed)."""
    try:
        prepare()
    except OperationFailed as exc:
        reason, message = failed(str(exc))
        if reason is not None:
            run.finish(Outcome.FAILED, reason)
        raise OperationFailed(message) from None
    with run.step(step) as s:
        s.detail = detail
        driver.switch(color)


def _discard(driver: Driver, color: str) -> None:
    try:
        driver.scale_down(color)
    except Exception:  # cleanup must not hide the failure that caused it
        pass


def _supersede_preview(driver: Driver) -> None:
    """A new deploy replaces a preview that was left awaiting promotion: its record says so."""
    history = driver.history()
    if history and history[-1].outcome == Outcome.AWAITING_PROMOTION:
        record = history[-1]
        record.outcome, record.reason, record.finished_at = Outcome.ABORTED, "replaced by a newer deploy", now()
        driver.save(record)


def _promote(driver: Driver, env: Environment, run: Run, opts: Options) -> DeployRecord:
    record = run.record
    sizes = driver.switch_size(record.to_color)

    def grow() -> None:  # a preview smaller than the active color: capacity must not drop
        if sizes is None:
            return
        try:
            with run.step("scale preview") as s:
                s.detail = f"{record.to_color} {sizes[0]} → {sizes[1]} replicas (the active size)"
                driver.scale(record.to_color, sizes[1])
                driver.wait_ready(record.to_color, env.deploy.ready_timeout)
        except OperationFailed:
            _discard(driver, record.to_color)
            raise

    switch_when_ready(driver, run, record.to_color, grow, lambda exc: (
        f"{exc}; traffic stays on {record.from_color or 'nothing'}",
        f"deploy of {record.version} failed: {exc}; traffic stays on {record.from_color} ({record.from_version})"),
        detail=f"router → {record.to_color} ({record.version})")
    return _after_switch(driver, env, run, opts, analyse=opts.analysis and opts.strategy == "blue-green")


def promote(driver: Driver, env: Environment, opts: Options) -> DeployRecord:
    """Switch to the preview a --no-auto-promote deploy left, then analyse it; or, when the
    last deploy was interrupted after its switch, finish its post-promotion analysis."""
    with driver.lock():
        resumed = settle(driver, env, opts)
        if resumed is not None:
            if resumed.outcome != Outcome.PROMOTED:
                raise OperationFailed(f"the interrupted deploy of {resumed.version} is {resumed.outcome}: "
                                      f"{resumed.reason}")
            return resumed
        pending = [r for r in driver.history()[-1:] if r.outcome == Outcome.AWAITING_PROMOTION]
        if not pending:
            raise UsageError("nothing awaits promotion; deploy with --no-auto-promote first")
        record = pending[0]
        if not driver.colors()[record.to_color].running:
            raise OperationFailed(f"preview {record.to_color} is no longer running; deploy again")
        try:  # a busy preview may miss one probe: give it the deploy's readiness timeout
            driver.wait_ready(record.to_color, env.deploy.ready_timeout)
        except OperationFailed as exc:
            raise OperationFailed(f"preview {record.to_color} is not ready ({exc}); deploy again") from None
        record.outcome = Outcome.IN_PROGRESS
        return _promote(driver, env, Run(driver, record, opts.progress), opts)


def abort(driver: Driver, env: Environment, opts: Options) -> DeployRecord:
    """End a deploy that awaits promotion or was interrupted: traffic on the known-good color,
    the other color stopped, the record `aborted`. Nothing to abort is a usage error."""
    with driver.lock():
        close_rollback(driver)
        history = driver.history()
        record = history[-1] if history else None
        if record is None or record.outcome not in (Outcome.AWAITING_PROMOTION, Outcome.IN_PROGRESS):
            state = f"the last deploy ({record.version}) is {record.outcome}" if record else "no deploy was recorded"
            raise UsageError(f"nothing to abort: {state}")
        moved = record.outcome == Outcome.IN_PROGRESS and switched(driver, record)
        close_steps(record, moved, back=record.outcome == Outcome.IN_PROGRESS and went_back(driver, record))
        run = Run(driver, record, opts.progress)
        good = record.from_color
        if moved:
            if good is None:
                raise OperationFailed(f"deploy {record.id} moved traffic to {record.to_color} on an environment with no "
                                      "earlier color; nothing to return to ('opsctl promote' finishes its analysis)")
            switch_when_ready(
                driver, run, good, lambda: make_ready(driver, env, run, good, release_of(driver.history(), good, record.from_version)),
                lambda exc: (None, f"nothing aborted: known-good {good} ({record.from_version}) cannot take traffic "
                                   f"({exc}); traffic stays on {record.to_color}"),
                step="switch back", detail=f"router → {good} ({record.from_version})")
        active = driver.active_color()
        with run.step("stop") as s:
            if record.to_color != active:
                driver.scale_down(record.to_color)
                s.detail = f"{record.to_color} ({record.version}) stopped"
            else:
                s.status, s.detail = StepStatus.SKIPPED, f"{record.to_color} serves traffic; nothing to stop"
        return run.finish(Outcome.ABORTED, f"aborted by 'opsctl abort'; traffic on {active or 'nothing'}"
                                     + (f" ({record.from_version})" if active == good and record.from_version else ""))


def finish_scale_down(driver: Driver, record: DeployRecord, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Wait out the scale-down delay without holding the lock (a rollback may come meanwhile)."""
    if record.outcome != Outcome.PROMOTED or not record.standby_until:
        return []
    sleep(max(0.0, record.standby_until - time.time()))
    newest = driver.history()[-1:]
    if newest and newest[0].id != record.id:
        raise Superseded(f"a newer deploy ({newest[0].id}, {newest[0].version}) started; the old color is its business")
    try:
        with driver.lock():
            return reap(driver)
    except OperationFailed:
        if driver.deploy_running():  # a newer deploy holds the lock: it reaps what is overdue
            raise Superseded("another deploy holds the deploy lock; it stops the old color") from None
        raise


class Superseded(Exception):
    """The scale-down after a deploy is skipped: a newer deploy started meanwhile and stops
    the old color itself (the message says which). Not a failure of the deploy."""
