"""breaker 42 R13: `opsctl dr drill` passed, saying nothing, while no WAL archiver ran and segments
waited (the `wal archive` check CRITICAL): the drill now says the archive is not advancing and fails.
Breaker 44 T8: the same right after the archiver stopped, before any segment waits (the check then
only a WARNING)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET


def test_a_drill_fails_while_the_archive_is_not_advancing(pitr, runner, tmp_path):
    from opsctl.pitr import local as pitr_local

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'brk42' from generate_series(1, 5)")
    pitr.wait_archived()
    state = pitr.state()
    assert pitr_local.stop_archiver(state)
    try:
        pitr.queue_a_segment()  # a finished segment waits in the local queue
        health = pitr.cli(runner, "health", "--check", "wal archive", "--json")
        assert health.exit_code == 2, health.output  # the check is CRITICAL: no archiver, segments wait
        junit = tmp_path / "drill.xml"
        r = pitr.cli(runner, "dr", "drill", "--json", "--junit", str(junit))
        assert r.exit_code == 1, r.output
        doc = json.loads(r.stdout)
        assert not doc["passed"], doc
        stalled = [p for p in doc["problems"] if "archive is not advancing" in p]
        assert stalled and "no archiver runs" in stalled[0], doc["problems"]
        assert doc["wal_archive"].startswith("CRITICAL"), doc
        (rpo,) = [c for c in ET.parse(junit).getroot().iter("testcase") if c.get("name").startswith("rpo within")]
        assert "not advancing" in rpo.find("failure").get("message")  # the RPO a real recovery would miss
        table = pitr.cli(runner, "dr", "drill")
        assert table.exit_code == 1 and "not advancing" in table.output, table.output
    finally:
        pitr.ensure_archiver()
    pitr.wait_archived()
    r = pitr.cli(runner, "dr", "drill", "--json")  # the archiver back: the drill passes again
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["wal_archive"].startswith("OK")


def test_a_drill_fails_when_no_archiver_runs_before_any_segment_waits(pitr, runner):
    from opsctl.pitr import local as pitr_local

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    assert pitr_local.stop_archiver(pitr.state())
    try:
        r = pitr.cli(runner, "dr", "drill", "--json")
        assert r.exit_code == 1, r.output
        doc = json.loads(r.stdout)
        stalled = [p for p in doc["problems"] if "archive is not advancing" in p]
        # archive_timeout is 1 s here: a segment the server switched meanwhile makes the check CRITICAL
        said = "no WAL archiver runs at the drill's start" if doc["wal_archive"].startswith("WARNING") else "no archiver runs"
        assert stalled and said in stalled[0], doc
    finally:
        pitr.ensure_archiver()
    pitr.wait_archived()
    r = pitr.cli(runner, "dr", "drill", "--json")
    assert r.exit_code == 0, r.output


def test_a_warning_for_a_stopped_or_stuck_archiver_fails_the_drill():
    """The rule itself, on the check results archive_lag gives before any segment waits."""
    import datetime as dt

    from opsctl.health.model import CheckResult, Status
    from opsctl.pitr import drill

    def result() -> drill.DrillResult:
        return drill.DrillResult("local", "local", dt.datetime.now(dt.timezone.utc), 10.0, 1.0, 3600.0, 3600.0,
                                 False, None, None, "scratch")

    cases = [({"archiver_running": False, "archiver_stuck": None}, "no WAL archiver runs at the drill's start"),
             ({"archiver_running": True, "archiver_stuck": "no progress for 40 s"},
              "the WAL archiver is stuck at the drill's start")]
    for details, said in cases:
        out = result()
        check = CheckResult("wal archive", "backup", Status.WARNING, "no archiver runs: new WAL will wait", 2.0, "s",
                            details=details)
        drill._judge_archive(out, check)
        assert out.problems == [f"{drill.STALLED} ({said}): no archiver runs: new WAL will wait"], out.problems
        assert out.wal_archive == "WARNING: no archiver runs: new WAL will wait"
    out = result()
    healthy = CheckResult("wal archive", "backup", Status.OK, "archive lag at most 1 s", 1.0, "s",
                          details={"archiver_running": True, "archiver_stuck": None})
    drill._judge_archive(out, healthy)
    assert out.problems == []
