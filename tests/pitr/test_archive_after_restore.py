"""Breaker 16 F1: after an in-place restore, archive_timeout no longer shipped commits. The
swapped-in server took writes on its new timeline, but its segment was never switched out
(pg_current_wal_lsn stayed in it for minutes with archive_timeout 1 s), so every commit since
the restore stayed on the local disk only, and verify-chain's newest restorable time stayed
at the restore's target. Commits after the restore must reach the repository within the
archive interval, with no pg_switch_wal from anyone."""
from __future__ import annotations

import time

from test_restore_swap import _base_backup  # noqa: E402


def test_commits_after_an_in_place_restore_are_archived_on_archive_timeout(pitr, runner):
    _base_backup(pitr, runner)
    pitr.sql("insert into events(note) select 'before' from generate_series(1, 10)")
    pitr.wait_archived()
    # archive_timeout (1 s here) ships a commit before any restore ...
    pitr.sql("insert into events(note) values ('before the restore, unswitched')")
    (segment,) = pitr.sql("select pg_walfile_name(pg_current_wal_lsn())", db="postgres")[0]
    assert pitr.segment_archived(segment, 60), f"{segment} was not archived on archive_timeout before any restore"
    swapped = pitr.cli(runner, "restore", "--to-time", "latest", "--yes")
    assert swapped.exit_code == 0, swapped.output
    for round_ in range(2):  # ... and after it, the first commit and a later one alike
        pitr.sql("insert into events(note) values (%s)", (f"after the restore {round_}",))
        (segment,) = pitr.sql("select pg_walfile_name(pg_current_wal_lsn())", db="postgres")[0]
        assert pitr.segment_archived(segment, 60), (
            f"{segment} (a commit after the restore) was not archived within 60 s: "
            + str(pitr.sql("select pg_current_wal_lsn()::text, current_setting('archive_timeout')", db="postgres")))


def test_health_warns_when_a_commit_waits_past_archive_timeout(pitr):
    """The second half of breaker 16 F1: while commits sat unarchived for minutes, `health`
    said "archive lag at most 1 s" (archive_timeout assumed honoured). A checkpointer that does
    not switch segments (stopped here with SIGSTOP) now shows: the newest commit, after the
    last file archived, dates the wait; WARNING naming it, and the lag figure includes it."""
    import os
    import signal

    import psutil

    from opsctl.health.model import Status
    from opsctl.pitr.health import archive_lag

    pitr.wait_archived()
    assert archive_lag(pitr.project(), pitr.env()).status == Status.OK
    def title(proc) -> str:  # a short-lived child (archive_command's shell, a backend) may be gone
        try:
            return " ".join(proc.cmdline())
        except psutil.Error:
            return ""

    (checkpointer,) = [c for c in psutil.Process(pitr.pid).children() if "checkpointer" in title(c)]
    os.kill(checkpointer.pid, signal.SIGSTOP)
    try:
        pitr.sql("insert into events(note) values ('waits for its segment')")
        deadline, result = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            result = archive_lag(pitr.project(), pitr.env())
            if result.status != Status.OK:
                break
            time.sleep(1)
        assert result.status == Status.WARNING, result
        assert "for its WAL segment to be switched out, longer than archive_timeout (1 s)" in result.message, result
        assert result.value > 1 + 5, result
    finally:
        os.kill(checkpointer.pid, signal.SIGCONT)
    pitr.wait_archived()
    assert archive_lag(pitr.project(), pitr.env()).status == Status.OK
    # statistics reset (an operator debugging archiving): the newest commit dates nothing then,
    # and an idle server stays OK (breaker 17 F8: WARNING, then CRITICAL past the RPO)
    pitr.sql("select pg_stat_reset_shared('archiver')", db="postgres")
    time.sleep(8)
    assert archive_lag(pitr.project(), pitr.env()).status == Status.OK


def _wait_queued(pitr, segment: str, timeout: float = 60) -> None:
    """Until PostgreSQL's archive_command has put WAL file `segment` in the local queue."""
    from opsctl.pitr import local as pitr_local

    deadline = time.monotonic() + timeout
    while segment not in pitr_local.queued_wal(pitr.state()):
        assert time.monotonic() < deadline, f"{segment} was never queued by archive_command"
        time.sleep(0.1)


