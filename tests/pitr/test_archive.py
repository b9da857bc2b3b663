"""Continuous WAL archiving: sealed, tagged segments; a bounded queue that never stops PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest


def test_archived_segment_is_compressed_sealed_and_tagged(pitr):
    from opsctl.backup import keys
    from opsctl.backup.crypto import IntegrityError
    from opsctl.pitr import chain, layout

    pitr.sql("insert into events(note) select 'seal' from generate_series(1, 100)")
    seg = pitr.wait_archived()
    sysid = pitr.sysid()
    files, strange = layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))
    assert not strange
    (obj,) = files[seg]
    stored = pitr.repo().get_bytes(obj.name)
    assert stored.startswith(b"OPSCTLB1") and len(stored) < layout.SEGMENT_BYTES // 4  # sealed, compressed
    plain = chain.open_wal(pitr.repo(), pitr.key(), sysid, obj)
    assert len(plain) == layout.SEGMENT_BYTES
    assert int.from_bytes(plain[:2], "little") >= 0xD100  # a PostgreSQL WAL page header (XLOG_PAGE_MAGIC)
    with pytest.raises(IntegrityError, match="authentication tag"):
        chain.open_wal(pitr.repo(), keys.BackupKey(b"o" * 32), sysid, obj)
    assert chain.commits(plain, seg)  # pg_waldump reads it: the 100-row commit is in it


def test_full_queue_records_a_gap_and_still_succeeds(tmp_path):
    """The archive_command itself, run by sh as PostgreSQL runs it: copy while there is room,
    then an empty marker in .dropped and exit 0 (PostgreSQL may recycle, the database runs on)."""
    from opsctl.pitr import archive

    queue = tmp_path / "queue"
    archive.prepare_queue(queue, None)
    src = tmp_path / "pg_wal"
    src.mkdir()
    names = [f"0000000100000000000000{n:02X}" for n in range(1, 4)]
    for n in names:
        (src / n).write_bytes(n.encode() * 100)
    command = archive.archive_command(queue, limit=2)
    for n in names:
        run = subprocess.run(["sh", "-c", command.replace("%p", f"pg_wal/{n}").replace("%f", n)], cwd=tmp_path,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in queue.iterdir() if not p.name.startswith(".")) == names[:2]
    assert (queue / names[0]).read_bytes() == (src / names[0]).read_bytes()
    assert [p.name for p in (queue / ".dropped").iterdir()] == [names[2]]
    again = subprocess.run(["sh", "-c", command.replace("%p", f"pg_wal/{names[0]}").replace("%f", names[0])],
                           cwd=tmp_path)
    assert again.returncode == 0  # PostgreSQL repeating a file after a crash: already queued


def test_queue_path_that_a_shell_would_split_is_refused(tmp_path):
    from opsctl.errors import UsageError
    from opsctl.pitr import archive

    with pytest.raises(UsageError, match="shell"):
        archive.archive_command(tmp_path / "a b;rm -rf x", 4)


def test_repository_down_never_stops_the_database(pitr):
    """With the archiver stopped (a repository that takes nothing), commits go on; the queue
    holds the segments, and they reach the repository once the archiver runs again."""
    from opsctl.local import state as st
    from opsctl.pitr import local as pitr_local

    state = pitr.state()
    assert pitr_local.stop_archiver(state)
    queue = pitr_local.queue_dir(state)
    for _ in range(3):
        pitr.sql("insert into events(note) values ('while the repository is away')")
        pitr.sql("select pg_switch_wal()", db="postgres")
    deadline = time.monotonic() + 30
    while len([p for p in queue.iterdir() if not p.name.startswith(".")]) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    queued = sorted(p.name for p in queue.iterdir() if not p.name.startswith("."))
    assert len(queued) >= 3
    pitr.ensure_archiver()
    pitr.wait_archived()
    from opsctl.pitr import layout

    names = pitr.repo().names(layout.wal_prefix(pitr.sysid()))
    assert all(any(n.startswith(layout.wal_prefix(pitr.sysid()) + q + ".") for n in names) for q in queued)
    assert not [p for p in queue.iterdir() if not p.name.startswith(".")]
    assert st.load(st.folder_for(pitr.root)).components["archiver"].pid


def test_staged_wal_for_a_restore_is_private(tmp_path):
    import stat

    from opsctl.pitr import chain

    stage = tmp_path / "stage"
    chain.stage_file(stage, "000000010000000000000001", b"wal bytes")
    assert stat.S_IMODE(stage.stat().st_mode) == 0o700
    assert stat.S_IMODE((stage / "000000010000000000000001").stat().st_mode) == 0o600


def test_a_segment_is_staged_from_its_first_authentic_copy_its_zero_tail_a_hole(tmp_path):
    """Issue 22 (sessions 9, 36): a segment switched by archive_timeout is mostly zeros; staged
    for a restore (chain.stage_wal) it reads back byte for byte at its full size, its zero MiBs
    holes, not 16 MB of writes; a copy that is not authentic is passed over for the next one,
    and with none authentic nothing is staged."""
    import dataclasses

    from opsctl.backup import keys
    from opsctl.pitr import chain

    key, sysid, file = keys.BackupKey(b"k" * 32), "7000000000000000001", "000000010000000000000002"
    size = 16 << 20
    plain = b"\x01" * 100_000 + bytes(size - 100_000)
    forged_repo, forged = _sealed_wal(keys.BackupKey(b"x" * 32), sysid, file, os.urandom(size))
    good_repo, good = _sealed_wal(key, sysid, file, plain)
    forged = dataclasses.replace(forged, name=forged.name.replace(".zst", ".other.zst"))

    class Repo:
        def get_bytes(self, name):
            return forged_repo.get_bytes(good.name) if name == forged.name else good_repo.get_bytes(name)

    stage = tmp_path / "stage"
    assert chain.stage_wal(Repo(), key, sysid, file, [forged, good], stage) is good
    assert (stage / file).read_bytes() == plain and (stage / file).stat().st_blocks * 512 <= 1 << 20  # 1 MiB of 16
    assert chain.stage_wal(Repo(), key, sysid, "000000010000000000000003", [forged], stage) is None
    assert sorted(p.name for p in stage.iterdir()) == [file]


def _sealed_wal(key, sysid: str, file: str, plain: bytes):
    """(repository stand-in, WalObject) holding `plain` compressed and sealed as the archiver
    stores a WAL file, with a valid tag: what only the key's holder can write."""
    import hashlib

    import zstandard

    from opsctl.backup import crypto
    from opsctl.pitr import layout

    stored = b"".join(crypto.encrypt([zstandard.ZstdCompressor().compress(plain)], key))
    obj = layout.WalObject(f"pitr/{sysid}/wal/{file}.zst", file,
                           layout.tag(key, sysid, file, hashlib.sha256(stored).hexdigest()), len(stored))

    class Repo:
        def get_bytes(self, name):
            assert name == obj.name
            return stored

    return Repo(), obj


