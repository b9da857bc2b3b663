"""`opsctl local`: the embedded platform's front door. Parses, calls opsctl.local, renders."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.cli.common import JsonOpt, YesOpt, project

app = typer.Typer(help="The embedded platform on this machine: up, down, status, logs.",
                  no_args_is_help=True)


@app.command()
def up(as_json: JsonOpt = False) -> None:
    """Start (or repair) PostgreSQL, Redis, S3, the worker and the router on 127.0.0.1."""
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from opsctl.local import platform
    from opsctl.output import emit, stderr, stop_live

    steps: dict[str, Text] = {}

    def table() -> Table:
        t = Table("component", "state", box=None)
        # the archiver and a known-good worker kept warm come after the five, when `up` reaches them
        for name in dict.fromkeys([*platform.ORDER, *steps]):
            t.add_row(name, steps.get(name, Text("waiting", style="dim")))
        return t

    styles = {"checking": Text("checking…", style="cyan"), "starting": Text("starting…", style="yellow"),
              "ok": Text("started", style="green"), "kept": Text("running (kept)", style="green"),
              "waiting": Text("not started (see the warning)", style="yellow")}
    live = Live(table(), console=stderr, transient=as_json, refresh_per_second=8)
    live.start()
    try:
        def progress(component: str, state: str) -> None:
            steps[component] = styles[state]
            live.update(table())

        result = platform.up(project(), progress=progress)
    finally:
        stop_live(live)
    emit(result, as_json, lambda c: c.print(Text.assemble("platform up: router on ", (result.router_url, "bold"),
                                                          f" (started: {', '.join(result.started) or 'nothing'})")))


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Each component: PID, port, health, version. Exit 1 when one is unhealthy."""
    from opsctl.local import platform
    from opsctl.output import emit

    rows = platform.status(project())

    def render(console):
        from opsctl.cli.tables import print_whole

        print_whole(console, ["component", "pid", "port", "healthy", "version", "note"],
                    [[r.name, str(r.pid or "-"), str(r.port or "-"), "yes" if r.healthy else "no", r.version or "-",
                      r.note] for r in rows], wrap="note", min_wrap=12)

    emit({"healthy": all(r.healthy for r in rows), "components": rows}, as_json, render)
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


@app.command()
def logs(
    component: Annotated[str, typer.Argument(help="postgres, redis, s3, router, worker (the active color), worker-blue or worker-green")] = "worker",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines to show.")] = 50,
) -> None:
    """Print a component's log (with --follow, until Ctrl-C: exit 130)."""
    from opsctl.local import platform
    from opsctl.output import visible

    # Ctrl-C ends a follow as it ends every command: exit 130 (reviewer 39 R11: it exited 0,
    # so a wrapper could not tell a stop from the end of the log)
    for line in platform.logs(project(), component, lines, keep_following=follow):
        typer.echo(visible(line))  # a request path or an S3 key in a log can hold an ESC sequence


@app.command()
def down(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete all data (databases, objects, logs).")] = False,
    yes: YesOpt = False,
    confirm_env: Annotated[list[str] | None, typer.Option(
        "--confirm-env", metavar="NAME", help="With --purge: the name of each protected environment the local "
                                              "platform serves (platform: local); repeat it for each. CI needs it.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop the processes `up` started (gracefully, then forcefully); keep the data.

    `--purge` deletes the data of every environment with `platform: local` (one database,
    Redis and S3 serve them all, the backup repositories there too): each protected one needs
    its name (--confirm-env NAME, repeated, or typed at a terminal), never --yes alone."""
    from opsctl.approval import purge_approval
    from opsctl.local import platform
    from opsctl.output import emit

    proj = project()
    stopped = platform.down(proj, purge=purge, approve=purge_approval(proj, yes, confirm_env, purge))
    emit({"stopped": stopped, "purged": purge}, as_json,
         lambda c: c.print(f"stopped: {', '.join(stopped) or 'nothing was running'}"
                           + ("; data deleted" if purge else "; data kept")))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="local")
