"""What every command shares: the common options, the ops root, `confirm` (opsctl.approval's)
and `progress` (the bars a long operation reports to).

Kept free of heavy imports so that `opsctl --help` stays fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Callable, Iterator

import typer

try:  # typer 0.2x vendors click as typer._click; older releases use click itself
    from typer._click import exceptions as click_errors
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]
    from click import get_current_context  # type: ignore[no-redef]

if TYPE_CHECKING:
    from rich.text import Text

    from opsctl.config import Environment, Project

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
EnvOpt = Annotated[
    str, typer.Option("--env", "-e", envvar="OPSCTL_ENV", help="Environment from opsctl.yaml.")
]
YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="Approve without a prompt (needed in CI).")
]


@dataclass
class Globals:
    """The root options (`opsctl --root/--log-format/--debug`), kept on Click's context."""

    root: str | None = None
    log_format: str = "text"
    debug: bool = False


def globals_() -> Globals:
    """The root options of the running command (defaults outside a command)."""
    ctx = get_current_context(silent=True)
    obj = ctx.find_object(Globals) if ctx else None
    return obj or Globals()


def project() -> "Project":
    """The ops root (`--root`, OPSCTL_ROOT, or found walking up) with its opsctl.yaml."""
    from opsctl.config import load_project

    return load_project(globals_().root)


def environment(env_name: str) -> tuple["Project", "Environment"]:
    """The ops root and its environment `env_name` (UsageError naming the known ones if none)."""
    proj = project()
    return proj, proj.env(env_name)


class ProgressBars:
    """Progress bars with throughput on stderr (only on a terminal): `report` is a core
    operation's progress callback (opsctl.backup.pipeline.Reporter), `paused` quiets them
    while a question is asked. Rich's progress module is loaded at the first bar, so a
    command starts its work (pg_dump, pg_basebackup) without waiting for it."""

    def __init__(self):
        self.bars = None

    def _started(self):
        if self.bars is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TransferSpeedColumn)

            from opsctl.output import stderr

            self.bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeElapsedColumn(), console=stderr, transient=True,
                                 disable=not stderr.is_terminal)
            self.bars.start()
        return self.bars

    def report(self, what: str, total: int | None) -> Callable[[int], None]:
        """A new bar named `what` of `total` bytes (None: unknown); returns `advance(n)`, n bytes done."""
        from opsctl.output import stderr

        if not stderr.is_terminal:  # nothing would be drawn: rich.progress is not even loaded
            return lambda _n: None
        bars = self._started()
        task = bars.add_task(what, total=total)
        return lambda n: bars.advance(task, n)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The bars stopped for the block (a prompt on a quiet terminal), then redrawn."""
        if self.bars is not None:
            self.bars.stop()
        try:
            yield
        finally:
            if self.bars is not None:
                self.bars.start()


@contextmanager
def progress() -> Iterator[ProgressBars]:
    """ProgressBars on stderr for the block, and SIGTERM as an interrupt (CI cancels with
    SIGTERM: the operation cleans up as on Ctrl-C); the bars are stopped on the way out."""
    from opsctl.signals import sigterm_as_interrupt

    bars = ProgressBars()
    with sigterm_as_interrupt():
        try:
            yield bars
        finally:
            if bars.bars is not None:
                bars.bars.stop()


def bold_id(before: str, ident: str) -> "Text":
    """`before`, then `ident` in bold, as Rich Text. The consoles read no markup (a '[/]' in a
    path or a transcript would end a command in a traceback), so styling is built, never
    written as tags; a str added to the result stays plain."""
    from rich.text import Text

    return Text.assemble(before, (ident, "bold"))


def __getattr__(name: str):
    """`confirm` is opsctl.approval.confirm itself, imported on first use (PEP 562), so
    `opsctl --help` does not load the approval module."""
    if name == "confirm":
        from opsctl.approval import confirm

        return confirm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def not_built(app: typer.Typer, name: str, issue: int, help_text: str) -> None:
    """Register a command whose capability does not exist yet: it says so, exit 2."""

    @app.command(
        name,
        help=f"{help_text} [not built yet: issue #{issue}]",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def _not_built() -> None:
        from opsctl.errors import UsageError

        raise UsageError(f"'opsctl {name}' is not built yet (issue #{issue}); 'opsctl --help' lists what works")
