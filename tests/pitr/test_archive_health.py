"""The WAL archive health check: lag judged against dr.rpo, a stopped archiver, a dropped segment."""

from __future__ import annotations

import contextlib
import json
import time
from types import SimpleNamespace

from tests.descriptors import held


def _check(pitr, **env_changes):
    from opsctl.health.checks import plan

    env = pitr.env()
    if env_changes:
        env = env.model_copy(update=env_changes)
    ep = SimpleNamespace(router_url=None, workers={}, database_url=None, redis_url=None,
                         backup_bucket="unused", active_color="blue")
    (check,) = plan(pitr.project(), env, ep, only=["wal archive"])
    result = check.run(check.timeout)
    return result


def test_a_cluster_without_a_base_backup_has_every_commit_at_risk(pitr, runner):
    """Breaker 18 F5: on a cluster with no base backup (a fresh platform, or the new one
    `local up` made after a lost disk) the check said "archive lag at most 1 s", though its
    archived WAL restores nothing. The commits at risk now date from the cluster's making (its
    system identifier's time): within the RPO it says so, past it CRITICAL; a base backup ends it."""
    from opsctl.config import DrSettings
    from opsctl.health.model import Status
    from opsctl.pitr import layout

    assert not pitr.repo().names(layout.base_prefix(pitr.sysid())), "the case: no base backup yet"
    time.sleep(2)
    pitr.wait_archived()
    made = int(pitr.sysid()) >> 32
    young = _check(pitr)
    assert young.status == Status.OK and f"no base backup of cluster {pitr.sysid()} yet" in young.message, young
    assert young.value >= time.time() - made - 1 and young.value >= 2, young
    old = _check(pitr, dr=DrSettings(rpo="1s"))
    assert old.status == Status.CRITICAL and f"no base backup of cluster {pitr.sysid()}" in old.message, old
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    backed = _check(pitr)
    assert backed.status == Status.OK and "no base backup" not in backed.message and backed.value <= 1 + 5, backed


def test_archive_lag_ok_then_archiver_stopped_then_dropped_segment(pitr, runner):
    from opsctl.config import DrSettings
    from opsctl.health.model import Status
    from opsctl.pitr import local as pitr_local
    from test_restore_swap import _base_backup

    _base_backup(pitr, runner)  # without one, every commit since the cluster's making is at risk
    pitr.wait_archived()
    ok = _check(pitr)
    assert ok.status == Status.OK and ok.value <= 1 + 5, ok.message  # archive_timeout 1 s, queue drained

    tight = _check(pitr, dr=DrSettings(rpo="1s"), backup=pitr.env().backup.model_copy(update={"archive_timeout": 30}))
    assert tight.status == Status.CRITICAL and "above the RPO of 1s" in tight.message

    state = pitr.state()
    assert pitr_local.stop_archiver(state)
    try:
        idle = _check(pitr)
        assert idle.status == Status.WARNING and "no archiver" in idle.message
        pitr.queue_a_segment()  # a finished segment waits in the local queue
        stuck = _check(pitr)
        assert stuck.status == Status.CRITICAL and "no archiver runs" in stuck.message
        assert stuck.details["queued"] >= 1
        marker = pitr_local.queue_dir(state) / ".dropped" / "0000000100000000000000FF"
        marker.write_text("")
        try:
            gap = _check(pitr)
            assert gap.status == Status.CRITICAL and "dropped" in gap.message
        finally:
            marker.unlink()
    finally:
        pitr.ensure_archiver()
    pitr.wait_archived()
    assert _check(pitr).status == Status.OK


def test_local_status_shows_the_archiver_and_its_death(pitr):
    """Breaker 18 F8: `local status` listed every component but the WAL archiver, the one whose
    death stops point-in-time recovery and nothing else; its log was not one command away."""
    import os
    import signal

    import psutil

    from opsctl.local import platform
    from opsctl.pitr import local as pitr_local

    pid = pitr_local.archiver_pid(pitr.state())
    row = {r.name: r for r in platform.status(pitr.project())}["archiver"]
    assert row.pid == pid and row.healthy and "WAL queue" in row.note, row
    assert platform.log_path(pitr.project(), "archiver") == pitr.state().log("archiver")
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=10)
    try:
        row = {r.name: r for r in platform.status(pitr.project())}["archiver"]
        assert row.pid is None and not row.healthy, row
    finally:
        pitr.ensure_archiver()


