"""Restores interrupted, raced or asked loosely (breaker 42):

- R1: an interrupt during the swap left the live database refusing connections
  (`datallowconn = false`), and nothing repaired it after a kill -9.
- R4: `--latest` / `--date` with no `--components` picked an hourly Redis snapshot and
  restored Redis alone, exit 0; `--latest --target-db` was refused "holds no db".
- R7: SIGHUP (a dropped SSH session) ended a restore with exit 129, no line, nothing cleaned;
  a killed restore's scratch database and decrypted dump stayed for good.
- R8: a `--target-db` made by someone else during the restore was taken over.
- R15: look-alike `--target-db` names were accepted, invisible characters printed raw.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from backup_support import KEY, ok, one_line_error, side_env
from opsctl.backup import postgres as pgb
from opsctl.cli import app
from opsctl.local import pidstart, procs

pytestmark = pytest.mark.slow

DB = "brk42_live"


def _admin(seeded):
    return psycopg.connect(make_conninfo(seeded.db_url, dbname="postgres"), autocommit=True)


def _drop_ours(seeded) -> None:
    with _admin(seeded) as conn:
        for (name,) in conn.execute("select datname from pg_database where datname like 'brk42%' "
                                    "or datname like 'transcr%be%' and datname <> 'transcribe'").fetchall():
            conn.execute(f'alter database "{name}" allow_connections true')
            conn.execute(f'drop database "{name}" with (force)')


@pytest.fixture
def live_db(seeded, runner, tmp_path, monkeypatch):
    """(env name, live database url, backup id): a side environment whose database is DB (a
    table of `rows` rows), one db backup of it, and a temporary directory of the test's own."""
    _drop_ours(seeded)
    with _admin(seeded) as conn:
        conn.execute(f"create database {DB}")
    url = make_conninfo(seeded.db_url, dbname=DB)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table work as select g as id, md5(g::text) as v from generate_series(1, 200000) g")
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url,
                   database={"name": DB})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_tmp))
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    yield env, url, made["id"]
    _drop_ours(seeded)


def _databases(seeded) -> dict[str, bool]:
    with _admin(seeded) as conn:
        return dict(conn.execute("select datname, datallowconn from pg_database where datname like 'brk42%'"))


def _default_signals() -> None:
    # a suite started under nohup, or an xdist worker, hands its children SIGHUP/SIGINT ignored,
    # which opsctl then rightly keeps ignored: these tests are about what an interrupt does
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def _opsctl(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "opsctl"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ), preexec_fn=_default_signals)


def _run_folders_of(pid: int) -> list[Path]:
    """The restore run folders whose record names process `pid`."""
    import json as _json

    from opsctl.backup.runs import RUN_PREFIX, RUN_RECORD

    found = []
    for folder in Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}*"):
        try:
            if _json.loads((folder / RUN_RECORD).read_text()).get("pid") == pid:
                found.append(folder)
        except (OSError, ValueError):
            continue
    return found


