"""Breaker 53 F5: a backup made on a host whose clock runs ahead. Its id and times come from
that clock, so it sorted after every backup made later: the backup-age check called it "-8760 h
old" (OK, for a year), and `restore --latest` restored it instead of the newer one. A backup
dated after this host's clock now makes the check CRITICAL, `--latest` refuses to choose (only
--id does), and the next `backup create` warns."""

from __future__ import annotations

import datetime as dt
import json
import types

import psycopg
from psycopg.conninfo import make_conninfo

from backup_support import KEY, ok, one_line_error, side_env
from opsctl.cli import app

DB = "brk53_clock"


def _clock(offset: dt.timedelta) -> types.SimpleNamespace:
    """create.py's `dt` with its clock moved by `offset`; nothing else changed."""
    class Moved(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.now(tz) + offset

    return types.SimpleNamespace(datetime=Moved, timezone=dt.timezone, timedelta=dt.timedelta, date=dt.date)


_AYearAhead = _clock(dt.timedelta(days=365))


def _admin(seeded):
    return psycopg.connect(make_conninfo(seeded.db_url, dbname="postgres"), autocommit=True)


def test_a_backup_from_a_clock_ahead_is_never_taken_for_the_newest(seeded, runner, tmp_path, monkeypatch):
    from opsctl.backup import create as create_mod

    with _admin(seeded) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")
        conn.execute(f"create database {DB}")
    url = make_conninfo(seeded.db_url, dbname=DB)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table t as select 1 as x")
        repo = tmp_path / "repo"
        env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{repo}", database_url=url,
                       database={"name": DB})
        monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
        with monkeypatch.context() as m:  # the writer's clock a year ahead; nothing else changed
            m.setattr(create_mod, "dt", _AYearAhead)
            ahead = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
        assert ahead.startswith(str(dt.datetime.now(dt.timezone.utc).year + 1))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table after_skew as select 42 as x")
        made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"])
        now_id = ok(made)["id"]
        assert f"backup {ahead} in the repository is dated" in made.stderr and "clock" in made.stderr, made.stderr

        swept = runner.invoke(app, ["health", "--env", env, "--check", "backup age", "--json"])
        (check,) = json.loads(swept.stdout)["checks"]
        assert check["status"] == "CRITICAL" and ahead in check["message"], check
        assert "after this host's clock" in check["message"] and swept.exit_code == 2, swept.output

        pruned = runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes"])
        one_line_error(pruned, 2, ahead, "nothing was removed")  # it had kept that one, removed the real newest
        assert runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--dry-run"]).exit_code == 0

        refused = runner.invoke(app, ["restore", "--env", env, "--latest", "--target-db", "brk53_latest", "--yes"])
        line = one_line_error(refused, 2, ahead, "--id")
        assert "nothing was changed" in line
        with _admin(seeded) as conn:
            assert not conn.execute("select 1 from pg_database where datname like 'brk53_latest%'").fetchall()
        chosen = runner.invoke(app, ["restore", "--env", env, "--id", now_id, "--target-db", "brk53_latest", "--yes"])
        assert chosen.exit_code == 0, chosen.output
        with psycopg.connect(make_conninfo(seeded.db_url, dbname="brk53_latest")) as conn:
            assert conn.execute("select x from after_skew").fetchone() == (42,)
    finally:
        with _admin(seeded) as conn:
            for name in (DB, "brk53_latest"):
                conn.execute(f"drop database if exists {name} with (force)")


def _fresh_db(seeded, tmp_path, monkeypatch, retention: dict) -> str:
    with _admin(seeded) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")
        conn.execute(f"create database {DB}")
    url = make_conninfo(seeded.db_url, dbname=DB)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table t as select 1 as x")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    return side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url,
                    database={"name": DB}, backup={"repository": f"file://{tmp_path / 'repo'}",
                                                   "retention": retention})


def _ids(runner, env) -> list[str]:
    return [b["id"] for b in ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]]


def test_a_create_on_a_clock_behind_keeps_what_it_made_and_runs_no_retention(seeded, runner, tmp_path, monkeypatch):
    """Breaker 54 F3: on a host whose clock ran a day behind, create's own retention (keep_last
    2) deleted the backup it had just made, the only one holding the newest data, exit 0.
    With the skew seen, retention is not run (and said); the new backup stays."""
    from opsctl.backup import create as create_mod

    env = _fresh_db(seeded, tmp_path, monkeypatch, {"keep_last": 2})
    try:
        first = [ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
                 for _ in range(2)]
        with monkeypatch.context() as m:
            m.setattr(create_mod, "dt", _clock(-dt.timedelta(days=1)))
            made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"])
        doc = ok(made)
        assert doc["pruned"] == [] and "not run" in doc["prune_failed"] and max(first) in doc["prune_failed"], doc
        assert sorted(_ids(runner, env)) == sorted(first + [doc["id"]])
    finally:
        with _admin(seeded) as conn:
            conn.execute(f"drop database if exists {DB} with (force)")


def test_retention_after_a_create_never_removes_the_backup_it_made(seeded, runner, tmp_path, monkeypatch):
    """A clock a minute behind (under the skew said): the new backup sorts below the one made
    just before it, and keep_last 1 would have removed the new one."""
    from opsctl.backup import create as create_mod

    env = _fresh_db(seeded, tmp_path, monkeypatch, {"keep_last": 1})
    try:
        before = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
        with monkeypatch.context() as m:
            m.setattr(create_mod, "dt", _clock(-dt.timedelta(minutes=2)))
            doc = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
        assert doc["id"] < before and doc["pruned"] == [] and doc["prune_failed"] is None, doc
        assert doc["id"] in _ids(runner, env)
    finally:
        with _admin(seeded) as conn:
            conn.execute(f"drop database if exists {DB} with (force)")