def test_a_stopped_or_hung_archiver_is_not_healthy(pitr, runner):
    """Breaker 20 F8: an archiver stopped with SIGSTOP (as one hung in a repository call) was
    "healthy yes" in `local status` and the check OK until the lag passed the whole RPO (an
    hour by default), while nothing reached the repository. Stopped, or not moving for
    STALL_S (its `.progress` file: a pass ended or a file stored), it is now a WARNING naming
    why, and the status row says it is stuck; moving again, both clear."""
    import os
    import shutil
    import signal

    from opsctl.health.model import Status
    from opsctl.local import platform
    from opsctl.pitr import archive
    from opsctl.pitr import local as pitr_local
    from test_restore_swap import _base_backup

    _base_backup(pitr, runner)
    pitr.wait_archived()
    state = pitr.state()
    pid = pitr_local.archiver_pid(state)
    progress = pitr_local.queue_dir(state) / archive.PROGRESS
    assert progress.exists() and _check(pitr).status == Status.OK

    def row():
        return {r.name: r for r in platform.status(pitr.project())}["archiver"]

    os.kill(pid, signal.SIGSTOP)
    try:
        pitr.sql("insert into events(note) values ('while the archiver is stopped')")
        stopped = _check(pitr)
        assert stopped.status == Status.WARNING and f"stuck: its process {pid} is stopped" in stopped.message, stopped
        assert f"'kill -CONT {pid}' resumes it" in stopped.message, stopped  # breaker 22 F5: not "local up"
        assert stopped.details["archiver_stuck"] and not row().healthy and "stuck" in row().note, row()
    finally:
        os.kill(pid, signal.SIGCONT)
    pitr.wait_archived()
    assert _check(pitr).status == Status.OK and row().healthy

    # running but every pass fails (the repository's folder replaced by a file): no progress
    repo = pitr.root / "repo"
    aside = pitr.root / "repo.aside"
    os.replace(repo, aside)
    repo.write_text("not a folder")
    try:
        pitr.sql("select pg_logical_emit_message(false, 'opsctl-test', 'x')", db="postgres")
        pitr.sql("select pg_switch_wal()", db="postgres")
        deadline = time.monotonic() + 30
        while not pitr_local.queued_wal(state) and time.monotonic() < deadline:
            time.sleep(0.1)
        queued_at = time.time()
        time.sleep(2)  # a pass fails on it: nothing touches .progress now
        # breaker 22 F6: with .progress deleted, a failing archiver read as one that never wrote
        # it ("healthy"); it is made again, with the time of the last move, not touched anew
        progress.unlink()
        deadline = time.monotonic() + 35  # failing passes back off to 30 s apart
        while not progress.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert progress.exists() and progress.stat().st_mtime <= queued_at + 1, (progress.stat(), queued_at)
        old = time.time() - pitr_local.STALL_S - 10
        os.utime(progress, (old, old))
        time.sleep(1)
        hung = _check(pitr)
        assert hung.status == Status.WARNING and "has not finished a pass nor stored a file" in hung.message, hung
        assert str(state.log("archiver")) in hung.message and not row().healthy
    finally:
        repo.unlink()
        shutil.move(aside, repo)
    pitr.wait_archived()
    assert _check(pitr).status == Status.OK and row().healthy


def test_an_archiver_without_its_progress_file_is_stuck_once_a_queued_file_ages(tmp_path):
    """Breaker 25 F5: an archiver hung in a repository call (a stopped S3) whose `.progress`
    was deleted read healthy for minutes: a failing pass makes the file again (breaker 22 F6),
    a hung one can't. Without the file, a queued WAL file older than STALL_S now says it; a
    queue that moves (files younger than that, or none) does not."""
    import os
    import subprocess

    from opsctl.local import state as st
    from opsctl.pitr import local as pitr_local

    state = st.LocalState(tmp_path / ".opsctl" / "local")
    queue = pitr_local.queue_dir(state)
    queue.mkdir(parents=True)
    running = subprocess.Popen(["sleep", "60"])  # a running archiver process, neither stopped nor moving
    try:
        assert pitr_local.stalled(state, running.pid) is None  # no file, nothing queued
        wal = queue / "000000010000000000000007"
        wal.write_bytes(b"\0" * 64)
        assert pitr_local.stalled(state, running.pid) is None  # queued just now
        old = time.time() - pitr_local.STALL_S - 30
        os.utime(wal, (old, old))
        why = pitr_local.stalled(state, running.pid)
        assert why is not None and ".progress is gone" in why and "has waited" in why, why
    finally:
        running.kill()
        running.wait()


