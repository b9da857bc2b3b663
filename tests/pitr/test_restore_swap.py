"""Issue 22 review (22d): an in-place restore's swap and the names a restore uses.

- Ctrl-C after the swapped-in restored server started: the undo stops that server before it
  removes its data directory and puts the previous one back, started on the platform's port.
- Two in-place restores while the first one's timeline history still waits in the local WAL
  queue (archiver stopped) take two timelines; the queued history is never replaced.
- Two restores beside the live server started in the same second share no folder or record.
"""
from __future__ import annotations

import datetime as dt
import re
import time
import types

import psutil
import pytest

from opsctl.errors import OperationFailed


def _base_backup(pitr, runner) -> None:
    """A base backup of the live cluster, taken unless one is there (each test runs alone too)."""
    from opsctl.pitr import layout

    if not pitr.repo().names(layout.base_prefix(pitr.sysid())):
        assert pitr.cli(runner, "backup", "base").exit_code == 0


def _restore(pitr, beside: bool = False):
    from opsctl.pitr import restore

    return restore.restore(pitr.project(), pitr.env(), to_time="latest", beside=beside)


def _undone_swap(pitr, monkeypatch) -> None:
    """An in-place restore to latest, Ctrl-C once the swapped-in server answers (its timeline's
    history is queued by then): the swap is undone and the live server back on its timeline."""
    from opsctl.local import postgres as pg

    real_ensure, fired = pg.ensure_database, []

    def ensure_database(*a, **kw):
        if not fired:
            fired.append(1)
            raise KeyboardInterrupt
        return real_ensure(*a, **kw)

    monkeypatch.setattr(pg, "ensure_database", ensure_database)
    with pytest.raises(KeyboardInterrupt):
        _restore(pitr)
    monkeypatch.undo()


@pytest.mark.parametrize("at", ["the live server stopped", "the restored directory moved in",
                                "the restored server started"])
def test_ctrl_c_in_the_swap_puts_the_previous_server_back_running_and_stops_the_restored_one(pitr, runner,
                                                                                            monkeypatch, at):
    """Ctrl-C (SIGTERM is taken as one) at each instant of the in-place swap: afterwards the
    previous data directory serves the platform's port, and no server runs on a removed copy."""
    from pathlib import Path

    from opsctl.local import platform
    from opsctl.local import postgres as pg

    _base_backup(pitr, runner)
    pitr.sql("insert into events(note) values ('before')")
    pitr.wait_archived()
    previous = pitr.sysid(), pitr.sql("select count(*) from events")[0][0]
    live_pid = pitr.pid
    fired = []

    def once():
        if not fired:
            fired.append(at)
            raise KeyboardInterrupt

    if at == "the live server stopped":
        real_stop = pg.stop

        def stop(pid, *a, **kw):
            done = real_stop(pid, *a, **kw)
            if pid == live_pid:
                once()
            return done

        monkeypatch.setattr(pg, "stop", stop)
    elif at == "the restored directory moved in":
        real_rename = Path.rename

        def rename(self, target):
            done = real_rename(self, target)
            if self.name.startswith("postgres.restoring-"):
                once()
            return done

        monkeypatch.setattr(Path, "rename", rename)
    else:
        real_ensure = pg.ensure_database

        def ensure_database(*a, **kw):  # start_component waits for the swapped-in server here
            once()
            return real_ensure(*a, **kw)

        monkeypatch.setattr(pg, "ensure_database", ensure_database)
    with pytest.raises(KeyboardInterrupt):
        _restore(pitr)
    monkeypatch.undo()
    assert fired
    state = pitr.state()
    live = state.data("postgres")
    pid = platform.live_pid(state, "postgres")
    assert pid is not None, "the previous server was not started again"
    # the server on the platform's port runs on data/postgres as it is now, not on a removed copy
    assert psutil.Process(pid).cwd() == str(live)
    running = [p for p in psutil.process_iter(["cmdline"])
               if p.info["cmdline"] and "postgres" in p.info["cmdline"][0]
               and any(str(live.parent) in arg for arg in p.info["cmdline"])]
    assert [p.pid for p in running] == [pid], "another server still runs in the platform's data folder"
    assert not list(live.parent.glob("postgres.before-*")) and not list(live.parent.glob("postgres.restoring-*"))
    assert (pitr.sysid(), pitr.sql("select count(*) from events")[0][0]) == previous
    pitr.sql("insert into events(note) values ('after the undo')")


