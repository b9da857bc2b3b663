"""Odd data, second review of issue 25 (§1-3): a restore over the database the backup holds
(the URL's, never the environment's default name); derived database names that fit
PostgreSQL's 63 bytes and never collide; catalog entries keyed by structure; Redis restore
errors without payloads; role settings that can't fail opsctl's sessions; failures of the
environment (by SQLSTATE class, or pg_restore text that is no known content error) never
recorded as damage. All on the session's real PostgreSQL and Redis."""

from __future__ import annotations

import json
import uuid
from urllib.parse import quote as urlquote

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo

from backup_support import KEY, ok, one_line_error, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow


def _dbs(url: str, like: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return sorted(d for (d,) in conn.execute("select datname from pg_database where datname like %s", (like,)))


def _drop_like(url: str, prefix: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for (db,) in conn.execute("select datname from pg_database where starts_with(datname, %s)",
                                  (prefix,)).fetchall():
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(db)))


def _url_for(seeded_url: str, name: str) -> str:
    """A postgresql:// URL naming `name` percent-encoded, like an operator writes it."""
    base = seeded_url.rsplit("/", 1)[0]
    return f"{base}/{urlquote(name, safe='')}"


def _oid(url: str, name: str):
    with psycopg.connect(url) as conn:
        row = conn.execute("select oid from pg_database where datname = %s", (name,)).fetchone()
        return row[0] if row else None


@pytest.fixture
def odd_db(seeded):
    """A database named `we"ird = db ü<hex>` with a table of 7 rows; dropped afterwards with what a restore left."""
    name = f'we"ird = db ü{uuid.uuid4().hex[:4]}'
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=name), autocommit=True) as conn:
        conn.execute("create table t (x int); insert into t select generate_series(1, 7)")
    yield name
    _drop_like(seeded.db_url, name)


def test_in_place_restore_replaces_the_database_the_url_names(odd_db, seeded, runner, tmp_path, monkeypatch):
    """No database.name set: the restore swaps the URL's database (the one dumped), never
    `transcribe`, and the approval names it."""
    name = odd_db
    transcribe = _oid(seeded.db_url, "transcribe")
    assert transcribe is not None
    others = _dbs(seeded.db_url, "transcribe_%")  # left by earlier tests of the session
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                   database_url=_url_for(seeded.db_url, name))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=name), autocommit=True) as conn:
        conn.execute("insert into t values (100)")  # drift after the backup
    asked = runner.invoke(app, ["restore", "--env", env, "--id", made, "--components", "db"])
    assert asked.exit_code != 0
    assert f"over database {name}" in asked.output, asked.output
    assert "transcribe" not in asked.output
    done = ok(runner.invoke(app, ["restore", "--env", env, "--id", made, "--components", "db", "--yes", "--json"]))
    assert done["database"] == name and done["rows"] == 7
    assert _oid(seeded.db_url, "transcribe") == transcribe  # untouched, not renamed away
    assert _dbs(seeded.db_url, "transcribe_%") == others
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=name)) as conn:
        assert conn.execute("select count(*) from t").fetchone()[0] == 7
    assert done["previous_database"] in _dbs(seeded.db_url, "we%")


def test_restore_of_another_database_is_refused_in_one_line(odd_db, seeded, runner, tmp_path, monkeypatch):
    """The environment's URL now names another database than the backup holds: refused, nothing changed."""
    name = odd_db
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                   database_url=_url_for(seeded.db_url, name))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    monkeypatch.setenv("SIDE_DATABASE_URL", seeded.db_url)  # names transcribe
    transcribe = _oid(seeded.db_url, "transcribe")
    others = _dbs(seeded.db_url, "transcribe_%")  # left by earlier tests of the session
    one_line_error(runner.invoke(app, ["restore", "--env", env, "--id", made, "--components", "db", "--yes"]),
                   2, "--target-db", "nothing was changed", "transcribe")
    assert _oid(seeded.db_url, "transcribe") == transcribe
    assert _dbs(seeded.db_url, "transcribe_%") == others