@contextlib.contextmanager
def _aside(pitr, file: str):
    """WAL file `file`'s object moved out of the repository for the block, then put back."""
    import shutil

    from opsctl.pitr import layout

    sysid = pitr.sysid()
    files, _ = layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))
    (obj,) = files[file]
    path = pitr.root / "repo" / obj.name
    aside = path.with_name(path.name + ".aside")
    shutil.move(path, aside)
    try:
        yield
    finally:
        shutil.move(aside, path)


def test_an_archived_segment_gone_from_the_repository_is_critical(pitr, runner):
    """Breaker 21: a WAL object deleted from the repository (by hand, a lifecycle rule, a prune
    gone wrong) kept the check OK: the queue was empty and the server's archiver happy, though
    no restore crossed the hole. The segments from the newest base backup to the last the server
    archived are now listed: one missing is CRITICAL, named; put back, OK again."""
    from opsctl.health.model import Status

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) values ('in the segment deleted')")
    gone = pitr.wait_archived()
    pitr.sql("insert into events(note) values ('after it')")
    pitr.wait_archived()
    assert _check(pitr).status == Status.OK
    with _aside(pitr, gone):
        hole = _check(pitr)
        assert hole.status == Status.CRITICAL and hole.details["missing"] == [gone], hole
        assert f"missing from the repository ({gone})" in hole.message and "verify-chain" in hole.message, hole
    assert _check(pitr).status == Status.OK


def test_local_down_archives_the_shutdowns_last_segment(pitr):
    """Breaker 20 F6: `local down` stopped the archiver before PostgreSQL, so the segment the
    shutdown queued (with acknowledged commits) waited in the local queue until the next `up`:
    lost with the disk meanwhile. PostgreSQL stops first now, and the archiver drains after it."""
    from opsctl.local import platform
    from opsctl.pitr import local as pitr_local

    pitr.wait_archived()
    pitr.sql("insert into events(note) values ('just before down')")
    try:
        stopped = platform.down(pitr.project())
        assert stopped.index("postgres") < stopped.index("archiver"), stopped
        assert pitr_local.queued_wal(pitr.state()) == set(), "the shutdown's segment stayed queued"
    finally:
        pitr.start_postgres()
        pitr.ensure_archiver()


def test_after_a_restore_a_hole_on_the_history_or_a_missing_history_file_is_critical(pitr, runner):
    """Breaker 22 F1, F2, F4: after an in-place restore the check listed only the live timeline
    from where it began, from the newest base backup even when that one lay on the branch the
    restore left: a segment of the older timeline between the base backup and the fork, the
    live timeline's history file, or (restored to before the newest base backup) a segment of
    the live timeline itself could be gone with the check OK, while verify-chain said the chain
    was broken. It now follows the live server's history from the newest base backup on it."""
    import datetime as dt
    import shutil

    from opsctl.health.model import Status
    from opsctl.pitr import layout

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    before_fork = pitr.commit_archived("insert into events(note) values ('before the fork')")
    fork = dt.datetime.now(dt.timezone.utc).isoformat()
    pitr.sql("insert into events(note) values ('on the branch the restore leaves')")
    pitr.wait_archived()
    assert pitr.cli(runner, "backup", "base").exit_code == 0  # on that branch: off the restored history
    pitr.sql("insert into events(note) values ('after the second base backup')")
    pitr.wait_archived()
    restored = pitr.cli(runner, "restore", "--to-time", fork, "--yes", "--json")
    assert restored.exit_code == 0, restored.output
    tli = json.loads(restored.stdout)["timeline"]
    pitr.sql("insert into events(note) values ('on the restored timeline')")
    on_live = pitr.wait_archived()
    pitr.wait_archived()
    assert on_live.startswith(f"{tli:08X}")
    assert _check(pitr).status == Status.OK
    sysid = pitr.sysid()
    for gone in (before_fork, layout.history_file(tli), on_live):
        with _aside(pitr, gone):
            hole = _check(pitr)
            assert hole.status == Status.CRITICAL and hole.details["missing"] == [gone], (gone, hole)
    assert _check(pitr).status == Status.OK
    # breaker 22 F10: the live history's only base backup deleted, the other one on the branch
    # the restore left: nothing restores the live history, and the check said OK
    from opsctl.config import DrSettings

    head = layout.base_prefix(sysid)
    bases = sorted({n[len(head):].split("/")[0] for n in pitr.repo().names(head)})
    on_history = [pitr.root / "repo" / head / b for b in bases[:-1]]  # all but the one on the branch left
    for folder in on_history:
        shutil.move(folder, folder.with_name(folder.name + ".aside"))
    try:
        note = f"no base backup of cluster {sysid} on the live server's history (timeline {tli})"
        young = _check(pitr)
        assert young.status == Status.OK and note in young.message and young.details["base_backup"] is False, young
        old = _check(pitr, dr=DrSettings(rpo="1s"))
        assert old.status == Status.CRITICAL and note in old.message, old
    finally:
        for folder in on_history:
            shutil.move(folder.with_name(folder.name + ".aside"), folder)
    assert _check(pitr).status == Status.OK