def test_two_in_place_restores_with_the_first_history_still_queued_take_two_timelines(pitr, runner, monkeypatch):
    from opsctl.local import state as st
    from opsctl.pitr import local as pitr_local

    _base_backup(pitr, runner)
    folder = st.folder_for(pitr.root)
    with st.locked(folder):
        state = st.load(folder)
        pitr_local.stop_archiver(state)  # the repository is down: history files wait in the queue
        state.save()
    # and stays down: the archiver each swap starts again would drain nothing
    monkeypatch.setattr(pitr_local, "ensure_archiver", lambda *a, **kw: "the repository is down (test)")
    try:
        queue = pitr_local.queue_dir(pitr.state())
        first = _restore(pitr)
        queued = queue / f"{first.timeline:08X}.history"
        assert queued.is_file()
        held = queued.read_bytes()
        second = _restore(pitr)
        assert second.timeline > first.timeline, (first.timeline, second.timeline)
        assert queued.read_bytes() == held, "the first restore's queued history was replaced"
        assert (queue / f"{second.timeline:08X}.history").is_file()
    finally:
        monkeypatch.undo()
        pitr.ensure_archiver()
    pitr.wait_archived()  # archiving goes on: no history file of two contents


def test_a_queued_timeline_history_is_never_replaced(tmp_path):
    from opsctl.pitr.restore import _queue_history

    live, queue = tmp_path / "live", tmp_path / "queue"
    (live / "pg_wal").mkdir(parents=True)
    queue.mkdir()
    (live / "pg_wal" / "00000002.history").write_text("1\t0/3000000\tno recovery target specified\n")
    (queue / "00000002.history").write_text("1\t0/5000000\tbefore 2026-11-30 12:00:00+00\n")
    with pytest.raises(OperationFailed, match="timeline was reused"):
        _queue_history(live, queue)
    assert (queue / "00000002.history").read_text().startswith("1\t0/5000000")
    (live / "pg_wal" / "00000003.history").write_text("2\t0/6000000\tx\n")
    _queue_history(live, queue)
    assert (queue / "00000003.history").read_text() == "2\t0/6000000\tx\n"
    _queue_history(live, queue)  # the same bytes queued already: nothing to do
    assert sorted(p.name for p in queue.iterdir()) == ["00000002.history", "00000003.history"]


def test_two_beside_restores_started_in_the_same_second_share_no_folder(pitr, runner, monkeypatch):
    from opsctl.pitr import restore

    _base_backup(pitr, runner)

    class SameSecond(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 11, 30, 12, 0, 0, tzinfo=tz)

    monkeypatch.setattr(restore, "dt", types.SimpleNamespace(datetime=SameSecond, timezone=dt.timezone,
                                                            timedelta=dt.timedelta, date=dt.date))
    plans = []
    try:
        for _ in range(2):
            plans.append(restore.plan(pitr.project(), pitr.env(), to_time="latest", beside=True))
        a, b = (p.context for p in plans)
        assert a["stamp"] != b["stamp"]
        for name in ("new", "stage"):
            assert a[name] != b[name], name
        assert a["stage"].is_dir() and b["stage"].is_dir()
        records = restore._record_path(a["state"].folder / "data", a["stamp"]), \
            restore._record_path(b["state"].folder / "data", b["stamp"])
        assert records[0] != records[1] and all(r.is_file() for r in records)
        restore.discard(plans.pop(0))  # the first one's end leaves the second one's folders alone
        assert b["stage"].is_dir() and records[1].is_file()
    finally:
        for p in plans:
            restore.discard(p)


