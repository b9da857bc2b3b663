"""Recorded verdicts (issue 17 §5, second review): only a failure that proves the backup bad
is recorded as damage (never one of the environment, which prune would turn into a deleted
healthy backup); a real failure of any exception type is recorded; a damaged backup is
restored by id only when asked explicitly; the health check's newest complete backup is never
a damaged one; opsctl's own index file is never listed as foreign."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from backup_support import KEY, ok, one_line_error, rows, side_env, with_damaged_newer
from opsctl.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture
def small_db(seeded):
    """A small database of its own (fast dumps), dropped afterwards with whatever a restore left."""
    name = f"bk_vd_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    url = make_conninfo(seeded.db_url, dbname=name)
    yield name, url
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        for (db,) in conn.execute("select datname from pg_database where datname like %s", (f"{name}%",)).fetchall():
            conn.execute(f'drop database "{db}" with (force)')


def _db_env(small_db, seeded, tmp_path, monkeypatch) -> str:
    """A side environment on the small database, with an encrypted file:// repository."""
    name, url = small_db
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url,
                   database={"name": name})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    return env


def test_an_unreachable_database_server_is_reported_never_recorded(small_db, seeded, runner, tmp_path, monkeypatch):
    from opsctl.local import procs

    name, url = small_db
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table t (x int); insert into t select generate_series(1, 10)")
    env = _db_env(small_db, seeded, tmp_path, monkeypatch)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    # the same repository from an ops root whose database URL points at a closed port
    monkeypatch.setenv("SIDE_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{procs.free_port()}/{name}")
    one_line_error(runner.invoke(app, ["backup", "verify", made, "--env", env, "--restore-test"]), 1,
                   "could not be verified", "not marked")
    assert not (tmp_path / "repo" / made / "verify-failed.json").exists()
    assert rows(runner, env)[made]["status"] == "complete"
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "5", "--yes", "--json"]))
    assert pruned["damaged"] == [] and made in pruned["kept"]
    monkeypatch.setenv("SIDE_DATABASE_URL", url)  # the server is back: the same backup verifies
    assert ok(runner.invoke(app, ["backup", "verify", made, "--env", env, "--restore-test", "--json"]))["ok"]


def test_a_dump_pg_restore_refuses_is_recorded_damaged(small_db, seeded, runner, tmp_path, monkeypatch):
    """pg_dump's classic unrestorable dump: a CHECK calling a function that names a table
    without its schema fails under pg_restore's empty search_path (the backup's content)."""
    name, url = small_db
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table t2 (x int); insert into t2 values (1)")
        conn.execute("create function bigger(int) returns bool language sql as "
                     "'select $1 > (select count(*) from t2)'")
        conn.execute("create table t1 (x int check (bigger(x))); insert into t1 values (5)")
    env = _db_env(small_db, seeded, tmp_path, monkeypatch)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    one_line_error(runner.invoke(app, ["backup", "verify", made, "--env", env, "--restore-test"]), 1,
                   "pg_restore", "marked damaged")
    assert rows(runner, env)[made]["status"] == "damaged"
    with psycopg.connect(seeded.db_url) as conn:  # the scratch database was dropped
        assert not conn.execute("select 1 from pg_database where datname like 'opsctl_verify_%'").fetchall()


def test_a_failure_of_another_exception_type_is_recorded(small_db, seeded, runner, tmp_path, monkeypatch):
    """A restore test that fails with something else than OperationFailed (here the count of a
    restored table raising ValueError) is still a failed verify, recorded."""
    from opsctl.backup import postgres as pgb

    name, url = small_db
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table t (x int); insert into t select generate_series(1, 10)")
    env = _db_env(small_db, seeded, tmp_path, monkeypatch)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]

    def counts_of(conn):
        raise ValueError("a count that makes no sense")

    monkeypatch.setattr(pgb, "counts_of", counts_of)
    one_line_error(runner.invoke(app, ["backup", "verify", made, "--env", env, "--restore-test"]), 1,
                   "ValueError", "marked damaged")
    monkeypatch.undo()
    env = _db_env(small_db, seeded, tmp_path, monkeypatch)
    assert rows(runner, env)[made]["status"] == "damaged"


def test_a_damaged_backup_is_restored_by_id_only_when_allowed(seeded, runner, tmp_path, monkeypatch):
    import redis

    from opsctl.backup import catalog
    from opsctl.backup.repository import FileRepository
    from opsctl.health.checks.backup import newest_backup

    env, older, newer = with_damaged_newer(runner, seeded, tmp_path, monkeypatch)

    # (d) the health check's newest complete backup skips the damaged one
    repo_path = tmp_path / "repo"
    assert catalog.newest_complete(FileRepository(repo_path, f"file://{repo_path}"))[0] == older
    finished = json.loads((repo_path / older / "manifest.json").read_bytes())["finished_at"]
    when, _ = newest_backup(f"file://{repo_path}", tmp_path / "ops", None)
    assert when == dt.datetime.fromisoformat(finished.replace("Z", "+00:00"))

    # (c) refused by id, nothing changed; restored when asked explicitly
    live = redis.Redis.from_url(seeded.redis_url)
    live.set("bk:marker", "after the backups")
    one_line_error(runner.invoke(app, ["restore", "--env", env, "--id", newer, "--yes"]), 2, "damaged",
                   "--allow-damaged")
    assert live.get("bk:marker") == b"after the backups"
    done = ok(runner.invoke(app, ["restore", "--env", env, "--id", newer, "--allow-damaged", "--yes", "--json"]))
    assert done["backup_id"] == newer and live.get("bk:marker") is None


def test_opsctls_own_index_is_never_foreign(seeded, runner, tmp_path, monkeypatch):
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))
    assert (tmp_path / "repo" / "opsctl-catalog.json").exists()
    (tmp_path / "repo" / "someone-elses").mkdir()  # a real foreign folder is still reported
    (tmp_path / "repo" / "someone-elses" / "notes.txt").write_text("not a backup")
    listed = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))
    assert [f.rstrip("/") for f in listed["foreign"]] == ["someone-elses"]
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "5", "--yes", "--json"]))
    assert [f.rstrip("/") for f in pruned["foreign"]] == ["someone-elses"]
    text = runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "5", "--yes"]).stdout
    assert "opsctl-catalog.json" not in text