def _restore_latest(pitr, runner) -> int:
    """An in-place restore to 'latest', a commit on its timeline archived: that new timeline."""
    restored = pitr.cli(runner, "restore", "--to-time", "latest", "--yes", "--json")
    assert restored.exit_code == 0, restored.output
    tli = json.loads(restored.stdout)["timeline"]
    pitr.commit_archived(f"insert into events(note) values ('on timeline {tli}')")
    return tli


def test_an_old_timelines_history_gone_is_no_hole_once_a_base_backup_is_on_a_later_timeline(pitr, runner):
    """Breaker 65 G9: the check wanted the history file of every timeline on the live server's
    path, so with a repository emptied (a killed embedded S3) and filled again from timeline 8 it
    stayed CRITICAL for 00000002.history to 00000008.history after a new timeline and a new base
    backup, while verify-chain passed, and its advice (a new base backup) cleared nothing. A
    restore from the newest base backup reads the history file of its timeline and the later
    ones (recovery_target_timeline is the one holding the target), never an older one: that one
    gone is CRITICAL while the newest base backup is older than its timeline, no hole once one
    is on a later timeline; the live timeline's own stays CRITICAL, and the message names the
    copy its pg_wal holds, which the WAL queue archives again."""
    import os
    import shutil

    from opsctl.health.model import Status
    from opsctl.pitr import layout
    from opsctl.pitr import local as pitr_local

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    older = _restore_latest(pitr, runner)  # both from that base backup: its timeline, then two later
    live = _restore_latest(pitr, runner)
    assert live > older > 1
    assert _check(pitr).status == Status.OK
    # the newest base backup is on an older timeline: a restore to a point on `older` reads its file
    with _out_of_repository(pitr, layout.history_file(older)):
        needed = _check(pitr)
        assert needed.status == Status.CRITICAL and needed.details["missing"] == [layout.history_file(older)], needed
        assert (f"a restore to a point on timeline(s) {older} finds it only in this machine's pg_wal"
                in " ".join(needed.message.split())), needed
        assert f"needs none but timeline {live}'s" in needed.message, needed
    assert pitr.cli(runner, "backup", "base").exit_code == 0  # on the live timeline
    pitr.wait_archived()
    with _out_of_repository(pitr, layout.history_file(older)):
        passed = _check(pitr)
        assert passed.status == Status.OK and "missing" not in passed.details, passed
        verified = pitr.cli(runner, "backup", "verify-chain", "--json")
        assert verified.exit_code == 0, verified.output  # and verify-chain agrees
    # the live timeline's own: every restore reads it; its copy in pg_wal, queued, is archived again
    own = layout.history_file(live)
    with _out_of_repository(pitr, own):
        hole = _check(pitr)
        assert hole.status == Status.CRITICAL and hole.details["missing"] == [own], hole
        said = " ".join(hole.message.split())
        # breaker 66 G4, G7: what is at risk (a restore after the disk is lost) and what to do,
        # not "recovers to no point" while restores work, nor a copy said made that was not
        assert "only in this machine's pg_wal, lost with its disk" in said and "recovers to no point" not in said
        assert f"copy {own} from " in said and "the archiver stores it again" in said, said
        assert "needs none but" not in said, said
        queue = pitr_local.queue_dir(pitr.state())
        shutil.copyfile(pitr.state().data("postgres") / "pg_wal" / own, queue / f".{own}.tmp")
        os.replace(queue / f".{own}.tmp", queue / own)
        pitr.wait_archived()
        assert _archived(pitr, own), "the queued copy was not archived"
        assert _check(pitr).status == Status.OK


def _archived(pitr, file: str) -> bool:
    """Whether the repository holds an object of WAL file `file`."""
    from opsctl.pitr import layout

    sysid = pitr.sysid()
    return bool(layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))[0].get(file))


@contextlib.contextmanager
def _out_of_repository(pitr, file: str):
    """As _aside, the object kept outside the repository (verify-chain names a stranger in it);
    put back unless the file was archived again meanwhile (sealed anew: under another tag)."""
    import shutil

    from opsctl.pitr import layout

    sysid = pitr.sysid()
    (obj,) = layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))[0][file]
    stored = pitr.root / "repo" / obj.name
    aside = pitr.root / f"{file}.aside"
    shutil.move(stored, aside)
    try:
        yield
    finally:
        if _archived(pitr, file):
            aside.unlink()
        else:
            shutil.move(aside, stored)


