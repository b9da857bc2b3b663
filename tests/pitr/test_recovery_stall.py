"""A recovery that runs out of WAL before its data is consistent never accepts a connection:
the restore's recovery server waited out the whole replay timeout (an hour) showing nothing,
and a timed-out one was left running. restore._replay now sees the startup process waiting
for a WAL file before "consistent recovery state reached", stops the server and says which
file, at once; with the WAL staged, the same base backup replays to its end as before."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from opsctl.errors import OperationFailed
from opsctl.local import postgres as pg
from opsctl.local import procs
from opsctl.pitr import layout, restore


@pytest.fixture(scope="module")
def base_backup(tmp_path_factory):
    """(a folder holding `bb`, a base backup taken without its WAL; the WAL files it needs): a
    private server, one pg_basebackup -X none, a switch so the backup's end is in a whole segment."""
    tmp = tmp_path_factory.mktemp("stall")
    tmp.chmod(0o711)  # PostgreSQL may run as its own system user
    port = procs.free_port()
    pid = pg.start(tmp / "src", port, tmp / "src.log")
    try:
        subprocess.run([str(pg.tool("pg_basebackup")), "-h", procs.HOST, "-p", str(port), "-U", "postgres",
                        "-D", str(tmp / "bb"), "-X", "none", "-c", "fast"], check=True, capture_output=True)
        import psycopg

        with psycopg.connect(pg.url(port), autocommit=True) as conn:
            conn.execute("select pg_switch_wal()")
        wal = tmp / "wal"  # copied while the server runs: its shutdown checkpoint may recycle them
        wal.mkdir()
        for f in (tmp / "src" / "pg_wal").iterdir():
            if layout.WAL_FILE.fullmatch(f.name):
                shutil.copy(f, wal / f.name)
    finally:
        pg.stop(pid)
    return tmp, wal


def _recover(tmp, name: str, staged: list) -> tuple:
    data, stage = tmp / name, tmp / f"{name}-stage"
    shutil.copytree(tmp / "bb", data)
    stage.mkdir()
    for f in staged:
        shutil.copy(f, stage / f.name)
    restore._configure(data, stage, {})
    user = pg.run_as()
    data.chmod(0o700)
    pg.chown(data, user)
    pg.chown(stage, user)
    started: list[int] = []
    return data, started, lambda: restore._replay(data, tmp / f"{name}.log", 120, started.append, path=[(1, None)])


def test_a_recovery_missing_wal_before_consistency_stops_at_once_naming_the_file(base_backup):
    tmp, _ = base_backup
    data, started, replay = _recover(tmp, "missing", [])
    label = (data / "backup_label").read_text()
    needed = label.split("(file ", 1)[1].split(")", 1)[0]  # START WAL LOCATION: 0/... (file 0000...)
    with pytest.raises(OperationFailed, match=rf"before the restored data was consistent: it waits for WAL at "
                                              rf"\S+ \(file {needed}\), which the WAL staged for it does not hold"):
        replay()
    assert started and not procs.alive(started[-1]), "the stalled recovery server was left running"


def test_with_its_wal_staged_the_same_backup_replays_to_the_end(base_backup):
    tmp, wal = base_backup
    _, started, replay = _recover(tmp, "whole", sorted(wal.iterdir()))
    port, pid, how = replay()
    try:
        assert how == "end" and pid == started[-1]
    finally:
        pg.stop(pid)


def test_the_file_named_is_the_one_on_the_followed_timeline(tmp_path):
    """Breaker 16 F3: the name came from the startup process's title, the last file it tried,
    which is the oldest timeline's (00000001...6E for an LSN timeline 3 holds since 0/B000000)."""
    watch = restore._StallWatch(tmp_path / "log", [(1, 0x0B000000), (3, None)])
    assert watch._file("0/6E000148") == " (file 00000003000000000000006E)"
    assert watch._file("0/0A000148") == " (file 00000001000000000000000A)"
    assert restore._StallWatch(tmp_path / "log")._file("0/6E000148") == ""
