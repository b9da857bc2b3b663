"""Commands about opsctl itself: version, doctor, init."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.cli.common import EnvOpt, JsonOpt


def version(as_json: JsonOpt = False) -> None:
    """Show opsctl's version, Python's and the key libraries'."""
    from opsctl.about import versions
    from opsctl.output import emit

    info = versions()

    def render(console):
        from rich.text import Text

        from opsctl.cli.tables import print_whole

        console.print(Text(f"opsctl {info['opsctl']} (Python {info['python']}, {info['platform']})"))
        print_whole(console, ["library", "version"],
                    [[name, ver or "not installed"] for name, ver in info["libraries"].items()])

    emit(info, as_json, render)


def doctor(as_json: JsonOpt = False) -> None:
    """Check everything the other commands need, with a fix for each missing piece."""
    from opsctl.cli.common import globals_
    from opsctl.doctor import run_checks
    from opsctl.output import emit

    report = run_checks(globals_().root)  # --root selects whose backup repositories are checked

    def render(console):
        from opsctl.cli.tables import print_whole

        print_whole(console, ["check", "status", "detail", "fix"],
                    [[c.name, c.status, c.detail, c.fix or "-"] for c in report.checks], wrap="detail")

    emit({"ok": report.ok, "checks": report.checks}, as_json, render)
    if not report.ok:
        raise typer.Exit(1)


def init(
    path: Annotated[str | None, typer.Argument(help="Folder to make an ops root (default: the current one).",
                                               show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing opsctl.yaml.")] = False,
) -> None:
    """Write a commented starter opsctl.yaml."""
    from opsctl.output import stdout
    from opsctl.starter import write_starter

    written = write_starter(path, force=force)
    stdout.print(f"wrote {written}; edit it, then run 'opsctl doctor'")


config_app = typer.Typer(help="Show the configuration opsctl resolved from opsctl.yaml.", no_args_is_help=True)


@config_app.command("show")
def config_show(env_name: EnvOpt = "local", as_json: JsonOpt = False) -> None:
    """Print one environment as opsctl sees it, defaults filled in, no secret (config.shown)."""
    import yaml

    from opsctl.cli.common import environment
    from opsctl.config import shown
    from opsctl.output import emit

    project, env = environment(env_name)
    doc = shown(env)
    emit(doc, as_json, lambda console: console.print(
        f"# {project.root / 'opsctl.yaml'}\n" + yaml.safe_dump(doc, sort_keys=False)))


def register(app: typer.Typer) -> None:
    app.command("version")(version)
    app.command("doctor")(doctor)
    app.command("init")(init)
    app.add_typer(config_app, name="config")
