"""Breaker 36 F1: a restore to just before a DROP TABLE waited forever, silent, holding the
deploy lease. Recovery pauses before the DROP's commit, and the replay keeps the transaction's
ACCESS EXCLUSIVE lock until the promotion rolls it back; the check read each table's size and
rows in recovery, without a lock timeout. The table is now read after the promotion."""

from __future__ import annotations

import datetime as dt
import json
import time


def test_a_restore_to_just_before_a_drop_table_gives_the_table_back(pitr, runner):
    import psycopg

    from opsctl.local import postgres as pg

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("create table important (id int)")
    pitr.sql("insert into important select generate_series(1, 1000)")
    time.sleep(0.5)
    before_drop = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.5)
    pitr.sql("drop table important")
    pitr.wait_archived()

    r = pitr.cli(runner, "restore", "--to-time", before_drop.isoformat(), "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    try:
        with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
            assert conn.execute("select count(*) from important").fetchone()[0] == 1000
    finally:
        pg.stop(doc["pid"])
    assert doc["tables"]["public.important"] == 1000, doc["tables"]
    assert any("public.important were read after the promotion" in n for n in doc["notes"]), doc["notes"]


def test_a_database_holding_an_unlogged_table_restores_with_it_empty(pitr, runner):
    """Breaker 41 Q2: the check read every table during recovery, where an unlogged one can't
    be read ("cannot access temporary or unlogged relations during recovery"), so every
    point-in-time restore and drill of such a database failed, blaming a server that "stopped
    answering". Its rows are in no WAL: recovered, it is empty."""
    import psycopg

    from opsctl.local import postgres as pg

    pitr.sql("create unlogged table cache_rows (k text)")
    pitr.sql("insert into cache_rows select generate_series(1, 300)::text")
    pitr.sql("create table kept_rows (id int)")
    pitr.sql("insert into kept_rows select generate_series(1, 50)")
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()

    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    try:
        with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
            assert conn.execute("select count(*) from cache_rows").fetchone()[0] == 0
            assert conn.execute("select count(*) from kept_rows").fetchone()[0] == 50
    finally:
        pg.stop(doc["pid"])
    assert doc["tables"]["public.cache_rows"] == 0 and doc["tables"]["public.kept_rows"] == 50, doc["tables"]
    # and said (breaker 60: emptied without a word)
    assert [n for n in doc["notes"] if n.startswith("unlogged table(s), empty after any restore: public.cache_rows ")], doc
