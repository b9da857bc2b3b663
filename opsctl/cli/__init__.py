"""The Typer front door: parses, calls a core function, renders. No logic of its own.

Errors from the core become one line on stderr and an exit code here, in `OpsGroup.main`,
so the console script and Typer's CliRunner behave the same.
"""

from __future__ import annotations

import io
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from opsctl.cli import common
from opsctl.cli.common import click_errors


def _fail(message: str, code: int, masked: bool = False) -> int:
    from opsctl.output import visible
    from opsctl.redact import credentials  # a driver's or child's error may repeat a password

    sys.stderr.write(f"opsctl: error: {visible(message if masked else credentials(message))}\n")
    return code


class _Discarded(io.FileIO):
    """/dev/null standing in for a stdout the process was started without, noting whether
    anything was sent there (`written`): under the text stream and its buffer, so a write
    through either (print, Rich, click.echo of bytes) is seen once flushed."""

    written = False

    def write(self, data: Any) -> int:
        if len(data):
            self.written = True
        return super().write(data)


_discarded_stdout: _Discarded | None = None


def _closed_streams_to_devnull() -> None:
    """A process started with stdout or stderr closed (`>&-`) has None there, and every write
    ended in "unexpected AttributeError" (breaker 38 H11): the command still does its work,
    and what it would print goes to /dev/null. A closed stderr stays quiet (logs and errors
    are not the result). Output sent to a closed stdout is lost, so `main` fails the command
    (exit 1, one line) as a full /dev/full does: it exited 0 and a script's `opsctl backup
    list --json >&-` went on without the catalog it asked for. A command that printed nothing
    there (it wrote files) exits by its own result (_Discarded.written)."""
    import os

    global _discarded_stdout

    if sys.stdout is None:
        # a descriptor of its own (the lowest free, 1 when only stdout was closed): a later
        # open() never lands on 1, where a child would take it for its stdout
        _discarded_stdout = _Discarded(os.open(os.devnull, os.O_WRONLY), "w")
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(_discarded_stdout), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the process's life


# opsctl's settings from the environment and the options that win over them
_SETTINGS = {"OPSCTL_ROOT": ("--root",), "OPSCTL_ENV": ("--env", "-e")}


def _refuse_empty_settings(argv: list[str]) -> None:
    """UsageError for OPSCTL_ROOT or OPSCTL_ENV set but empty where its option is not given:
    Click reads an empty variable as unset, so `OPSCTL_ENV=$DEPLOY_ENV` with the CI variable
    missing ran on the default environment, where `--env ''` is refused (breaker 41 Q9)."""
    import os

    from opsctl.errors import UsageError

    for name, options in _SETTINGS.items():
        given = any(a in options or a.startswith(tuple(f"{o}=" for o in options if o.startswith("--")))
                    for a in argv)
        if name in os.environ and not os.environ[name].strip() and not given:
            raise UsageError(f"{name} is set but empty; give it a value, or unset it ({options[0]} wins over it)")


def _exit_on_late_interrupt(code: int) -> None:
    """From here the command is over, its result printed and its exit code known. A Ctrl-C
    or SIGTERM on the way out (Typer's frames, the interpreter's shutdown) raised a
    KeyboardInterrupt nothing catches any more, and Python then ends itself by SIGINT: a
    restore that had finished and printed its result died by the signal, no line said (breaker
    38 H13). Now such a late signal ends the process at once with the command's own code.
    Only in opsctl's own process (`main`): a program running the app (a test's CliRunner)
    keeps its own handlers."""
    import os
    import signal

    def leave(*_: Any) -> None:
        os._exit(code)  # stdout was flushed in `main`; stderr's lines are written whole

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, leave)


