"""Rollback: instant while the previous color is warm, a redeploy of a kept version otherwise."""

from __future__ import annotations

import time

from opsctl.config import Environment
from opsctl.deploy import bluegreen
from opsctl.deploy.model import DeployRecord, Driver, Outcome, Release, other
from opsctl.errors import UsageError


def kept_releases(driver: Driver, keep: int) -> list[Release]:
    """The last `keep` distinct versions that served, newest first, with their settings.

    A deploy's `from_version` counts too, so the release that was running before the first
    recorded deploy (the one `opsctl local up` started) can be returned to.
    """
    seen: dict[str, Release] = {}
    history = driver.history()
    for record in reversed(history):
        if record.outcome == Outcome.PROMOTED and record.version not in seen:
            seen[record.version] = Release(record.image, record.settings)
        if record.from_version and record.from_version not in seen:
            # the settings it passed analysis with, when a record promoted it to that color
            release = bluegreen.release_of(history, record.from_color or "", record.from_version)
            seen[record.from_version] = release or Release(f"{Release(record.image).name}:{record.from_version}", {})
    return list(seen.values())[:keep]


def rollback(driver: Driver, env: Environment, to_version: str | None,
             opts: bluegreen.Options) -> DeployRecord:
    """Return traffic to `to_version` (None: the previous version): an instant switch to the
    warm standby color when it runs that version, else a full blue-green deploy of the kept
    release. A deploy interrupted after its switch is undone first (traffic back on its
    known-good color). Raises UsageError when there is nothing to return to, OperationFailed
    when the deploy lock is held or the redeploy fails."""
    with driver.lock():
        interrupted = bluegreen.unfinished(driver)
        if interrupted is not None and interrupted.strategy != "rollback" and bluegreen.switched(driver, interrupted) \
                and to_version in (None, interrupted.from_version):
            return _return_to_known_good(driver, env, interrupted, opts)
        # a deploy killed before its switch left a preview that never passed analysis: clean up first
        bluegreen.reap(driver, overdue=False)
        active = driver.active_color()
        colors = driver.colors()
        current = colors[active] if active else None
        releases = kept_releases(driver, env.deploy.keep_versions)
        if to_version is None:
            older = [r for r in releases if current is None or r.version != current.version]
            if not older:
                raise UsageError("no earlier version in the deploy history to roll back to")
            wanted = older[0]
        else:
            matches = [r for r in releases if r.version == to_version]
            if not matches:
                kept = ", ".join(r.version for r in releases) or "none"
                raise UsageError(f"version {to_version} is not among the last {env.deploy.keep_versions} "
                                 f"deployed versions ({kept}); deploy it with 'opsctl deploy --image'")
            wanted = matches[0]
        if current is not None and current.version == wanted.version:
            raise UsageError(f"{wanted.version} is already serving on {active}")
        standby = colors.get(other(active))
        # the standby is the release that passed analysis (version and settings), not whatever
        # runs there with that version (a killed deploy's preview)
        if standby is not None and standby.running and standby.ready and standby.version == wanted.version \
                and bluegreen.passed_analysis(driver.history(), standby.color, wanted):
            record = DeployRecord(env=env.name, strategy="rollback", image=wanted.image,
                                  version=wanted.version, settings=wanted.settings,
                                  to_color=standby.color, from_color=active,
                                  from_version=current.version if current else None,
                                  standby_until=time.time() + env.deploy.scale_down_delay)
            # the intent is saved before the switch, with the standby's deadline: killed at it,
            # the next command closes the record from where traffic is (bluegreen.close_rollback)
            run = bluegreen.Run(driver, record, opts.progress)
            bluegreen.switch_when_ready(
                driver, run, standby.color, lambda: bluegreen.make_ready(driver, env, run, standby.color, wanted, role="warm"),
                lambda exc: (f"warm {standby.color} cannot take traffic ({exc}); traffic stays on {active}",
                             f"rollback to {wanted.version} failed: warm {standby.color} cannot take traffic "
                             f"({exc}); traffic stays on {active}"),
                detail=f"router → warm {standby.color} ({wanted.version})")
            record.standby_until = time.time() + env.deploy.scale_down_delay
            return run.finish(Outcome.PROMOTED, f"instant rollback to warm {standby.color}")
    # the previous color is gone: a full, analysed blue-green deploy of the kept release
    return bluegreen.deploy(driver, env, wanted, opts)


def _return_to_known_good(driver: Driver, env: Environment, interrupted: DeployRecord,
                           opts: bluegreen.Options) -> DeployRecord:
    """A deploy moved traffic and was killed before its verdict: back to the color it left, now."""
    good = interrupted.from_color
    if good is None:
        raise UsageError(f"deploy {interrupted.id} of {interrupted.version} was interrupted after moving traffic, "
                         "and there is no earlier color to return to; 'opsctl promote' finishes its analysis")
    history = driver.history()
    release = bluegreen.release_of(history, good, interrupted.from_version)
    record = DeployRecord(env=env.name, strategy="rollback", image=release.image if release else interrupted.image,
                          version=interrupted.from_version or "unknown",
                          settings=dict(release.settings) if release else {}, to_color=good,
                          from_color=interrupted.to_color, from_version=interrupted.version)
    run = bluegreen.Run(driver, record, opts.progress, save_steps=False)
    bluegreen.close_steps(interrupted, moved=True)
    # the intent goes into the interrupted record first: killed during the switch, its steps
    # say traffic was being returned (bluegreen.went_back), never "before the switch"
    intent = bluegreen.Run(driver, interrupted, opts.progress)
    bluegreen.switch_when_ready(
        driver, intent, good, lambda: bluegreen.make_ready(driver, env, intent, good, release),
        lambda exc: (None, f"nothing rolled back: known-good {good} ({interrupted.from_version}) cannot take "
                           f"traffic ({exc}); traffic stays on {interrupted.to_color}"),
        step="return", detail=f"'opsctl rollback': router → known-good {good} ({interrupted.from_version})")
    with run.step("switch") as s:
        s.detail = (f"router → known-good {good} ({interrupted.from_version}); deploy "
                    f"{interrupted.id} of {interrupted.version} was interrupted after its switch")
    interrupted.outcome, interrupted.finished_at = Outcome.ROLLED_BACK, record.started_at
    interrupted.reason = f"interrupted after the switch; 'opsctl rollback' returned traffic to {good}"
    driver.save(interrupted)
    record.standby_until = time.time() + env.deploy.scale_down_delay
    return run.finish(Outcome.PROMOTED, f"instant rollback to known-good {good}")