def test_a_restore_killed_after_its_swap_still_gets_its_timeline_history_archived(pitr, runner, monkeypatch):
    """kill -9 after the restored directory was moved in, before its history was queued: the
    restored server is the live one, and PostgreSQL never archives a history file made with
    archiving off; the platform's next start of postgres (`local up`) queues it."""
    import json
    import subprocess

    from opsctl.local import postgres as pg
    from opsctl.pitr import layout
    from opsctl.pitr import local as pitr_local
    from opsctl.pitr import restore

    _base_backup(pitr, runner)
    records = pitr.state().folder / "restores"
    before = set(records.glob("pitr-run-*.json"))
    with monkeypatch.context() as m:
        m.setattr(restore, "_queue_history", lambda live, queue: None)  # killed before it queued
        m.setattr(restore, "discard", lambda p: None)  # killed: its record stays
        result = _restore(pitr)
    history = f"{result.timeline:08X}.history"
    queue = pitr_local.queue_dir(pitr.state())
    assert not (queue / history).exists()
    (record,) = set(records.glob("pitr-run-*.json")) - before
    gone = subprocess.Popen(["true"])
    gone.wait()
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "opsctl_pid": gone.pid}))  # its process is gone
    pg.stop(pitr.pid)
    pitr.start_postgres()  # `opsctl local up`
    prefix = layout.wal_prefix(pitr.sysid()) + history + "."
    # queued before the server started; a queued file leaves the queue only once stored
    assert (queue / history).is_file() or pitr.repo().names(prefix), "the restored timeline's history never queued"
    restore.clean_abandoned(pitr.state())
    assert not record.exists()


def test_a_replay_port_taken_before_the_server_binds_it_gets_another(pitr, runner, monkeypatch):
    """Two restores (or a restore and anything else) can be handed the same free port: the
    second server to bind it exited at start-up and its restore failed ("port ... served by
    another process ... 'opsctl local down --purge'"). The replay now takes another port."""
    import socket

    from opsctl.local import procs
    from opsctl.local import postgres as pg

    _base_backup(pitr, runner)
    pitr.wait_archived()
    stranger = socket.socket()
    stranger.bind((procs.HOST, 0))
    stranger.listen()
    taken = stranger.getsockname()[1]
    real, handed = procs.free_port, []

    def racy() -> int:  # the first port chosen is one another process binds meanwhile
        handed.append(taken if not handed else real())
        return handed[-1]

    monkeypatch.setattr(procs, "free_port", racy)
    try:
        result = _restore(pitr, beside=True)
    finally:
        stranger.close()
    try:
        port = int(result.url.rsplit(":", 1)[1].split("/")[0])
        assert handed[0] == taken and len(handed) >= 2
        assert port != taken and pg.ready(port) and procs.listens(result.pid, [port])
    finally:
        pg.stop(result.pid)


def test_a_timeline_an_undone_swap_left_in_the_repository_is_not_followed(pitr, runner, monkeypatch):
    """An in-place restore undone after its swap had queued the new timeline's history (Ctrl-C
    once the restored server answers): the history reached the repository, the live server
    went back to its own timeline and took writes. verify-chain's window stopped before the
    undo and `restore --to-time latest` followed the abandoned timeline, silently losing every
    row written since; now both follow the live server's timeline, and prune keeps its chain."""
    import json
    import time

    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    _base_backup(pitr, runner)
    pitr.wait_archived()
    sysid = pitr.sysid()
    (before_tli,) = pitr.sql("select timeline_id from pg_control_checkpoint()", db="postgres")[0]
    _undone_swap(pitr, monkeypatch)
    abandoned = layout.history_file(before_tli + 1)
    pitr.sql("insert into events(note) select 'after the undo' from generate_series(1, 70)")
    pitr.wait_archived()
    # the abandoned timeline's history reached the repository (the archiver files it)
    deadline = time.monotonic() + 60
    while not any(abandoned in n for n in pitr.repo().names(layout.root(sysid) + "/")):
        assert time.monotonic() < deadline, f"{abandoned} never reached the repository"
        time.sleep(0.2)
    (tli,) = pitr.sql("select timeline_id from pg_control_checkpoint()", db="postgres")[0]
    assert tli == before_tli  # the live server is back on its own timeline
    checked = pitr.cli(runner, "backup", "verify-chain", "--json")
    assert checked.exit_code == 0, checked.output
    assert [p["timeline"] for p in json.loads(checked.stdout)["timeline_path"]][-1] == before_tli
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    try:
        assert doc["tables"]["public.events"] == pitr.sql("select count(*) from events")[0][0]
    finally:
        pg.stop(doc["pid"])
    kept = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "1", "--dry-run", "--json")
    assert kept.exit_code == 0 and json.loads(kept.stdout)["kept"], kept.output
    # the same with the live server stopped: its data directory still says which timeline it is on
    rows = pitr.sql("select count(*) from events")[0][0]
    pg.stop(pitr.pid)
    try:
        checked = pitr.cli(runner, "backup", "verify-chain", "--json")
        assert [p["timeline"] for p in json.loads(checked.stdout)["timeline_path"]][-1] == before_tli, checked.output
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        pg.stop(doc["pid"])
        assert doc["tables"]["public.events"] == rows
        # and with the data directory lost, no live server to ask: the undo recorded the timeline
        # as abandoned in the repository (before, latest followed it and lost the rows since)
        markers = pitr.repo().names(layout.abandoned_prefix(sysid))
        assert f"{before_tli + 1:08X}" in [n.rpartition("/")[2][:8] for n in markers], markers
        data = pitr.state().data("postgres")
        lost = data.with_name("postgres.lost-disk")
        data.rename(lost)
        try:
            checked = pitr.cli(runner, "backup", "verify-chain", "--json")
            assert [p["timeline"] for p in json.loads(checked.stdout)["timeline_path"]][-1] == before_tli, \
                checked.output
            r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
            assert r.exit_code == 0, r.output
            doc = json.loads(r.stdout)
            pg.stop(doc["pid"])
            assert doc["tables"]["public.events"] == rows
        finally:
            lost.rename(data)
    finally:
        pitr.start_postgres()


