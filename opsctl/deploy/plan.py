"""`deploy --dry-run`: the steps and the manifests a deploy would apply, with no change made."""

from __future__ import annotations

from opsctl.config import Environment
from opsctl.deploy.model import Driver, Release, other
from opsctl.errors import OpsError


def plan(driver: Driver, env: Environment, release: Release, strategy: str, auto_promote: bool,
         backup: bool = False, load_gate: str | None = None) -> dict:
    """What a deploy of `release` would do now: reads the driver's colors (OpsError, with a
    hint to `opsctl render manifests`, when the platform cannot be reached), changes nothing.

    Returns {env, driver, strategy, version, image, settings, active_color, target_color,
    steps: [one line each], manifests: the text the driver would apply}.
    """
    try:
        active = driver.active_color()
        colors = driver.colors()
    except OpsError as exc:  # the plan depends on the cluster; the manifests alone do not
        raise type(exc)(f"{exc}; without a cluster, 'opsctl render manifests --env {env.name} --image "
                        f"{release.image}' shows what would be applied") from None
    serving = bool(active and colors[active].running)
    target = other(active) if serving else (active or "blue")
    d = env.deploy
    preview = ""
    if driver.name == "kubernetes" and serving:  # bring_up's size for both strategies (what `manifests` shows)
        preview = f" at {driver.preview_size()} replica(s) (deploy.preview_replicas)"
    steps = ["validate", "lock"] + (["pre-deploy database backup"] if backup else []) + [
        f"bring up {target} with {release.version}{preview} (active {active} untouched)",
        f"wait ready (timeout {d.ready_timeout:.0f}s)"]
    if strategy == "blue-green":
        steps.append("pre-promotion analysis on the preview color: /readyz and a sample transcription "
                     "(recorded as skipped where the preview is not reachable from here)")
        if load_gate:
            steps.append(f"pre-promotion load test on the preview color, gated by {load_gate}")
        if preview:
            steps.append(f"scale {target} to the active color's size and wait ready (capacity never drops)")
        steps.append(f"switch the router to {target}" if auto_promote else "wait for 'opsctl promote'")
        steps.append(f"post-promotion analysis for {d.analysis_window:.0f}s: error rate ≤ "
                     f"{d.max_error_rate_percent}%, p95 ≤ {d.max_p95_ms:.0f} ms; switch back on failure")
        if serving:
            steps.append(f"keep {active} warm {d.scale_down_delay:.0f}s for instant rollback, then stop it")
    else:
        if preview:
            steps.append(f"scale {target} to the active color's size and wait ready (capacity never drops)")
        steps += [f"switch the router to {target}", f"stop {active}" if serving else "nothing to stop"]
    return {"env": env.name, "driver": driver.name, "strategy": strategy, "version": release.version,
            "image": release.image, "settings": release.settings, "active_color": active,
            "target_color": target, "steps": steps, "manifests": driver.render(release, target)}


def render(console, doc: dict) -> None:
    """Print `plan`'s document for a person: the numbered steps, then the manifests."""
    from rich.text import Text

    console.print(Text.assemble(("plan", "bold"), f": deploy {doc['version']} to {doc['env']} ({doc['strategy']}, "
                                f"driver {doc['driver']}); nothing will be changed"))
    for n, step in enumerate(doc["steps"], 1):
        console.print(f"  {n}. {step}")
    console.print(doc["manifests"], markup=False, highlight=False)
