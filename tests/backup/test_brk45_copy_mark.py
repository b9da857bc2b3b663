"""Breaker 45 F10: `--replace-copy` dropped what merely claimed to be a restore's copy, and
ended the sessions of a copy someone went on using. The mark is a setting in opsctl's own
namespace (the copy keeps the source's comment), read only in its exact format (a backup id,
a UTC time, the copy's own name); a copy with open sessions is not replaced; a backup of a copy
leaves the mark out. Each refusal is one line, exit 2, and the database is kept."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from backup_support import ok, one_line_error
from opsctl.backup.postgres import copy_mark
from opsctl.cli import app
from test_brk42_restore import _admin, live_db  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow
COPY = "brk42_copy"
COPY_SETTING = "opsctl.restore_copy"  # postgres.COPY_SETTING, spelled out: what psql's \drds shows


def _restore(runner, env, backup_id, *more):
    return runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", COPY, "--yes", *more])


def _plant(seeded, setting: str | None = None, comment: str | None = None) -> None:
    with _admin(seeded) as conn:
        conn.execute(f"create database {COPY}")
        if comment:
            conn.execute(sql.SQL("comment on database {} is {}").format(sql.Identifier(COPY), sql.Literal(comment)))
        if setting:
            conn.execute(f"alter database {COPY} set {COPY_SETTING} to '{setting}'")
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=COPY), autocommit=True) as conn:
        conn.execute("create table important as select 42 as answer")


def _kept(seeded) -> bool:
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=COPY)) as conn:
        return conn.execute("select answer from important").fetchone()[0] == 42


@pytest.mark.parametrize("setting, comment", [
    # breaker 45's forged comment: the right start and end, anything between
    (None, f"opsctl restore copy of backup NOT-A-COPY: otherapp production data, keep! as {COPY}"),
    ("backup NOT-A-COPY: otherapp data, keep! as " + COPY, None),           # the same in the setting
    (f"backup 20261203T010203Z-1a2b, restored yesterday as {COPY}", None),   # no UTC time
    (f"backup 20261203T010203Z-1a2b, restored 2026-12-03T01:02:03Z as {COPY}x", None),  # another name
])
def test_a_mark_not_in_its_exact_format_is_no_copy(live_db, seeded, runner, setting, comment):  # noqa: F811
    env, url, backup_id = live_db
    _plant(seeded, setting, comment)
    assert copy_mark(seeded.db_url, COPY) is None
    one_line_error(_restore(runner, env, backup_id, "--replace-copy"), 2, f"--target-db {COPY}: that database exists")
    assert _kept(seeded)


def test_a_copy_in_use_is_not_replaced_and_its_sessions_live_on(live_db, seeded, runner):  # noqa: F811
    env, url, backup_id = live_db
    ok(runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", COPY, "--yes", "--json"]))
    assert copy_mark(seeded.db_url, COPY).endswith(f" as {COPY}")
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=COPY, application_name="analyst"),
                         autocommit=True) as theirs:
        theirs.execute("create table mine as select 7 as x")
        line = one_line_error(_restore(runner, env, backup_id, "--replace-copy"), 2, "1 open session", "analyst")
        assert "end them, or restore under another name" in line
        assert theirs.execute("select x from mine").fetchone()[0] == 7  # not terminated
    # no one connected now: the copy is replaced, and the output says which copy it replaced
    done = ok(_restore(runner, env, backup_id, "--replace-copy", "--json"))
    assert done["replaced_copy"].startswith(f"opsctl restore copy of backup {backup_id}, restored ")


def test_the_copy_keeps_the_sources_comment_and_its_backup_leaves_the_mark_out(live_db, seeded, runner,  # noqa: F811
                                                                              tmp_path, monkeypatch):
    env, url, backup_id = live_db
    with _admin(seeded) as conn:
        conn.execute("comment on database brk42_live is 'the live one'")
        # breaker 47 F8: setting names ignore case; a mark spelled otherwise is opsctl's too
        conn.execute(f"""alter database brk42_live set "Opsctl.Restore_Copy" to 'backup {backup_id}, """
                     f"""restored 2026-12-01T02:03:04Z as {COPY}'""")
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    manifest = (tmp_path / "repo" / made["id"] / "manifest.json").read_bytes()
    assert COPY_SETTING not in json.dumps(json.loads(manifest)).lower(), "a mark went into the backup"
    ok(runner.invoke(app, ["restore", "--env", env, "--id", made["id"], "--target-db", COPY, "--yes", "--json"]))
    with _admin(seeded) as conn:
        comment = conn.execute("select shobj_description(oid, 'pg_database') from pg_database where datname = %s",
                               (COPY,)).fetchone()[0]
    assert comment == "the live one" and copy_mark(seeded.db_url, COPY)
    # a backup of the copy: its manifest records no opsctl.* setting
    from backup_support import side_env

    copy_env = side_env(tmp_path / "ops-copy", monkeypatch, seeded, f"file://{tmp_path / 'repo-copy'}",
                        database_url=make_conninfo(seeded.db_url, dbname=COPY), database={"name": COPY})
    of_copy = ok(runner.invoke(app, ["backup", "create", "--env", copy_env, "--type", "db", "--json"]))
    manifest = (tmp_path / "repo-copy" / of_copy["id"] / "manifest.json").read_bytes()
    assert COPY_SETTING not in json.dumps(json.loads(manifest)).lower(), "the mark went into the copy's backup"


