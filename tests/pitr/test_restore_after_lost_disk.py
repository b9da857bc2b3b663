"""Issue 22 review (restore side): after the data directory is lost and the platform's
start (`opsctl local up`) makes a new cluster, `restore --to-time latest` looked only at the new
cluster ("no base backup of this cluster (system <new>)"): the old cluster's archive could not be
restored. Now, when the live cluster has no base backup at all and the repository holds base
backups of exactly one other cluster, that one is restored."""
from __future__ import annotations

import json


def test_after_a_lost_data_directory_and_a_new_cluster_latest_restores_the_old_one(pitr, runner):
    import psycopg

    from opsctl.local import postgres as pg

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'archived' from generate_series(1, 20)")
    pitr.wait_archived()
    live = {r[0] for r in pitr.sql("select id from events")}
    old = pitr.sysid()
    pg.stop(pitr.pid)
    data = pitr.state().data("postgres")
    data.rename(data.with_name("postgres.lost-disk"))  # the disk holding it is lost
    pitr.start_postgres()  # what `opsctl local up` does: initdb, a new cluster
    assert pitr.sysid() != old
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    try:
        assert any(old in n for n in doc["notes"]), doc["notes"]  # it says which cluster it restored
        with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
            got = {row[0] for row in conn.execute("select id from events")}
    finally:
        pg.stop(doc["pid"])
    assert got == live