def _wait_for_scratch(seeded, proc, prefix: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(n.startswith(prefix) for n in _databases(seeded)):
            return
        time.sleep(0.02)
    raise AssertionError(f"no {prefix}... database appeared: {proc.communicate()}")


# R1 -------------------------------------------------------------------------------------

def test_an_interrupt_during_the_swap_puts_the_live_database_back(live_db, seeded, monkeypatch, caplog):
    """A real SIGTERM (sigterm_as_interrupt, as the CLI runs a restore) arriving between "refuse
    connections" and the renames: the live database is back under its name, accepting
    connections, and what was left is said."""
    from opsctl.signals import sigterm_as_interrupt

    env, url, _ = live_db
    scratch = pgb.derived_name(DB, "restoring")
    with _admin(seeded) as conn:
        conn.execute(f"create database {scratch}")
    real = pgb._admin
    sent = []

    class Interrupting:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.__enter__()
            return self

        def __exit__(self, *exc):
            return self.conn.__exit__(*exc)

        def execute(self, query, *args):
            text = query.as_string(self.conn) if hasattr(query, "as_string") else query
            if "rename to" in text and not sent:
                sent.append(text)
                os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: before the rename
            return self.conn.execute(query, *args)

    monkeypatch.setattr(pgb, "_admin", lambda u: Interrupting(real(u)))
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        pgb.swap(url, scratch, DB, pgb.derived_name(DB, "before"))
    monkeypatch.setattr(pgb, "_admin", real)
    assert sent
    assert _databases(seeded)[DB] is True
    assert not any(n.startswith(f"{DB}_before_") for n in _databases(seeded))
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from work").fetchone()[0] == 200000
    assert any("interrupted during the swap" in r.getMessage() and "accepting connections" in r.getMessage()
               for r in caplog.records)


def test_the_next_restore_repairs_what_a_swap_killed_outright_left(live_db, seeded, runner, tmp_path):
    """kill -9 during the swap: the live database refuses connections beside the dead
    restore's scratch copy and folder. The next restore, even one with --target-db, finds
    them, lets the database accept connections again, drops the scratch copy, and says so."""
    env, url, backup_id = live_db
    scratch = pgb.derived_name(DB, "restoring")
    with _admin(seeded) as conn:
        conn.execute(f"create database {scratch}")
        conn.execute(f"alter database {DB} allow_connections false")
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = Path(tempfile.gettempdir()) / "opsctl-restore-deadbeef"
    folder.mkdir()
    (folder / "db.dump").write_bytes(b"plaintext")
    (folder / "opsctl-run.json").write_text(json.dumps({
        "pid": dead.pid, "start": "1", "server": _server_of(url), "scratch": scratch, "live": DB, "in_place": True}))

    result = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", "brk42_copy", "--yes"])
    assert result.exit_code == 0, result.output
    assert "accepts them again" in result.stderr and scratch in result.stderr, result.stderr
    assert _databases(seeded)[DB] is True and scratch not in _databases(seeded)
    assert not folder.exists()
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from work").fetchone()[0] == 200000


def test_a_closed_database_with_no_restore_evidence_is_left_alone(live_db, seeded, runner):
    """An administrator's own ALLOW_CONNECTIONS false (no scratch copy, no dead restore) stays."""
    env, url, backup_id = live_db
    with _admin(seeded) as conn:
        conn.execute(f"alter database {DB} allow_connections false")
    result = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", "brk42_copy", "--yes"])
    assert result.exit_code == 0, result.output
    assert _databases(seeded)[DB] is False


def _server_of(url: str) -> str:
    p = pgb.params(url)
    return f"{p.get('host') or 'localhost'}:{p.get('port') or 5432}"


# R4 -------------------------------------------------------------------------------------

def test_latest_and_date_pick_the_newest_backup_holding_the_database(live_db, seeded, runner):
    env, url, db_id = live_db
    redis_id = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))["id"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from work where id > 10")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    for how in (["--latest"], ["--date", today]):
        done = runner.invoke(app, ["restore", "--env", env, *how, "--yes", "--json"])
        doc = ok(done)
        assert doc["backup_id"] == db_id and doc["components"] == ["db"], doc
        assert doc["partial"] == [f"{redis_id} (redis)"]
        assert redis_id in done.stderr and "passed over" in done.stderr and "--components" in done.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute("select count(*) from work").fetchone()[0] == 200000
    copy = ok(runner.invoke(app, ["restore", "--env", env, "--latest", "--target-db", "brk42_latest", "--yes",
                                  "--json"]))
    assert copy["backup_id"] == db_id and copy["database"] == "brk42_latest"
    # asked for explicitly, the Redis snapshot is still the latest Redis backup
    only = ok(runner.invoke(app, ["restore", "--env", env, "--latest", "--components", "redis", "--yes", "--json"]))
    assert only["backup_id"] == redis_id


def test_a_repository_of_redis_snapshots_alone_restores_its_newest(seeded, runner, tmp_path, monkeypatch):
    """No database backup anywhere in the repository: the newest is the latest, as before;
    --target-db (the database asked) is refused naming what the newest holds."""
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    redis_id = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))["id"]
    assert ok(runner.invoke(app, ["restore", "--env", env, "--latest", "--yes", "--json"]))["backup_id"] == redis_id
    one_line_error(runner.invoke(app, ["restore", "--env", env, "--latest", "--target-db", "brk42_none", "--yes"]),
                   2, "holds db", redis_id, "holds redis")


