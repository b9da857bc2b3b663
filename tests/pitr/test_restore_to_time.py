"""Must show: rows inserted continuously; a time T chosen mid-run; restore --to-time T gives
exactly the rows committed at or before T (PostgreSQL's own commit timestamps decide)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from pitr_support import Inserter


_T1: dict = {}  # t1 of the first test and the rows committed by then, for the restores after it


def _committed_by(pitr, when: dt.datetime) -> set[int]:
    rows = pitr.sql("select id from events where pg_xact_commit_timestamp(xmin) <= %s", (when,))
    return {r[0] for r in rows}


def test_restore_to_time_gives_exactly_the_rows_committed_by_then(pitr, runner):
    import psycopg

    full = pitr.cli(runner, "backup", "base", "--json")
    assert full.exit_code == 0, full.output
    ins = Inserter(pitr.url("pitrdb")).start()
    time.sleep(0.8)
    inc = pitr.cli(runner, "backup", "base", "--incremental", "--json")
    assert inc.exit_code == 0, inc.output
    assert json.loads(inc.stdout)["parent"] == json.loads(full.stdout)["id"]
    time.sleep(0.4)
    t0 = dt.datetime.now(dt.timezone.utc)  # for the last test: before t1, after the incremental
    time.sleep(0.4)
    t1 = dt.datetime.now(dt.timezone.utc)  # mid-run: rows are committed before and after it
    time.sleep(0.8)
    t2 = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.8)
    ins.stop()
    assert ins.error is None
    pitr.wait_archived()
    want1, want2 = _committed_by(pitr, t1), _committed_by(pitr, t2)
    _T1.update(t1=t1, rows=want1, t0=t0, rows0=_committed_by(pitr, t0))
    total = {r[0] for r in pitr.sql("select id from events")}
    assert want1 and want1 < want2 < total  # T really is mid-run

    # beside the live one: the restored cluster runs on its own port, the live one untouched
    r = pitr.cli(runner, "restore", "--to-time", t1.isoformat().replace("+00:00", "Z"), "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["mode"] == "beside" and len(doc["chain"]) == 2  # full + incremental, recombined
    try:
        with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
            got = {row[0] for row in conn.execute("select id from events")}
    finally:
        from opsctl.local import postgres as pg

        pg.stop(doc["pid"])
    assert got == want1
    assert dt.datetime.fromisoformat(doc["recovered_to"]) <= t1
    assert {r[0] for r in pitr.sql("select id from events")} == total

    # in place: the platform's own server now holds exactly the rows of t2, archiving goes on
    before_pid = pitr.pid
    r = pitr.cli(runner, "restore", "--to-time", t2.isoformat(), "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["mode"] == "in-place" and doc["previous_data_dir"]
    assert pitr.pid != before_pid
    assert {r[0] for r in pitr.sql("select id from events")} == want2
    assert doc["timeline"] == 2
    pitr.sql("insert into events(note) values ('after the restore')")
    assert pitr.wait_archived().startswith("00000002")  # the new timeline is archived


def test_after_an_in_place_restore_latest_follows_the_new_timeline_and_a_second_one_takes_the_next(pitr, runner):
    # every history file is staged for recovery: 'latest' follows timeline 2 past the fork (it
    # stopped there), and the next in-place restore promotes to timeline 3 (it reused 2, whose
    # WAL the archiver then dropped as "already archived"). That restore goes back to t1, before
    # where timeline 2 left timeline 1: 'latest' then reads timeline 1 only up to timeline 3's
    # start, never the abandoned rows between t1 and t2
    import psycopg

    from opsctl.local import postgres as pg

    def latest_beside() -> tuple[set[int], int]:
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        try:
            with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
                return {row[0] for row in conn.execute("select id from events")}, doc["timeline"]
        finally:
            pg.stop(doc["pid"])

    live = {r[0] for r in pitr.sql("select id from events")}
    assert pitr.sql("select count(*) from events where note = 'after the restore'")[0][0] == 1
    # the next timeline no history file names (a copy beside archives nothing)
    assert latest_beside() == (live, 3)

    t1, want1 = _T1["t1"], _T1["rows"]
    assert want1 and want1 < live
    # a base backup on timeline 2, which the restore below abandons: never chosen after it
    abandoned = pitr.cli(runner, "backup", "base", "--json")
    assert abandoned.exit_code == 0, abandoned.output
    _T1["abandoned"] = json.loads(abandoned.stdout)["id"]
    r = pitr.cli(runner, "restore", "--to-time", t1.isoformat(), "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["timeline"] == 3
    assert {r[0] for r in pitr.sql("select id from events")} == want1
    pitr.sql("insert into events(note) values ('after the second restore')")
    assert pitr.wait_archived().startswith("00000003")
    live = {r[0] for r in pitr.sql("select id from events")}
    assert latest_beside() == (live, 4)
    v = pitr.cli(runner, "backup", "verify-chain", "--json")
    assert v.exit_code == 0, v.output
    # timeline 3 left timeline 1 at t1, before timeline 2 began: 2 is not on its path
    assert [t["timeline"] for t in json.loads(v.stdout)["timeline_path"]] == [1, 3]


def test_a_restore_before_an_earlier_fork_follows_the_timeline_holding_its_target(pitr, runner):
    # the previous test restored in place to t1, on timeline 1 before where timeline 2 left it:
    # recovery_target_timeline is the timeline holding the target (1), not 'latest' (2), so
    # timeline 3's history names timeline 1 only ("2 <X>" with X before timeline 2's start was a
    # switch point backwards: the WAL summarizer then read timeline 2 where it has no WAL,
    # logged "unexpected pageaddr", and incremental base backups had no summaries to build on)
    import psycopg

    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    live_wal = pitr.state().data("postgres") / "pg_wal"
    assert [tli for tli, _ in layout.parse_history((live_wal / "00000003.history").read_text())] == [1]
    inc = pitr.cli(runner, "backup", "base", "--incremental", "--json")
    assert inc.exit_code == 0, inc.output
    assert json.loads(inc.stdout)["parent"] not in (None, _T1["abandoned"])  # a parent on timeline 3's history
    pitr.sql("insert into events(note) values ('after the incremental')")
    pitr.wait_archived()
    live = {r[0] for r in pitr.sql("select id from events")}
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    try:
        assert doc["chain"][-1] == json.loads(inc.stdout)["id"]  # restored from that incremental
        with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
            assert {row[0] for row in conn.execute("select id from events")} == live
    finally:
        pg.stop(doc["pid"])
    assert "unexpected pageaddr" not in pitr.state().log("postgres").read_text()

    # a time further back on timeline 1, before timeline 3 left it: the WAL up to the switch is
    # read to place the target, the switch segment is staged under timeline 1's name, and the
    # copy's new timeline names timeline 1 only (with 'latest' it named 3, a backwards switch)
    t0, want0 = _T1["t0"], _T1["rows0"]
    assert want0 and want0 < _T1["rows"]
    r = pitr.cli(runner, "restore", "--to-time", t0.isoformat(), "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    try:
        with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
            assert {row[0] for row in conn.execute("select id from events")} == want0
    finally:
        pg.stop(doc["pid"])
    history = (Path(doc["data_dir"]) / "pg_wal" / layout.history_file(doc["timeline"])).read_text()
    assert [tli for tli, _ in layout.parse_history(history)] == [1]