def _full_and_incremental(pitr, runner) -> tuple[str, str, list]:
    """A full base backup and an incremental on it, their WAL archived: (full id, incremental
    id, the tar of every full base backup in the repository, this module's earlier ones too:
    with them all damaged no chain is whole)."""
    from opsctl.pitr import layout

    full = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)["id"]
    pitr.sql("insert into events(note) values ('between the two')")
    inc = pitr.cli(runner, "backup", "base", "--incremental", "--json")
    assert inc.exit_code == 0, inc.output
    pitr.wait_archived()
    folders = (pitr.root / "repo" / layout.base_prefix(pitr.sysid())).iterdir()
    tars = [f / "base.tar.zst" for f in folders
            if (f / "base.json").exists() and json.loads((f / "base.json").read_text())["kind"] == "full"]
    assert full in {t.parent.name for t in tars}
    return full, json.loads(inc.stdout)["id"], tars


def test_a_base_backup_whose_tar_is_gone_backs_nothing(pitr, runner):
    """Session 16's review: the check took the newest base backup with an authentic record as
    where restores start, without looking for its objects: with the full base backup's tar gone
    (and so the incremental built on it unusable too) it said OK while no restore could start.
    It now asks what an incremental's parent comes from (chain.newest_usable_base): no usable
    base backup, and why the newest one isn't."""
    import shutil

    from opsctl.config import DrSettings
    from opsctl.health.model import Status

    full, incremental, tars = _full_and_incremental(pitr, runner)
    assert _check(pitr).status == Status.OK
    for tar in tars:
        shutil.move(tar, tar.with_name("aside"))
    try:
        young = _check(pitr)
        assert young.status == Status.OK and young.details["base_backup"] is False, young
        assert f"no base backup of cluster {pitr.sysid()}" in young.message, young
        # the newest one, and the one at fault down its parents (breaker 25 F11)
        assert f"({incremental}: its parent base backup {full} is unusable ({full}: its object" in young.message, young
        old = _check(pitr, dr=DrSettings(rpo="1s"))
        assert old.status == Status.CRITICAL and "that a restore can use" in old.message, old
    finally:
        for tar in tars:
            shutil.move(tar.with_name("aside"), tar)
    assert _check(pitr).status == Status.OK


def test_a_tar_damaged_at_its_own_size_is_found_by_verify_chain_and_heeded_until_read_sound(pitr, runner):
    """Breaker 25 F1, F2: every full base backup's tar replaced by random bytes of its own size.
    The check goes by listing (names, sizes), so it cannot see that: it said OK, and `backup
    base --incremental` built a new link on a chain no restore could start from. Reading is
    verify-chain's (the nightly-backup runbook's `verify-chain` step): what it finds damaged is
    kept in the repository, and the check and the next incremental heed it until a later
    verify-chain reads the base backup sound (here: the tars put back)."""
    import os
    import shutil

    from opsctl.config import DrSettings
    from opsctl.health.model import Status

    full, incremental, tars = _full_and_incremental(pitr, runner)
    for tar in tars:
        shutil.copy2(tar, tar.with_name("aside"))
        tar.write_bytes(os.urandom(tar.stat().st_size))
    try:
        assert _check(pitr).status == Status.OK  # by listing: the sizes are right
        verify = pitr.cli(runner, "backup", "verify-chain")
        assert verify.exit_code == 1 and f"base backup {full}" in verify.output, verify.output

        young = _check(pitr)
        assert young.details["base_backup"] is False, young
        assert (f"({incremental}: its parent base backup {full} is unusable ({full}: verify-chain found it damaged"
                in young.message), young
        old = _check(pitr, dr=DrSettings(rpo="1s"))
        assert old.status == Status.CRITICAL and "that a restore can use" in old.message, old

        refused = pitr.cli(runner, "backup", "base", "--incremental")
        assert refused.exit_code == 2, refused.output
        assert "that a restore can use" in refused.output and "verify-chain found it damaged" in refused.output
        assert "take a full one first" in refused.output
    finally:
        for tar in tars:
            shutil.move(tar.with_name("aside"), tar)
    assert pitr.cli(runner, "backup", "verify-chain").exit_code == 0  # read sound: the finding is cleared
    assert _check(pitr).status == Status.OK
    assert pitr.cli(runner, "backup", "base", "--incremental").exit_code == 0


