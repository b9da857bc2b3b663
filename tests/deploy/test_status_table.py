"""`opsctl status`'s tables (opsctl.cli.tables.print_whole) at 80 columns: ids, versions,
times and statuses are never cut; free text wraps; too-wide rows become `name: value` lines."""

from __future__ import annotations

import io

from rich.console import Console

from opsctl.cli.tables import print_whole

COLUMNS = ["started", "id", "version", "to", "strategy", "outcome", "reason"]
REASON = ("pre-promotion analysis failed: word error 1.00 (limit 0.3): heard 'something else "
          "entirely, at length'; traffic stays on blue")


def _render(rows, width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    print_whole(console, COLUMNS, rows, wrap="reason", optional=["id", "strategy"], title="last deploys",
                min_wrap=12)
    return console.file.getvalue()


def _whole(text: str, values: list[str], width: int = 80) -> None:
    assert "…" not in text, text
    assert all(len(line) <= width for line in text.splitlines()), text
    for value in values:
        assert value in text, f"{value!r} is not whole in:\n{text}"


def test_a_table_when_the_key_columns_fit_with_the_reason_wrapped():
    rows = [["2026-11-30T04:47:58+00:00", "0123456789ab", "2.0.0", "green", "blue-green", "promoted", REASON]]
    text = _render(rows)
    _whole(text, rows[0][:1] + rows[0][2:3] + rows[0][5:6])
    assert "started" in text.splitlines()[2] and "reason" in text.splitlines()[2]  # one header row
    assert "0123456789ab" not in text  # the optional id column was left out to fit


def test_name_value_lines_when_even_that_does_not_fit():
    rows = [["2026-11-30T04:47:58+00:00", "0123456789ab", "1.4.0-rc.1+build.20261130.abcdef", "green",
             "blue-green", "awaiting-promotion", REASON]]
    text = _render(rows)
    _whole(text, rows[0][:6])  # every short value whole, the id too
    assert "  reason:" in text and "traffic stays on blue" in text


def test_a_value_wider_than_the_console_stands_whole_on_its_line():
    """Never folded inside (breaker 43 S16: a path split as `.../pginst` + `all/bin/postgres`
    could not be copied): a word wider than the console is the one line longer than it."""
    version = "v" * 120
    text = _render([["2026-11-30T04:47:58+00:00", "0123456789ab", version, "green", "rolling", "failed", "x"]])
    assert "…" not in text and version in text
    assert all(len(line) <= 80 or line.split()[-1] == version for line in text.splitlines()), text


def test_text_wraps_between_words_and_a_path_wider_than_the_console_stays_whole():
    """Breaker 36 F9: verify-chain's object paths were split inside their names at 80 columns."""
    from opsctl.cli.tables import print_words

    path = "pitr/7714748930005327275/wal/000000160000000000000044.c67a26d2ca6b306404541ddc366789c3.zst"
    console = Console(width=80, file=io.StringIO(), color_system=None)
    print_words(console, f"{path}: missing (an object the server archived is gone from the repository)", "red")
    lines = console.file.getvalue().splitlines()
    assert lines[0] == f"{path}:"
    assert len(lines) == 2 and len(lines[1]) <= 80
    assert " ".join(lines) == f"{path}: missing (an object the server archived is gone from the repository)"
