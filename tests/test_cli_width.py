"""Help is for people and CI logs: at 80 columns and without a TTY no option name is cut."""

from __future__ import annotations

import pytest
import typer

from opsctl.cli import GROUPS, app


def _commands():
    """(path, click command) for every command and subcommand, loading each group."""
    root = typer.main.get_command(app)
    ctx = root.context_class(root)
    stack = [(("opsctl",), root)]
    while stack:
        path, cmd = stack.pop()
        yield path, cmd
        if hasattr(cmd, "list_commands"):  # a group (Typer vendors its own click)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    stack.append((path + (name,), sub))


COMMANDS = sorted(_commands(), key=lambda pc: pc[0])


def test_every_group_is_reachable():
    top = {path[1] for path, _ in COMMANDS if len(path) > 1}
    assert set(GROUPS) <= top


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_at_80_columns_shows_every_option_whole(runner, monkeypatch, path, command):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERM", "dumb")
    result = runner.invoke(app, [*path[1:], "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for line in result.output.splitlines():
        assert len(line) <= 80, line
    for param in command.params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("--"):
                assert opt in result.output, f"{' '.join(path)}: {opt} cut from help"
