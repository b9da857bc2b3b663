"""An approval prompt shows its question as every printed line is shown (breaker 38 H8): the
ESC sequences and bidirectional overrides of a runbook's approval message or of a `-p` value
reach the terminal as escapes (`output.visible`); they set its title, cleared the screen and
turned the text around while a person was asked to approve it."""

from __future__ import annotations

import pytest

from opsctl.cli import app
from tests.runbook.runbook_support import write_runbook

BOOK = r"""
    name: appr
    version: 1
    parameters:
      who: {type: string, default: "x"}
    steps:
      - id: s1
        action: notify
        with: {message: "hi"}
        approval: {message: "approve \e]0;PWNED\a\e[2J {{ params.who }}?"}
    """


@pytest.fixture
def at_a_terminal(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("opsctl.approval.is_interactive", lambda: True)


def test_the_approval_question_is_shown_with_its_control_characters_escaped(runner, ops_root, at_a_terminal):
    write_runbook(ops_root, "appr", 1, BOOK)
    result = runner.invoke(app, ["runbook", "run", "appr", "-p", "who=\x1b[31mRED\u202e"], input="n\n")
    assert result.exit_code == 2, result.output
    prompt = result.stderr.splitlines()[0]
    assert prompt.startswith(r"approve \x1b]0;PWNED\x07\x1b[2J \x1b[31mRED\u202e? [y/N]"), prompt
    assert "\x1b" not in result.output and "\a" not in result.output and "\u202e" not in result.output


def test_both_terminal_prompts_escape_their_question(monkeypatch, capsys, at_a_terminal):
    """The yes/no question and the typed-name question (a protected environment's)."""
    import io

    from opsctl import approval

    monkeypatch.setattr("sys.stdin", io.StringIO("n\nn\n"))
    prompts = approval.terminal()
    assert prompts["ask_yes_no"]("drop \x1b[2Jall\u202e") is False
    assert prompts["ask_text"]("'p\x1b]0;X\x07' is protected") == "n"
    shown = capsys.readouterr().err
    assert r"drop \x1b[2Jall\u202e [y/N]" in shown and r"'p\x1b]0;X\x07' is protected" in shown, shown
    assert "\x1b" not in shown and "\u202e" not in shown and "\a" not in shown


def test_a_protected_environment_is_named_under_the_change_it_approves():
    """The typed-name prompt said only "'prod' is protected. Type its name to ...": a person
    approved a deletion, a restore or a destroy without being shown which. The question comes
    first, in `approve` and in `approve_all` (local down --purge) alike."""
    from types import SimpleNamespace

    from opsctl import approval

    prod = SimpleNamespace(name="prod", protected=True)
    asked = []

    def ask_text(question):
        asked.append(question)
        return "prod"

    approval.approve("delete backup 20261203T140300Z-3f9a (complete: db) from s3://b/p", prod, yes=False,
                     destructive=True, interactive=True, ask_yes_no=lambda q: False, ask_text=ask_text)
    approval.approve_all("delete the embedded platform's data", [prod], yes=False, interactive=True,
                         ask_yes_no=lambda q: False, ask_text=ask_text)
    assert asked == ["delete backup 20261203T140300Z-3f9a (complete: db) from s3://b/p\n'prod' is protected. "
                     "Type its name to change it",
                     "delete the embedded platform's data\n'prod' is protected. Type its name to change it"], asked


def test_a_backup_dated_ahead_of_the_clock_is_said_so_in_the_question():
    """Breaker 58 G8: backup delete's question said "-5.0 hours ago" for a backup dated after
    this machine's clock."""
    import datetime as dt

    from opsctl.backup.retention import _made

    ahead = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=5, minutes=1)
    said = _made(ahead)
    assert said.endswith("5.0 hours ahead of this machine's clock") and "-" not in said.split("UTC")[1], said
    assert _made(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)).endswith(", 2.0 hours ago")
    assert _made(None) == ""