# R7 -------------------------------------------------------------------------------------

def test_sighup_ends_a_restore_as_an_interrupt_and_cleans_up(live_db, seeded):
    env, url, backup_id = live_db
    proc = _opsctl("restore", "--env", env, "--id", backup_id, "--target-db", "brk42_hup", "--yes")
    _wait_for_scratch(seeded, proc, "brk42_hup_restoring_")
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == "opsctl: error: interrupted"
    assert not [n for n in _databases(seeded) if n.startswith("brk42_hup")]
    # its own run folder is gone (another test's restore may run beside it)
    assert not _run_folders_of(proc.pid)


def test_the_next_restore_removes_what_a_killed_restore_left(live_db, seeded, runner):
    env, url, backup_id = live_db
    proc = _opsctl("restore", "--env", env, "--id", backup_id, "--target-db", "brk42_k9", "--yes")
    _wait_for_scratch(seeded, proc, "brk42_k9_restoring_")
    proc.kill()
    proc.communicate(timeout=30)
    left = [n for n in _databases(seeded) if n.startswith("brk42_k9_restoring_")]
    folders = list(Path(tempfile.gettempdir()).glob("opsctl-restore-*"))
    assert left and folders
    result = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", "brk42_next", "--yes"])
    assert result.exit_code == 0, result.output
    assert "killed earlier" in result.stderr and left[0] in result.stderr, result.stderr
    assert not [n for n in _databases(seeded) if n.startswith("brk42_k9")]
    assert not list(Path(tempfile.gettempdir()).glob("opsctl-restore-*"))


def _verify_copies(seeded, backup_id: str) -> list[str]:
    """The restore test's scratch databases of `backup_id` (verify.restore_test's names)."""
    with _admin(seeded) as conn:
        return [n for (n,) in conn.execute("select datname from pg_database where datname like %s",
                                           (f"opsctl_verify_{backup_id[:15].lower()}%",))]


def test_the_next_restore_test_removes_what_a_killed_restore_test_left(live_db, seeded, runner):
    """`backup verify --restore-test` killed outright (kill -9) while it filled its scratch
    database left a full copy of the database on the live server, its decrypted dump in the
    temporary directory, and nothing that would ever remove them. It keeps a run record as a
    restore does now: the next restore test removes them, and says so."""
    env, url, backup_id = live_db
    proc = _opsctl("backup", "verify", backup_id, "--env", env, "--restore-test")
    deadline = time.monotonic() + 60
    while not _verify_copies(seeded, backup_id) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.communicate(timeout=30)
    left = _verify_copies(seeded, backup_id)
    assert left, "the restore test ended before its scratch database was seen"
    assert _run_folders_of(proc.pid)
    doc = ok(runner.invoke(app, ["backup", "verify", backup_id, "--env", env, "--restore-test", "--json"]))
    assert doc["restore_test"]["db"]["matches_manifest"] is True
    assert any(f"killed earlier (pid {proc.pid})" in line and left[0] in line for line in doc["cleaned"]), doc
    assert not _verify_copies(seeded, backup_id)
    assert not _run_folders_of(proc.pid)