def test_a_planted_abandoned_timeline_marker_is_named_and_ignored(pitr, runner):
    """A marker under abandoned/ that fails its tag (planted without the key, or modified) is a
    problem verify-chain names, and the timeline path is what it was."""
    import json

    from opsctl.pitr import layout

    _base_backup(pitr, runner)
    pitr.wait_archived()
    sysid = pitr.sysid()
    before = pitr.cli(runner, "backup", "verify-chain", "--json")
    path = json.loads(before.stdout)["timeline_path"]
    newest = path[-1]["timeline"]
    planted = f"{layout.abandoned_prefix(sysid)}{newest:08X}.{'0' * 32}"
    pitr.repo().put_bytes(planted, json.dumps({"timeline": newest, "history": "", "why": "planted"}).encode())
    try:
        after = pitr.cli(runner, "backup", "verify-chain", "--json")
        doc = json.loads(after.stdout)
        assert doc["timeline_path"] == path, after.output
        assert any(p["kind"] == "not authentic" and p["file"] == layout.abandoned_file(newest)
                   for p in doc["problems"]), after.output
        assert after.exit_code != 0
    finally:
        pitr.repo().delete_names([planted])


def test_an_in_place_restore_of_a_stopped_platform_starts_its_archiver_and_says_so(pitr, runner):
    """`local down`, then `restore --to-time latest --yes`: PostgreSQL came up on the new
    timeline with no archiver, exit 0, nothing said; its WAL waited in the queue unseen."""
    import json

    from opsctl.local import postgres as pg
    from opsctl.pitr import local as pitr_local

    _base_backup(pitr, runner)
    pitr.wait_archived()
    state = pitr.state()
    assert pitr_local.stop_archiver(state)
    pg.stop(pitr.pid)
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--yes", "--json")
    assert r.exit_code == 0, r.output
    notes = json.loads(r.stdout)["notes"]
    assert any("was not running before the restore" in n for n in notes), notes
    assert pitr_local.archiver_pid(pitr.state()) is not None  # archiving goes on, as after `local up`
    pitr.wait_archived()  # the new timeline's WAL reaches the repository


def test_local_down_is_refused_while_a_restore_holds_the_lease(pitr, runner):
    """`local down` during an in-place restore stopped its recovery server (the restore failed on
    a raw driver error) or let it start PostgreSQL again afterwards on a platform its user had
    stopped. Now it waits its turn: refused, one line, nothing stopped."""
    from opsctl.cli import app
    from opsctl.pitr import lease

    with lease.held(pitr.project(), pitr.env(), "restore"):
        r = runner.invoke(app, ["--root", str(pitr.root), "local", "down"])
    assert r.exit_code == 2 and "local down refused: a restore (pid" in r.output, r.output
    assert pitr.sql("select 1")[0][0] == 1  # still serving


