"""Issue 22 review (breaker 17): an in-place restore after a lost data directory replaces the
empty cluster `local up` made; it says so, not that later commits were lost. A module of its
own: the repository must hold base backups of one cluster only (restore's rule after a lost disk)."""
from __future__ import annotations

import json


def test_an_in_place_restore_after_a_lost_disk_names_the_cluster_it_replaced(pitr, runner):
    """Breaker 17: in place, the empty cluster `local up` made after a lost disk was taken for
    a server whose later commits were lost ("the replaced server committed until ...: those
    later commits are not in the restored cluster"); the note now says which cluster it was."""
    from opsctl.local import postgres as pg

    pitr.sql("create table if not exists events (id bigserial primary key, note text)")
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'kept' from generate_series(1, 10)")
    pitr.wait_archived()
    live = {r[0] for r in pitr.sql("select id from events")}
    pg.stop(pitr.pid)
    data = pitr.state().data("postgres")
    data.rename(data.with_name("postgres.lost-disk-2"))
    pitr.start_postgres()
    pitr.ensure_archiver()
    new = pitr.sysid()
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--yes", "--json")
    assert r.exit_code == 0, r.output
    notes = json.loads(r.stdout)["notes"]
    assert not any("committed until" in n for n in notes), notes
    assert any(f"another cluster (system {new})" in n for n in notes), notes
    assert {row[0] for row in pitr.sql("select id from events")} == live
