"""Load-test tables at 80 columns without a TTY: ids, endpoints' figures, gates and verdicts
are never cut (issue 21: `make demo` showed latencies as `2,2…` and rates as `0.…`)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from opsctl.cli import app
from opsctl.loadtest import history
from opsctl.loadtest.slo import GateResult
from opsctl.loadtest.summary import EndpointStats, RunSummary


def _stats(name: str, method: str = "POST") -> EndpointStats:
    return EndpointStats(method, name, 123456, 7890, 6.391, 1234.567, 22345.6, 1021.0, 178234.0, 21987.0,
                         123456.0, 176543.0, ok=115566)


def _summary(run_id: str) -> RunSummary:
    rows = [_stats("/v1/audio/transcriptions [medium]"), _stats("JOB medium submit→done", "JOB"),
            _stats("/healthz", "GET")]
    total = _stats("Aggregated", "")
    gate = GateResult("p95<120000ms", "p95", 123456.0, 120000.0, "ms", False, "115566 successful requests")
    return RunSummary(run_id, "staging", "http://127.0.0.1:8080", "heavy", 100, 10.0, 900.0, 4,
                      "2026-11-30T01:00:00+00:00", "2026-11-30T01:15:00+00:00", 900.12, "p95<120000ms", False, None,
                      [gate], total, rows)


def test_list_and_compare_keep_every_figure_whole_at_80_columns(ops_root):
    project_root = ops_root
    from opsctl.config import load_project

    project = load_project(project_root)
    for run_id in ("20261130-010000-heavy-aaaa", "20261130-020000-heavy-bbbb"):
        history.save(project, _summary(run_id))
    runner = CliRunner()
    listed = runner.invoke(app, ["--root", str(project_root), "loadtest", "list"], env={"COLUMNS": "80"})
    compared = runner.invoke(app, ["--root", str(project_root), "loadtest", "compare", "previous", "latest"],
                             env={"COLUMNS": "80"})
    assert listed.exit_code == 0 and compared.exit_code == 0, listed.output + compared.output
    for out in (listed.stdout, compared.stdout):
        assert max(len(line) for line in out.splitlines()) <= 80, out
        assert "…" not in out
    for run_id in ("20261130-010000-heavy-aaaa", "20261130-020000-heavy-bbbb"):
        (row,) = [line for line in listed.stdout.splitlines() if run_id in line]
        assert row.split()[1:] == ["staging", "100/4w", "123456", "6.391", "123,456", "1,234.567", "fail"]
    assert "123,456" in compared.stdout


def test_the_run_table_keeps_every_figure_whole_at_80_columns():
    from rich.console import Console

    from opsctl.loadtest import live

    console = Console(width=80, force_terminal=False, record=True)
    live.render_run(_summary("20261130-010000-heavy-aaaa"), console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    for figure in ("123456", "7890 (6.391%)", "1,234.567", "21,987", "123,456", "176,543", "178,234"):
        assert figure in text, figure
    assert "p95<120000ms" in text and "123,456 ms" in text and "BREACHED" in text
    assert json.dumps(text)  # plain text, no control sequences
    assert "\x1b" not in text


def test_saved_runs_are_private(ops_root):
    import stat

    from opsctl.config import load_project

    saved = history.save(load_project(ops_root), _summary("20261130-030000-heavy-cccc"))
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
