"""Issue 22 review: the newest archived WAL segment deleted from the repository (a hostile or careless
hand, a bucket lifecycle rule) is never named: chain.inventory ends the window at the last segment
present and calls the rest "not archived yet", verify-chain exits 0 with ok true, although the live
server archived it (pg_stat_archiver.last_archived_wal) and the archiver removed its queued copy:
those commits are gone for good and nothing says so (WAL-G's wal-verify checks up to the cluster's
current WAL position)."""
from __future__ import annotations

import json


def test_the_newest_archived_segment_deleted_is_named_by_verify(pitr, runner):
    from opsctl.pitr import layout

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'a' from generate_series(1, 20)")
    pitr.wait_archived()
    pitr.sql("insert into events(note) select 'b' from generate_series(1, 20)")
    last = pitr.wait_archived()
    sysid = pitr.sysid()
    files, _ = layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))
    for obj in files[last]:
        (pitr.root / "repo" / obj.name).unlink()
    (archived,) = pitr.sql("select last_archived_wal from pg_stat_archiver", db="postgres")[0]
    assert archived >= last
    r = pitr.cli(runner, "backup", "verify-chain", "--json")
    print(r.output[-1500:])
    doc = json.loads(r.stdout)
    # a restore to now is refused naming it, not "later WAL is not archived yet"
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).isoformat()
    refused = pitr.cli(runner, "restore", "--to-time", now, "--beside", "--json")
    assert refused.exit_code == 2 and last in refused.output and "missing" in refused.output, refused.output
    assert r.exit_code == 1 and any(p["file"] == last for p in doc["problems"]), \
        f"{last} was archived (pg_stat_archiver says {archived}) and is gone from the repository; verify says ok={doc['ok']}"
