"""'latest' is every commit made before the restore began (breaker 30 F8)."""

from __future__ import annotations

import json



def test_latest_beside_holds_a_commit_made_just_before(pitr, runner):
    """With the default archive_timeout a commit made just before `restore --to-time latest
    --beside` was still in the segment the live server was writing: the restore left it out
    and said nothing. The restore now switches that segment out and waits for the archive."""
    import psycopg

    from opsctl.local import postgres as pg

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.set_archive_timeout(3600)  # a segment is archived when full, or after an hour
    try:
        pitr.wait_archived()  # the restart's own WAL is archived: what follows is the open segment
        pitr.sql("insert into events(note) values ('just before')")
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        try:
            with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
                notes = [n for (n,) in conn.execute("select note from events")]
        finally:
            pg.stop(doc["pid"])
        assert "just before" in notes, (notes, doc)
    finally:
        pitr.set_archive_timeout(1)