def test_timeline_n_recovers_along_that_timeline_and_bad_values_are_refused(pitr, runner, monkeypatch):
    """`restore --timeline N` (pgBackRest's --target-timeline) follows timeline N's history
    instead of the live server's: here the branch an undone swap abandoned, which holds the rows
    as they were at the undo and none written after it; `verify-chain --timeline N` shows that
    path. A timeline the repository holds nothing of, 0, or --timeline without --to-time/--to-lsn
    is refused with exit 2 and one line."""
    import json

    from opsctl.local import postgres as pg

    _base_backup(pitr, runner)
    pitr.wait_archived()
    at_undo = pitr.sql("select count(*) from events")[0][0]
    (before_tli,) = pitr.sql("select timeline_id from pg_control_checkpoint()", db="postgres")[0]
    _undone_swap(pitr, monkeypatch)
    branch = before_tli + 1
    pitr.sql("insert into events(note) select 'after the undo' from generate_series(1, 30)")
    pitr.wait_archived()
    checked = pitr.cli(runner, "backup", "verify-chain", "--timeline", str(branch), "--json")
    assert [p["timeline"] for p in json.loads(checked.stdout)["timeline_path"]][-1] == branch, checked.output
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--timeline", str(branch), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    pg.stop(doc["pid"])
    assert doc["tables"]["public.events"] == at_undo
    live = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")  # the default: the live one
    assert live.exit_code == 0, live.output
    pg.stop(json.loads(live.stdout)["pid"])
    assert json.loads(live.stdout)["tables"]["public.events"] == at_undo + 30
    for argv, said in ((["restore", "--to-time", "latest", "--beside", "--timeline", "99"], "timeline 99 is not in"),
                       (["restore", "--to-time", "latest", "--beside", "--timeline", "0"], "numbered from 1"),
                       (["restore", "--latest", "--timeline", "2", "--yes"], "--timeline chooses"),
                       (["backup", "verify-chain", "--timeline", "99"], "timeline 99 is not in")):
        bad = pitr.cli(runner, *argv)
        assert bad.exit_code == 2 and said in bad.output and "Traceback" not in bad.output, (argv, bad.output)


LATER = "the replaced server committed until "


def test_commits_the_replaced_server_made_after_the_restored_point_are_said_and_kept(pitr, runner):
    """An in-place `restore --to-time latest` while clients commit: the live server serves until
    the swap, so what it committed after the WAL the restore read is not in the restored cluster.
    The restore said nothing of it (exit 0, 'previous data kept in ...'); it now says until when
    the replaced server committed, after which restored commit, and where those commits stay."""
    import json

    from pitr_support import Inserter

    _base_backup(pitr, runner)
    inserter = Inserter(pitr.url("pitrdb")).start()
    try:
        while len(inserter.committed) < 20:
            time.sleep(0.05)
        pitr.wait_archived()
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--yes", "--json")
    finally:
        inserter.stop()
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    restored = {row[0] for row in pitr.sql("select id from events")}
    lost = {rid for rid, _ in inserter.committed} - restored
    assert lost, "the inserter committed nothing after the WAL the restore read"  # the case
    note = next((n for n in doc["notes"] if n.startswith(LATER)), None)
    assert note is not None and note.endswith(f"they stay in {doc['previous_data_dir']}"), doc["notes"]
    until = dt.datetime.fromisoformat(re.search(r"committed until (\S+), after", note).group(1))
    first_lost = min(t for rid, t in inserter.committed if rid in lost)  # time.time() after its commit
    assert until > dt.datetime.fromisoformat(doc["recovered_to"]), (note, doc)
    assert until.timestamp() > first_lost - 1, (note, first_lost)  # it counts the lost ones (1 s: clock reads)


