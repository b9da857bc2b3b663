"""Restores that lost something, or left something behind (breaker 50):

- G3: a restored database was handed over with no planner statistics (pg_dump 18 leaves them
  out, nothing analyzed the copy): pg_stats empty, reltuples -1, extended statistics gone, and
  for good on a table with autovacuum_enabled = false; partitioned tables are never analyzed
  by autovacuum either.
- G4: a database holding a logical-replication subscription made every scratch copy of it
  impossible to drop (DROP DATABASE ... WITH (FORCE) is refused): `backup verify
  --restore-test` failed at its clean-up, blamed the environment and left its full copy; a
  failing restore left its `_restoring_` copy and said "unexpected ObjectInUse" on two lines
  instead of pg_restore's error; `--replace-copy` could not replace such a copy; a restore
  that brought subscriptions back (disabled) did not say the database no longer replicates.

Every test checks that the live database's own subscription is still there: opsctl drops
subscriptions only inside copies it made.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from backup_support import KEY, ok, one_line_error, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow

DB = "brk50_live"
COPY = "brk50_copy"
SUB = "brk50_sub"
OWNER = "brk50_owner"
ROWS = 20_000  # under ANALYZE's sample of 30 000 rows: its statistics come out the same every time


def _admin(seeded):
    return psycopg.connect(make_conninfo(seeded.db_url, dbname="postgres"), autocommit=True)


def _unsubscribe(seeded, name: str) -> None:
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=name), autocommit=True) as conn:
        for (sub,) in conn.execute("select subname from pg_subscription s join pg_database d on d.oid = s.subdbid "
                                   "where d.datname = current_database()").fetchall():
            conn.execute(f'alter subscription "{sub}" disable')
            conn.execute(f'alter subscription "{sub}" set (slot_name = none)')
            conn.execute(f'drop subscription "{sub}"')


def _drop_ours(seeded) -> None:
    """This module's databases, and any copy holding its subscription (a verify's, left by old code)."""
    with _admin(seeded) as conn:
        names = [n for (n,) in conn.execute(
            "select datname from pg_database where datname like 'brk50%%' or oid in "
            "(select subdbid from pg_subscription where subname = %s)", (SUB,)).fetchall()]
    for name in names:
        _unsubscribe(seeded, name)
        with _admin(seeded) as conn:
            conn.execute(f'drop database "{name}" with (force)')


def _subscriptions(seeded, name: str) -> dict[str, bool]:
    with _admin(seeded) as conn:
        return dict(conn.execute("select s.subname, s.subenabled from pg_subscription s join pg_database d "
                                 "on d.oid = s.subdbid where d.datname = %s", (name,)).fetchall())


def _databases(seeded, pattern: str) -> list[str]:
    with _admin(seeded) as conn:
        return [n for (n,) in conn.execute("select datname from pg_database where datname like %s", (pattern,))]


def _statistics(url: str) -> dict:
    """What the planner knows of the module's tables: reltuples, pg_stats rows, extended statistics."""
    with psycopg.connect(url) as conn:
        return {
            "reltuples": dict(conn.execute("select relname, reltuples from pg_class where relname in "
                                           "('big', 'parts', 'parts_1', 'parts_2')").fetchall()),
            "columns": dict(conn.execute("select tablename || case when inherited then ' (all)' else '' end, "
                                         "count(*) from pg_stats where schemaname = 'public' group by 1").fetchall()),
            "extended": conn.execute("select count(*) from pg_statistic_ext_data d join pg_statistic_ext e "
                                     "on e.oid = d.stxoid where e.stxname = 'big_kj'").fetchone()[0],
        }


