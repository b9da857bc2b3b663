"""Nothing opsctl prints is read as Rich markup: a transcript says '[Music]', a glob is
'web-[ab]', a path may hold '[/]'. Markup in them used to vanish from the output or end the
command in a MarkupError traceback after the work was done; styling is built as Rich Text."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

TRICKY = "heard '[Music] [bold]hello[/bold] [/Music]' at /srv/a[/]b"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_the_consoles_print_brackets_as_they_are(capsys, stream):
    from opsctl import output

    getattr(output, stream).print(TRICKY)
    assert TRICKY in getattr(capsys.readouterr(), stream[3:])


def test_a_deploy_reason_with_a_transcript_in_brackets(capsys):
    from opsctl.cli.deploy import _render_record
    from opsctl.deploy.model import DeployRecord, Outcome

    record = DeployRecord(env="local", strategy="blue-green", image="worker:2", version="2.0.0", settings={},
                          to_color="green", from_color="blue", from_version="1.0.0", outcome=Outcome.ROLLED_BACK,
                          reason=f"post-promotion analysis failed: {TRICKY}")
    _render_record(record)
    assert f"rolled-back: 2.0.0 on green — post-promotion analysis failed: {TRICKY}" in capsys.readouterr().out


def test_styled_cells_keep_their_words_on_any_console():
    """A console that does read markup (a test's, a library's) shows the same words."""
    from opsctl.cli.live import status
    from opsctl.loadtest.live import render_list

    console = Console(width=120, file=io.StringIO(), color_system=None)
    console.print(status("ok"), status("failed"), status("[/] odd"))
    assert console.file.getvalue().split() == ["ok", "failed", "[/]", "odd"]
    render_list([], console)
    assert "no load test runs saved yet" in console.file.getvalue()
