"""Issue 22 review (restore side): after the data directory is lost and the platform's
start (`opsctl local up`) makes a new cluster, `restore --to-time latest` looked only at the new
cluster ("no base backup of this cluster (system <new>)"): the old cluster's archive could not be
restored. Now, when the live cluster has no base backup at all (an interrupted one, a folder
without its record, does not count) and the repository holds base backups of exactly one other
cluster, that one is restored."""
from __future__ import annotations

import json


def test_after_a_lost_data_directory_and_a_new_cluster_latest_restores_the_old_one(pitr, runner):
    import psycopg

    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'archived' from generate_series(1, 20)")
    pitr.wait_archived()
    live = {r[0] for r in pitr.sql("select id from events")}
    old = pitr.sysid()
    pg.stop(pitr.pid)
    data = pitr.state().data("postgres")
    data.rename(data.with_name("postgres.lost-disk"))  # the disk holding it is lost
    pitr.start_postgres()  # what `opsctl local up` does: initdb, a new cluster
    new = pitr.sysid()
    assert new != old
    # a base backup of the new cluster that was interrupted (its tar partly uploaded, no base.json):
    # no base backup, so it does not hide the old cluster
    pitr.repo().put_bytes(f"{layout.base_prefix(new)}20261130T123000Z/base.tar.zst", b"partial")
    # backup list shows the window a restore restores, as verify-chain does (breaker 18 F4: no
    # window, no note: "no backups", the operator's first look right after the disk was lost)
    listed = pitr.cli(runner, "backup", "list", "--json")
    assert listed.exit_code == 0, listed.output
    shown = json.loads(listed.stdout)["pitr"]
    assert shown["sysid"] == old and shown["windows"], shown
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


def test_local_up_after_a_lost_data_directory_replaces_the_archiver_of_the_old_cluster(pitr, tmp_path):
    """The archiver still running from before the data directory was lost was adopted by
    `local up` and kept the old cluster's system identifier: the new cluster's timeline history
    was filed under the old one. Now `local up` restarts an archiver started for another
    cluster, and an archiver follows its data directory's cluster for what names none.
    (Runs on the cluster the previous test made anew.)"""
    from opsctl.local import procs
    from opsctl.pitr import archive, layout
    from opsctl.pitr.ops import repository

    stale = pitr.state().components["archiver"].pid
    pitr.ensure_archiver()  # what `opsctl local up` does after starting PostgreSQL
    fresh = pitr.state().components["archiver"].pid
    assert fresh != stale and not procs.alive(stale, "opsctl.pitr.archive")
    assert pitr.sysid() in " ".join(__import__("psutil").Process(fresh).cmdline())
    # an archiver that knew the old cluster files a queued history file under the new one
    env = pitr.env()
    scratch = env.model_copy(update={"backup": env.backup.model_copy(
        update={"repository": f"file://{tmp_path / 'repo'}"})})
    repo = repository(pitr.project(), scratch)
    queue = tmp_path / "queue"
    archive.prepare_queue(queue, None)
    (queue / "00000002.history").write_text("1\t0/9000000\tno recovery target specified\n")
    gone = "7" * 19
    archive.Archiver(repo, pitr.key(), gone, queue, data=pitr.state().data("postgres")).drain()
    files, _ = layout.parse_wal(pitr.sysid(), repo.names(layout.wal_prefix(pitr.sysid())))
    assert list(files) == ["00000002.history"]
    assert not repo.names(layout.root(gone) + "/")


def test_an_in_place_swap_interrupted_between_its_renames_puts_the_live_data_directory_back(pitr, runner, monkeypatch):
    """Issue 22 review: Ctrl-C / SIGTERM (taken as Ctrl-C) between the swap's two renames
    (live -> postgres.before-*, restored -> postgres) left no data/postgres: the cleanup removed
    the restored copy and the next `local up` would initdb an empty cluster. Now the previous data
    directory goes back and runs again. (Runs on the cluster the previous test made anew.)"""
    from pathlib import Path

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    live_id = pitr.sysid()
    real = Path.rename
    fired = []

    def rename(self, target):
        if Path(target).name == "postgres" and self.name.startswith("postgres.restoring-") and not fired:
            fired.append(self)
            raise KeyboardInterrupt  # the signal arrives between the two renames
        return real(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "rename", rename)
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--yes")
    assert fired and r.exit_code != 0, r.output
    live = pitr.state().data("postgres")
    assert live.is_dir() and pitr.sysid() == live_id
    assert pitr.sql("select 1", db="postgres") == [(1,)]  # the previous server runs again
    assert not list(live.parent.glob("postgres.restoring-*")), sorted(p.name for p in live.parent.iterdir())


def test_a_swap_killed_between_its_renames_is_undone_by_local_up_the_next_restore_or_local_down(pitr):
    """kill -9 between the swap's renames (nothing of opsctl runs to undo it): the platform's start
    of postgres (`local up`) and clean_abandoned (the next restore, `local down`) move the previous
    data directory back instead of making an empty cluster."""
    import json

    from opsctl.local import postgres as pg
    from opsctl.pitr.restore import clean_abandoned

    state = pitr.state()
    live = state.data("postgres")
    live_id = pitr.sysid()
    stamp = "20261130120000"
    restoring = live.with_name(f"postgres.restoring-{stamp}")
    restoring.mkdir()
    record = state.folder / "restores" / f"pitr-run-{stamp}.json"
    record.parent.mkdir(exist_ok=True)
    # a restore whose opsctl process is gone (its start time is not this process's)
    record.write_text(json.dumps({"opsctl_pid": 1, "opsctl_started": 0, "new": str(restoring),
                                  "stage": str(live.with_name(f"pitr-wal-{stamp}")),
                                  "work": str(live.with_name(f"pitr-work-{stamp}")), "server_pid": None}))
    pg.stop(pitr.pid)
    live.rename(live.with_name(f"postgres.before-{stamp}"))  # the first rename, then kill -9
    pitr.start_postgres()  # `local up` (the platform's start of postgres) puts it back, no initdb
    assert pitr.sysid() == live_id
    pg.stop(pitr.pid)
    live.rename(live.with_name(f"postgres.before-{stamp}"))  # again; now the next restore / `local down`
    clean_abandoned(pitr.state())
    assert live.is_dir() and not restoring.exists() and not record.exists()
    pitr.start_postgres()
    assert pitr.sysid() == live_id