def test_multibyte_names_fit_63_bytes_and_never_collide(seeded, runner, tmp_path, monkeypatch):
    """A 62-byte name ('ü' * 31): the kept database is reported exactly as created, and a
    second restore in the same second works (no DuplicateDatabase)."""
    name = "ü" * 31
    assert len(name.encode()) == 62
    _drop_like(seeded.db_url, "üüü")
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(make_conninfo(seeded.db_url, dbname=name), autocommit=True) as conn:
            conn.execute("create table t (x int); insert into t select generate_series(1, 3)")
        env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                       database_url=_url_for(seeded.db_url, name))
        monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
        made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
        kept = []
        for _ in range(2):
            done = ok(runner.invoke(app, ["restore", "--env", env, "--id", made, "--yes", "--json"]))
            assert done["database"] == name and done["rows"] == 3
            kept.append(done["previous_database"])
        existing = _dbs(seeded.db_url, "üüü%")
        assert name in existing
        for k in kept:
            assert k in existing, (k, existing)  # exactly as created: PostgreSQL cut nothing
            assert len(k.encode()) <= 63 and "_before_" in k
        assert kept[0] != kept[1]
        assert not [d for d in existing if "_restoring_" in d]
    finally:
        _drop_like(seeded.db_url, "üüü")


def test_derived_names_are_cut_on_a_character_boundary():
    from opsctl.backup import postgres as pgb

    for base in ("ü" * 31, "日本" * 20, "a" * 80, "x"):
        for tag in ("before", "restoring"):
            got = pgb.derived_name(base, tag)
            assert len(got.encode()) <= 63
            assert got.encode().decode("utf-8") == got
            assert base.startswith(got.split(f"_{tag}_")[0])
    assert pgb.derived_name("ü" * 31, "before") != pgb.derived_name("ü" * 31, "before")


