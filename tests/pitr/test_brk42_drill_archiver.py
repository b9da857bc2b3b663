"""breaker 42 R13: `opsctl dr drill` passed, saying nothing, while no WAL archiver ran and segments
waited (the `wal archive` check CRITICAL): the drill now says the archive is not advancing and fails."""
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