def test_commits_a_crashed_server_made_after_the_archive_are_said_on_a_later_timeline(pitr, runner):
    """Breaker 18 F6: kill -9 of PostgreSQL on timeline 2 or later (after any earlier restore or
    failover), then an in-place `restore --to-time latest`: the acknowledged commits after
    the archive's end, only in the replaced server's pg_wal, went unsaid (exit 0, no note). A
    dead server reports no newest commit, and the scan of its pg_wal parsed the timeline
    history file there as a segment and stopped at it."""
    import json
    import os
    import signal

    import psutil
    from pitr_support import Inserter

    _base_backup(pitr, runner)
    first = pitr.cli(runner, "restore", "--to-time", "latest", "--yes")  # onto timeline 2 or later
    assert first.exit_code == 0, first.output
    inserter = Inserter(pitr.url("pitrdb")).start()
    while len(inserter.committed) < 50:
        time.sleep(0.05)
    victim = pitr.pid
    os.killpg(victim, signal.SIGKILL)
    inserter._thread.join(30)
    inserter.stop()
    psutil.wait_procs([psutil.Process(victim)] if psutil.pid_exists(victim) else [], timeout=10)
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    restored = {row[0] for row in pitr.sql("select id from events")}
    lost = {rid for rid, _ in inserter.committed} - restored
    assert lost, "every acknowledged commit was archived before the kill"  # the case (archive_timeout 1 s)
    note = next((n for n in doc["notes"] if n.startswith(LATER)), None)
    assert note is not None and note.endswith(f"they stay in {doc['previous_data_dir']}"), doc["notes"]
    until = dt.datetime.fromisoformat(re.search(r"committed until (\S+), after", note).group(1))
    last = max(t for rid, t in inserter.committed if rid in lost)  # time.time() after its commit
    assert until.timestamp() > last - 1, (note, last)  # it dates the newest lost one (1 s: clock reads)


def test_with_no_commit_after_the_base_backup_the_last_commit_is_the_newest_it_holds(pitr, runner):
    """Breaker 18 F9: restoring from a base backup no commit followed said "last commit replayed"
    at the base backup's start, a commit that never was (the same data restored from an older
    base backup named the real one). It is the newest commit the base backup holds now."""
    import json

    from opsctl.local import postgres as pg

    pitr.sql("insert into events(note) values ('before the base backup')")
    (committed,) = pitr.sql("select max(pg_xact_commit_timestamp(xmin)) from events")[0]
    time.sleep(1.1)
    before_base = dt.datetime.now(dt.timezone.utc)
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    pg.stop(doc["pid"])
    recovered = dt.datetime.fromisoformat(doc["recovered_to"])
    assert committed <= recovered < before_base, (committed, recovered, before_base)


def test_a_recovery_server_killed_under_the_check_says_nothing_live_was_changed(pitr, runner, monkeypatch):
    """Breaker 18 F12: kill -9 of the recovery server during an in-place restore ended in
    "unexpected AdminShutdown ... rerun with --debug", read as a crash of opsctl, silent on the
    live data. It is one line saying the recovery server stopped and nothing live was changed."""
    import os
    import signal

    import psutil

    from opsctl.pitr import restore

    _base_backup(pitr, runner)
    pitr.wait_archived()
    before = pitr.sql("select count(*) from events")[0][0]
    check = restore._check

    def killed_first(port, *args, **kwargs):
        (server,) = [c.pid for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        os.kill(server, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(server)], timeout=10)
        return check(port, *args, **kwargs)

    monkeypatch.setattr(restore, "_check", killed_first)
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--yes")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "the recovery server stopped answering" in r.output and "nothing live was changed" in r.output, r.output
    assert "unexpected" not in r.output and "--debug" not in r.output, r.output
    assert pitr.sql("select count(*) from events")[0][0] == before  # the live server serves on


def test_an_in_place_restore_keeps_the_commit_timestamps_of_what_it_restored(pitr, runner):
    """Breaker 14: the recovery server ran without track_commit_timestamp, so its promotion
    WAL-logged the setting off: every restored row's commit timestamp was gone on the live
    cluster (pg_xact_commit_timestamp NULL), and later restores replaying past that record
    dated their last commit at the base backup's start."""
    _base_backup(pitr, runner)
    pitr.sql("insert into events(note) select 'dated' from generate_series(1, 10)")
    (committed,) = pitr.sql("select max(pg_xact_commit_timestamp(xmin)) from events")[0]
    pitr.wait_archived()
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--yes")
    assert r.exit_code == 0, r.output
    undated, newest = pitr.sql("select count(*) filter (where pg_xact_commit_timestamp(xmin) is null), "
                               "max(pg_xact_commit_timestamp(xmin)) from events")[0]
    assert undated == 0 and newest == committed, (undated, newest, committed)