def test_what_verify_chain_found_damaged_is_offered_by_no_listing_and_an_edited_record_is_said(pitr, runner):
    """Breaker 27 F3, F4: after verify-chain found the full base backups damaged and a new full
    one was taken, `backup list` still offered a window from a damaged one, and a restore to a
    time in it said only that the time was "before the oldest base backup" (the new one). And
    a record edited to hide the damage (its seal no longer matching) read as "nothing found",
    the check plain OK. Now the listing heeds the record, the restore names the older damaged
    ones, and a record that fails its seal is a WARNING."""
    import datetime as dt
    import os
    import shutil

    from opsctl.health.model import Status
    from opsctl.pitr import layout

    _, _, tars = _full_and_incremental(pitr, runner)
    between = dt.datetime.now(dt.timezone.utc).isoformat()
    pitr.sql("insert into events(note) values ('after the time asked')")  # restorable past it
    for tar in tars:
        shutil.copy2(tar, tar.with_name("aside"))
        tar.write_bytes(os.urandom(tar.stat().st_size))
    record = pitr.root / "repo" / layout.verified(pitr.sysid())
    try:
        assert pitr.cli(runner, "backup", "verify-chain").exit_code == 1
        new = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)["id"]
        pitr.wait_archived()
        listed = pitr.cli(runner, "backup", "list", "--json")
        windows = json.loads(listed.stdout)["pitr"]["windows"]
        assert windows and {w["base"] for w in windows} == {new}, windows
        refused = pitr.cli(runner, "restore", "--to-time", between, "--beside", "--yes")
        said = " ".join(refused.output.split())
        assert refused.exit_code == 2 and f"before the oldest base backup a restore can use ({new}" in said, said
        assert "older ones are damaged" in said and "fails its check" in said, said
        assert not {str(t) for t in tars} & set(held()), "the refused restore left a damaged tar open"
        # repaired (the bytes put back from another copy) and no verify-chain since: the restore
        # reads the tar itself and does not take the stale finding on trust (breaker 27 F9)
        for tar in tars:
            shutil.copy2(tar.with_name("aside"), tar)
        listed = pitr.cli(runner, "backup", "list", "--json")  # the listing views heed it until a read
        assert {w["base"] for w in json.loads(listed.stdout)["pitr"]["windows"]} == {new}, listed.stdout
        restored = pitr.cli(runner, "restore", "--to-time", between, "--beside", "--yes")
        assert restored.exit_code == 0, restored.output

        body = json.loads(record.read_text())
        body["damaged"] = {}  # the damage hidden; the seal no longer matches
        record.write_text(json.dumps(body))
        check = _check(pitr)
        assert check.status == Status.WARNING and "is not authentic" in check.message, check
        assert check.details["verify_chain_record"] == "not authentic", check.details
    finally:
        for tar in tars:
            shutil.move(tar.with_name("aside"), tar)
    assert pitr.cli(runner, "backup", "verify-chain").exit_code == 0  # written anew: sound
    assert _check(pitr).status == Status.OK


def test_a_damaged_standalone_manifest_takes_no_incremental_and_nothing_else(pitr, runner):
    """Breaker 25 F12, breaker 28 F1, F7: the standalone backup_manifest.zst is read only by an
    incremental built on its base backup; a restore reads the tar (which holds its own copy).
    Damaged, it made verify-chain call the chain broken, `--drop-damaged` delete chains that
    restore, and every nightly fail at its base backup on the same parent. Now verify-chain
    names it (exit 0), the check WARNs (nothing else reports it), prune-chain leaves it, and
    an incremental is built elsewhere: on the parent (once verify-chain found it), or
    (`--auto`, before) a full one."""
    import os

    from opsctl.health.model import Status
    from opsctl.pitr import layout

    full, inc, _ = _full_and_incremental(pitr, runner)
    manifest = pitr.root / "repo" / _base_folder(pitr) / inc / "backup_manifest.zst"
    original = manifest.read_bytes()
    manifest.write_bytes(os.urandom(len(original)))
    record = pitr.root / "repo" / layout.verified(pitr.sysid())
    try:
        record.unlink(missing_ok=True)  # before any verify-chain found it: the incremental's read does
        refused = pitr.cli(runner, "backup", "base", "--incremental")
        said = " ".join(refused.output.split())
        assert refused.exit_code == 1 and f"base backup {inc}'s backup_manifest.zst" in said, said
        assert "'opsctl backup base --auto'" in said, said
        auto = json.loads(pitr.cli(runner, "backup", "base", "--auto", "--json").stdout)
        assert (auto["kind"], auto["parent"]) == ("full", None), auto

        verify = pitr.cli(runner, "backup", "verify-chain")
        said = " ".join(verify.output.split())  # the report folds at 80 columns
        assert verify.exit_code == 0, verify.output
        assert f"base backup {inc}: its object" in said and "no incremental is built on it" in said, said
        check = _check(pitr)  # no alert from verify-chain, so the check says it (breaker 28)
        assert check.status == Status.WARNING and check.details["unfit_base_backups"] == [inc], check
        assert f"1 base backup(s) with a damaged backup_manifest.zst ({inc}: " in check.message, check.message
        assert "'opsctl backup verify-chain' clears this" in check.message, check.message
        on_parent = json.loads(pitr.cli(runner, "backup", "base", "--incremental", "--json").stdout)
        assert on_parent["parent"] != inc, on_parent  # found by verify-chain: passed over
        plan = pitr.cli(runner, "backup", "prune-chain", "--keep-full", "2", "--drop-damaged", "--dry-run", "--json")
        assert not {full, inc} & set(json.loads(plan.stdout)["dropped"]), plan.stdout
    finally:
        manifest.write_bytes(original)
    assert pitr.cli(runner, "backup", "verify-chain").exit_code == 0
    assert _check(pitr).status == Status.OK  # read whole again: nothing left to say