def test_a_restore_test_leaves_a_dead_in_place_restore_to_the_next_restore(live_db, seeded, runner):
    """A restore test never writes the live database: the run of an in-place restore killed
    mid-way (which may have to be undone on the live database) is left to the next restore."""
    env, url, backup_id = live_db
    from opsctl.backup import runs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    scratch = pgb.derived_name(DB, "restoring")
    with _admin(seeded) as conn:
        conn.execute(f'create database "{scratch}"')
    folder = Path(tempfile.mkdtemp(prefix=runs.RUN_PREFIX))
    (folder / runs.RUN_RECORD).write_text(json.dumps({"pid": int(dead.stdout), "start": None, "server": runs._server(url),
                                                      "scratch": scratch, "live": DB, "in_place": True}))
    doc = ok(runner.invoke(app, ["backup", "verify", backup_id, "--env", env, "--restore-test", "--json"]))
    assert doc["cleaned"] == []
    assert scratch in _databases(seeded) and folder.is_dir()
    result = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", "brk42_after", "--yes"])
    assert result.exit_code == 0, result.output
    assert f"its scratch database {scratch}" in result.stderr, result.stderr
    assert scratch not in _databases(seeded) and not folder.exists()


# R8 -------------------------------------------------------------------------------------

def test_a_target_made_during_the_restore_is_never_taken_over(live_db, seeded, runner, monkeypatch):
    env, url, backup_id = live_db
    real = pgb.restore_into
    theirs = []

    def then_someone_makes_it(*args, **kwargs):
        counts = real(*args, **kwargs)
        with _admin(seeded) as conn:
            conn.execute("create database brk42_race")
        other = psycopg.connect(make_conninfo(seeded.db_url, dbname="brk42_race"), autocommit=True)
        other.execute("create table mine (x int); insert into mine values (7)")
        theirs.append(other)
        return counts

    monkeypatch.setattr(pgb, "restore_into", then_someone_makes_it)
    try:
        line = one_line_error(runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db",
                                                  "brk42_race", "--yes"]), 1, "brk42_race", "untouched")
        kept = [n for n in _databases(seeded) if n.startswith("brk42_race_restoring_")]
        assert len(kept) == 1 and kept[0] in line
        assert not [n for n in _databases(seeded) if n.startswith("brk42_race_before_")]
        assert theirs[0].execute("select x from mine").fetchone()[0] == 7  # their session lives on
        with psycopg.connect(make_conninfo(seeded.db_url, dbname=kept[0])) as conn:
            assert conn.execute("select count(*) from work").fetchone()[0] == 200000
    finally:
        for conn in theirs:
            conn.close()


# R15 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["\uff54emplate1", "brk42_l\u0456ve", "brk42_live\u200b", "brk42_live\u00ad",
                                  "p\u043estgres",
                                  # breaker 45 F8: Latin alpha, Armenian oh, script g, dental click
                                  "templ\u0251te1", "p\u0585stgres", "post\u0261res", "brk42_\u01c0ive"])
def test_look_alike_targets_are_refused(live_db, seeded, runner, name):
    env, url, backup_id = live_db
    before = set(_databases(seeded))
    line = one_line_error(runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", name,
                                              "--yes"]), 2, "reads as", "can't be mistaken")
    assert "\u200b" not in line and "\u00ad" not in line
    assert set(_databases(seeded)) == before


# breaker 54 F9: the run record lived only in $TMPDIR ------------------------------------