@pytest.mark.parametrize("target", ["time", "lsn"])
def test_later_commits_are_said_after_a_restart_of_the_replaced_server(pitr, runner, target):
    """Breaker 14: the note read pg_last_committed_xact(), which is NULL after a restart until
    the next commit: `local down`/`up`, then a restore to a past time said nothing of the rows
    it left behind. Breaker 15: so did `--to-lsn` (an LSN target dates no archived commit, and
    the restart's checkpoint had removed the segments from pg_wal). The replaced server's
    newest commit is now read from its commit timestamps (restore.newest_commit, as the drill
    reads its RPO); nothing after the restored point, no note."""
    import json

    from opsctl.local import postgres as pg

    _base_backup(pitr, runner)
    pitr.sql("insert into events(note) select 'g' from generate_series(1, 10)")
    (kept_at,) = pitr.sql("select max(pg_xact_commit_timestamp(xmin)) from events")[0]
    (lsn,) = pitr.sql("select pg_current_wal_lsn()::text", db="postgres")[0]
    pitr.sql("insert into events(note) select 'h' from generate_series(1, 10)")
    (h_at,) = pitr.sql("select max(pg_xact_commit_timestamp(xmin)) from events")[0]
    pitr.wait_archived()
    pg.stop(pitr.pid)
    pitr.start_postgres()  # as `local up` after `local down`
    to = ["--to-time", (kept_at + dt.timedelta(microseconds=1)).isoformat()] if target == "time" else ["--to-lsn", lsn]
    r = pitr.cli(runner, "restore", *to, "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert not pitr.sql("select 1 from events where note = 'h'")
    assert any(n.startswith(f"{LATER}{h_at.astimezone(dt.timezone.utc).isoformat()}, after") and
               n.endswith(doc["previous_data_dir"]) for n in doc["notes"]), (h_at, doc["notes"])
    pitr.wait_archived()
    again = pitr.cli(runner, "restore", "--to-time", "latest", "--yes", "--json")  # nothing ran after it
    assert again.exit_code == 0, again.output
    assert not any(n.startswith(LATER) for n in json.loads(again.stdout)["notes"]), again.output


def test_latest_right_after_a_restore_to_a_past_time_keeps_the_commits_before_the_fork(pitr, runner):
    """Breaker 14: an in-place restore to a past time forked timeline N mid-segment; the idle
    server never switched that segment out (archive_timeout skips checkpoint-only WAL), so the
    window ended at the segment before and `restore --to-time latest` rolled back commits the
    live history holds, silently. The swap now switches the new timeline's first segment out,
    and a restore to 'latest' waits for what the server and its local queue have not archived."""
    import json

    import psycopg

    from opsctl.pitr import layout

    _base_backup(pitr, runner)
    pitr.wait_archived()
    with psycopg.connect(pitr.url("pitrdb"), autocommit=True) as conn:  # early in a fresh segment
        conn.execute("insert into events(note) select 'early' from generate_series(1, 50)")
        (early_at,) = conn.execute("select max(pg_xact_commit_timestamp(xmin)) from events").fetchone()
        conn.execute("insert into events(note) select 'discarded' from generate_series(1, 50)")
    pitr.wait_archived()
    target = (early_at + dt.timedelta(microseconds=1)).isoformat()
    assert pitr.cli(runner, "restore", "--to-time", target, "--yes").exit_code == 0
    live = sorted(r[0] for r in pitr.sql("select id from events"))
    history = sorted((pitr.state().data("postgres") / "pg_wal").glob("*.history"))[-1]
    switch = layout.lsn(history.read_text().strip().splitlines()[-1].split("\t")[1])
    fork = layout.segment(int(history.name[:8], 16), layout.segno(switch))
    r = pitr.cli(runner, "restore", "--to-time", "latest", "--yes", "--json")  # at once, as a user would
    assert r.exit_code == 0, r.output
    assert sorted(r[0] for r in pitr.sql("select id from events")) == live
    assert pitr.repo().names(layout.wal_prefix(pitr.sysid()) + fork + "."), f"{fork} is not in the archive"
    assert not any("local queue" in n for n in json.loads(r.stdout)["notes"]), r.output
