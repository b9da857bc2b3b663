"""Deploy, promote, abort and rollback as one operation each: what every front door calls.

`opsctl deploy | promote | abort | rollback | status` and the runbook actions of the same
names call these functions, so both accept the same options and run the same sequence:
the environment's driver, the hooks the caller asked for (pre-deploy backup, load gate),
the blue-green algorithm (opsctl.deploy.bluegreen), the wait for the old color's
scale-down, and the notifications and maintenance window around all of it
(opsctl.health.notify.operation_window: start and end events through the environment's
sinks; the health checks the operation disturbs held while it runs).

`progress` is called with each Step (opsctl.deploy.model.Step) when it starts and when it
ends; the front door renders it. Errors: UsageError for bad input (nothing changed),
OperationFailed when the operation failed (the record says what happened to traffic).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from opsctl.config import Environment, Project
from opsctl.deploy import bluegreen
from opsctl.deploy.bluegreen import Progress
from opsctl.deploy.model import DeployRecord, Driver, Release, Step, StepStatus
from opsctl.errors import Interrupted, UsageError, not_empty


@dataclass
class DeployResult:
    """A finished deploy or rollback: its record, and the colors stopped once the scale-down
    delay had passed (empty when the caller did not wait, or nothing was left to stop)."""

    record: DeployRecord
    stopped: list[str] = field(default_factory=list)
    # said when a newer deploy or rollback took over during the scale-down wait: the record's
    # "X serves V" is then no longer where traffic is (breaker 54 F6)
    superseded: str | None = None


def _driver(project: Project, env_name: str) -> tuple[Environment, Driver]:
    from opsctl.deploy.drivers import driver_for

    env = project.env(env_name)
    return env, driver_for(project, env)


def _quiet(_step: Step) -> None:
    return None


@contextmanager
def _window(project: Project, env_name: str, operation: str, subject: str) -> Iterator:
    """Start and end events plus the maintenance window of the checks `operation` disturbs
    (HEALTH's defaults for it); a notification failure never fails the operation."""
    from opsctl.health.notify import operation_window

    with operation_window(project, env_name, operation, subject) as window:
        yield window


def _wait_scale_down(driver: Driver, record: DeployRecord, progress: Progress) -> DeployResult:
    """Wait out deploy.scale_down_delay (without the deploy lock: a rollback may come
    meanwhile), then stop the old color; reported as a `scale down` step through `progress`
    (not saved in the record: it may no longer be the newest one). The result says when a
    newer deploy or rollback took over meanwhile (`superseded`, with where traffic is now);
    Interrupted (Ctrl-C, SIGTERM) says what was done and what stays running."""
    if not record.standby_until or record.from_color is None:
        return DeployResult(record)
    until = time.strftime("%H:%M:%S", time.localtime(record.standby_until))
    step = Step("scale down", detail=f"{record.from_color} stays warm until {until} for an instant rollback")
    progress(step)
    began = time.monotonic()
    result = DeployResult(record)
    try:
        result.stopped = bluegreen.finish_scale_down(driver, record)
        step.status = StepStatus.OK
        step.detail = f"stopped {', '.join(result.stopped)}" if result.stopped else "nothing left to stop"
    except bluegreen.Superseded as note:  # not this deploy's failure: exit 0, said
        step.status, step.detail = StepStatus.SKIPPED, str(note)
        result.superseded = f"{note}; traffic is on {driver.active_color() or 'no color'} now"
    except (KeyboardInterrupt, Interrupted) as exc:
        step.status, step.detail = StepStatus.FAILED, "interrupted"
        raise Interrupted(f"interrupted while {record.from_color} stayed warm: {record.outcome} {record.version} on "
                          f"{record.to_color}, which takes the traffic; {record.from_color} keeps running until the "
                          "next deploy or rollback stops it") from exc
    except BaseException as exc:
        step.status, step.detail = StepStatus.FAILED, str(exc) or "interrupted"
        raise
    finally:
        step.seconds = round(time.monotonic() - began, 2)
        progress(step)
    return result


STRATEGIES = ("blue-green", "rolling")


@dataclass
class DeployInputs:
    """A deploy's inputs once checked (`check`): the environment, the release, the strategy
    and the load gate's callable (None without --load-gate)."""

    env: Environment
    release: Release
    strategy: str
    gate: Callable | None = None


def check(project: Project, env_name: str, image: str, *, strategy: str | None = None,
          settings: Sequence[str] = (), load_gate: str | None = None,
          load_gate_duration: str = "10s") -> DeployInputs:
    """Every input of a deploy checked, before any driver is built or anything is read or
    changed: the environment, `image` (opsctl.deploy.reference: the distribution reference
    grammar, a tag required), the `settings`, the strategy (None: the environment's) and the
    load gate's SLO and duration. `deploy` and `plan` (the dry run) both call it, so a dry
    run refuses exactly what the deploy refuses. Raises UsageError (one line)."""
    from opsctl.deploy import hooks

    if not image:
        raise UsageError("--image is required, e.g. --image worker:1.4.0")
    env = project.env(env_name)
    release = Release.parse(image, list(settings))
    strategy = not_empty(strategy, "--strategy", "give blue-green or rolling, or leave it out for the "
                                                 "environment's deploy.strategy") or env.deploy.strategy
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy {strategy}: use blue-green or rolling")
    if load_gate is not None and not load_gate.strip():
        raise UsageError("--load-gate is empty; give the SLO of the load test, e.g. "
                         "--load-gate 'p95<5000ms,error_rate<1%', or leave the option out")
    gate = hooks.load_gate(project, env, load_gate, load_gate_duration) if load_gate else None
    return DeployInputs(env, release, strategy, gate)


def deploy(project: Project, env_name: str, image: str, *, strategy: str | None = None,
           settings: Sequence[str] = (), auto_promote: bool = True, analysis: bool = True,
           backup: bool = False, load_gate: str | None = None, load_gate_duration: str = "10s",
           wait: bool = True, progress: Progress | None = None) -> DeployResult:
    """Deploy `image` (NAME:TAG, the tag is the version) to environment `env_name`.

    `strategy`: blue-green or rolling (None: the environment's deploy.strategy);
    `settings`: worker settings as "KEY=VALUE" texts (model.WORKER_SETTINGS);
    `auto_promote` False leaves the preview awaiting `promote`; `analysis` False skips pre-
    and post-promotion analysis; `backup` takes a database backup first; `load_gate` is the
    SLO of a short load test of the preview ("p95<5000ms,error_rate<1%") lasting
    `load_gate_duration` ("10s"); `wait` waits out deploy.scale_down_delay (seconds) and
    stops the old color before returning.

    Every input is checked before anything changes (`check`: UsageError). Raises
    OperationFailed when the deploy failed or was rolled back (traffic where the message says).
    """
    from opsctl.deploy import hooks

    inputs = check(project, env_name, image, strategy=strategy, settings=settings, load_gate=load_gate,
                   load_gate_duration=load_gate_duration)
    progress = progress or _quiet
    env, driver = _driver(project, env_name)
    release = inputs.release
    hook = hooks.backup_hook(project, env) if backup else None
    opts = bluegreen.Options(strategy=inputs.strategy, auto_promote=auto_promote, analysis=analysis,
                             backup=hook, load_gate=inputs.gate, progress=progress)
    with _window(project, env.name, "deploy", release.image) as window:
        record = bluegreen.deploy(driver, env, release, opts)
        window.outcome = record.outcome
        return _wait_scale_down(driver, record, progress) if wait else DeployResult(record)


def plan(project: Project, env_name: str, image: str, *, strategy: str | None = None,
         settings: Sequence[str] = (), auto_promote: bool = True, backup: bool = False,
         load_gate: str | None = None, load_gate_duration: str = "10s") -> dict:
    """`deploy --dry-run`: what `deploy` with these options would do now, changing nothing
    (opsctl.deploy.plan.plan's document). Its inputs are checked by the deploy's own `check`,
    so it refuses (UsageError) exactly what `deploy` refuses."""
    from opsctl.deploy import plan as plan_mod

    inputs = check(project, env_name, image, strategy=strategy, settings=settings, load_gate=load_gate,
                   load_gate_duration=load_gate_duration)
    env, driver = _driver(project, env_name)
    return plan_mod.plan(driver, env, inputs.release, inputs.strategy, auto_promote, backup, load_gate)


def promote(project: Project, env_name: str, *, wait: bool = True, progress: Progress | None = None) -> DeployResult:
    """Switch traffic to the preview a deploy with auto_promote False left, then analyse it;
    or finish the post-promotion analysis of a deploy interrupted after its switch. `wait` as
    for `deploy`: wait out deploy.scale_down_delay, then stop the old color (breaker 53 F6:
    promote said the old color "stays warm for 5s" and left it running until the next deploy,
    the GPU fleet doubled). Raises UsageError when nothing awaits promotion, OperationFailed
    when it failed."""
    progress = progress or _quiet
    env, driver = _driver(project, env_name)
    with _window(project, env.name, "promote", "the preview awaiting promotion") as window:
        record = bluegreen.promote(driver, env, bluegreen.Options(progress=progress))
        window.outcome = record.outcome
        return _wait_scale_down(driver, record, progress) if wait else DeployResult(record)


def abort(project: Project, env_name: str, *, progress: Progress | None = None) -> DeployRecord:
    """End a deploy that awaits promotion or was interrupted: traffic on the known-good
    color, the other color stopped, the record `aborted`. Raises UsageError when there is
    nothing to abort."""
    env, driver = _driver(project, env_name)
    with _window(project, env.name, "abort", "the unfinished deploy") as window:
        record = bluegreen.abort(driver, env, bluegreen.Options(progress=progress or _quiet))
        window.outcome = record.outcome
    return record


def rollback(project: Project, env_name: str, to: str | None = None, *, wait: bool = True,
             progress: Progress | None = None) -> DeployResult:
    """Return traffic to version `to` (None: the previous one): instant while its color is
    warm, a full analysed deploy of the kept release otherwise (opsctl.deploy.rollback).
    `wait` as for `deploy`. Raises UsageError, before anything is read, when `to` is empty
    or cannot be a version (an image tag), and when there is nothing to return to."""
    from opsctl.deploy import reference
    from opsctl.deploy import rollback as rollback_mod

    if to is not None:
        reference.version(to, "--to")
    progress = progress or _quiet
    env, driver = _driver(project, env_name)
    with _window(project, env.name, "rollback", f"to {to or 'the previous version'}") as window:
        record = rollback_mod.rollback(driver, env, to, bluegreen.Options(progress=progress))
        window.outcome = record.outcome
        return _wait_scale_down(driver, record, progress) if wait else DeployResult(record)


def status(project: Project, env_name: str, last: int = 10) -> dict:
    """Where traffic is, each color and the last `last` deploys (opsctl.deploy.status)."""
    from opsctl.deploy import status as status_mod

    _env, driver = _driver(project, env_name)
    return status_mod.status(driver, last)
