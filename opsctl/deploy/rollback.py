"""Rollback: instant while the previous color is warm, a redeploy of a kept version otherwise."""

from __future__ import annotations

import time

from opsctl.config import Environment
from opsctl.deploy import bluegreen
from opsctl.deploy.model import DeployRecord, Driver, Release, Step, other
from opsctl.errors import UsageError


def kept_releases(driver: Driver, keep: int) -> list[Release]:
    """The last `keep` distinct versions that served, newest first, with their settings.

    A deploy's `from_version` counts too, so the release that was running before the first
    recorded deploy (the one `opsctl local up` started) can be returned to.
    """
    seen: dict[str, Release] = {}
    for record in reversed(driver.history()):
        if record.outcome == "promoted" and record.version not in seen:
            seen[record.version] = Release(record.image, record.settings)
        if record.from_version and record.from_version not in seen:
            name = record.image.rsplit(":", 1)[0] if ":" in record.image.rsplit("/", 1)[-1] else record.image
            seen[record.from_version] = Release(f"{name}:{record.from_version}", {})
    return list(seen.values())[:keep]


def rollback(driver: Driver, env: Environment, to_version: str | None,
             opts: bluegreen.Options) -> DeployRecord:
    with driver.lock():
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
        if standby is not None and standby.ready and standby.version == wanted.version:
            record = DeployRecord(env=env.name, strategy="rollback", image=wanted.image,
                                  version=wanted.version, settings=wanted.settings,
                                  to_color=standby.color, from_color=active,
                                  from_version=current.version if current else None)
            step = Step("switch", detail=f"router → warm {standby.color} ({wanted.version})")
            opts.notify(step)
            began = time.monotonic()
            driver.switch(standby.color)
            step.status, step.seconds = "ok", round(time.monotonic() - began, 3)
            opts.notify(step)
            record.steps.append(step)
            record.standby_until = time.time() + env.deploy.scale_down_delay
            record.outcome, record.reason = "promoted", f"instant rollback to warm {standby.color}"
            record.finished_at = record.started_at
            driver.save(record)
            return record
    # the previous color is gone: a full, analysed blue-green deploy of the kept release
    return bluegreen.deploy(driver, env, wanted, opts)


def status(driver: Driver, last: int = 10) -> dict:
    history = driver.history()
    return {
        "driver": driver.name,
        "active_color": driver.active_color(),
        "colors": driver.colors(),
        "awaiting_promotion": next((r.to_color for r in history[-1:] if r.outcome == "awaiting-promotion"), None),
        "deploys": [{k: v for k, v in r.to_dict().items() if k != "steps"} for r in reversed(history[-last:])],
    }
