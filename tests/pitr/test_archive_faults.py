"""WAL archiving faults a reviewer found (issue 22): an archive_command that fails (a stale
`.tmp` of an interrupted run, a queue it can't write) must not stop archiving silently, a segment
a full queue dropped stays a gap in health until a base backup covers it, and a queued segment is
filed under the cluster its own page header names (a lost data directory, then `local up`).
One PostgreSQL for the module; the lost-disk case replaces its data directory, so it runs last."""

from __future__ import annotations

import os
import time

import yaml


def _check(pitr, **env_changes):
    from opsctl.pitr.health import archive_lag

    env = pitr.env()
    if env_changes:
        env = env.model_copy(update=env_changes)
    return archive_lag(pitr.project(), env)


def _wait(cond, timeout=120.0):
    """Whether `cond()` holds within `timeout` seconds. Long enough for PostgreSQL's archiver,
    which after failed archive_command runs waits up to PGARCH_AUTOWAKE_INTERVAL (60 s) before
    trying again, on a loaded 2-core machine (30 s once failed a queued-segment wait in a
    full suite); a condition that holds returns at once."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.2)
    return cond()


def test_a_stale_tmp_of_an_interrupted_archive_command_does_not_stop_archiving(pitr):
    from opsctl.pitr import local as pitr_local

    state = pitr.state()
    queue = pitr_local.queue_dir(state)
    pitr.wait_archived()
    pitr.sql("insert into events(note) values ('in the next segment')")
    (seg,) = pitr.sql("select pg_walfile_name(pg_current_wal_insert_lsn())", db="postgres")[0]
    # what an archive_command interrupted between its ln and its mv leaves behind
    os.link(state.data("postgres") / "pg_wal" / seg, queue / f".{seg}.tmp")
    try:
        # the segment after it gets through: nothing is stuck (the default wait: once in a loaded
        # suite its .ready notice was missing and 20 s was too short for wait_archived to get it back)
        pitr.wait_archived()
        (failed,) = pitr.sql("select failed_count from pg_stat_archiver", db="postgres")[0]
        assert failed == 0
        assert not (queue / f".{seg}.tmp").exists()
    finally:
        (queue / f".{seg}.tmp").unlink(missing_ok=True)


def test_a_failing_archive_command_shows_in_health_naming_the_segment(pitr):
    from opsctl.config import DrSettings
    from opsctl.health.model import Status
    from opsctl.pitr import local as pitr_local

    queue = pitr_local.queue_dir(pitr.state())
    pitr.wait_archived()
    os.chmod(queue, 0o500)  # the archive_command can't write the queue (permissions, a full disk)
    try:
        pitr.sql("select pg_logical_emit_message(false, 'opsctl-test', 'x')", db="postgres")
        (seg,) = pitr.sql("select pg_walfile_name(pg_switch_wal())", db="postgres")[0]
        pitr.wait_failing(seg)
        warn = _check(pitr)  # failing for seconds, RPO 1h
        assert warn.status == Status.WARNING and seg in warn.message and "archive_command" in warn.message, warn.message
        assert warn.details["archive_failing"]["wal"] == seg
        crit = _check(pitr, dr=DrSettings(rpo="1s"))
        assert crit.status == Status.CRITICAL and seg in crit.message, crit.message
    finally:
        os.chmod(queue, 0o700)
    pitr.wait_archived()
    ok = _check(pitr)
    assert ok.status == Status.OK, ok.message


def test_a_stopped_servers_unarchived_segments_show_in_health(pitr):
    """Breaker 20 F3: PostgreSQL killed while its archive_command failed, segments marked .ready
    in its pg_wal: the check asked the server (which could not answer) and said "archive lag at
    most 1 s (0 queued)". The segments are read from the disk now: WARNING within the RPO,
    CRITICAL past it, naming them."""
    import signal

    import psutil

    from opsctl.config import DrSettings
    from opsctl.health.model import Status
    from opsctl.pitr import local as pitr_local

    queue = pitr_local.queue_dir(pitr.state())
    pitr.wait_archived()
    os.chmod(queue, 0o500)  # the archive_command can't write the queue
    try:
        pitr.sql("insert into events(note) values ('never archived')")
        (seg,) = pitr.sql("select pg_walfile_name(pg_switch_wal())", db="postgres")[0]
        ready = pitr.state().data("postgres") / "pg_wal" / "archive_status" / f"{seg}.ready"
        pitr.wait_notice(seg, ".ready")
        assert ready.exists()
        victim = pitr.pid
        os.killpg(victim, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(victim)] if psutil.pid_exists(victim) else [], timeout=10)
        time.sleep(1.5)
        stranded = _check(pitr)
        assert stranded.status == Status.WARNING and "PostgreSQL is not running" in stranded.message, stranded
        assert "never archived" in stranded.message and stranded.value >= 1, stranded
        assert _check(pitr, dr=DrSettings(rpo="1s")).status == Status.CRITICAL
    finally:
        os.chmod(queue, 0o700)
        pitr.start_postgres()
    pitr.wait_archived()
    assert _wait(lambda: _check(pitr).status == Status.OK), _check(pitr).message


def test_a_dropped_segment_stays_critical_until_a_base_backup_covers_it(pitr, runner):
    from opsctl.health.model import Status
    from opsctl.local import postgres as pg
    from opsctl.pitr import local as pitr_local

    def queue_limit(n):  # restarts PostgreSQL with an archive_command of that limit (None: default)
        path = pitr.root / "opsctl.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["environments"]["local"]["backup"].pop("archive_queue", None)
        if n is not None:
            doc["environments"]["local"]["backup"]["archive_queue"] = n
        path.write_text(yaml.safe_dump(doc))
        pg.stop(pitr.pid)
        pitr.start_postgres()

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    queue_limit(2)
    state = pitr.state()
    queue = pitr_local.queue_dir(state)
    assert pitr_local.stop_archiver(state)  # the repository is slow / unreachable for a while
    for i in range(4):
        pitr.sql("insert into events(note) values (%s)", (f"q{i}",))
        pitr.sql("select pg_switch_wal()", db="postgres")
    def markers() -> list[str]:  # not `.<segment>.new`, a marker the archive_command is writing
        return sorted(p.name for p in (queue / ".dropped").iterdir() if not p.name.startswith("."))

    assert _wait(markers), "the queue never dropped a segment"
    dropped = markers()
    assert _check(pitr).status == Status.CRITICAL
    pitr.ensure_archiver()  # the repository answers again
    assert _wait(lambda: not list((queue / ".dropped").iterdir())
                 and not [p for p in queue.iterdir() if not p.name.startswith(".")], 60)
    assert pitr.repo().names(f"pitr/{pitr.sysid()}/dropped/{dropped[0]}")  # uploaded
    gap = _check(pitr)
    assert gap.status == Status.CRITICAL and dropped[0] in gap.message, gap.message
    queue_limit(None)  # (a base backup's own WAL dropped would be a gap in it)
    assert _check(pitr).status == Status.CRITICAL  # a restart changes nothing
    assert pitr.cli(runner, "backup", "base").exit_code == 0  # covers the gap
    assert _wait(lambda: _check(pitr).status == Status.OK), _check(pitr).message


def _as_timeline(segment: bytes, tli: int) -> bytes:
    """A copy of a segment whose first page header says timeline `tli` (xlp_tli, bytes 4-8)."""
    import struct

    return segment[:4] + struct.pack("=I", tli) + segment[8:]


def test_a_history_file_goes_with_its_timelines_segments_and_is_quarantined_when_they_disagree(pitr, tmp_path):
    # a history file names no cluster: it is filed under the cluster the queued segments of its
    # timeline name, the live one when none is queued, and quarantined when they name two
    from opsctl.pitr import archive, layout
    from opsctl.pitr import local as pitr_local

    pitr.wait_archived()
    pitr.sql("insert into events(note) values ('written: the segment file exists')")
    (seg,) = pitr.sql("select pg_walfile_name(pg_current_wal_insert_lsn())", db="postgres")[0]
    real = (pitr.state().data("postgres") / "pg_wal" / seg).read_bytes()
    # the next segment of another cluster: its position (xlp_pageaddr) and identifier (xlp_sysid)
    nxt = (int.from_bytes(real[8:16], "little") + (16 << 20)).to_bytes(8, "little")
    other = real[:8] + nxt + real[16:24] + (int(pitr.sysid()) ^ 1).to_bytes(8, "little") + real[32:4096]
    queue = tmp_path / "queue"
    archive.prepare_queue(queue, None)
    (queue / f"00000005{seg[8:]}").write_bytes(_as_timeline(real, 5))
    (queue / "00000005.history").write_text("4\t0/9000000\tx\n")  # beside its timeline's segment
    (queue / "00000006.history").write_text("5\t0/9000000\tx\n")  # nothing of timeline 6 queued
    (queue / f"00000009{seg[8:]}").write_bytes(_as_timeline(real, 9))
    (queue / f"00000009{seg[8:16]}{int(seg[16:], 16) + 1:08X}").write_bytes(_as_timeline(other, 9))
    (queue / "00000009.history").write_text("8\t0/9000000\tx\n")  # its timeline's segments disagree
    live = "8" * 19
    result = archive.Archiver(pitr.repo(), pitr.key(), live, queue).drain()
    assert result.quarantined == ["00000009.history"], result
    files, _ = layout.parse_wal(pitr.sysid(), pitr.repo().names(layout.wal_prefix(pitr.sysid())))
    assert {"00000005.history", f"00000005{seg[8:]}", f"00000009{seg[8:]}"} <= set(files)
    files, _ = layout.parse_wal(live, pitr.repo().names(layout.wal_prefix(live)))
    assert list(files) == ["00000006.history"]
    assert "name clusters" in (queue / ".quarantine" / "00000009.history.reason").read_text()


def test_a_gap_marker_of_another_cluster_does_not_keep_the_live_clusters_health_critical(pitr):
    """Issue 22 review: a `.gaps/` marker the previous cluster left (a segment a full queue dropped,
    then the data directory lost and a new cluster made) was compared with the live cluster's base
    backups by segment number only: never covered, health CRITICAL forever. Now a gap whose
    header names another cluster is that cluster's (its record stays in the repository under it):
    it leaves the live cluster's health, and the archiver's log says so."""
    import struct

    from opsctl.health.model import Status
    from opsctl.pitr import local as pitr_local

    queue = pitr_local.queue_dir(pitr.state())
    pitr.wait_archived()
    seg = "000000010000000000000090"
    other = str(int(pitr.sysid()) ^ 1)
    head = struct.pack("=HHIQI4xQII", 0xD118, 2, 1, 0x90 * (16 << 20), 0, int(other), 16 << 20, 8192)
    (queue / ".gaps").mkdir(exist_ok=True, mode=0o700)
    (queue / ".gaps" / seg).write_bytes(head)
    assert _wait(lambda: not (queue / ".gaps" / seg).exists())
    check = _check(pitr)
    assert not (check.status == Status.CRITICAL and seg in check.message), check.message
    assert "a gap of that cluster" in pitr.state().log("archiver").read_text()


def test_a_base_backup_on_a_later_timeline_covers_a_gap_of_the_timeline_an_in_place_restore_left(tmp_path, monkeypatch):
    """Issue 22 review: after an in-place restore forking before a kept gap (timeline 1, segment
    0x90), the new timeline's base backups start at lower segment numbers: compared by number
    only, the gap stayed CRITICAL until the WAL passed 0x90 again. A base backup on a later
    timeline never reads timeline 1 past the fork: it covers the gap. (The base backup listing is
    given: the rule, not PostgreSQL, is under test here; the in-place restore itself is
    test_restore_to_time's.)"""
    import datetime as dt
    import struct
    from types import SimpleNamespace

    from opsctl.pitr import archive
    from opsctl.pitr import base as bb

    sysid = "7000000000000000001"
    gaps = tmp_path / archive.GAPS
    gaps.mkdir()
    seg = "000000010000000000000090"
    (gaps / seg).write_bytes(struct.pack("=HHIQI4xQII", 0xD118, 2, 1, 0x90 * (16 << 20), 0, int(sysid), 16 << 20, 8192))
    repo = SimpleNamespace(names=lambda prefix: {f"{prefix}b1/base.json": 1})
    after_restore = SimpleNamespace(start_lsn="0/52000028", timeline=2, started_at=dt.datetime.now(dt.timezone.utc))
    monkeypatch.setattr(bb, "load_all", lambda *a, **k: ([after_restore], {}))
    archiver = archive.Archiver(repo, None, sysid, tmp_path)
    assert archiver.clear_gaps(force=True) == [seg] and not (gaps / seg).exists()
    # the same base backup on the gap's own timeline, starting before it, covers nothing
    (gaps / seg).write_bytes(b"")
    after_restore.timeline = 1
    assert archiver.clear_gaps(force=True) == [] and (gaps / seg).exists()


def test_a_queued_segment_is_filed_under_the_cluster_its_header_names(pitr):
    from opsctl.health.model import Status
    from opsctl.local import postgres as pg
    from opsctl.pitr import layout
    from opsctl.pitr import local as pitr_local

    pitr.wait_archived()
    old = pitr.sysid()
    assert pitr_local.stop_archiver(pitr.state())
    pitr.sql("insert into events(note) select 'queued' from generate_series(1, 20)")
    (queued,) = pitr.sql("select pg_walfile_name(pg_switch_wal())", db="postgres")[0]
    queue = pitr_local.queue_dir(pitr.state())
    assert _wait(lambda: (queue / queued).exists())
    # a queued file whose header is not a WAL page header (damaged): quarantined, never filed
    bad = "0000000100000000000000FE"
    (queue / bad).write_bytes(b"\0" * 4096)
    # the old cluster's history file (it names no cluster) beside a segment of its timeline
    history = "00000007.history"
    (queue / history).write_text("6\t0/9000000\tno recovery target specified\n")
    (queue / f"00000007{queued[8:]}").write_bytes(_as_timeline((queue / queued).read_bytes(), 7))
    # the disk holding the data directory is lost; `local up` initdb's a new cluster
    pg.stop(pitr.pid)
    data = pitr.state().data("postgres")
    data.rename(data.with_name("postgres.lost-disk"))
    pitr.start_postgres()
    new = pitr.sysid()
    assert new != old
    # the repository still down, the new cluster (segments from 1 again) reaches the name of the
    # old cluster's queued segment: that name is taken in the queue by other bytes, so the
    # archive_command must not report it archived (PostgreSQL would delete it: lost silently)
    target = int(queued[16:24], 16)
    switched = []
    while not switched or int(switched[-1][16:24], 16) <= target:
        pitr.sql("select pg_logical_emit_message(false, 'opsctl-test', 'x')", db="postgres")
        switched.append(pitr.sql("select pg_walfile_name(pg_switch_wal())", db="postgres")[0][0])
    pitr.ensure_archiver()
    assert _wait(lambda: not (queue / queued).exists() and not (queue / bad).exists()
                 and not (queue / history).exists())

    def new_stored():
        return {layout.OBJECT.fullmatch(n.rpartition("/")[2])["file"] for n in pitr.repo().names(layout.wal_prefix(new))}

    def all_new_arrived():
        pitr.sql("select pg_logical_emit_message(false, 'opsctl-test', 'x')", db="postgres")
        pitr.sql("select pg_switch_wal()", db="postgres")  # wakes PostgreSQL's archiver to retry
        return set(switched) <= new_stored()

    # about 16 segments, each fsynced into the queue and then uploaded: on a loaded 2-core
    # machine (a suite run with four workers) 60 s was not always enough
    assert _wait(all_new_arrived, timeout=180), (sorted(set(switched) - new_stored()), pitr.archiving_report())
    under_old = [n for n in pitr.repo().names(layout.wal_prefix(old)) if queued in n or history in n]
    under_new = [n for n in pitr.repo().names(layout.wal_prefix(new)) if bad in n or history in n]
    assert len(under_old) == 2 and not under_new, (under_old, under_new)
    assert (queue / ".quarantine" / bad).exists()
    check = _check(pitr)
    assert check.status == Status.CRITICAL and bad in check.message, check.message
