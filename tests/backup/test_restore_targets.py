"""Where a restore writes is what was asked, and never a database PostgreSQL or the
environment needs (breaker 40 P1-P5):

- P2: `--target-db ""` (an unset CI variable) was read as "not given": an in-place restore
  over the live database, Redis and audio; `--target-instance ""`, `--role ""` and
  `--confirm-env ""` likewise.
- P3: `--target-db template1` dropped and replaced the template every new database copies;
  `--target-db postgres` ended on "unexpected ObjectInUse".
- P4: `--target-db <the live database>` dropped it and kept no copy.
- P5: `--target-db NAME` ("restore the database under this name and stop there") also
  replaced the live Redis and audio.

"Nothing changed" is checked on the live data itself (row counts and checksums, every Redis
key, the audio objects, the list of databases, template1 still a template)."""

from __future__ import annotations

import json

import psycopg
import pytest

from backup_support import audio_state, snapshot_state
from opsctl.cli import app

pytestmark = pytest.mark.slow


def _backup(runner, benv) -> str:
    result = runner.invoke(app, ["backup", "create", "--env", benv.name, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["id"]


def _refused(result, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("opsctl: error: ") and "Traceback" not in result.output, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _templates(seeded) -> dict:
    with psycopg.connect(seeded.db_url) as conn:
        return dict(conn.execute("select datname, datistemplate from pg_database "
                                 "where datname in ('template0', 'template1', 'postgres')").fetchall())


@pytest.fixture
def one_repository(benv):
    if benv.kind != "file":
        pytest.skip("one repository is enough: these are refused before any object is read")
    return benv


def test_an_empty_target_is_refused_not_taken_for_in_place(runner, one_repository, seeded, local_platform):
    benv = one_repository
    backup_id = _backup(runner, benv)
    before, audio = snapshot_state(seeded), audio_state(local_platform, seeded)
    base = ["restore", "--env", benv.name, "--id", backup_id, "--yes"]
    for option in ("--target-db", "--target-instance", "--role", "--confirm-env"):
        _refused(runner.invoke(app, [*base, option, ""]), f"{option} is empty")
        _refused(runner.invoke(app, [*base, option, "  "]), f"{option} is empty")
    _refused(runner.invoke(app, ["restore", "--env", benv.name, "--to-time", "latest", "--target-db", "", "--yes"]),
             "--target-db is empty")
    assert snapshot_state(seeded) == before and audio_state(local_platform, seeded) == audio


def test_a_confirm_env_naming_another_environment_is_refused_anywhere(runner, one_repository, seeded):
    benv = one_repository
    backup_id = _backup(runner, benv)
    before = snapshot_state(seeded)
    _refused(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--yes", "--confirm-env",
                                 "production"]), f"--confirm-env 'production' is not '{benv.name}'")
    assert snapshot_state(seeded) == before


@pytest.mark.parametrize("name", ["template1", "template0", "postgres"])
def test_a_system_database_is_never_a_target(runner, one_repository, seeded, name):
    benv = one_repository
    backup_id = _backup(runner, benv)
    before, templates = snapshot_state(seeded), _templates(seeded)
    _refused(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--target-db", name, "--yes"]),
             f"--target-db {name} is a system database")
    assert snapshot_state(seeded) == before and _templates(seeded) == templates
    assert templates == {"template0": True, "template1": True, "postgres": False}


def test_the_live_database_is_never_a_target(runner, one_repository, seeded):
    from opsctl.backup.postgres import url_database

    benv = one_repository
    backup_id = _backup(runner, benv)
    live = url_database(seeded.db_url)
    before = snapshot_state(seeded)
    _refused(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--target-db", live, "--yes"]),
             f"--target-db {live} is the environment's live database")
    assert snapshot_state(seeded) == before


def test_a_system_database_is_never_dropped_whoever_asks(seeded):
    from opsctl.backup import postgres as pgb
    from opsctl.errors import UsageError

    templates = _templates(seeded)
    for name in pgb.SYSTEM_DATABASES:
        with pytest.raises(UsageError, match=f"refusing to drop {name}"):
            pgb.drop_database(seeded.db_url, name)
    assert _templates(seeded) == templates


def test_target_db_restores_the_database_alone(runner, benv, seeded, local_platform):
    """P5: the live Redis keys and audio objects stay as they are; --components asks for more."""
    import redis

    backup_id = _backup(runner, benv)
    r = redis.Redis.from_url(seeded.redis_url)
    r.set("bk:after-backup", b"live")  # a key the backup does not hold: a Redis restore would remove it
    try:
        before, audio = snapshot_state(seeded), audio_state(local_platform, seeded)
        done = runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--target-db", "bk_side",
                                   "--yes", "--json"])
        assert done.exit_code == 0, done.output
        result = json.loads(done.stdout)
        assert result["database"] == "bk_side" and result["rows"] > 0
        assert result["components"] == ["db"] and result["redis_keys"] == 0 and result["files_restored"] == 0, result
        after = snapshot_state(seeded)
        assert after["databases"] == before["databases"] | {"bk_side"}
        assert {k: v for k, v in after.items() if k != "databases"} == \
            {k: v for k, v in before.items() if k != "databases"}
        assert r.get("bk:after-backup") == b"live" and audio_state(local_platform, seeded) == audio
    finally:
        r.delete("bk:after-backup")
        from opsctl.backup.postgres import drop_database

        drop_database(seeded.db_url, "bk_side")


