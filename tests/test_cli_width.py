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


def _whole(output: str, values, headers) -> None:
    """Every value appears whole on one line, and no header is cut or folded."""
    lines = output.splitlines()
    for value in values:
        assert any(value in line for line in lines), (value, output)
    assert "…" not in output
    for header in headers:  # a table header line holding every header whole, or `name:` blocks
        assert any(line.strip().startswith(f"{header}:") for line in lines) or any(
            set(headers) <= set(line.split()) for line in lines), (header, output)


def test_backup_list_at_80_columns_keeps_ids_statuses_and_sizes_whole(runner, monkeypatch):
    """#21 D6: at 80 columns without a TTY the label folded to 9 characters a line (ids, statuses once too)."""
    rows = [{"id": f"20261130T02000{i}Z-full-0123abcd", "status": s, "components": ["postgres", "redis", "files"],
             "note": "", "raw_bytes": 123456789012, "stored_bytes": 98765432101, "verified": True,
             "label": "nightly run 20261130T020000Z-3f9a2c"} for i, s in enumerate(("complete", "untrusted"))]
    doc = {"repository": "s3://opsctl-backups-staging/worker", "initialised": True, "encrypted": True,
           "key_id": "k-0123456789abcdef", "authenticated": True, "backups": rows, "total": 2, "foreign": []}
    monkeypatch.setattr("opsctl.cli.backup.environment", lambda env: (None, None))
    monkeypatch.setattr("opsctl.backup.catalog.listing", lambda project, env, limit, start: doc)
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["backup", "list"], terminal_width=80)
    assert result.exit_code == 0, result.output
    _whole(result.output, [r["id"] for r in rows] + ["complete", "untrusted", "123.5 GB", "98.8 GB", rows[0]["label"]],
           ["id", "status", "size", "stored"])


def test_runbook_history_at_80_columns_keeps_ids_times_and_statuses_whole(runner, monkeypatch):
    """#21 D6: run ids, start times and statuses were folded at 80 columns."""
    rows = [{"run_id": f"20261130T0641{i}0Z-nightly-backup-3f9a2c", "runbook": "nightly-backup", "version": 2,
             "env": "staging-eu-west-1", "started_at": f"2026-11-30T06:41:{i}0+00:00", "status": s}
            for i, s in enumerate(("succeeded with failures", "failed"))]
    monkeypatch.setattr("opsctl.cli.runbook.project", lambda: None)
    monkeypatch.setattr("opsctl.runbook.history.runs", lambda project, env_name, name: rows)
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["runbook", "history"], terminal_width=80)
    assert result.exit_code == 0, result.output
    _whole(result.output, [v for r in rows for v in (r["run_id"], r["started_at"], r["status"])],
           ["run", "runbook", "env", "started", "status"])


def test_a_recoverable_window_ending_at_a_wal_file_keeps_its_name_whole_at_80_columns():
    """Breaker 18: the `ends at` cell cut the WAL file that ends a window to
    '00000003000000…' at 80 columns; the name now folds over two lines, every digit kept."""
    import datetime as dt
    from types import SimpleNamespace

    from rich.console import Console

    from opsctl.cli.pitr import _windows_table

    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
    ends = "000000030000000000000019: queued (not archived yet: it waits in the local WAL queue)"
    report = SimpleNamespace(windows=[{"base": "20261201T114350Z-a2a0", "from": now, "to": now, "ends_at": ends}])
    console = Console(width=80, force_terminal=False, record=True)
    console.print(_windows_table(report, "recoverable windows"))
    text = console.export_text()
    assert "…" not in text and "20261201T114350Z-a2a0" in text
    cells = "".join(line.split("│")[4].strip() for line in text.splitlines() if line.count("│") == 5)
    assert cells.startswith("000000030000000000000019:"), text


