"""`opsctl dr drill`'s serve phase on the real embedded platform (PostgreSQL, Redis, S3, a
worker): a cancel during its load test (F3) and any cancel printing its --json (F4), the live
Redis and worker down (F6), a serve phase that fails (F8), the JUnit times (F9)."""

from __future__ import annotations

import functools
import json
import os
import signal
import stat
import xml.etree.ElementTree as ET

import pytest

from opsctl.pitr import drill
from pitr_support import pitr  # noqa: F401 - the module's archived cluster

ALL = ["database", "redis", "audio objects", "preview color + transcription", "load test"]


@pytest.fixture(scope="module")
def platform(pitr):  # noqa: F811
    """The pitr cluster plus the rest of the platform, with a backup holding Redis and the
    audio and a base backup: everything a whole drill restores from."""
    from opsctl.endpoints import resolve
    from opsctl.local import platform as pl
    from typer.testing import CliRunner

    pl.up(pitr.project())
    try:
        ep = resolve(pitr.project(), pitr.env())
        ep.s3_client().put_object(Bucket=ep.audio_bucket, Key="drill/one.wav", Body=b"RIFF" + b"\0" * 100)
        runner = CliRunner()
        for args in (("backup", "create"), ("backup", "base")):
            r = pitr.cli(runner, *args)
            assert r.exit_code == 0, r.output
        pitr.wait_archived()
        yield pitr
    finally:
        pl.down(pitr.project())


def _cases(junit) -> dict:
    return {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}


def _database_kept(doc: dict) -> None:
    """The database part's result, achieved before the later phase stopped (F8 b)."""
    assert "database" in doc["scope"] and "database" not in doc["not_covered"], doc
    assert doc["restored_to"] and doc["tables"] >= 1 and doc["rows"] >= 1, doc
    assert doc["rpo_seconds"] is not None and doc["rto_seconds"] is None, doc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_cancel_during_the_load_test_cancels_the_drill(platform, runner, monkeypatch, tmp_path, sig):
    """F3: the load test takes Ctrl-C / SIGTERM to save its partial run and returns; the drill
    took that for a failed load test (exit 1, `error` null). A real signal to this process,
    sent once the load test's run loop ticks."""
    from opsctl.loadtest import runner as lt

    real, sent = lt._tick, []

    def tick(*a, **k):
        if not sent:
            sent.append(sig)
            os.kill(os.getpid(), sig)
        return real(*a, **k)

    monkeypatch.setattr(lt, "_tick", tick)
    junit, prom = tmp_path / "k.xml", tmp_path / "k.prom"
    r = platform.cli(runner, "dr", "drill", "--json", "--junit", str(junit), "--metrics-file", str(prom))
    assert sent and r.exit_code == 130, r.output
    doc = json.loads(r.stdout)
    assert doc["error"] == drill.CANCELLED and not doc["passed"], doc
    assert doc["not_covered"] == ["load test"], doc
    _database_kept(doc)
    cases = _cases(junit)
    assert "cancelled" in cases["drill ran"].find("failure").get("message")
    assert "load test through the preview color" not in cases, list(cases)
    assert cases["load test covered"].find("skipped") is not None
    assert 'opsctl_dr_drill_success{env="local"} 0' in prom.read_text()


def test_a_cancelled_drill_prints_its_json(platform, runner, monkeypatch, tmp_path):
    """F4: a cancel in the restore phase exits 130 with the JSON document, `error` said."""
    from opsctl.pitr import restore

    real = restore.run

    @functools.wraps(real)  # its signature stays: the operation window reads its timeout
    def cancelled(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)  # CI's cancel; sigterm_as_interrupt makes it Ctrl-C
        return real(*a, **k)

    monkeypatch.setattr(restore, "run", cancelled)
    junit = tmp_path / "c.xml"
    r = platform.cli(runner, "dr", "drill", "--json", "--junit", str(junit))
    assert r.exit_code == 130, r.output
    doc = json.loads(r.stdout)
    assert doc["error"] == drill.CANCELLED and not doc["passed"] and doc["scope"] == [], doc
    assert doc["not_covered"] == ALL and all(doc["not_covered_reasons"].values()), doc
    assert "cancelled" in _cases(junit)["drill ran"].find("failure").get("message")