def test_a_copy_marked_in_its_comment_by_an_earlier_opsctl_is_still_replaced(live_db, seeded, runner):  # noqa: F811
    env, url, backup_id = live_db
    _plant(seeded, comment=f"opsctl restore copy of backup {backup_id}, restored 2026-12-01T02:03:04Z as {COPY}")
    done = ok(_restore(runner, env, backup_id, "--replace-copy", "--json"))
    assert done["replaced_copy"].endswith(f" as {COPY}")


def test_a_copy_that_comes_into_use_while_the_restore_runs_is_kept_and_said(live_db, seeded, runner,  # noqa: F811
                                                                            monkeypatch, tmp_path):
    """Breaker 47 F1: someone connected to the old copy while restore-drill@3's restore ran; the
    restore blamed "someone else" for creating it, and the drill's clean-up step dropped it WITH
    (FORCE), ending their session. Both now keep it, and say it is in use and by whom."""
    from opsctl.backup import postgres as pgb
    from opsctl.config import load_project
    from opsctl.runbook import actions

    env, url, backup_id = live_db
    ok(runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", COPY, "--yes", "--json"]))
    real, held = pgb.restore_into, []

    def restored_then_someone_connects(*args, **kwargs):
        counts = real(*args, **kwargs)
        held.append(psycopg.connect(make_conninfo(seeded.db_url, dbname=COPY, application_name="analyst"),
                                    autocommit=True))
        return counts

    monkeypatch.setattr(pgb, "restore_into", restored_then_someone_connects)
    try:
        line = one_line_error(_restore(runner, env, backup_id, "--replace-copy"), 1,
                              f"the copy {COPY} came into use while the restore ran", "analyst")
        assert "someone else" not in line
        project = load_project(tmp_path / "ops")
        out = actions.ACTIONS["drop-database"](actions.Context(project, project.env(env), True), name=COPY,
                                               only_copy=True)
        assert out["dropped"] is None and out["kept"] == COPY and "in use" in out["why"], out
        assert held[0].execute("select 1").fetchone() == (1,)  # their session lives on
    finally:
        for conn in held:
            conn.close()
    with _admin(seeded) as conn:  # the new copy, kept under its scratch name as the line says
        kept = [n for (n,) in conn.execute("select datname from pg_database where datname like %s",
                                           (f"{COPY}_restoring_%",))]
    assert len(kept) == 1 and kept[0] in line


def test_a_client_that_connects_after_the_check_is_not_ended(live_db, seeded, runner, monkeypatch):  # noqa: F811
    """Breaker 48 F3: the sessions were checked, then the copy dropped WITH (FORCE) on another
    connection; a client connecting in between was ended. The drop is now the check: without
    FORCE, the server refuses it while anyone is connected. Here the check sees no one, as a
    check made just before the client connected would."""
    from opsctl.backup import postgres as pgb

    env, url, backup_id = live_db
    ok(runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", COPY, "--yes", "--json"]))
    monkeypatch.setattr(pgb, "sessions", lambda *_: [])
    with psycopg.connect(make_conninfo(seeded.db_url, dbname=COPY, application_name="analyst"),
                         autocommit=True) as theirs:
        one_line_error(_restore(runner, env, backup_id, "--replace-copy"), 1,
                       f"the copy {COPY} came into use while the restore ran")
        assert theirs.execute("select 1").fetchone() == (1,)  # not ended


def test_a_rename_that_fails_after_the_old_copy_went_keeps_the_restored_one(live_db, seeded, runner,  # noqa: F811
                                                                              monkeypatch):
    """Breaker 49 F10b: --replace-copy dropped the old copy, then a failed rename (a lost
    connection) dropped the restored one too: both copies gone. The restored one is kept."""
    from opsctl.backup import postgres as pgb

    env, url, backup_id = live_db
    ok(runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--target-db", COPY, "--yes", "--json"]))

    def lost(*_args, **_kwargs):
        raise ConnectionError("server closed the connection unexpectedly")

    monkeypatch.setattr(pgb, "swap", lost)
    line = one_line_error(_restore(runner, env, backup_id, "--replace-copy"), 1,
                          f"the earlier copy {COPY} was replaced, but renaming the restored one", "it is kept as")
    with _admin(seeded) as conn:
        kept = [n for (n,) in conn.execute("select datname from pg_database where datname like %s",
                                           (f"{COPY}_restoring_%",))]
    assert len(kept) == 1 and kept[0] in line


def test_the_drills_drop_step_drops_nothing_it_did_not_find(live_db, seeded, monkeypatch, tmp_path):  # noqa: F811
    """Breaker 49 F10a: with only_copy, a database not found fell through to the forced drop,
    so one created under that name just after the check was dropped unchecked."""
    from opsctl.backup import postgres as pgb
    from opsctl.config import load_project
    from opsctl.runbook import actions

    env, _url, _id = live_db
    _plant(seeded)  # not a copy: created "just after" the drop step looked
    monkeypatch.setattr(pgb, "database_exists", lambda *_: False)
    project = load_project(tmp_path / "ops")
    out = actions.ACTIONS["drop-database"](actions.Context(project, project.env(env), True), name=COPY,
                                           only_copy=True)
    assert out["dropped"] is None, out
    assert _kept(seeded)