def test_a_deploy_status_notice_is_wrapped_at_80_columns_through_a_pipe(runner, monkeypatch):
    """The notice of a color past its standby time (or an interrupted deploy) was printed as
    one line of 240 characters through a pipe: the console soft-wraps (a full suite caught it
    when the standby time passed during the test)."""
    notice = ("green (after-kill) still runs 12 s past its standby time (17:13:56 UTC, deploy.scale_down_delay after "
              "the switch): a command run with --no-wait, or stopped while it waited, left it; the next deploy or "
              "rollback stops it")
    doc = {"active_color": "blue", "driver": "local", "known_good": {"color": None}, "notice": notice, "colors": {},
           "deploys": []}
    monkeypatch.setattr("opsctl.cli.deploy.project", lambda: None)
    monkeypatch.setattr("opsctl.deploy.operation.status", lambda project, env: doc)
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["status"], terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    assert " ".join(" ".join(lines).split()).find(notice) >= 0, result.stdout


def _sentences(output: str) -> list[str]:
    """The output's lines, each at most 80 characters."""
    lines = output.splitlines()
    for line in lines:
        assert len(line) <= 80, line
    return lines


def test_dr_drill_sentences_wrap_between_words_at_80_columns_and_keep_ids_whole(runner, monkeypatch):
    """Session 31 left this: the drill's sentences under its table went through a pipe as lines of
    200-300 characters (Rich's soft wrap never wraps without a terminal). They wrap between
    words now; a backup id, a scratch name or a long word is never cut."""
    import datetime as dt

    from opsctl.pitr.drill import DrillResult

    at = dt.datetime(2026, 12, 3, 14, 3, tzinfo=dt.timezone.utc)
    scratch = "opsctl_drill_20261203T140300Z_" + "9" * 33  # 63 characters, PostgreSQL's longest name
    r = DrillResult(environment="staging", platform="local", started_at=at, rto_seconds=41.5, rpo_seconds=12.0,
                    rto_target_seconds=14400, rpo_target_seconds=3600, passed=False, restored_to=at,
                    live_newest_commit=at, scratch=scratch, rows=120345, tables=7, torn_down=True,
                    backups={"redis": "20261203T130000Z-redis-0a1b", "audio objects": "20261203T020000Z-full-3f9a"},
                    part_rpo_seconds={"redis": 3780.0, "audio objects": 43380.0}, redis_keys=12,
                    audio_objects=3, transcription="passed (WER 0.04)", load_test="passed (p95 812 ms, 0 failures)",
                    problems=["RPO audio objects 43380.0 s missed its target of 3600 s: the newest backup holding "
                              "the audio objects, 20261203T020000Z-full-3f9a, started 12.1 hours before the drill"],
                    rpo_basis="between the newest commit of the live database and the newest one recovered")
    monkeypatch.setattr("opsctl.cli.dr.environment", lambda env: (None, None))
    monkeypatch.setattr("opsctl.pitr.drill.drill", lambda project, env, junit_path, metrics_path: r)
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["dr", "drill", "--env", "staging"], terminal_width=80)
    assert result.exit_code == 1, result.output
    report, error = result.output.split("opsctl: error: ")  # the error is one line on purpose: what a log greps
    lines = _sentences(report)
    for whole in (scratch, "20261203T130000Z-redis-0a1b", "20261203T020000Z-full-3f9a", "43380.0"):
        assert any(whole in [word.strip(",;") for word in line.split()] for line in lines), (whole, result.output)
    text = " ".join(line.strip() for line in lines)
    assert "load test: passed (p95 812 ms, 0 failures)" in text
    assert r.problems[0] in text


def test_restore_to_time_notes_keep_their_own_lines_and_wrap_at_80_columns():
    """A note after a restore starts its own line (they were joined by newlines and printed as
    one soft-wrapped line); each wraps between words."""
    import io

    from rich.console import Console

    from opsctl.cli.tables import print_words

    notes = ["the previous data directory was kept: remove /var/lib/opsctl/data.previous-20261203T140300Z "
             "when the restore is trusted", "archiving resumed on timeline 7"]
    console = Console(width=80, file=io.StringIO(), color_system=None)
    print_words(console, "restored to the live server (in place)" + "".join(f"\n{n}" for n in notes))
    lines = console.file.getvalue().splitlines()
    assert lines[0] == "restored to the live server (in place)"
    assert lines[-1] == notes[1]
    assert all(len(line) <= 80 for line in lines), lines
    assert " ".join(lines[1:-1]) == notes[0]