@pytest.fixture
def live(seeded, runner, tmp_path, monkeypatch):
    """make(subscription=, failing=, unanalyzable=) -> (env name, live database url, backup id,
    statistics):
    a side environment whose database is DB, analyzed (tables with autovacuum off, an extended
    statistic, a partitioned table), with the subscription SUB (connect = false) and, when
    `failing`, a matview pg_restore can't refresh (FORCE ROW LEVEL SECURITY on a table its
    non-superuser owner reads: REFRESH comes after CREATE SUBSCRIPTION), when `unanalyzable` an
    extended statistic on an expression ANALYZE fails on, then one db backup."""
    _drop_ours(seeded)
    url = make_conninfo(seeded.db_url, dbname=DB)
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_tmp))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)

    def make(subscription: bool = False, failing: bool = False, unanalyzable: bool = False):
        with _admin(seeded) as conn:
            conn.execute(f"create database {DB}")
            conn.execute(f"do $$ begin create role {OWNER} nologin; exception when duplicate_object then null; end $$")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table big (id int primary key, k int, j int) with (autovacuum_enabled = false)")
            conn.execute(f"insert into big select g, g % 10, g % 10 from generate_series(1, {ROWS}) g")
            conn.execute("create statistics big_kj on k, j from big")
            conn.execute("create table parts (id int, k int) partition by range (id)")
            conn.execute("create table parts_1 partition of parts for values from (0) to (5000) "
                         "with (autovacuum_enabled = false)")
            conn.execute("create table parts_2 partition of parts for values from (5000) to (100000) "
                         "with (autovacuum_enabled = false)")
            conn.execute("insert into parts select g, g % 7 from generate_series(1, 10000) g")
            if failing:
                conn.execute("create table guarded (id int)")
                conn.execute("insert into guarded select generate_series(1, 10)")
                conn.execute("alter table guarded enable row level security")
                conn.execute("alter table guarded force row level security")
                conn.execute(f"alter table guarded owner to {OWNER}")
                conn.execute("create materialized view guarded_count as select count(*) from guarded")
                conn.execute(f"alter materialized view guarded_count owner to {OWNER}")
            conn.execute("analyze")
            if unanalyzable:  # made after the ANALYZE: pg_restore makes it, ANALYZE of the copy fails
                conn.execute("create function boom(int) returns int immutable language plpgsql as "
                             "$$ begin if $1 = 3 then raise exception 'boom at %', $1; end if; return $1; end $$")
                conn.execute("create statistics big_boom on (boom(k)) from big")
            if subscription:
                conn.execute(f"create subscription {SUB} connection 'host=127.0.0.1 port=1 dbname=nowhere' "
                             "publication p with (connect = false)")
        env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url,
                       database={"name": DB})
        made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
        return env, url, made["id"], _statistics(url)

    yield make
    _drop_ours(seeded)


def _restore(runner, env: str, backup_id: str, *args: str):
    return runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--components", "db", "--yes", *args])


# G3: statistics

def test_an_in_place_restore_hands_over_a_database_with_planner_statistics(runner, live):
    env, url, backup_id, before = live()
    assert before["reltuples"]["big"] == ROWS and before["columns"]["big"] == 3 and before["extended"] == 1
    assert before["columns"]["parts (all)"] == 2  # the partitioned table's own: autovacuum never makes them
    doc = ok(_restore(runner, env, backup_id, "--jobs", "2", "--json"))
    assert _statistics(url) == before  # reltuples, every column's pg_stats row, the extended statistic
    assert doc["previous_database"] and doc["analyzed"] is True and doc["analyze_failed"] is None


def test_a_target_db_restore_is_analyzed_before_it_is_handed_over(runner, live):
    env, url, backup_id, before = live()
    result = _restore(runner, env, backup_id, "--target-db", COPY)
    assert result.exit_code == 0, result.output
    assert _statistics(make_conninfo(url, dbname=COPY)) == before
    assert f"database {COPY}: " in result.stdout and ", analyzed" in result.stdout, result.stdout


def test_without_a_vacuumdb_of_the_servers_version_the_server_analyzes_the_copy(runner, live, monkeypatch):
    from opsctl.backup import postgres as pgb
    from opsctl.errors import UsageError

    env, url, backup_id, before = live()
    found = pgb.tool_for

    def no_vacuumdb(name, *args, **kw):
        if name == "vacuumdb":
            raise UsageError("the server is PostgreSQL 18 and vacuumdb here is version 15")
        return found(name, *args, **kw)

    monkeypatch.setattr(pgb, "tool_for", no_vacuumdb)
    doc = ok(_restore(runner, env, backup_id, "--target-db", COPY, "--json"))
    assert _statistics(make_conninfo(url, dbname=COPY)) == before
    assert doc["analyzed"] is True


def test_an_analyze_that_fails_on_the_data_is_said_and_the_restore_stands(runner, live, seeded):
    env, url, backup_id, _ = live(unanalyzable=True)
    result = _restore(runner, env, backup_id, "--target-db", COPY)
    assert result.exit_code == 0, result.output
    assert ", analyzed" not in result.stdout, result.stdout
    text = " ".join(result.stdout.split())
    assert f"database {COPY} was not analyzed (vacuumdb --analyze-only of" in text, text
    assert "boom at 3" in text and "run ANALYZE in it" in text and "WARNING" not in result.stderr, text
    assert _databases(seeded, COPY) == [COPY] and not _databases(seeded, f"{DB}\\_restoring\\_%")


