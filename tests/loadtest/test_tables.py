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


def test_endpoint_names_break_between_words_and_path_segments_never_inside_one(ops_root):
    """Breaker 41 Q10: at 80 columns `loadtest compare` folded `POST /v1/audio/transcriptions`
    inside a word (`.../transcri` + `ptions`): a name breaks only at a blank or after a '/',
    and a console too narrow even for that gets `name: value` blocks with every name whole."""
    import re

    from rich.console import Console

    from opsctl.config import load_project
    from opsctl.loadtest import live
    from opsctl.loadtest.compare import compare

    project = load_project(ops_root)
    for run_id in ("20261130-040000-heavy-dddd", "20261130-050000-heavy-eeee"):
        history.save(project, _summary(run_id))
    r = CliRunner().invoke(app, ["--root", str(ops_root), "loadtest", "compare", "previous", "latest"],
                           env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    narrow = Console(width=60, force_terminal=False, record=True)
    live.render_comparison(compare(_summary("a"), _summary("b")), narrow)
    blocks = narrow.export_text()
    pieces = ("POST", "/v1/audio/", "transcriptions", "[medium]", "JOB", "medium", "submit→done", "/healthz")
    for out, width in ((r.stdout, 80), (blocks, 60)):
        assert max(len(line) for line in out.splitlines()) <= width, out
        words = set(re.findall(r"\S+", out.replace("/v1/audio/transcriptions", "/v1/audio/ transcriptions")))
        assert all(p in words for p in pieces), (width, out)
        assert out.count("123,456") == 2 * 4, out  # both p95s of every row, whole
    assert "endpoint:" not in r.stdout and "POST /v1/audio/" in r.stdout  # a table at 80 columns
    assert "endpoint: POST /v1/audio/transcriptions [medium]" in blocks, blocks


def test_wrap_name_breaks_after_slashes_and_folds_only_a_piece_wider_than_the_column():
    from opsctl.cli.tables import wrap_name

    assert wrap_name("POST /v1/audio/transcriptions", 16) == "POST /v1/audio/\ntranscriptions"
    assert wrap_name("GET /healthz", 40) == "GET /healthz"
    assert wrap_name("abcdefghij", 4) == "abcd\nefgh\nij"
    assert wrap_name("a  b", 1) == "a\nb"