def _base_folder(pitr) -> str:
    from opsctl.pitr import layout

    return layout.base_prefix(pitr.sysid())


def test_a_scheduled_base_backup_is_incremental_on_a_usable_chain_else_full(pitr, runner):
    """The nightly-backup runbook's `base-backup` step (kind auto): an incremental on the newest
    base backup a restore can use, a full one once the full under it is older than a week
    (`full_every`), and a full one when verify-chain found the chain damaged (breaker 25 F2:
    an incremental on it would restore nothing)."""
    import datetime as dt

    from opsctl.pitr import base as bb
    from opsctl.pitr import chain

    repo, key = pitr.repo(), pitr.key()
    conninfo = f"host=127.0.0.1 port={pitr.port} user=postgres dbname=postgres"
    full = bb.take(repo, key, conninfo, "full")
    pitr.sql("insert into events(note) values ('before the scheduled ones')")
    inc = bb.take(repo, key, conninfo, "auto")
    assert (inc.kind, inc.parent) == ("incremental", full.id)
    weekly = bb.take(repo, key, conninfo, "auto", full_every=dt.timedelta(0))
    assert (weekly.kind, weekly.parent) == ("full", None)
    now = dt.datetime.now(dt.timezone.utc)
    chain.record_findings(repo, key, pitr.sysid(), {weekly.id: "its object x fails its check: bad header"}, now)
    try:  # passed over: on the newest usable one
        passing = bb.take(repo, key, conninfo, "auto")
        assert (passing.kind, passing.parent) == ("incremental", inc.id), passing
        every = {b.id: "damaged" for b in bb.load_all(repo, pitr.sysid(), key)[0]}
        chain.record_findings(repo, key, pitr.sysid(), every, now)
        anew = bb.take(repo, key, conninfo, "auto")  # nothing usable to build on
        assert (anew.kind, anew.parent) == ("full", None), anew
    finally:
        chain.record_findings(repo, key, pitr.sysid(), {}, dt.datetime.now(dt.timezone.utc))


def test_a_repository_that_does_not_answer_leaves_the_check_its_own_verdict(pitr, runner, monkeypatch):
    """Breaker 22 F8: with the repository hung, the check's own repository calls (the base
    backups, the missing-WAL listing) took it past the sweep's timeout: "no result within 5s",
    and what it knows without the repository (a stuck archiver, the queue) went unsaid. The
    repository is now asked within the check's timeout less 2 s; past it the check says so
    (WARNING at least) and gives the rest of its verdict. The hang is injected where the check
    reads the base backups' records (a repository GET that never returns): the file://
    repository here can't be made to hang (it opens non-blocking, regular files only)."""
    import threading

    from opsctl.health.model import Status
    from opsctl.pitr import base as bb

    assert pitr.cli(runner, "backup", "base", "--json").exit_code == 0
    pitr.wait_archived()
    release = threading.Event()

    def hung_read(*args, **kwargs):
        release.wait(60)
        return [], {}

    monkeypatch.setattr(bb, "load_all", hung_read)
    try:
        # its own timeout, 30 s by default, set to 5 here: the repository gets 3 of them
        hung = _check(pitr, health=pitr.env().health.model_copy(update={"timeouts": {"wal archive": 5}}))
        assert hung.status == Status.WARNING and hung.details["repository_answered"] is False, hung
        assert "the repository did not answer within 3 s" in hung.message, hung  # the read is still blocked
        assert "archive lag at most" in hung.message, hung  # the rest of the verdict is still given
    finally:
        release.set()
    monkeypatch.undo()
    assert _check(pitr).status == Status.OK


