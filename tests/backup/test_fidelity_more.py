"""A restore brings everything pg_dump holds about the database back, from a structured
source, and nothing else (issue 17 §3, second review): per-role settings in the database,
a multi-line comment, the restore swapped into the live database; statements written inside
a function body or a comment never run; a failure once the scratch database exists drops it."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from backup_support import KEY, ok, one_line_error, side_env
from opsctl.cli import app
from test_fidelity import OWNER, catalog, fidelity_db  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow


def _cluster(url: str, skip: str) -> list:
    """Every other database's own properties: comment, grants, settings (its own and roles')."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select d.datname, d.datacl::text, shobj_description(d.oid, 'pg_database'), d.datconnlimit, "
            "(select json_agg(json_build_array(s.setrole::regrole::text, s.setconfig) order by s.setrole) "
            "from pg_db_role_setting s where s.setdatabase = d.oid) "
            "from pg_database d where d.datname not like %s order by 1", (f"{skip}%",)).fetchall()


def _leftovers(url: str, name: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [d for (d,) in conn.execute("select datname from pg_database where datname like %s "
                                           "and datname not like %s", (f"{name}_%", f"{name}_before_%"))]


def test_restore_swapped_into_the_live_database_brings_everything_back(fidelity_db, seeded, runner, tmp_path,
                                                                       monkeypatch):
    """Role settings in the database, list settings, connection limit, a multi-line comment,
    column, function and default privileges, sequences: all back, in the live database."""
    name, url = fidelity_db
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url,
                   database={"name": name})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    before = catalog(url)
    assert len(before["role_settings"]) == 3  # the database's own and two roles' in it
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    checked = ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", env, "--restore-test", "--json"]))
    assert checked["restore_test"]["db"]["owners_and_privileges_checked"]
    assert checked["restore_test"]["db"]["database_properties_checked"]
    with psycopg.connect(url, autocommit=True) as conn:  # the live database drifts after the backup
        conn.execute("drop table bk_owned")
        conn.execute("select setval('bk_seq', 7)")
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute(f"alter role bk_reporting in database {name} reset all")
        conn.execute(f"comment on database {name} is 'changed'")
    done = ok(runner.invoke(app, ["restore", "--env", env, "--latest", "--yes", "--json"]))
    assert done["database"] == name and done["previous_database"].startswith(f"{name}_before_")
    assert catalog(url) == before
    assert _leftovers(seeded.db_url, name) == []


def test_verify_compares_every_role_setting_of_the_database():
    """The whole of pg_db_role_setting for the database is compared, not only setrole = 0."""
    from opsctl.backup.postgres import compare_catalog

    props = {"owner": "app", "acl": None, "comment": "a\nb",
             "settings": [[None, ["work_mem=8MB"]], ["r", ["statement_timeout=5s"]]]}
    base = {"db_properties": props, "relations": []}
    assert compare_catalog(base, json.loads(json.dumps(base))) is None
    lost = json.loads(json.dumps(base))
    lost["db_properties"]["settings"] = [[None, ["work_mem=8MB"]]]
    assert "settings" in compare_catalog(base, lost) and "statement_timeout" in compare_catalog(base, lost)
    comment = json.loads(json.dumps(base))
    comment["db_properties"]["comment"] = "a"
    assert "comment" in compare_catalog(base, comment)


def test_settings_are_quoted_like_pg_dump():
    from opsctl.backup.postgres import _split_guc_list

    assert _split_guc_list('"$user", public, "Sché ma", "a b", "x""y"') == ["$user", "public", "Sché ma", "a b", 'x"y']
    assert _split_guc_list("") == [] and _split_guc_list('""') == [""]


def test_statements_inside_function_bodies_and_comments_never_run(fidelity_db, seeded, runner, tmp_path,
                                                                  monkeypatch):
    """A non-superuser's function body, table comment and view text hold lines that look like
    statements about other databases (and name a role that does not exist); the restore (run
    as superuser) leaves every other database exactly as it was, and needs no such role."""
    name, url = fidelity_db
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set role bk_app")
        conn.execute("""create function bk_trap() returns int language plpgsql as $body$
begin
/*
COMMENT ON DATABASE template1 IS 'changed by a function body';
ALTER DATABASE postgres SET work_mem = '1MB';
GRANT ALL ON DATABASE postgres TO bk_app;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
ALTER ROLE bk_app IN DATABASE postgres SET work_mem = '3MB';
ALTER DATABASE template1 CONNECTION LIMIT 3;
ALTER TABLE bk_owned OWNER TO bk_nobody;
*/
return 1;
end
$body$""")
        conn.execute("comment on function bk_trap() is E'x\\nCOMMENT ON DATABASE template1 IS ''by a comment'';\\n"
                     "GRANT ALL ON TABLE bk_owned TO bk_nobody;'")
        conn.execute("create view bk_trap_view as select 1 as \"\nALTER DATABASE template1 SET work_mem = '5MB';\"")
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url,
                   database={"name": name})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    others = _cluster(seeded.db_url, name)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", env, "--restore-test", "--json"]))
    ok(runner.invoke(app, ["restore", "--env", env, "--id", made["id"], "--target-db", f"{name}_copy", "--yes",
                            "--json"]))
    ok(runner.invoke(app, ["restore", "--env", env, "--latest", "--yes", "--json"]))
    assert _cluster(seeded.db_url, name) == others
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=f"{name}_copy")) as conn:
        assert conn.execute("select bk_trap()").fetchone()[0] == 1  # the function itself came back


def test_failure_after_the_scratch_database_exists_drops_it(fidelity_db, seeded, runner, tmp_path, monkeypatch):
    """Any failure once the scratch database is created drops it again: one line, nothing left."""
    from opsctl.backup import postgres as pgb

    name, url = fidelity_db
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url,
                   database={"name": name})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    before = catalog(url)

    def refused(conn, db, props, no_owner):  # the server refuses a property (a real psycopg error)
        conn.execute("alter database {} set work_mem = 'not a size'".format(pgb.quote(db)))

    monkeypatch.setattr(pgb, "apply_properties", refused)
    one_line_error(runner.invoke(app, ["restore", "--env", env, "--latest", "--yes"]), 1, "work_mem")
    assert _leftovers(seeded.db_url, name) == []
    monkeypatch.undo()
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url,
                   database={"name": name})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)

    def swap_fails(*args):
        raise pgb.OperationFailed("renaming failed (injected)")

    monkeypatch.setattr(pgb, "swap", swap_fails)
    one_line_error(runner.invoke(app, ["restore", "--env", env, "--latest", "--yes"]), 1, "injected")
    assert _leftovers(seeded.db_url, name) == []
    assert catalog(url) == before