def test_an_existing_database_is_never_a_target(runner, one_repository, seeded):
    """Breaker 41 Q1: `--target-db otherapp` (another application's database) dropped it and kept
    no copy; --target-db restores into a new database."""
    benv = one_repository
    backup_id = _backup(runner, benv)
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute("create database bk_otherapp")
    try:
        other = psycopg.conninfo.make_conninfo(seeded.db_url, dbname="bk_otherapp")
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute("create table important (x int)")
            conn.execute("insert into important select generate_series(1, 10)")
        before = snapshot_state(seeded)
        _refused(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--target-db", "bk_otherapp",
                                     "--yes"]), "--target-db bk_otherapp: that database exists")
        with psycopg.connect(other) as conn:
            assert conn.execute("select count(*) from important").fetchone()[0] == 10
        assert snapshot_state(seeded) == before
    finally:
        from opsctl.backup.postgres import drop_database

        drop_database(seeded.db_url, "bk_otherapp")


@pytest.mark.parametrize("name, said", [(" live", "has spaces around it"), ("live ", "has spaces around it"),
                                        ("LIVE", "only by case"), ("Template1", "only by case")])
def test_a_name_that_reads_as_the_live_or_a_system_database_is_refused(name, said):
    """Breaker 41 Q8: ' transcribe', 'transcribe ' and 'Transcribe' were made beside the live
    one, listed as it; whoever dropped one by hand could drop the live database."""
    from opsctl.backup.postgres import check_replaceable
    from opsctl.errors import UsageError

    with pytest.raises(UsageError, match=said):
        check_replaceable(name, "live", "--target-db")
    check_replaceable("live_copy", "live", "--target-db")  # a name of its own is taken


@pytest.mark.parametrize("args, said", [
    (["--latest", "--components", "db,db"], "--components names db twice; give each component once"),
    (["--to-time", "latest", "--beside", "--jobs", "4"], "don't combine with --id, --date, --latest, --components, "
                                                          "--target-db, --replace-copy, --no-owner, --role, "
                                                          "--allow-damaged or --jobs"),
])
def test_an_option_a_restore_would_ignore_or_repeat_is_refused(ops_root, runner, args, said):
    """Breaker 42 R18: `--components db,db` was taken and printed `(db, db)`; `--jobs 4` with
    `--to-time` was silently ignored."""
    r = runner.invoke(app, ["restore", "--env", "local", "--yes", *args])
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert said in " ".join(r.stderr.split()), r.stderr


def test_a_role_that_does_not_exist_is_bad_input(runner, one_repository, seeded):
    """Breaker 42 R18: `--role nosuchrole` said the backup needs role(s) the server lacks:
    nosuchrole, and to restore with --role NAME (exit 1): the option's own value was wrong."""
    benv = one_repository
    backup_id = _backup(runner, benv)
    before = snapshot_state(seeded)
    line = _refused(runner.invoke(app, ["restore", "--env", benv.name, "--id", backup_id, "--components", "db",
                                        "--target-db", "role_probe", "--role", "nosuchrole", "--yes"]),
                    "--role nosuchrole: no such role on the target server")
    assert "needs role" not in line
    assert snapshot_state(seeded) == before
    with psycopg.connect(seeded.db_url) as conn:
        assert not conn.execute("select 1 from pg_database where datname like 'role_probe%'").fetchone()