def _reader_gone() -> int:
    """Exit code 141 (128 + SIGPIPE, what a shell reports for `git log | head -1`) when the
    reader of stdout went away; nothing said (there is no one to read it). stdout is pointed
    at /dev/null so the interpreter's last flush can't fail again (Python's note on SIGPIPE)."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):  # no file descriptor (a test runner's buffer)
            pass
    return 141


class OpsGroup(TyperGroup):
    """Maps every failure to DESIGN.md's exit codes: one line, never a traceback.

    Command groups are loaded on first use (see GROUPS): building every Typer command at
    start-up would cost `opsctl --help` more than Typer itself.
    """

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands) + [n for n in GROUPS if n not in self.commands]

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in self.commands and name in GROUPS:
            _load(self, GROUPS[name][0])
        return self.commands.get(name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            ctx.fail(f"No such command '{name}'." + (f" Did you mean '{close[0]}'?" if close else ""))
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The command list from GROUPS' summaries, without loading a single group."""
        rows = [(n, c.get_short_help_str(formatter.width - 16)) for n, c in self.commands.items() if not c.hidden]
        rows += [(n, GROUPS[n][2]) for n in GROUPS if n not in self.commands]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        from opsctl.errors import OpsError

        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        _closed_streams_to_devnull()
        try:
            _refuse_empty_settings(argv)
            rv = super().main(args=argv, prog_name=prog_name or "opsctl", complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
            sys.stdout.flush()  # here, where a reader gone is caught, not in the interpreter's exit
            if code == 130:  # Typer turns Ctrl-C into a silent Exit(130)
                code = _fail("interrupted", 130)
        except OpsError as exc:
            if debug:
                traceback.print_exc()
            code = _fail(str(exc), exc.exit_code, exc.masked)
        except click_errors.UsageError as exc:  # unknown commands and options, bad values
            cmd = exc.ctx.command_path if exc.ctx else "opsctl"
            code = _fail(f"{exc.format_message()} (see '{cmd} --help')", 2)
        except click_errors.ClickException as exc:
            code = _fail(exc.format_message(), exc.exit_code)
        except (typer.Abort, KeyboardInterrupt):
            code = _fail("interrupted", 130)
        except BrokenPipeError:  # `opsctl ... | head -1`: the reader left; 128 + SIGPIPE, as git and coreutils
            code = _reader_gone()
        except SystemExit:
            # Typer answers an EPIPE it catches itself (--help, JSON written through click) with a
            # silent exit 1 after wrapping the streams in click's PacifyFlushWrapper
            if type(sys.stdout).__name__ != "PacifyFlushWrapper":
                raise
            code = _reader_gone()
        except Exception as exc:  # a full disk, an unreachable endpoint, else an opsctl bug: one line
            if debug:
                traceback.print_exc()
            from opsctl.errors import outside_fault

            fault = outside_fault(exc)
            code = _fail(str(fault), 1) if fault else \
                _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
        if code == 0 and _discarded_stdout is not None and _discarded_stdout.written:
            # what the command printed reached no one: a failure, as on a full /dev/full; a
            # command that printed nothing there (files written, --out) exits by its result
            code = _fail("the output could not be written (stdout closed); run it with stdout open, "
                         "or redirect it to /dev/null to discard it", 1)
        if standalone_mode:
            if _as_process:  # the console script, never a CliRunner inside another program
                _exit_on_late_interrupt(code)
            sys.exit(code)
        return code


app = typer.Typer(
    name="opsctl",
    cls=OpsGroup,
    help="Operate the speech-transcription platform: infra, deploys, backups, health, load tests, runbooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    root: Annotated[str | None, typer.Option("--root", envvar="OPSCTL_ROOT",
                                             help="Ops root holding opsctl.yaml (default: found walking up).")] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="Logs on stderr: text or json.")] = "text",
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    from opsctl.errors import UsageError
    from opsctl.output import setup_logging

    if log_format not in ("text", "json"):
        raise UsageError(f"--log-format must be 'text' or 'json', not '{log_format}'")
    ctx.obj = common.Globals(root=root, log_format=log_format, debug=debug)
    setup_logging(log_format, debug)


# Every command group, the module that implements it, and the issue that builds it. A module
# that exists is registered (it exposes `register(app)` and imports nothing heavy at module
# level, so `opsctl --help` stays fast); a missing one becomes a command that says so.
GROUPS: dict[str, tuple[str, int, str]] = {
    "infra": ("opsctl.cli.infra", 10, "Provision the cloud environment with Pulumi."),
    "deploy": ("opsctl.cli.deploy", 5, "Deploy a worker release (blue-green or rolling)."),
    "promote": ("opsctl.cli.deploy", 5, "Switch traffic to the waiting color."),
    "rollback": ("opsctl.cli.deploy", 5, "Return traffic to the previous release."),
    "status": ("opsctl.cli.deploy", 5, "Active color, versions and recent deploys."),
    "abort": ("opsctl.cli.deploy", 20, "End a deploy awaiting promotion or interrupted."),
    "render": ("opsctl.cli.render", 5, "Print manifests, CI pipelines and monitoring config."),
    "backup": ("opsctl.cli.backup", 6, "Create, list, verify and prune backups."),
    "restore": ("opsctl.cli.backup", 6, "Restore PostgreSQL, Redis and files from a backup."),
    "health": ("opsctl.cli.health", 7, "Health sweeps: once, continuous or scheduled, with alerts."),
    "loadtest": ("opsctl.cli.loadtest", 8, "Locust load tests with SLO gates."),
    "runbook": ("opsctl.cli.runbook", 9, "Versioned runbooks: list, show, validate, run, history."),
    "local": ("opsctl.cli.local", 4, "The embedded platform on this machine: up, down, status, logs."),
    "dr": ("opsctl.cli.dr", 22, "Disaster-recovery drills: restore, serve, measure RTO and RPO."),
    "failover": ("opsctl.cli.dr", 22, "Promote the read replica of an environment's database."),
}


def _load(group: Any, module: str) -> None:
    """Import one command module and add its commands; a missing module says 'not built'."""
    import importlib
    import importlib.util

    holder = typer.Typer(rich_markup_mode=None)  # plain help: names are never cut at 80 columns
    names = [n for n, (m, _, _) in GROUPS.items() if m == module]
    if importlib.util.find_spec(module) is None:
        for name in names:
            common.not_built(holder, name, GROUPS[name][1], GROUPS[name][2])
    else:
        importlib.import_module(module).register(holder)
    for name, command in typer.main.get_group(holder).commands.items():
        group.add_command(command, name)


def _register() -> None:
    from opsctl.cli import basics

    basics.register(app)


_register()


_as_process = False  # set by `main`, the console script: this process is opsctl's own


def main() -> None:
    import gc

    global _as_process
    _as_process = True
    try:
        app()
    finally:
        # Interpreter shutdown runs a full garbage collection over every object the imports
        # made (typer, pydantic, rich, boto3): ~35 ms of a 200 ms command. Frozen objects are
        # skipped; nothing is lost, since the process is ending and atexit handlers still run.
        gc.freeze()
