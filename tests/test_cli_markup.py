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


ESCAPES = "\x1b]0;pwned\x1b\\ \x1b[2J\x1b[31mred \u202eevil"
SHOWN = "\\x1b]0;pwned\\x1b\\ \\x1b[2J\\x1b[31mred \\u202eevil"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_control_characters_are_shown_never_sent_to_the_terminal(capsys, stream):
    """Breaker 37 G3: a backup label, a check name or a silence reason holding an ESC sequence
    cleared the screen or set the terminal's title when listed; the text is shown escaped."""
    from rich.table import Table

    from opsctl import output

    console = getattr(output, stream)
    console.print(f"label {ESCAPES}")
    table = Table("check", "status")
    table.add_row(f"web {ESCAPES}", "OK")
    console.print(table)
    text = getattr(capsys.readouterr(), stream[3:])
    assert "\x1b" not in text and "\u202e" not in text
    assert f"label {SHOWN}" in text and SHOWN.split()[-1] in text.split("label")[1]  # the cell whole


def test_an_error_line_shows_control_characters_escaped(tmp_path):
    from typer.testing import CliRunner

    from opsctl.cli import app
    from opsctl.starter import starter_text

    (tmp_path / "opsctl.yaml").write_text(starter_text())
    out = CliRunner().invoke(app, ["--root", str(tmp_path), "status", "--env", ESCAPES])
    assert out.exit_code == 2, out.output
    assert "\x1b" not in out.stderr and SHOWN in out.stderr, repr(out.stderr)


def test_a_log_line_without_a_terminal_shows_control_characters_escaped(capsys):
    import logging

    from opsctl.output import setup_logging

    setup_logging()
    logging.getLogger("opsctl.test").warning("label %s", ESCAPES)
    err = capsys.readouterr().err
    assert "\x1b" not in err and f"label {SHOWN}" in err, repr(err)


@pytest.mark.parametrize("args", [["version"], ["config", "show", "--json"], ["--help"], ["config", "show"]])
@pytest.mark.parametrize("stderr_closed", [False, True])
def test_a_reader_that_leaves_early_gets_exit_141_and_no_message(tmp_path, args, stderr_closed):
    """Breaker 37 G17 / 38 H10: `opsctl version | head -1` exited 1 (Rich), `--json` and `--help`
    1 (Typer's own EPIPE handling), 120 with stderr closed too (the interpreter's last flush):
    all said nothing and failed CI steps under pipefail as faults; 141 (128 + SIGPIPE) now, as
    git's and coreutils' are."""
    import subprocess
    import sys
    from pathlib import Path

    opsctl = Path(sys.executable).parent / "opsctl"
    proc = subprocess.Popen([str(opsctl), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL if stderr_closed else subprocess.PIPE,
                            **({"preexec_fn": lambda: __import__("os").close(2)} if stderr_closed else {}))
    proc.stdout.close()  # before it writes a line: every write finds no reader
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and not err, (proc.returncode, err)


def test_a_closed_stdout_never_ends_in_an_unexpected_error(tmp_path):
    """Breaker 38 H11: started with stdout closed (`>&-`), commands ended in 'unexpected
    AttributeError' (sys.stdout is None). Output that reached no one fails the command, as
    on /dev/full (breaker 40 P12: exit 0, tests/test_closed_stdout.py)."""
    import subprocess
    import sys
    from pathlib import Path

    opsctl = Path(sys.executable).parent / "opsctl"
    for args in (["config", "show", "--json"], ["--root", str(tmp_path / "nowhere"), "status"]):
        done = subprocess.run(f"exec {opsctl} {' '.join(args)} >&-", shell=True, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert "unexpected" not in done.stderr, done.stderr
        assert done.returncode == (1 if args[0] == "config" else 2), done.stderr