def test_check_wal_stages_what_open_wal_reads_with_zero_mebibytes_left_holes(tmp_path):
    """Issue 22 (session 35): a restore stages each segment from 1 MiB pieces (check_wal), no
    16 MiB plaintext held per segment: the file is open_wal's bytes, private, its all-zero MiBs
    holes; a timeline history (no fixed size) is staged whole."""
    import stat

    from opsctl.backup import keys
    from opsctl.pitr import chain, layout

    key, sysid = keys.BackupKey(b"k" * 32), "7000000000000000001"
    size = layout.SEGMENT_BYTES
    plain = os.urandom(300_000) + bytes(3 << 20) + os.urandom(5000) + bytes(size - 300_000 - (3 << 20) - 5000)
    repo, obj = _sealed_wal(key, sysid, "000000010000000000000007", plain)
    chain.check_wal(repo, key, sysid, obj)  # checked, nothing written
    staged = tmp_path / obj.file
    chain.check_wal(repo, key, sysid, obj, into=staged)
    assert staged.read_bytes() == plain == chain.open_wal(repo, key, sysid, obj)
    assert stat.S_IMODE(staged.stat().st_mode) == 0o600
    assert staged.stat().st_blocks * 512 < 4 << 20  # 2 MiB written (the MiBs holding data), 14 MiB holes
    repo, obj = _sealed_wal(key, sysid, "00000002.history", b"1\t0/3000000\tbefore 2026-11-29\n")
    chain.check_wal(repo, key, sysid, obj, into=tmp_path / obj.file)
    assert (tmp_path / obj.file).read_bytes() == b"1\t0/3000000\tbefore 2026-11-29\n"


