"""`opsctl backup delete ID`: one backup removed by id, as restic's `forget ID` and pgBackRest's
`expire --set` do, never the newest complete or verified one without --force."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys

import pytest

from backup_support import KEY, ok, one_line_error, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture
def two(seeded, runner, tmp_path, monkeypatch):
    """(env, older id, newer id, repository folder): two database backups of a side environment."""
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    older = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    newer = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    return env, older, newer, tmp_path / "repo"


def _ids(runner, env) -> list[str]:
    return [b["id"] for b in ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]]


def test_an_older_backup_is_deleted_and_the_newest_still_restores(two, runner):
    env, older, newer, repo = two
    result = runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"deleted backup {older} (complete: db)"
    assert _ids(runner, env) == [newer]
    assert not (repo / older).exists()
    assert ok(runner.invoke(app, ["backup", "verify", newer, "--env", env, "--json"]))["ok"] is True


def test_the_newest_backup_is_deleted_only_with_force(two, runner):
    env, older, newer, repo = two
    one_line_error(runner.invoke(app, ["backup", "delete", newer, "--env", env, "--yes"]), 2,
                   newer, "the newest complete backup holding db", "nothing was deleted", "--force")
    assert _ids(runner, env) == [older, newer]
    doc = ok(runner.invoke(app, ["backup", "delete", newer, "--env", env, "--yes", "--force", "--json"]))
    assert doc["id"] == newer and doc["newest_of"] == ["the newest complete backup holding db"]
    assert _ids(runner, env) == [older]


def test_the_newest_verified_backup_needs_force_too(two, runner):
    env, older, newer, repo = two
    ok(runner.invoke(app, ["backup", "verify", older, "--env", env, "--json"]))
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes"]), 2,
                   "the newest verified backup", "--force")
    assert _ids(runner, env) == [older, newer]


@pytest.mark.parametrize("bad, words", [("../etc", ("backup id",)), ("20200101T000000Z-abcd", ("no backup",)),
                                        ("", ("backup id",))])
def test_a_bad_or_unknown_id_is_refused_and_nothing_is_deleted(two, runner, bad, words):
    env, older, newer, repo = two
    one_line_error(runner.invoke(app, ["backup", "delete", bad, "--env", env, "--yes", "--force"]), 2, *words)
    assert _ids(runner, env) == [older, newer]


def test_a_dry_run_and_a_run_without_approval_delete_nothing(two, runner):
    env, older, newer, repo = two
    result = runner.invoke(app, ["backup", "delete", older, "--env", env, "--dry-run"])
    assert result.exit_code == 0 and result.stdout.strip() == f"would delete backup {older} (complete: db)"
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env]), 2, "--yes")  # CI: nobody to ask
    assert _ids(runner, env) == [older, newer]


def test_a_protected_environment_needs_its_name(seeded, runner, tmp_path, monkeypatch):
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", protected=True)
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    older = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes"]), 2, "--confirm-env")
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes", "--confirm-env", "prod"]),
                   2, "--confirm-env 'prod'")
    assert older in _ids(runner, env)
    ok(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes", "--confirm-env", env, "--json"]))
    assert older not in _ids(runner, env)


def _start_record(repo, backup_id: str, pid: int) -> None:
    (repo / backup_id).mkdir()
    (repo / backup_id / "in-progress.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": pid, "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}))


def test_a_backup_being_written_is_refused_and_an_interrupted_one_is_deleted(two, runner):
    env, older, newer, repo = two
    from opsctl.backup import manifest as mf

    assert mf.IN_PROGRESS == "in-progress.json"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    running, dead = f"{stamp}-0001", f"{stamp}-0002"
    _start_record(repo, running, subprocess.os.getpid())  # this process: alive
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _start_record(repo, dead, int(gone.stdout))
    (repo / dead / "db.dump.zst.partial").write_bytes(b"x" * 100)
    one_line_error(runner.invoke(app, ["backup", "delete", running, "--env", env, "--yes"]), 2,
                   "is being written", "nothing was deleted")
    assert (repo / running).is_dir()
    result = runner.invoke(app, ["backup", "delete", dead, "--env", env, "--yes"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"deleted backup {dead} (incomplete)"
    assert not (repo / dead).exists() and (repo / running).is_dir()


def test_an_encrypted_repository_without_its_key_deletes_nothing(two, runner, monkeypatch):
    env, older, newer, repo = two
    monkeypatch.delenv("OPSCTL_BACKUP_KEY")
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes"]), 2,
                   "no backup key is set", "nothing is deleted")
    assert (repo / older).is_dir()