# G4: subscriptions

def test_verify_restore_test_of_a_database_with_a_subscription_passes_and_leaves_no_copy(runner, live, seeded):
    env, url, backup_id, _ = live(subscription=True)
    result = runner.invoke(app, ["backup", "verify", backup_id, "--env", env, "--restore-test", "--json"])
    doc = ok(result)
    assert doc["ok"] and doc["restore_test"]["db"]["matches_manifest"], doc
    assert "scratch_left" not in doc["restore_test"]["db"]
    assert not _databases(seeded, f"opsctl\\_verify\\_{backup_id[:15].lower()}%")
    assert _subscriptions(seeded, DB) == {SUB: False}  # the live database's own, untouched


def test_a_verify_whose_copy_could_not_be_dropped_still_passes_and_says_what_it_left(runner, live, seeded,
                                                                                     monkeypatch):
    from opsctl.backup import postgres as pgb

    env, url, backup_id, _ = live(subscription=True)

    def lost(*_args, **_kw):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(pgb, "_detach_subscriptions", lost, raising=False)
    result = runner.invoke(app, ["backup", "verify", backup_id, "--env", env, "--restore-test"])
    assert result.exit_code == 0, result.output  # the backup restored and matched: the verdict stands
    left = _databases(seeded, f"opsctl\\_verify\\_{backup_id[:15].lower()}%")
    assert len(left) == 1, left
    text = " ".join(result.stdout.split())
    assert f"the scratch copy {left[0]} could not be dropped" in text and "drop it by hand" in text, text
    assert "WARNING" not in result.stderr, result.stderr  # said once, in the result
    assert _subscriptions(seeded, DB) == {SUB: False}


def test_a_failing_restore_says_pg_restores_error_in_one_line_and_leaves_no_copy(runner, live, seeded):
    env, url, backup_id, _ = live(subscription=True, failing=True)
    result = _restore(runner, env, backup_id)
    line = one_line_error(result, 1, "pg_restore into", "row-level security policy for table")
    assert "error: unexpected" not in result.output and "ObjectInUse" not in result.output, result.output
    assert "logical replication subscription" not in result.output, result.output
    assert not _databases(seeded, f"{DB}\\_restoring\\_%"), line
    assert _subscriptions(seeded, DB) == {SUB: False}


def test_a_clean_up_that_fails_never_hides_the_restores_own_error(runner, live, seeded, monkeypatch):
    from opsctl.backup import postgres as pgb

    env, url, backup_id, _ = live(subscription=True, failing=True)

    def lost(*_args, **_kw):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(pgb, "_detach_subscriptions", lost, raising=False)
    result = _restore(runner, env, backup_id)
    one_line_error(result, 1, "pg_restore into", "row-level security policy for table")
    left = _databases(seeded, f"{DB}\\_restoring\\_%")
    assert len(left) == 1, left
    # the clean-up's failure is said too, naming the copy left and how to drop it
    said = result.stderr.strip().splitlines()[:-1]
    assert any(left[0] in line and "could not be dropped" in line and "DROP SUBSCRIPTION" in line
               for line in said), result.stderr
    assert "error: unexpected" not in result.output, result.output
    assert _subscriptions(seeded, DB) == {SUB: False}


def test_a_failure_putting_the_copy_in_place_is_one_line_and_drops_the_copy(runner, live, seeded, monkeypatch):
    from opsctl.backup import postgres as pgb

    env, url, backup_id, _ = live(subscription=True)

    def refused(*_args, **_kw):
        raise psycopg.errors.InsufficientPrivilege("permission denied to alter database")

    monkeypatch.setattr(pgb, "mark_copy", refused)
    result = _restore(runner, env, backup_id, "--target-db", COPY)
    one_line_error(result, 1, f"putting the restored database in place as {COPY} failed",
                   "permission denied to alter database")
    assert "error: unexpected" not in result.output, result.output
    assert not _databases(seeded, f"{DB}\\_restoring\\_%") and not _databases(seeded, COPY)
    assert _subscriptions(seeded, DB) == {SUB: False}