def test_a_restore_test_killed_with_its_temporary_directory_is_cleaned_by_the_next(live_db, seeded, runner,
                                                                                   tmp_path):
    """`backup verify --restore-test` killed outright (kill -9) in a place whose temporary
    directory goes with it (a CronJob pod, PrivateTmp, a CI runner): its pg_restore went on
    filling the scratch copy, and the next restore test, with another temporary directory,
    found nothing and left the full copy on the live server for good. Now pg_restore dies with
    it (tests/test_signals.py), and the copy's mark on the server leads the next restore test to it."""
    env, url, backup_id = live_db
    pod_tmp = tmp_path / "pod-tmp"
    pod_tmp.mkdir()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "opsctl"), "backup", "verify", backup_id, "--env",
                             env, "--restore-test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(pod_tmp)), preexec_fn=_default_signals)
    # pg_restore is seen by its session on the copy (one query on an open connection), not by a
    # scan of /proc: on a loaded 2-core CI machine a scan took longer than this small restore's
    # pg_restore lived, and the restore test ended before it was seen (twice in session 32)
    began, restoring = time.monotonic(), False
    with _admin(seeded) as conn:
        while not restoring and proc.poll() is None and time.monotonic() < began + 300:
            restoring = bool(conn.execute(
                "select 1 from pg_stat_activity where application_name = 'pg_restore' and datname like %s",
                (f"opsctl_verify_{backup_id[:15].lower()}%",)).fetchone())
            if not restoring:
                time.sleep(0.002)
    ended = proc.poll()
    proc.kill()
    out, err = proc.communicate(timeout=30)
    left = _verify_copies(seeded, backup_id)
    assert restoring and left, (f"no pg_restore seen after {time.monotonic() - began:.1f} s (the restore test "
                                f"{'ended, exit ' + str(ended) if ended is not None else 'still ran'}); copies "
                                f"{left}: {err[-2000:]}")
    shutil.rmtree(pod_tmp)  # the pod is gone, and its /tmp with it
    doc = ok(runner.invoke(app, ["backup", "verify", backup_id, "--env", env, "--restore-test", "--json"]))
    assert doc["restore_test"]["db"]["matches_manifest"] is True
    assert any(f"killed earlier (pid {proc.pid} on " in line and left[0] in line for line in doc["cleaned"]), doc
    assert not _verify_copies(seeded, backup_id)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _mark(conn, database: str, **fields) -> None:
    """Mark `database` as a run's copy: by default a run of this machine whose process is gone."""
    doc = {"lock": 4242424242, "name": database, "pid": _dead_pid(), "start": None, "machine": pidstart.boot_id(),
           "host": "ci-runner", "at": "2026-12-03T17:00:00Z", **fields}
    pgb.mark_run(conn, database, json.dumps(doc))


def test_a_marked_copy_is_dropped_only_once_its_run_is_gone_and_only_under_its_own_name(live_db, seeded):
    """The server-side mark of a scratch copy: a run of this machine is judged by its process,
    one of another machine by its lock (breaker 55 F1: a live run whose lock session a reaper
    ended had its copy dropped mid-run); a database whose mark names another one (a copy renamed
    or swapped in) keeps its data and loses the stale mark; a mark opsctl did not write (a pid
    that is no number, not JSON) is left alone."""
    from opsctl.backup import runs

    env, url, backup_id = live_db
    names = {k: pgb.derived_name(DB, "restoring") for k in ("dead", "alive", "elsewhere")}
    with _admin(seeded) as conn:
        for name in [*names.values(), "brk42_swapped_in", "brk42_foreign_mark", "brk42_odd_pid"]:
            conn.execute(f'create database "{name}"')
        _mark(conn, names["dead"])
        _mark(conn, names["alive"], pid=os.getpid(), start=pidstart.start_ticks(os.getpid()))  # its lock is free
        _mark(conn, names["elsewhere"], machine="another-machine", lock=777)
        _mark(conn, "brk42_swapped_in", name=pgb.derived_name(DB, "restoring"))
        pgb.mark_run(conn, "brk42_foreign_mark", "not a mark of opsctl's")
        _mark(conn, "brk42_odd_pid", pid="1\nforged line")
    with _admin(seeded) as holder:  # the other machine's run holds its lock
        holder.execute("select pg_advisory_lock(777)")
        said: list[str] = []
        done = runs.clean_dead(url, said.append)
        assert len(done) == 1 and f"its scratch database {names['dead']}" in done[0] and done == said, done
        assert "on ci-runner, 2026-12-03T17:00:00Z" in done[0]
        assert {names["alive"], names["elsewhere"]} <= set(_databases(seeded))
    assert names["dead"] not in _databases(seeded)
    done = runs.clean_dead(url, said.append)  # the lock is free now: that run is gone
    assert len(done) == 1 and names["elsewhere"] in done[0], done
    left = set(_databases(seeded))
    assert names["alive"] in left and {"brk42_swapped_in", "brk42_foreign_mark", "brk42_odd_pid"} <= left
    assert set(dict(pgb.run_marks(url))) == {names["alive"], "brk42_foreign_mark", "brk42_odd_pid"}