@pytest.mark.parametrize("plain, why", [
    (bytes(16 << 20)[:-8192], "decompresses to 16769024 bytes where 16777216 were expected"),  # sealed whole
    (bytes((16 << 20) + 8192), "decompresses to more than the 16777216 bytes expected"),
])
def test_check_wal_refuses_a_segment_of_another_size_even_sealed_with_the_key(tmp_path, plain, why):
    """zstandard's stream reader does not report a frame cut short: the segment's size is what
    check_wal holds it to (pipeline.unpack_into)."""
    from opsctl.backup import keys
    from opsctl.backup.crypto import IntegrityError
    from opsctl.pitr import chain

    key, sysid = keys.BackupKey(b"k" * 32), "7000000000000000001"
    repo, obj = _sealed_wal(key, sysid, "000000010000000000000008", plain)
    with pytest.raises(IntegrityError, match=why):
        chain.check_wal(repo, key, sysid, obj, into=tmp_path / obj.file)
    with pytest.raises(IntegrityError, match="not a whole segment"):
        chain.open_wal(repo, key, sysid, obj)


def test_a_queued_file_archived_before_with_other_bytes_is_a_loud_conflict(pitr, tmp_path):
    # a repeat with the same bytes is skipped; other bytes under the same name (two servers on
    # one timeline) stay queued, raise, and leave a marker the health check reports: never a
    # silent skip that loses the live server's WAL
    from opsctl.pitr import archive, layout

    queue = tmp_path / "queue"
    archive.prepare_queue(queue, None)
    archiver = archive.Archiver(pitr.repo(), pitr.key(), "7" * 19, queue)
    (queue / "00000009.history").write_text("8\t0/3000000\tno recovery target specified\n")
    assert archiver.drain().archived == ["00000009.history"]
    (queue / "00000009.history").write_text("8\t0/3000000\tno recovery target specified\n")
    assert archiver.drain().skipped == ["00000009.history"]  # PostgreSQL repeated it
    (queue / "00000009.history").write_text("8\t0/5000000\tno recovery target specified\n")
    with pytest.raises(archive.WalConflict, match="already archived with other content"):
        archiver.drain()
    assert (queue / "00000009.history").exists()  # still queued, nothing overwritten
    assert (queue / archive.CONFLICT / "00000009.history").exists()
    files, _ = layout.parse_wal("7" * 19, pitr.repo().names(layout.wal_prefix("7" * 19)))
    assert len(files["00000009.history"]) == 1
    from opsctl.health.model import Status
    from opsctl.pitr import health
    from opsctl.pitr import local as pitr_local

    live_marks = pitr_local.queue_dir(pitr.state()) / archive.CONFLICT
    live_marks.mkdir(exist_ok=True)
    (live_marks / "00000009.history").write_text((queue / archive.CONFLICT / "00000009.history").read_text())
    try:
        checked = health.archive_lag(pitr.project(), pitr.env())
        assert checked.status == Status.CRITICAL and "already archived with other content" in checked.message
    finally:
        shutil.rmtree(live_marks)