def test_catalog_keys_columns_and_functions_by_structure(seeded):
    """`"a.b".c` and `a."b.c"` (columns) are two entries: losing the grant on one is found."""
    from opsctl.backup import postgres as pgb

    name = f"bk_cat_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
        conn.execute("drop role if exists bk_cat_r1")
        conn.execute("create role bk_cat_r1")
    try:
        url = make_conninfo(seeded.db_url, dbname=name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute('create table "a.b" (c int); create table a ("b.c" int)')
            conn.execute('grant select (c) on "a.b" to bk_cat_r1; grant select ("b.c") on a to bk_cat_r1')
            conn.execute('create function "f.g"(int) returns int language sql as $$select 1$$')
            conn.execute('create schema "public.f"; create function "public.f".g(int) returns int '
                         'language sql as $$select 2$$')
            before = pgb.catalog_of(conn)
            cols = [tuple(x[:3]) for x in before["columns"]]
            assert ("public", "a.b", "c") in cols and ("public", "a", "b.c") in cols
            funcs = [tuple(x[:3]) for x in before["functions"]]
            assert ("public", "f.g", "integer") in funcs and ("public.f", "g", "integer") in funcs
            conn.execute('revoke select ("b.c") on a from bk_cat_r1')
            after = pgb.catalog_of(conn)
        diff = pgb.compare_catalog(before, after)
        assert diff is not None and '"public"."a"."b.c"' in diff, diff
        # a backup from before the names were kept apart still compares (joined the old way)
        old = dict(before, columns=[[x[0], f"{x[1]}.{x[2]}", *x[3:]] for x in before["columns"]],
                   functions=[[x[0], f"{x[1]}({x[2]})", *x[3:]] for x in before["functions"]])
        assert pgb.compare_catalog(old, before) is None
    finally:
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")
            conn.execute("drop role if exists bk_cat_r1")


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, with one secret value and a user that may not RESTORE."""
    from opsctl.local import procs
    from opsctl.local import redis as local_redis

    port = procs.free_port()
    pid = local_redis.start(tmp_path / "redis", port, tmp_path / "redis.log")
    r = redis.Redis.from_url(local_redis.url(port))
    r.set("bk:token", "SECRET-value-7f3a9c")
    r.execute_command("ACL", "SETUSER", "bk_norestore", "on", ">pw-norestore", "~*", "&*", "+@all", "-restore")
    yield port
    procs.stop(pid, 10)


def test_redis_restore_errors_never_carry_a_payload(own_redis, seeded, runner, tmp_path, monkeypatch):
    from opsctl.local import redis as local_redis

    port = own_redis
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("SIDE_REDIS_URL", local_redis.url(port))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))["id"]
    monkeypatch.setenv("SIDE_REDIS_URL", f"redis://bk_norestore:pw-norestore@127.0.0.1:{port}/0")
    result = runner.invoke(app, ["restore", "--env", env, "--id", made, "--yes"])
    line = one_line_error(result, 1, "RESTORE", "bk:token", "NoPermission", "live data is unchanged")
    assert "SECRET" not in result.output and "pw-norestore" not in result.output, line
    assert redis.Redis(port=port, host="127.0.0.1").get("bk:token") == b"SECRET-value-7f3a9c"


@pytest.fixture
def hostile_role(seeded):
    """A database of 200k rows with an index, and a superuser role whose own settings would
    cancel, refuse or limit every session of it."""
    name = f"bk_hostile_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        major = conn.execute("select current_setting('server_version_num')::int / 10000").fetchone()[0]
        conn.execute(f"create database {name}")
        conn.execute("drop role if exists bk_hostile")
        conn.execute("create role bk_hostile login superuser")
        for setting in ("statement_timeout = '15ms'", "lock_timeout = '15ms'",
                        "idle_in_transaction_session_timeout = '15ms'", "idle_session_timeout = '200ms'",
                        "default_transaction_read_only = on", "temp_file_limit = '1kB'",
                        "maintenance_work_mem = '1MB'", "work_mem = '64kB'"):
            conn.execute(f"alter role bk_hostile set {setting}")
        if major >= 17:
            conn.execute("alter role bk_hostile set transaction_timeout = '20ms'")
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=name), autocommit=True) as conn:
        conn.execute("create table big (id bigint, body text)")
        conn.execute("insert into big select g, md5(g::text) from generate_series(1, 200000) g")
        conn.execute("create index on big (body)")
    yield name, major
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        for (db,) in conn.execute("select datname from pg_database where datname like %s", (f"{name}%",)).fetchall():
            conn.execute(f'drop database "{db}" with (force)')
        conn.execute("drop role if exists bk_hostile")


def test_role_settings_never_fail_opsctl_sessions(hostile_role, seeded, runner, tmp_path, monkeypatch):
    name, major = hostile_role
    url = make_conninfo(seeded.db_url, dbname=name, user="bk_hostile")
    if major >= 17:
        with psycopg.connect(url) as conn, pytest.raises(psycopg.Error):  # the settings bite plain sessions
            conn.execute("select count(*) from big b1, (select 1 from big limit 3) b2")
            conn.execute("select pg_sleep(0.05)")
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("create table nope (x int)")
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                   database_url=f"postgresql://bk_hostile@{seeded.db_url.split('@', 1)[1].rsplit('/', 1)[0]}/{name}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    checked = ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", env, "--restore-test", "--json"]))
    assert checked["restore_test"]["db"]["rows"] == 200_000
    done = ok(runner.invoke(app, ["restore", "--env", env, "--id", made["id"], "--target-db", f"{name}_copy",
                                   "--yes", "--json"]))
    assert done["rows"] == 200_000
    done = ok(runner.invoke(app, ["restore", "--env", env, "--id", made["id"], "--yes", "--json"]))
    assert done["rows"] == 200_000 and done["database"] == name


def test_an_environment_limit_is_never_recorded_as_damage(seeded, runner, tmp_path, monkeypatch):
    """temp_file_limit on a role that may not lift it fails pg_restore's CREATE INDEX: the
    environment's failure, reported and not recorded; without it the same backup verifies."""
    name = f"bk_tfl_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute("drop role if exists bk_tfl")
        conn.execute("create role bk_tfl login createdb")
        conn.execute(f"create database {name} owner bk_tfl")
    try:
        url = make_conninfo(seeded.db_url, dbname=name, user="bk_tfl")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table big (id bigint, body text)")
            conn.execute("insert into big select g, md5(g::text) from generate_series(1, 200000) g")
            conn.execute("create index on big (body)")
        env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                       database_url=f"postgresql://bk_tfl@{seeded.db_url.split('@', 1)[1].rsplit('/', 1)[0]}/{name}")
        monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
        made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            conn.execute("alter role bk_tfl set temp_file_limit = '1kB'")
            conn.execute("alter role bk_tfl set maintenance_work_mem = '1MB'")
        one_line_error(runner.invoke(app, ["backup", "verify", made, "--env", env, "--restore-test"]), 1,
                       "could not be verified", "temp_file_limit", "not marked")
        assert not (tmp_path / "repo" / made / "verify-failed.json").exists()
        rows = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]
        assert [b["status"] for b in rows if b["id"] == made] == ["complete"]
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            conn.execute("alter role bk_tfl reset all")
        assert ok(runner.invoke(app, ["backup", "verify", made, "--env", env, "--restore-test", "--json"]))["ok"]
    finally:
        _drop_like(seeded.db_url, name)
        _drop_like(seeded.db_url, "opsctl_verify_")
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            conn.execute("drop role if exists bk_tfl")


