"""`opsctl deploy | promote | rollback | status | abort`: parse, call opsctl.deploy, render."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, project


@contextmanager
def _live_steps(title: str, quiet: bool):
    """The live step table, with SIGTERM as an interrupt: CI cancels a job with SIGTERM, and
    the core function must then leave its operation window (end event sent, silences and the
    lease released) exactly as after Ctrl-C, not die inside it."""
    from opsctl.cli.live import status, steps_view
    from opsctl.signals import sigterm_as_interrupt

    with sigterm_as_interrupt(), steps_view(title, quiet, lambda s: (s.name, status(s.status),
                                                                     f"{s.seconds:.1f}s" if s.seconds else "",
                                                                     s.detail)) as progress:
        yield progress


def _render_record(record) -> None:
    from opsctl.deploy.model import Outcome
    from opsctl.output import stdout

    color = "green" if record.outcome in (Outcome.PROMOTED, Outcome.AWAITING_PROMOTION) else (
        "yellow" if record.outcome == Outcome.ABORTED else "red")
    from rich.text import Text

    stdout.print(Text.assemble((str(record.outcome), color), f": {record.version} on {record.to_color} — {record.reason}"))


def _emit_result(result, as_json: bool) -> None:
    """A deploy, promote or rollback's record, then (on stderr, in both modes) what took over
    while it waited to stop the old color: its "X serves V" is no longer where traffic is."""
    from opsctl.output import emit, stderr

    emit(result.record, as_json, lambda c: _render_record(result.record))
    if result.superseded:
        stderr.print(f"then: {result.superseded}", markup=False)


def deploy(
    env_name: EnvOpt = "local",
    image: Annotated[str, typer.Option("--image", help="Release to deploy, NAME:TAG (the tag is the version).")] = "",
    strategy: Annotated[str | None, typer.Option("--strategy", help="blue-green or rolling (default: the env's deploy.strategy).")] = None,
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
    from opsctl.deploy import operation, plan
    from opsctl.output import emit

    if dry_run:
        doc = operation.plan(project(), env_name, image, strategy=strategy, settings=set_,
                             auto_promote=auto_promote, backup=backup, load_gate=load_gate,
                             load_gate_duration=load_gate_duration)
        emit(doc, as_json, lambda c: plan.render(c, doc))
        return
    with _live_steps(f"deploy {image} to {env_name}", as_json) as progress:
        result = operation.deploy(project(), env_name, image, strategy=strategy, settings=set_,
                                  auto_promote=auto_promote, analysis=analysis, backup=backup,
                                  load_gate=load_gate, load_gate_duration=load_gate_duration, wait=wait,
                                  progress=progress)
    _emit_result(result, as_json)


def promote(
    env_name: EnvOpt = "local",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait out the scale-down delay, then stop the old color.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Switch traffic to the color a --no-auto-promote deploy left waiting."""
    from opsctl.deploy import operation

    with _live_steps(f"promote on {env_name}", as_json) as progress:
        result = operation.promote(project(), env_name, wait=wait, progress=progress)
    _emit_result(result, as_json)


def abort(env_name: EnvOpt = "local", as_json: JsonOpt = False) -> None:
    """End a deploy that awaits promotion or was interrupted: traffic back on the known-good
    color, the other color stopped, the record 'aborted'."""
    from opsctl.deploy import operation
    from opsctl.output import emit

    with _live_steps(f"abort on {env_name}", as_json) as progress:
        record = operation.abort(project(), env_name, progress=progress)
    emit(record, as_json, lambda c: _render_record(record))


def rollback(
    env_name: EnvOpt = "local",
    to: Annotated[str | None, typer.Option("--to", help="Version to return to (default: the previous one).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait out the scale-down delay, then stop the other color.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Return traffic to the previous release: instant while its color is warm."""
    from opsctl.deploy import operation

    with _live_steps(f"rollback on {env_name}", as_json) as progress:
        result = operation.rollback(project(), env_name, to, wait=wait, progress=progress)
    _emit_result(result, as_json)


def status(env_name: EnvOpt = "local", as_json: JsonOpt = False) -> None:
    """Active color, each color's version and readiness, and the last deploys."""
    from opsctl.deploy import operation
    from opsctl.output import emit

    doc = operation.status(project(), env_name)

    def render(console) -> None:
        from rich.text import Text

        from opsctl.cli.tables import print_whole, print_words

        console.print(Text.assemble("active color: ", (str(doc["active_color"]), "bold"), f" (driver {doc['driver']})"))
        good = doc["known_good"]
        if good["color"] and good["color"] != doc["active_color"]:
            console.print(Text.assemble("known-good: ", (good["color"], "bold"), f" ({good['version']}), ",
                                        "kept warm" if doc.get("known_good_warm") else ("not running", "red")))
        if doc["notice"]:  # a sentence: wrapped between words (the console soft-wraps: a pipe got it whole)
            print_words(console, doc["notice"], style="yellow")
        print_whole(console, ["color", "version", "running", "ready", "url"],
                    [[c.color, c.version or "-", "yes" if c.running else "no", "yes" if c.ready else "no", c.url or "-"]
                     for c in doc["colors"].values()], optional=["url"])
        print_whole(console, ["started", "id", "version", "to", "strategy", "outcome", "reason"],
                    [[d["started_at"], d["id"], d["version"], d["to_color"], d["strategy"], str(d["outcome"]),
                      d["reason"]] for d in doc["deploys"]],
                    wrap="reason", optional=["id", "strategy"], title="last deploys", min_wrap=12)

    emit(doc, as_json, render)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("status")(status)
    app.command("abort")(abort)