def test_a_dead_run_repairs_the_live_database_only_once_its_swap_had_begun(live_db, seeded, caplog):
    """Breaker 55 F3: the mark's `live` made the next restore reopen a database an administrator
    had closed, as "left so by a restore killed during its swap", for a run killed during
    pg_restore, or a mark any role allowed to set it wrote. A dead run's copy is dropped; the
    live database is repaired only when the mark says the swap had begun and the copy is that
    database's own `<live>_restoring_...`."""
    from opsctl.backup import runs

    env, url, backup_id = live_db
    early, crafted = pgb.derived_name(DB, "restoring"), "brk42_not_a_copy_of_live"
    with _admin(seeded) as conn:
        for name in (early, crafted):
            conn.execute(f'create database "{name}"')
        _mark(conn, early, live=DB, swapping=False)
        _mark(conn, crafted, live=DB, swapping=True)
        conn.execute(f'alter database "{DB}" allow_connections false')  # closed by hand
    done = runs.clean_dead(url, lambda _: None)
    assert len(done) == 2 and not any("refused connections" in line for line in done), done
    assert _databases(seeded)[DB] is False and not {early, crafted} & set(_databases(seeded))
    # killed between the swap's renames: the live database renamed away, refusing connections
    mid, kept = pgb.derived_name(DB, "restoring"), pgb.derived_name(DB, "before")
    with _admin(seeded) as conn:
        conn.execute(f'alter database "{DB}" rename to "{kept}"')
        conn.execute(f'create database "{mid}"')
        _mark(conn, mid, live=DB, swapping=True)
    done = runs.clean_dead(url, lambda _: None, swaps=False)  # a restore test leaves it to a restore, and says so
    assert done == [] and kept in _databases(seeded)
    assert f"database {DB} is missing: a restore killed during its swap" in caplog.text, caplog.text
    done = runs.clean_dead(url, lambda _: None)
    assert len(done) == 1 and f"database {DB} was missing" in done[0] and mid in done[0], done
    assert _databases(seeded)[DB] is True and mid not in _databases(seeded)


def test_a_marks_fields_are_shown_never_run_by_the_terminal(live_db, seeded):
    """Breaker 55 F4: a mark's host and time went raw to the terminal (an ESC clearing the screen)."""
    from opsctl.backup import runs

    env, url, backup_id = live_db
    name = pgb.derived_name(DB, "restoring")
    with _admin(seeded) as conn:
        conn.execute(f'create database "{name}"')
        _mark(conn, name, host="\x1b[2Jx\nrestored all good", at="\x1b]0;t\x07")
    done = runs.clean_dead(url, lambda _: None)
    assert len(done) == 1 and "\x1b" not in done[0] and "\n" not in done[0], done
    assert "\\x1b[2Jx\\nrestored all good" in done[0], done