def test_a_base_backup_whose_wal_waits_in_the_queue_is_not_archived_yet_not_broken(pitr, runner, monkeypatch):
    """Breaker 16 F4: with the archiver behind (stopped here), a restore to a time after the
    newest base backup said "the WAL it needs is broken ... missing" (exit 1) while that WAL
    sat in the local queue. It is refused as not archived yet (exit 2, one line, naming the
    queue), and verify-chain names those files queued, not missing, and exits 0."""
    import datetime as dt
    import json

    from opsctl.local import state as st
    from opsctl.pitr import local as pitr_local

    _base_backup(pitr, runner)  # a window that is archived, before the archiver stops
    pitr.wait_archived()
    folder = st.folder_for(pitr.root)
    with st.locked(folder):
        state = st.load(folder)
        pitr_local.stop_archiver(state)
        state.save()
    monkeypatch.setattr(pitr_local, "ensure_archiver", lambda *a, **kw: "the repository is down (test)")
    try:
        pitr.sql("insert into events(note) values ('before the base backup')")
        (queued,) = pitr.sql("select pg_walfile_name(pg_switch_wal())", db="postgres")[0]
        _wait_queued(pitr, queued)
        # no newer base backup yet: the window ends at that queued segment, not at "the end of
        # the archive" while its commits sit only on the local disk (breaker 18 F3)
        checked = pitr.cli(runner, "backup", "verify-chain", "--json")
        assert checked.exit_code == 0, checked.output
        assert json.loads(checked.stdout)["windows"][-1]["ends_at"].startswith(f"{queued}: queued"), checked.output
        before = dt.datetime.now(dt.timezone.utc).isoformat()
        # taken and kept, but not restorable until its WAL is archived: said, exit 1
        taken = pitr.cli(runner, "backup", "base")
        assert taken.exit_code == 1 and "the WAL archiver is not running" in taken.output, taken.output
        assert "the base backup is kept" in taken.output, taken.output
        pitr.sql("insert into events(note) values ('after the base backup')")
        (switched,) = pitr.sql("select pg_walfile_name(pg_switch_wal())", db="postgres")[0]
        _wait_queued(pitr, switched)  # handed over by archive_command: on a loaded machine, later
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        r = pitr.cli(runner, "restore", "--to-time", now, "--beside")
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert "WAL is not archived yet" in r.output and "waits in the local WAL queue" in r.output, r.output
        assert "broken" not in r.output, r.output
        # verify-chain says the same of them (breaker 17 F11): late, not lost; not a broken chain
        checked = pitr.cli(runner, "backup", "verify-chain", "--json")
        assert checked.exit_code == 0, checked.output
        problems = json.loads(checked.stdout)["problems"]
        assert problems and {p["kind"] for p in problems} == {"queued"}, problems
        # and backup list's window ends at the first of them as queued, not missing (session 15)
        listed = pitr.cli(runner, "backup", "list", "--json")
        assert listed.exit_code == 0, listed.output
        ends = [w["ends_at"] for w in json.loads(listed.stdout)["pitr"]["windows"]]
        assert ends and ends[-1].startswith(f"{problems[0]['file']}: queued"), ends
        assert not any("missing" in e for e in ends), ends
        # and a time before the base backup, refused too when its WAL waits as well, says why
        # in the same words (breaker 17 F10: "missing (not in the repository)")
        r = pitr.cli(runner, "restore", "--to-time", before, "--beside")
        assert "missing" not in r.output and "broken" not in r.output, r.output
        # 'latest' restores all that was archived, from the older base backup, and names the
        # newer one it passed over (breaker 18 F2: refused, though verify-chain showed a window)
        latest = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert latest.exit_code == 0, latest.output
        doc = json.loads(latest.stdout)
        from opsctl.local import postgres as pg

        pg.stop(doc["pid"])
        assert any("wait for their WAL in the local queue" in n for n in doc["notes"]), doc["notes"]
    finally:
        monkeypatch.undo()
        pitr.ensure_archiver()
    pitr.wait_archived()
