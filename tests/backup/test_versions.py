"""A backup restores where its source runs (issue 25 §4): a PostgreSQL 15 server (Debian's
postgresql-15) is dumped and restored by PostgreSQL 15's own tools, not the bundled 18 ones;
without them the backup is refused in one line naming the package."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from backup_support import KEY, one_line_error, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture
def pg15_db(pg15):
    with psycopg.connect(pg15, autocommit=True) as conn:
        conn.execute("drop database if exists media15 with (force)")
        conn.execute("drop database if exists media15_copy with (force)")
        conn.execute("create database media15")
        conn.execute("do $$ begin if not exists (select from pg_roles where rolname = 'bk15_reader') "
                     "then create role bk15_reader; end if; end $$")
    url = make_conninfo(pg15, dbname="media15")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table clips (id int primary key, body text)")
        conn.execute("insert into clips select g, md5(g::text) from generate_series(1, 1000) g")
        conn.execute("grant select on clips to bk15_reader")
    return url


def test_a_postgresql_15_backup_restores_into_postgresql_15(pg15, pg15_db, seeded, runner, tmp_path, monkeypatch):
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=pg15_db)
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"])
    assert made.exit_code == 0, made.output
    backup_id = json.loads(made.stdout)["id"]
    manifest = json.loads((tmp_path / "repo" / backup_id / "manifest.json").read_bytes())
    assert manifest["db"]["server_major"] == 15 and manifest["db"]["database"] == "media15"
    checked = runner.invoke(app, ["backup", "verify", backup_id, "--env", env, "--restore-test", "--json"])
    assert checked.exit_code == 0, checked.output
    done = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", "media15_copy",
                               "--yes", "--json"])
    assert done.exit_code == 0, done.output
    with psycopg.connect(make_conninfo(pg15, dbname="media15_copy")) as conn:
        assert conn.execute("select count(*) from clips").fetchone()[0] == 1000
        assert conn.execute("select has_table_privilege('bk15_reader', 'clips', 'select')").fetchone()[0]


def test_without_matching_tools_the_backup_is_refused(pg15, pg15_db, seeded, runner, tmp_path, monkeypatch):
    from opsctl.backup import postgres as pgb

    monkeypatch.setattr(pgb, "PG_LIB", str(tmp_path / "no-postgresql"))
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=pg15_db)
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    one_line_error(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db"]), 2,
                   "PostgreSQL 15", "postgresql-client-15")
    assert not any(p.name == "manifest.json" for p in (tmp_path / "repo").rglob("*"))