def test_the_live_redis_and_worker_down_do_not_shrink_the_drill(platform, runner, tmp_path):
    """F6: the drill restores Redis from its backup and starts the preview from the recorded
    worker's settings: the live ones being down changed nothing it needs, yet it covered the
    database alone, its note blaming S3 and the worker too."""
    from opsctl.local import platform as pl
    from opsctl.local import procs
    from opsctl.local import worker as wk

    state = platform.state()
    procs.stop(state.components["redis"].pid, 10, "redis-server")
    procs.stop(state.components[wk.name(state.active_color)].pid, 30, "transcription-worker")
    try:
        junit = tmp_path / "r.xml"
        r = platform.cli(runner, "dr", "drill", "--json", "--junit", str(junit))
        doc = json.loads(r.stdout)
        assert r.exit_code == 0, (r.output, doc["problems"])
        assert doc["scope"] == ALL and doc["not_covered"] == [] and doc["not_covered_reasons"] == {}, doc
        assert doc["redis_keys"] >= 0 and "SLO met" in doc["load_test"], doc
        assert not [c for c in _cases(junit).values() if c.find("skipped") is not None]
    finally:
        pl.up(platform.project())


def test_a_serve_phase_that_fails_keeps_the_worker_log_and_the_database_result(platform, runner, monkeypatch):
    """F8: the preview worker never ready: the error named its log in the folder teardown had
    removed, and the reports said the database was not covered (0 tables, 0 rows)."""
    import yaml

    from opsctl.local import worker as wk

    kept_logs = []
    path = platform.root / "opsctl.yaml"
    before = path.read_text()
    doc = yaml.safe_load(before)
    doc["environments"]["local"]["deploy"] = {"ready_timeout": 1}
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setattr(wk, "ready", lambda port: False)  # never ready, however fast the machine
    try:
        r = platform.cli(runner, "dr", "drill", "--json")
        text = platform.cli(runner, "dr", "drill")  # the table: the database's figures, not "0 rows"
    finally:
        path.write_text(before)
        for log in (platform.root / ".opsctl" / "drill").glob("*-preview-worker.log"):
            kept_logs.append(log)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert "preview worker not ready" in doc["error"], doc
    kept = doc["worker_log"]
    assert kept and kept in doc["error"] and "/opsctl-drill-" not in doc["error"], doc
    assert os.path.isfile(kept) and stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    assert kept.startswith(str(platform.root / ".opsctl" / "drill")), kept
    _database_kept(doc)
    assert doc["scope"] == ["database", "redis", "audio objects"], doc
    said = " ".join(text.stdout.split())
    assert text.exit_code == 1 and "0 tables, 0 rows" not in said and "rows read" in said, text.stdout
    assert len(kept_logs) == 2, kept_logs  # one kept by each drill
    for log in kept_logs:
        log.unlink()


def test_junit_times_are_durations_and_the_rpo_figures_are_said_in_the_output(platform, runner, tmp_path):
    """F9: each RPO case took its RPO as its `time`, so the suite's time summed seconds of
    data loss with the recovery's (2669 s for a 17 s drill)."""
    junit = tmp_path / "t.xml"
    r = platform.cli(runner, "dr", "drill", "--json", "--junit", str(junit))
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, (r.output, doc["problems"])
    suite = ET.parse(junit).getroot().find("testsuite")
    assert float(suite.get("time")) == doc["duration_seconds"], (suite.get("time"), doc["duration_seconds"])
    cases = _cases(junit)
    for part, value in [("database", doc["rpo_seconds"]), *doc["part_rpo_seconds"].items()]:
        name = "rpo within 3600 s" if part == "database" else f"rpo of {part} within 3600 s"
        assert float(cases[name].get("time")) == 0.0, (name, cases[name].get("time"))
        assert f"RPO {value} s" in cases[name].find("system-out").text, name
    assert float(cases["rto within 14400 s"].get("time")) == doc["rto_seconds"]
