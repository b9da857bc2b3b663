"""`opsctl deploy | promote | rollback | status | abort`: parse, call opsctl.deploy, render."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, environment

def _live_steps(title: str, quiet: bool):
    from opsctl.cli.live import status, steps_view

    return steps_view(title, quiet, lambda s: (s.name, status(s.status),
                                               f"{s.seconds:.1f}s" if s.seconds else "", s.detail))


def _driver(env_name: str):
    from opsctl.deploy.drivers import driver_for

    project, env = environment(env_name)
    return driver_for(project, env), env


def _render_record(record) -> None:
    from opsctl.output import stdout

    color = "green" if record.outcome in ("promoted", "awaiting-promotion") else (
        "yellow" if record.outcome == "aborted" else "red")
    stdout.print(f"[{color}]{record.outcome}[/{color}]: {record.version} on {record.to_color} — {record.reason}")


def deploy(
    env: EnvOpt = "local",
    image: Annotated[str, typer.Option("--image", help="Release to deploy, NAME:TAG (the tag is the version).")] = "",
    strategy: Annotated[str, typer.Option("--strategy", help="blue-green (default) or rolling.")] = "",
    set_: Annotated[list[str], typer.Option("--set", help="Worker setting KEY=VALUE (repeatable).")] = [],
    auto_promote: Annotated[bool, typer.Option("--auto-promote/--no-auto-promote",
                                               help="Switch as soon as analysis passes, or wait for 'opsctl promote'.")] = True,
    analysis: Annotated[bool, typer.Option("--analysis/--no-analysis", help="Pre- and post-promotion analysis.")] = True,
    backup: Annotated[bool, typer.Option("--backup", help="Take a database backup before deploying.")] = False,
    load_gate: Annotated[str | None, typer.Option("--load-gate", help='SLO of a short load test on the preview, e.g. "p95<5000ms,error_rate<1%".')] = None,
    load_gate_duration: Annotated[str, typer.Option("--load-gate-duration", help="How long that load test runs.")] = "10s",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait out the scale-down delay, then stop the old color.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and manifests; change nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a worker release: blue-green with health-gated promotion and automatic rollback."""
    from opsctl.deploy import bluegreen, plan
    from opsctl.deploy.model import Release
    from opsctl.errors import UsageError
    from opsctl.output import emit

    if not image:
        raise UsageError("--image is required, e.g. --image worker:1.4.0")
    release = Release.parse(image, set_)
    driver, envcfg = _driver(env)
    strategy = strategy or envcfg.deploy.strategy
    if dry_run:
        doc = plan.plan(driver, envcfg, release, strategy, auto_promote, backup, load_gate)
        emit(doc, as_json, lambda c: plan.render(c, doc))
        return
    project, _ = environment(env)
    hook = plan.backup_hook(project, envcfg) if backup else None
    gate = plan.load_gate(project, envcfg, load_gate, load_gate_duration) if load_gate else None
    with _live_steps(f"deploy {release.version} to {env}", as_json) as notify:
        opts = bluegreen.Options(strategy=strategy, auto_promote=auto_promote, analysis=analysis,
                                 backup=hook, load_gate=gate, notify=notify)
        record = bluegreen.deploy(driver, envcfg, release, opts)
    emit(record, as_json, lambda c: _render_record(record))
    if wait and record.standby_until:
        bluegreen.finish_scale_down(driver, record)


def promote(env: EnvOpt = "local", as_json: JsonOpt = False) -> None:
    """Switch traffic to the color a --no-auto-promote deploy left waiting."""
    from opsctl.deploy import bluegreen
    from opsctl.output import emit

    driver, envcfg = _driver(env)
    with _live_steps(f"promote on {env}", as_json) as notify:
        record = bluegreen.promote(driver, envcfg, bluegreen.Options(notify=notify))
    emit(record, as_json, lambda c: _render_record(record))


def abort(env: EnvOpt = "local", as_json: JsonOpt = False) -> None:
    """End a deploy that awaits promotion or was interrupted: traffic back on the known-good
    color, the other color stopped, the record 'aborted'."""
    from opsctl.deploy import bluegreen
    from opsctl.output import emit

    driver, envcfg = _driver(env)
    with _live_steps(f"abort on {env}", as_json) as notify:
        record = bluegreen.abort(driver, envcfg, bluegreen.Options(notify=notify))
    emit(record, as_json, lambda c: _render_record(record))


def rollback(
    env: EnvOpt = "local",
    to: Annotated[str | None, typer.Option("--to", help="Version to return to (default: the previous one).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait out the scale-down delay, then stop the other color.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Return traffic to the previous release: instant while its color is warm."""
    from opsctl.deploy import bluegreen, rollback as rb
    from opsctl.output import emit

    driver, envcfg = _driver(env)
    with _live_steps(f"rollback on {env}", as_json) as notify:
        record = rb.rollback(driver, envcfg, to, bluegreen.Options(notify=notify))
    emit(record, as_json, lambda c: _render_record(record))
    if wait and record.standby_until:
        bluegreen.finish_scale_down(driver, record)


def status(env: EnvOpt = "local", as_json: JsonOpt = False) -> None:
    """Active color, each color's version and readiness, and the last deploys."""
    from opsctl.deploy import rollback as rb
    from opsctl.output import emit

    driver, _ = _driver(env)
    doc = rb.status(driver)

    def render(console) -> None:
        from rich.table import Table

        console.print(f"active color: [bold]{doc['active_color']}[/bold] (driver {doc['driver']})")
        good = doc["known_good"]
        if good["color"] and good["color"] != doc["active_color"]:
            console.print(f"known-good: [bold]{good['color']}[/bold] ({good['version']}), kept warm")
        if doc["notice"]:
            from rich.markup import escape

            console.print(f"[yellow]{escape(doc['notice'])}[/yellow]", highlight=False)
        colors = Table("color", "version", "running", "ready", "url")
        for c in doc["colors"].values():
            colors.add_row(c.color, c.version or "-", str(c.running), str(c.ready), c.url or "-")
        console.print(colors)
        deploys = Table("started", "version", "color", "strategy", "outcome", "reason", title="last deploys")
        for d in doc["deploys"]:
            deploys.add_row(d["started_at"], d["version"], d["to_color"], d["strategy"], d["outcome"], d["reason"])
        console.print(deploys)

    emit(doc, as_json, render)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("status")(status)
    app.command("abort")(abort)
