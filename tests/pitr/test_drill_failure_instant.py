"""Breaker 64 F5: the drill restored to 'latest' as `restore` does, switching the live server's
open WAL segment out and waiting for the queue first, so every drill with the server up measured
an RPO of 0 s: the pretended failure had the live server's help, which a lost disk never gives,
and no RPO target could be missed. The drill now restores what the repository holds at its
start: a commit still in the open segment is lost to it, and its RPO says so."""
from __future__ import annotations

import datetime as dt
import json


def test_a_drill_measures_the_commits_the_archive_does_not_hold_yet(pitr, runner):
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.commit_archived("insert into events(note) values ('archived')")
    pitr.set_archive_timeout(600)  # nothing switches the open segment out during the test
    try:
        pitr.sql("insert into events(note) values ('open segment')")
        (open_commit,) = pitr.sql("select timestamp from pg_last_committed_xact()", db="postgres")[0]
        r = pitr.cli(runner, "dr", "drill", "--env", "local", "--json")
        doc = json.loads(r.stdout)
        assert doc["rpo_basis"] and doc["rpo_seconds"] is not None, r.output
        # the newest commit recovered is older than the one still in the open segment
        assert doc["rpo_seconds"] > 0, r.output
        assert dt.datetime.fromisoformat(doc["restored_to"].replace("Z", "+00:00")) < open_commit, r.output
        # restore's 'latest' still holds every commit made before it began
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert r.exit_code == 0, r.output
        from pitr_support import beside_ids

        notes = {row[0] for row in pitr.sql("select id from events where note = 'open segment'")}
        assert notes <= beside_ids(json.loads(r.stdout))
    finally:
        pitr.set_archive_timeout(1)
        pitr.ensure_archiver()