def test_a_restore_bringing_back_subscriptions_says_they_do_not_replicate(runner, live, seeded):
    env, url, backup_id, _ = live(subscription=True)
    doc = ok(_restore(runner, env, backup_id, "--target-db", COPY, "--json"))
    assert doc["subscriptions"] == [SUB], doc
    note = doc["subscriptions_note"]
    for words in (SUB, "restored disabled", "does not replicate", "ALTER SUBSCRIPTION name ENABLE", "slot"):
        assert words in note, note
    assert _subscriptions(seeded, COPY) == {SUB: False}

    result = _restore(runner, env, backup_id)  # in place: the previous database keeps the originals
    assert result.exit_code == 0, result.output
    kept = _databases(seeded, f"{DB}\\_before\\_%")
    assert len(kept) == 1
    text = " ".join(result.stdout.split())
    assert SUB in text and "does not replicate" in text and f"previous database kept as {kept[0]}" in text, text
    assert _subscriptions(seeded, DB) == {SUB: False} and _subscriptions(seeded, kept[0]) == {SUB: False}


def test_replace_copy_replaces_a_copy_holding_subscriptions_unless_one_replicates(runner, live, seeded):
    env, url, backup_id, _ = live(subscription=True)
    ok(_restore(runner, env, backup_id, "--target-db", COPY, "--json"))
    doc = ok(_restore(runner, env, backup_id, "--target-db", COPY, "--replace-copy", "--json"))
    assert doc["replaced_copy"] and doc["subscriptions"] == [SUB], doc
    assert _databases(seeded, COPY) == [COPY] and not _databases(seeded, f"{DB}\\_restoring\\_%")

    # someone made the copy replicate: it is theirs, never replaced
    with psycopg.connect(make_conninfo(url, dbname=COPY), autocommit=True) as conn:
        conn.execute(f"alter subscription {SUB} enable")
    try:
        result = _restore(runner, env, backup_id, "--target-db", COPY, "--replace-copy")
        one_line_error(result, 2, f"--target-db {COPY}", "replicates", SUB)
        assert _subscriptions(seeded, COPY) == {SUB: True}
    finally:
        with psycopg.connect(make_conninfo(url, dbname=COPY), autocommit=True) as conn:
            conn.execute(f"alter subscription {SUB} disable")
    assert _subscriptions(seeded, DB) == {SUB: False}


def test_a_dead_restores_copy_holding_a_subscription_is_removed(runner, live, seeded):
    from opsctl.backup import postgres as pgb
    from opsctl.backup import runs as core

    env, url, backup_id, _ = live(subscription=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    scratch = pgb.derived_name(DB, "restoring")
    with _admin(seeded) as conn:
        conn.execute(f'create database "{scratch}"')
    with psycopg.connect(make_conninfo(url, dbname=scratch), autocommit=True) as conn:
        conn.execute(f"create subscription {SUB} connection 'host=127.0.0.1 port=1 dbname=nowhere' "
                     "publication p with (connect = false)")
    folder = tempfile.mkdtemp(prefix=core.RUN_PREFIX)
    with open(f"{folder}/{core.RUN_RECORD}", "w") as fh:
        json.dump({"pid": int(dead.stdout), "start": None, "server": core._server(url), "scratch": scratch,
                   "live": DB, "in_place": False}, fh)
    doc = ok(_restore(runner, env, backup_id, "--target-db", COPY, "--json"))
    assert any(f"its scratch database {scratch}" in line for line in doc["cleaned"]), doc["cleaned"]
    assert not _databases(seeded, scratch)
    assert _subscriptions(seeded, DB) == {SUB: False}


def test_a_database_opsctl_did_not_make_keeps_its_subscriptions_and_is_refused_in_one_line(seeded):
    """The runbook's drop-database step (postgres.drop_database) drops any scratch name it is
    given: a database there holding subscriptions is refused by the server, in one line, and
    its subscriptions are never dropped for it (only inside copies opsctl made)."""
    from opsctl.backup import postgres as pgb
    from opsctl.errors import OperationFailed

    _drop_ours(seeded)
    try:
        with _admin(seeded) as conn:
            conn.execute(f"create database {DB}")
        url = make_conninfo(seeded.db_url, dbname=DB)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"create subscription {SUB} connection 'host=127.0.0.1 port=1 dbname=nowhere' "
                         "publication p with (connect = false)")
        with pytest.raises(OperationFailed) as refused:
            pgb.drop_database(seeded.db_url, DB)
        said = str(refused.value)
        assert f"dropping database {DB} failed" in said and "logical replication subscription" in said, said
        assert "\n" not in said and "DETAIL" not in said, said
        assert _subscriptions(seeded, DB) == {SUB: False}
    finally:
        _drop_ours(seeded)
