"""`opsctl infra`: the environment's Pulumi stack (parses, calls opsctl.infra, renders)."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt, YesOpt

infra_app = typer.Typer(help="Provision the cloud environment with Pulumi (the program in stacks/).",
                        no_args_is_help=True)

ConfirmEnvOpt = Annotated[str | None, typer.Option(
    "--confirm-env", metavar="NAME", help="The environment's name, to destroy a protected one without a prompt.")]


def _summary_line(result) -> str:
    verbs = {"preview": "would change", "up": "changed", "destroy": "destroyed", "refresh": "refreshed"}
    parts = [f"{n} {op}" for op, n in sorted(result.changes.items()) if op != "same"]
    same = result.changes.get("same", 0)
    body = ", ".join(parts) if parts else "no changes"
    return (f"{result.environment} (stack {result.stack}): pulumi {result.operation} {verbs[result.operation]} "
            f"{body}{f'; {same} unchanged' if same else ''} in {result.duration_seconds:.1f}s")


def _render_result(result):
    def render(console):
        from rich.table import Table

        console.print(_summary_line(result), markup=False, highlight=False)
        if result.steps:
            table = Table("op", "type", "name", "status", box=None)
            for step in result.steps:
                table.add_row(step["op"], step["type"], step["name"], step["status"])
            console.print(table)
        if result.outputs:
            _outputs_table(console, result.outputs)
    return render


def _outputs_table(console, values: dict) -> None:
    from rich.table import Table

    table = Table("output", "value", box=None)
    for key, value in values.items():
        text = str(value)
        if len(text) > 80:
            text = f"{text[:60]}… ({len(text)} chars; --json shows it whole)"
        table.add_row(key, text)
    console.print(table)


def _watch(environ):
    """The live view of each pulumi operation, on stderr: a core operation's `watch`."""
    from opsctl.infra.events import LiveView

    return lambda operation: LiveView(f"pulumi {operation} · {environ.name}")


def _operate(env: str, operation: str, as_json: bool):
    from opsctl import infra
    from opsctl.cli.common import environment

    from opsctl.signals import sigterm_as_interrupt

    project, environ = environment(env)
    with sigterm_as_interrupt(), _watch(environ)(operation) as listener:
        return infra.run(project, environ, operation, on_event=listener)


@infra_app.command("preview")
def preview(env: EnvOpt, as_json: JsonOpt = False) -> None:
    """Show what `up` would change; runs the policy checks first."""
    from opsctl.output import emit

    result = _operate(env, "preview", as_json)
    emit(result, as_json, _render_result(result))


@infra_app.command("up")
def up(env: EnvOpt, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Create or update the environment. At a terminal without --yes: preview, then ask."""
    from opsctl import approval, infra, output
    from opsctl.cli.common import environment

    from opsctl.signals import sigterm_as_interrupt

    project, environ = environment(env)
    with sigterm_as_interrupt():  # a CI cancel cancels pulumi as Ctrl-C does (opsctl.infra.cancel)
        result = infra.up(project, environ, approve=infra.terminal_approval("up", environ, yes),
                          preview_first=not yes and approval.is_interactive(), watch=_watch(environ),
                          on_preview=lambda planned: _render_result(planned)(output.stderr))
    # a preview that would change nothing is the result; it is on stderr already
    output.emit(result, as_json, _render_result(result) if result.operation == "up" else lambda console: None)


@infra_app.command("destroy")
def destroy(env: EnvOpt, yes: YesOpt = False, confirm_env: ConfirmEnvOpt = None, as_json: JsonOpt = False) -> None:
    """Delete every resource of the environment. Protected ones need their name typed
    (or --confirm-env NAME with --yes in CI); production's database and cluster also keep
    AWS deletion protection, which must be turned off in the program first."""
    from opsctl import infra
    from opsctl.cli.common import environment
    from opsctl.output import emit

    from opsctl.signals import sigterm_as_interrupt

    project, environ = environment(env)
    with sigterm_as_interrupt():
        result = infra.destroy(project, environ, approve=infra.terminal_approval("destroy", environ, yes, confirm_env),
                               watch=_watch(environ))
    emit(result, as_json, _render_result(result))


@infra_app.command("refresh")
def refresh(env: EnvOpt, as_json: JsonOpt = False) -> None:
    """Update the stack's state from what exists in AWS (changes no resource)."""
    from opsctl.output import emit

    result = _operate(env, "refresh", as_json)
    emit(result, as_json, _render_result(result))


@infra_app.command("outputs")
def outputs(env: EnvOpt, as_json: JsonOpt = False) -> None:
    """The stack's outputs other commands read (secret values masked)."""
    from opsctl import infra
    from opsctl.cli.common import environment
    from opsctl.output import emit

    project, environ = environment(env)
    result = infra.outputs(project, environ)

    def render(console):
        console.print(f"{result.environment} (stack {result.stack})", markup=False)
        _outputs_table(console, result.outputs)
        if result.missing:
            console.print(f"not exported yet: {', '.join(result.missing)} (run 'opsctl infra up --env {env}')",
                          markup=False)

    emit(result, as_json, render)


@infra_app.command("policy")
def policy(env: EnvOpt, as_json: JsonOpt = False) -> None:
    """Check the program's resources against the platform's rules, offline (no cloud, no CLI)."""
    from dataclasses import asdict

    from opsctl import infra
    from opsctl.cli.common import environment
    from opsctl.output import emit

    project, environ = environment(env)
    result = infra.check_policy(project, environ)

    def render(console):
        if result.ok:
            console.print(f"{result.environment} (stack {result.stack}): {result.resources} resources, "
                          "every policy passes", markup=False)
        for violation in result.violations:
            console.print(violation, markup=False, highlight=False)

    emit({"ok": result.ok, **asdict(result)}, as_json, render)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(infra_app, name="infra")