def _base_records(pitr) -> set[str]:
    from opsctl.pitr import base as bb
    from opsctl.pitr import layout

    return {n for n in pitr.repo().names(layout.base_prefix(pitr.sysid())) if n.endswith("/" + bb.RECORD)}


def test_a_base_backup_returns_once_the_wal_it_needs_is_archived(pitr, runner):
    """CI, session 21: the nightly-backup runbook's verify-chain, run right after its base
    backup, failed "the chain is broken: ...18 (queued)". PostgreSQL's wait at a base backup's
    end ends when its archive_command has queued the stop segment locally, and the archiver
    uploads it later: `backup base` said complete while no restore could start from it. Now it
    returns once that WAL is in the repository (pgBackRest's archive-check): here the archiver
    is held until the record is written, and the segment is there when the command returns."""
    import os
    import signal
    import threading

    from opsctl.pitr import layout
    from opsctl.pitr import local as pitr_local

    pitr.wait_archived()
    before = _base_records(pitr)
    pid = pitr_local.archiver_pid(pitr.state())
    os.kill(pid, signal.SIGSTOP)
    resumed = threading.Event()

    def resume_after_the_record():
        deadline = time.monotonic() + 120
        while _base_records(pitr) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # the command, were it not waiting, has long returned
        os.kill(pid, signal.SIGCONT)
        resumed.set()

    waker = threading.Thread(target=resume_after_the_record, daemon=True)
    waker.start()
    try:
        result = pitr.cli(runner, "backup", "base", "--json")
        listed = pitr.repo().names(layout.wal_prefix(pitr.sysid()))
    finally:
        waker.join(130)
        os.kill(pid, signal.SIGCONT)
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert resumed.is_set()
    stop = layout.segment(rec["timeline"], layout.segno(layout.lsn(rec["stop_lsn"])))
    assert any(n.startswith(layout.wal_prefix(pitr.sysid()) + stop + ".") for n in listed), (stop, rec)


def test_a_base_backup_whose_wal_does_not_arrive_fails_naming_it_and_is_kept(pitr, runner):
    """The other side of the wait: an archiver that is stuck past `backup.base_wal_wait`, or not
    running at all, fails the base backup (exit 1, one line naming the segment and what to do)
    instead of waiting on; the base backup is kept, restorable once its WAL is archived."""
    import os
    import signal

    import psutil
    import yaml

    from opsctl.pitr import local as pitr_local

    path = pitr.root / "opsctl.yaml"
    original = path.read_text()
    doc = yaml.safe_load(original)
    doc["environments"]["local"]["backup"]["base_wal_wait"] = 2
    path.write_text(yaml.safe_dump(doc))
    pid = pitr_local.archiver_pid(pitr.state())
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            before = _base_records(pitr)
            stuck = pitr.cli(runner, "backup", "base")
            kept = _base_records(pitr) - before
        finally:
            os.kill(pid, signal.SIGCONT)
        assert stuck.exit_code == 1, stuck.output
        assert "Traceback" not in stuck.output and "waiting up to 2 s" in stuck.output, stuck.output  # said, then
        (line,) = [ln for ln in stuck.output.splitlines() if ln.startswith("opsctl: error: ")]
        assert "waits in the local queue after 2 s (backup.base_wal_wait)" in line, line
        assert f"the archiver is stuck: its process {pid} is stopped" in line, line  # as the health check says it
        assert f"'kill -CONT {pid}' resumes it" in line, line
        assert "the base backup is kept" in line and len(kept) == 1, (line, kept)
        assert next(iter(kept)).split("/")[-2] in line, line  # its id is named

        pitr.wait_archived()
        os.kill(pid, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(pid)], timeout=10)
        dead = pitr.cli(runner, "backup", "base")
        assert dead.exit_code == 1, dead.output
        assert "the WAL archiver is not running ('opsctl local up' starts it)" in dead.output, dead.output
        # base_wal_wait 0 waits not, but no archiver is still said (breaker 35 F1: "complete", exit 0)
        doc["environments"]["local"]["backup"]["base_wal_wait"] = 0
        path.write_text(yaml.safe_dump(doc))
        unwaited = pitr.cli(runner, "backup", "base")
        assert unwaited.exit_code == 1 and "the WAL archiver is not running" in unwaited.output, unwaited.output
    finally:
        path.write_text(original)
        pitr.ensure_archiver()
    pitr.wait_archived()
    assert pitr.cli(runner, "backup", "base").exit_code == 0  # once archived, as ever