def test_failures_are_classified_by_sqlstate_class():
    """Both directions: resources, limits, operator, I/O, connection, permission are the
    environment; data and definition errors are not. pg_restore's text: content only when known."""
    from types import SimpleNamespace

    from opsctl.backup import postgres as pgb
    from opsctl.backup import verify

    for code in ("53100", "53200", "54000", "57014", "57P01", "58030", "08006", "42501", "28P01"):
        assert pgb.environmental_sqlstate(code), code
        assert not verify._damage(psycopg.errors.lookup(code)("x")), code
    for code in ("23505", "22P02", "42P01", "42601"):
        assert not pgb.environmental_sqlstate(code), code
        assert verify._damage(psycopg.errors.lookup(code)("x")), code

    def failed(text: str):
        return pgb._pg_restore_failed("db", SimpleNamespace(stderr=text, returncode=1))

    env = failed("pg_restore: error: could not execute query: ERROR:  temporary file size exceeds "
                 "temp_file_limit (1kB)\nCommand was: CREATE INDEX big_body_idx ON public.big USING btree (body);")
    assert type(env) is pgb.OperationFailed
    assert type(failed("pg_restore: error: could not execute query: ERROR:  could not write to file "
                       "\"base/pgsql_tmp\": No space left on device")) is pgb.OperationFailed
    assert type(failed("pg_restore: error: something nobody has seen before")) is pgb.OperationFailed
    assert isinstance(failed("pg_restore: error: could not execute query: ERROR:  duplicate key value violates "
                             "unique constraint \"t_pkey\""), pgb.DumpRejected)
    assert isinstance(failed("pg_restore: error: did not find magic string in file header"), pgb.DumpRejected)


def test_a_target_name_postgresql_would_cut_is_refused(odd_db, seeded, runner, tmp_path, monkeypatch):
    name = odd_db
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                   database_url=_url_for(seeded.db_url, name))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    too_long = "ü" * 32  # 64 bytes: PostgreSQL would keep 63 and report success under another name
    one_line_error(runner.invoke(app, ["restore", "--env", env, "--id", made, "--target-db", too_long, "--yes"]),
                   2, "--target-db", "63")
    assert _dbs(seeded.db_url, "üüü%") == []


def test_an_archive_pg_restore_cannot_read_is_damage_a_tool_too_old_is_not(tmp_path):
    """pg_restore's own reading of the archive (no server): a file that is no archive is the
    backup's content; an archive version this pg_restore doesn't know is the environment's."""
    from opsctl.backup import postgres as pgb

    junk = tmp_path / "db.dump"
    junk.write_bytes(b"PGDMP\x01\x10\x00")  # the magic and a version, then the header cut short
    with pytest.raises(pgb.DumpRejected):
        pgb.inspect(str(junk))
    other = tmp_path / "other.dump"
    other.write_bytes(b"not an archive at all, just bytes\n" * 4)
    with pytest.raises(pgb.DumpRejected):
        pgb.inspect(str(other))
    from types import SimpleNamespace

    too_old = pgb._pg_restore_failed("db", SimpleNamespace(
        stderr="pg_restore: error: unsupported version (1.16) in file header", returncode=1))
    assert type(too_old) is pgb.OperationFailed