def test_no_secret_reaches_the_servers_environment_but_the_archivers_key(pitr, tmp_path, monkeypatch):
    """The backup key was in PostgreSQL's environment, where its superuser reads it with
    pg_read_binary_file('/proc/<pid>/environ'). Now a server started by opsctl inherits no
    secret (keys, tokens, cloud credentials, URLs with a password, names opsctl.yaml gives);
    only the archiver keeps what it needs to seal and store WAL."""
    from opsctl.local import procs
    from pitr_support import KEY

    (environ,) = pitr.sql("select pg_read_binary_file(%s)", (f"/proc/{pitr.pid}/environ",), db="postgres")[0]
    assert b"OPSCTL_BACKUP_KEY" not in environ and KEY.encode() not in environ
    archiver = pitr.state().components["archiver"].pid
    assert f"OPSCTL_BACKUP_KEY={KEY}".encode() in open(f"/proc/{archiver}/environ", "rb").read()
    planted = {"AWS_SECRET_ACCESS_KEY": "aws-secret-1", "SLACK_WEBHOOK_URL": "https://hooks.example/T0/B0/tok",
               "SMTP_PASSWORD": "smtp-secret-1", "OPS_DB": "postgresql://ops:db-secret-1@db/ops",
               "OPSCTL_WORKER_API_KEY": "api-secret-1", "LANG": "C.UTF-8"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    pid = procs.spawn(["/bin/sleep", "30"], tmp_path / "sleep.log", env={"GIVEN": "kept"})
    try:
        # until its exec is done: before, a forked child shows this process's first environment,
        # and during exec the kernel names the new program (/proc/PID/exe) before it sets up the
        # new environment, which then reads empty (KeyError: 'LANG' in two full runs, the second
        # after waiting for exe alone). GIVEN is only in the new one.
        deadline = time.monotonic() + 10
        while b"GIVEN=kept" not in (environ := open(f"/proc/{pid}/environ", "rb").read()):
            assert time.monotonic() < deadline, "the spawned process never ran with its environment"
            time.sleep(0.01)
        seen = dict(line.split("=", 1) for line in environ.decode().split("\0") if "=" in line)
    finally:
        procs.stop(pid, 5)
    assert not {n for n in planted if n != "LANG"} & set(seen), seen
    assert seen["LANG"] == "C.UTF-8" and seen["GIVEN"] == "kept" and "PATH" in seen


def test_initdb_runs_without_the_secrets_too(pitr, monkeypatch):
    """initdb runs as PostgreSQL's user like the server (and starts it in bootstrap mode): it
    inherited the backup key the same way."""
    import shutil
    import subprocess

    from opsctl.local import postgres as pg

    real, seen = subprocess.run, []

    def run(*args, **kwargs):
        seen.append(kwargs.get("env"))
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    probe = pitr.root / "initdb-probe"
    try:
        pg.init(probe / "data", probe / "logs" / "initdb.log")
        assert (probe / "data" / "global" / "pg_control").is_file()
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    assert seen and all(env is not None and "OPSCTL_BACKUP_KEY" not in env for env in seen), seen


def test_a_variable_opsctl_yaml_names_as_a_secret_stays_out_whatever_its_name(tmp_path, monkeypatch):
    """Names that do not look secret but that opsctl.yaml names as holding one (`*_env`: the
    backup key's, the database URL's) stay out of a platform component's environment too."""
    import json

    from opsctl.config import load_project
    from opsctl.local import platform, procs
    from opsctl.local import state as st

    (tmp_path / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {"local": {
        "platform": "local", "database": {"url_env": "PRIMARY_LOCATION"},
        "backup": {"repository": f"file://{tmp_path / 'repo'}", "key_env": "BK_MATERIAL"}}}}))
    monkeypatch.setenv("BK_MATERIAL", "key-material-1")
    monkeypatch.setenv("PRIMARY_LOCATION", "db.internal:5432")
    monkeypatch.setenv("ORDINARY_SETTING", "kept")
    folder = st.folder_for(tmp_path)
    with st.locked(folder):
        state = st.load(folder)
        platform.start_component("s3", state, load_project(tmp_path).env("local"))
        state.save()
    pid = state.components["s3"].pid
    try:
        environ = open(f"/proc/{pid}/environ", "rb").read().decode()
    finally:
        procs.stop(pid, 10)
    assert "BK_MATERIAL" not in environ and "PRIMARY_LOCATION" not in environ
    assert "ORDINARY_SETTING=kept" in environ
