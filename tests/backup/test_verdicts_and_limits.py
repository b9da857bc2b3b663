"""Recorded verdicts (issue 17 §5) and the settings real servers have (issue 25 §2-3): a
failed verify marks the backup damaged for list, restore --latest and prune; a Redis restore
that can't fit is refused with the live data exactly as it was; a role's statement_timeout
never cancels opsctl's own sessions."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from backup_support import KEY, ok, one_line_error, rows, side_env, with_damaged_newer
from opsctl.cli import app

pytestmark = pytest.mark.slow


def test_failed_verify_is_recorded_and_honoured(seeded, runner, tmp_path, monkeypatch):
    env, older, newer = with_damaged_newer(runner, seeded, tmp_path, monkeypatch)

    listed = rows(runner, env)
    assert listed[newer]["status"] == "damaged" and "failed verify" in listed[newer]["note"]
    assert listed[older]["status"] == "complete"
    text = runner.invoke(app, ["backup", "list", "--env", env])
    assert "damaged" in text.stdout and newer in text.stdout and older in text.stdout  # never cut at 80 columns
    # what a damaged backup holds stays shown before why (breaker 42 R17: the reason replaced it)
    words = " ".join(text.stdout.split())
    assert f"{', '.join(listed[newer]['components'])}; failed verify" in words, text.stdout
    assert all(len(line) <= 80 for line in text.stdout.splitlines() if newer in line or older in line)

    # a verdict planted without the key's MAC is ignored
    (tmp_path / "repo" / older / "verify-failed.json").write_text(json.dumps({"id": older, "ok": False}))
    assert rows(runner, env)[older]["status"] == "complete"

    done = runner.invoke(app, ["restore", "--env", env, "--latest", "--yes", "--json"])
    doc = ok(done)
    assert doc["backup_id"] == older and doc["skipped"] == [f"{newer} (damaged)"]
    assert f"{newer} (damaged)" in done.stderr

    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "5", "--yes", "--json"]))
    assert pruned["damaged"] == [newer] and older in pruned["kept"]
    assert not (tmp_path / "repo" / newer).exists() and (tmp_path / "repo" / older / "manifest.json").exists()

    # a verify that passes replaces an earlier failed verdict
    verified = ok(runner.invoke(app, ["backup", "verify", older, "--env", env, "--json"]))
    assert verified["ok"] and not (tmp_path / "repo" / older / "verify-failed.json").exists()


def test_redis_restore_that_cannot_fit_changes_nothing(seeded, runner, tmp_path, monkeypatch):
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    live = redis.Redis.from_url(seeded.redis_url)
    pipe = live.pipeline(transaction=False)
    for i in range(20):
        pipe.set(f"bkmem:{i}", b"v" * 100_000)
    pipe.execute()
    try:
        made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))["id"]
        live.delete(*[f"bkmem:{i}" for i in range(20)])
        live.set("bkmem:after", "written after the backup")
        before = {k: live.dump(k) for k in live.scan_iter("*")}
        used = live.info("memory")["used_memory"]
        live.config_set("maxmemory", used + 1_000_000)  # room for 1 MB, the backup needs 2 MB beside
        try:
            one_line_error(runner.invoke(app, ["restore", "--env", env, "--id", made, "--components", "redis",
                                               "--yes"]), 1, "maxmemory", "nothing was changed")
            assert {k: live.dump(k) for k in live.scan_iter("*")} == before
        finally:
            live.config_set("maxmemory", 0)
        done = ok(runner.invoke(app, ["restore", "--env", env, "--id", made, "--components", "redis", "--yes",
                                       "--json"]))
        assert done["redis_keys"] >= 20 and live.exists("bkmem:7") and not live.exists("bkmem:after")
        info = live.info("keyspace")
        assert set(info) == {"db0"}, info  # the spare database that held the old data is empty again
    finally:
        live.delete(*[f"bkmem:{i}" for i in range(20)], "bkmem:after")


def test_role_timeouts_never_cancel_opsctl_sessions(seeded, runner, tmp_path, monkeypatch):
    name = f"bk_slow_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
        conn.execute("drop role if exists bk_slow_role")
        conn.execute("create role bk_slow_role login superuser")
        conn.execute("alter role bk_slow_role set statement_timeout = '15ms'")
        conn.execute("alter role bk_slow_role set lock_timeout = '15ms'")
        conn.execute("alter role bk_slow_role set idle_in_transaction_session_timeout = '15ms'")
    try:
        with psycopg.connect(make_conninfo(seeded.db_url, dbname=name), autocommit=True) as conn:
            conn.execute("create table big (id bigint, body text)")
            conn.execute("insert into big select g, md5(g::text) from generate_series(1, 600000) g")
        url = make_conninfo(seeded.db_url, dbname=name, user="bk_slow_role")
        with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select count(*) from big b1, (select 1 from big limit 3) b2")  # the setting bites
        env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                       database_url=f"postgresql://bk_slow_role@{seeded.db_url.split('@', 1)[1].rsplit('/', 1)[0]}/{name}")
        monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
        made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
        checked = ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", env, "--restore-test", "--json"]))
        assert checked["restore_test"]["db"]["rows"] == 600_000
        done = ok(runner.invoke(app, ["restore", "--env", env, "--id", made["id"], "--target-db", f"{name}_copy",
                                       "--yes", "--json"]))
        assert done["rows"] == 600_000
    finally:
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            for db in (name, f"{name}_copy"):
                conn.execute(f"drop database if exists {db} with (force)")
            conn.execute("drop role if exists bk_slow_role")
