"""Must show: kill -9 of PostgreSQL during inserts, then recovery to the newest restorable
time from the archive alone; the rows lost are the newest ones only, and how many seconds
of commits that was is reported (bounded by archive_timeout: 1 s here, 30 s by default)."""

from __future__ import annotations

import json
import os
import signal
import time

from pitr_support import Inserter


def test_kill_9_then_restore_to_the_newest_restorable_time(pitr, runner, capsys):
    import psutil

    from opsctl.local import postgres as pg
    from opsctl.pitr import local as pitr_local

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    ins = Inserter(pitr.url("pitrdb")).start()
    time.sleep(4)
    victim = pitr.pid
    os.killpg(victim, signal.SIGKILL)  # the postmaster and every child, as the OOM killer or a crash would
    killed_at = time.time()
    ins._thread.join(30)
    assert ins.error is not None  # the inserter saw the server die
    ins.stop()
    psutil.wait_procs([psutil.Process(victim)] if psutil.pid_exists(victim) else [], timeout=10)
    queue = pitr_local.queue_dir(pitr.state())
    deadline = time.monotonic() + 60
    while [p for p in queue.iterdir() if not p.name.startswith(".")] and time.monotonic() < deadline:
        time.sleep(0.2)  # the archiver drains what PostgreSQL had queued before it died
    try:
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        import psycopg

        with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
            got = sorted(row[0] for row in conn.execute("select id from events"))
        pg.stop(doc["pid"])
    finally:
        pitr.start_postgres()  # crash recovery of the live data directory, for what follows
    acked = [i for i, _ in ins.committed]
    assert got, "nothing was restored"
    assert got == list(range(1, len(got) + 1))  # a prefix: no hole, only the newest lost
    assert len(got) <= len(acked) + 1  # at most the one commit whose answer the kill cut off
    lost_rows = max(0, len(acked) - len(got))
    last_acked = ins.committed[-1][1]
    recovered = doc["recovered_to"]
    import datetime as dt

    lost_s = max(0.0, last_acked - dt.datetime.fromisoformat(recovered).timestamp())
    with capsys.disabled():
        print(f"\nkill -9 during inserts: {len(acked)} rows committed, {len(got)} restored, {lost_rows} lost "
              f"= {lost_s:.2f} s of commits (archive_timeout 1 s; killed {killed_at - last_acked:.3f} s "
              "after the last acknowledged commit)")


def test_a_restore_killed_mid_way_is_cleaned_up_by_the_next_one(pitr, runner):
    """kill -9 of opsctl while its recovery server replays: the next restore (as `local down`
    does) stops that server, which would otherwise run on (promoted, writable), and removes
    its data directory, staged WAL and unpacked chain, found through restores/pitr-run-*.json."""
    import subprocess
    import sys

    from opsctl.local import postgres as pg
    from opsctl.local import procs

    data = pitr.state().folder / "data"
    logs = pitr.state().folder / "logs"
    before = set(logs.glob("postgres-restore-*"))
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "--root", str(pitr.root), "restore", "--to-time",
                             "latest", "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    orphan = None
    deadline = time.monotonic() + 120
    while orphan is None and proc.poll() is None and time.monotonic() < deadline:
        for pidfile in data.glob("postgres.restoring-*/postmaster.pid"):
            orphan = procs.pidfile_owner(pidfile, "postgres")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert orphan is not None, "the recovery server never started"
    runs = pitr.state().folder / "restores"
    assert procs.alive(orphan, "postgres") and list(runs.glob("pitr-run-*.json"))
    try:
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert r.exit_code == 0, r.output
        pg.stop(json.loads(r.stdout)["pid"])
        assert not procs.alive(orphan)
        assert not list(data.glob("postgres.restoring-*")) and not list(data.glob("pitr-wal-*"))
        assert not list(data.glob("pitr-work-*")) and not list(runs.glob("pitr-run-*.json"))
    finally:
        pg.stop(orphan)
        for log in set(logs.glob("postgres-restore-*")) - before:
            log.unlink()