def test_a_role_at_its_connection_limit_still_restores_with_jobs(live_db, seeded, runner, tmp_path, monkeypatch):
    """Breaker 55 F2: the session holding the run's lock took one the run needed: a role with
    CONNECTION LIMIT 2 could no longer restore with --jobs 2. Such a run goes unmarked."""
    role, db = "brk42_limited", "brk42_limited_db"
    with _admin(seeded) as conn:
        conn.execute(f"drop role if exists {role}")
        conn.execute(f"create role {role} login createdb connection limit 2")
        conn.execute(f"create database {db} owner {role}")
    try:
        url = make_conninfo(seeded.db_url, dbname=db, user=role)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table t as select g as id, md5(g::text) as v from generate_series(1, 50000) g")
        host = seeded.db_url.split("@", 1)[1].rsplit("/", 1)[0]
        env = side_env(tmp_path / "lim", monkeypatch, seeded, f"file://{tmp_path / 'lim-repo'}",
                       database_url=f"postgresql://{role}@{host}/{db}", name="lim", database={"name": db})
        made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
        # the backup's sessions count against the role's limit until their backends have exited,
        # which on a loaded machine came after the restore's first connect (the suite, session 32)
        deadline = time.monotonic() + 60
        with _admin(seeded) as conn:
            while conn.execute("select count(*) from pg_stat_activity where usename = %s",
                               (role,)).fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
        result = runner.invoke(app, ["restore", "--env", env, "--id", made, "--target-db", "brk42_limited_copy",
                                     "--jobs", "2", "--yes"])
        assert result.exit_code == 0, result.output
        assert "brk42_limited_copy" in _databases(seeded)
    finally:
        with _admin(seeded) as conn:
            for name in (db, "brk42_limited_copy"):
                conn.execute(f'drop database if exists "{name}" with (force)')
            conn.execute(f"drop role if exists {role}")


def test_a_connection_refused_for_the_roles_limit_is_tried_again_until_a_session_ends(seeded):
    """The suite, session 33: a restore's next session was refused "too many connections for
    role" while its previous one's backend was still exiting (it counts until it has left).
    opsctl's connect tries again for a few seconds; here the one session the role may have is
    held, and given back half a second later."""
    import threading

    role = "brk42_one_session"
    with _admin(seeded) as conn:
        conn.execute(f"drop role if exists {role}")
        conn.execute(f"create role {role} login connection limit 1")
    try:
        url = make_conninfo(seeded.db_url, user=role)
        held = psycopg.connect(url, autocommit=True)
        threading.Timer(0.5, held.close).start()
        with pgb.connect(url) as conn:
            assert conn.execute("select current_user").fetchone()[0] == role
    finally:
        with _admin(seeded) as conn:
            conn.execute(f"drop role if exists {role}")


def test_a_finished_restore_leaves_no_run_mark(live_db, seeded, runner):
    """The copy handed over (swapped in, or made the --target-db) carries no run mark: no later
    clean-up can take it for a dead run's copy."""
    env, url, backup_id = live_db
    result = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", "brk42_marked", "--yes"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--yes"])
    assert result.exit_code == 0, result.output
    assert not [name for name, _ in pgb.run_marks(url) if name.startswith("brk42")]


def test_a_scratch_redis_server_dies_with_the_restore_that_started_it(tmp_path):
    """A restore killed outright (kill -9) left its scratch redis-server running for good once
    the run folder that named it went with its temporary directory (found after breaker 55)."""
    pidfile = tmp_path / "redis.pid"
    (tmp_path / "rdb").mkdir()
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, time\n"
        "from pathlib import Path\n"
        "from opsctl.backup import redis as rdb\n"
        f"with rdb.scratch_server(Path({str(tmp_path / 'rdb' / 'dump.rdb')!r})) as url:\n"
        "    pids = [p.name for p in Path('/proc').glob('[0-9]*') if (p / 'stat').exists()\n"
        "            and (p / 'stat').read_text().rsplit(')', 1)[1].split()[1] == str(os.getpid())]\n"
        f"    Path({str(pidfile)!r}).write_text(' '.join(pids))\n"
        "    time.sleep(600)\n")])
    deadline = time.monotonic() + 120
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    servers = [int(p) for p in pidfile.read_text().split()
               if Path(f"/proc/{p}/comm").exists() and Path(f"/proc/{p}/comm").read_text().strip() == "redis-server"]
    assert servers, pidfile.read_text()
    parent.kill()
    parent.wait(timeout=30)

    deadline = time.monotonic() + 30  # procs.alive: a zombie has ended, it waits for init to reap it
    while any(procs.alive(p) for p in servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in servers if procs.alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the scratch redis-server outlived the restore"
