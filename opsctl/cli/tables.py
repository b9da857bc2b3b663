"""Tables whose values are never cut, at 80 columns and in CI logs (no TTY: Rich uses 80).

Ids, versions, times and statuses are what a person copies: their columns never wrap and
never shrink. One free-text column (a reason, a note) takes the width left and wraps by
words; it is at least as wide as its longest word, so a path or an object name in it is
never split. When even that does not fit, the table is dropped for `name: value` lines, one
block per row, a long value wrapping under itself: no character is lost.
"""

from __future__ import annotations

from typing import Sequence

from rich.console import Console


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], wrap: str | None, title: str | None,
           min_wrap: int):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name in columns:
        if name == wrap:
            table.add_column(name, overflow="fold", ratio=1, min_width=min_wrap)
        else:
            table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def print_whole(console: Console, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
                wrap: str | None = None, optional: Sequence[str] = (), title: str | None = None,
                min_wrap: int = 16) -> None:
    """Print `rows` (text cells, in `columns` order) on `console` with no value cut.

    `wrap` names the one column that may wrap (at least `min_wrap` cells wide, and as wide as
    its longest word, so a path in it is not split); every other
    column is as wide as its longest value. When they do not fit the console's width, the
    `optional` columns are left out, then the table gives way to one `name: value` block
    per row.
    """
    from rich.cells import cell_len
    from rich.text import Text

    from opsctl.output import visible

    rows = [[visible(cell) for cell in row] for row in rows]  # measured as they will be shown

    def width(i: int) -> int:  # a column's need: all of its longest value, or its longest word
        if columns[i] == wrap:
            return max(min_wrap, longest_word(r[i] for r in rows))
        return max([cell_len(columns[i])] + [cell_len(r[i]) for r in rows])

    keep = list(range(len(columns)))
    for drop in [None, *optional]:
        if drop is not None:
            keep = [i for i in keep if columns[i] != drop]
        if sum(width(i) for i in keep) + 3 * len(keep) - 1 <= console.width:  # SIMPLE_HEAD: 3 cells per column
            need = width(columns.index(wrap)) if wrap in columns else min_wrap
            console.print(_table([columns[i] for i in keep], [[r[i] for i in keep] for r in rows], wrap, title,
                                 need))
            return
    if title:
        console.print(Text(title, style="bold"))
    print_blocks(console, columns, [[Text(cell) for cell in row] for row in rows])


def longest_word(cells) -> int:
    """The widest run of non-blank characters in `cells` (terminal cells): what a column that
    wraps by words must hold to split none of them."""
    from rich.cells import cell_len

    return max((cell_len(word) for cell in cells for word in str(cell).split()), default=0)


def name_pieces(text: str) -> list[str]:
    """`text` cut where a name may break: at blanks (kept as their own pieces) and after each
    run of '/', so `POST /v1/audio/transcriptions` may break as `/v1/audio/` + `transcriptions`
    (URL and path segments, the break points UAX #14 allows after a solidus)."""
    import re

    return re.findall(r"\s+|[^\s/]*/+|[^\s/]+", text)


def wrap_name(text: str, width: int) -> str:
    """`text` in lines of at most `width` cells, broken between `name_pieces`; a piece wider
    than `width` alone is folded (a caller sizes `width` to the widest piece to avoid that)."""
    from rich.cells import cell_len

    lines: list[str] = []
    line = ""
    for piece in name_pieces(text):
        if cell_len(line + piece) <= width:
            line += piece
            continue
        if line.strip():
            lines.append(line.rstrip())
        line = "" if piece.isspace() else piece
        while cell_len(line) > width:  # one piece wider than the column: fold it
            lines.append(line[:width])
            line = line[width:]
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return "\n".join(lines)


def print_blocks(console: Console, columns: Sequence[str], rows) -> None:
    """One `name: value` block per row (cells are str or rich Text, their style kept), a long
    value wrapping between words under itself; a word wider than the line (a path) stands
    whole on a line of its own, past the console's width, where it can be copied (breaker 43
    S16: folded, `.../pginst` + `all/bin/postgres`). No line is padded with trailing blanks."""
    import textwrap

    from rich.text import Text

    from opsctl.output import visible

    label = max((len(name) for name in columns), default=0) + 4  # "  name: "
    room = max(console.width - label, 20)
    for row in rows:
        for name, cell in zip(columns, row):
            text = cell.plain if isinstance(cell, Text) else visible(str(cell))
            style = cell.style if isinstance(cell, Text) else ""
            lines = [piece for part in text.splitlines() or [""]
                     for piece in textwrap.wrap(part, room, break_long_words=False, break_on_hyphens=False) or [""]]
            for i, line in enumerate(lines):
                head = f"  {name}:".ljust(label) if i == 0 else " " * label
                console.print(Text.assemble(head, (line, style)) if line else Text(head.rstrip()), soft_wrap=True)
        console.print()


def print_words(console: Console, text: str, style: str = "") -> None:
    """`text` wrapped at the console's width between words, never inside one (textwrap with
    break_long_words off: Rich folds a long word): a path or an object name wider than the
    console stands whole on a line of its own, where it can be copied. A newline in `text`
    starts a new line (a note of its own), each wrapped the same way."""
    import textwrap

    from rich.text import Text

    from opsctl.output import visible

    for paragraph in visible(text).split("\n"):
        for line in textwrap.wrap(paragraph, console.width, break_long_words=False, break_on_hyphens=False) or [""]:
            console.print(Text(line, style=style), soft_wrap=True)
