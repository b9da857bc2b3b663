"""A live table of steps on stderr, shared by deploys and runbook runs.

It appears with the first step, so an input error found before any step stays one line.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:
    from rich.text import Text

STYLE = {"running": ("…", "yellow"), "ok": ("ok", "green"), "failed": ("failed", "red"),
         "skipped": ("skipped", "dim"), "done-before": ("done before", "dim"), "planned": ("planned", "cyan"),
         "interrupted": ("interrupted", "yellow")}


@contextmanager
def steps_view(title: str, quiet: bool, row: Callable[[Any], Sequence[str]],
               columns: Sequence[str] = ("step", "", "time", "detail")) -> Iterator[Callable[[Any], None]]:
    """Yields notify(step): call it when a step starts or changes; `row` renders one step."""
    from rich.live import Live
    from rich.table import Table

    from opsctl.output import stderr, stop_live

    steps: list = []
    live: list[Live] = []

    def table() -> Table:
        t = Table(title=title, box=None, title_justify="left")
        for col in columns:
            t.add_column(col, overflow="fold")
        for step in steps:
            t.add_row(*row(step))
        return t

    def notify(step: Any) -> None:
        if not any(s is step for s in steps):
            steps.append(step)
        if not live:
            live.append(Live(table(), console=stderr, transient=quiet, refresh_per_second=4))
            live[0].start()
        live[0].update(table())

    try:
        yield notify
    finally:
        if live:
            stop_live(live[0])


def status(text: str) -> "Text":
    """A step's status as its styled word (any other text as it is, never read as markup)."""
    from rich.text import Text

    word, style = STYLE.get(text, (text, ""))
    return Text(word, style=style)
