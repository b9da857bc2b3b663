"""`opsctl backup delete ID`: one backup removed by id, as restic's `forget ID` and pgBackRest's
`expire --set` do, never the newest complete or verified one without --force."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys

import pytest

from backup_support import KEY, ok, one_line_error, side_env
from opsctl.cli import app
from opsctl.local import pidstart

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
    assert doc["id"] == newer and doc["newest_of"] == ["db"]
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
    result = runner.invoke(app, ["backup", "delete", newer, "--env", env, "--dry-run"])  # said, not refused
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (f"would delete backup {newer} (complete: db); the newest of its environment "
                                     "holding: db (needs --force)")
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env]), 2, "--yes")  # CI: nobody to ask
    assert _ids(runner, env) == [older, newer]


def test_a_protected_environment_needs_its_name(seeded, runner, tmp_path, monkeypatch):
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", protected=True)
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    older = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes"]), 2, "--confirm-env")
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes", "--confirm-env", "prod"]),
                   2, "--confirm-env 'prod' is not 'side', the environment deleted from")
    assert older in _ids(runner, env)
    ok(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes", "--confirm-env", env, "--json"]))
    assert older not in _ids(runner, env)


def test_the_question_at_a_protected_environment_says_when_the_backup_was_made(seeded, runner, tmp_path,
                                                                               monkeypatch):
    """Session 31 left this: a person asked to type the protected environment's name was told the
    backup's id, status and parts, not how old it is. The question says when it was made and
    how many hours ago; a wrong name deletes nothing."""
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", protected=True)
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("opsctl.approval.is_interactive", lambda: True)
    result = runner.invoke(app, ["backup", "delete", made["id"], "--env", env], input="not-side\n")
    assert result.exit_code == 2, result.output
    at = dt.datetime.strptime(made["id"][:16], "%Y%m%dT%H%M%SZ")  # the id is stamped with the backup's start
    question = " ".join(result.stderr.split())
    assert f"delete backup {made['id']} (complete: db; made {at:%Y-%m-%d %H:%M:%S} UTC, 0.0 hours ago)" in question, \
        question
    assert made["id"] in _ids(runner, env)


def _start_record(repo, backup_id: str, pid: int, **more) -> None:
    (repo / backup_id).mkdir()
    (repo / backup_id / "in-progress.json").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": pid, "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
         **more}))


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


def test_a_repository_shared_by_two_environments_deletes_only_the_asked_ones(seeded, runner, tmp_path, monkeypatch):
    """Breaker 56 F2: with two environments on one repository, `--env stage` deleted prod's
    newest backup, then its last one: the backup's environment was never compared with --env,
    and "newest" was worked out across both."""
    side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    doc = json.loads((tmp_path / "ops" / "opsctl.yaml").read_text())
    doc["environments"]["prod"] = json.loads(json.dumps(doc["environments"]["side"])) | {"protected": True}
    (tmp_path / "ops" / "opsctl.yaml").write_text(json.dumps(doc))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    prods = [ok(runner.invoke(app, ["backup", "create", "--env", "prod", "--type", "db", "--json"]))["id"]
             for _ in range(2)]
    side = ok(runner.invoke(app, ["backup", "create", "--env", "side", "--type", "db", "--json"]))["id"]
    for bid in prods:
        one_line_error(runner.invoke(app, ["backup", "delete", bid, "--env", "side", "--yes", "--force"]), 2,
                       "made by environment 'prod', not 'side'", "--env prod")
    # side's one backup is its newest, though prod's are in the same repository
    one_line_error(runner.invoke(app, ["backup", "delete", side, "--env", "side", "--yes"]), 2,
                   "the newest complete backup holding db of its environment", "--force")
    ok(runner.invoke(app, ["backup", "delete", prods[0], "--env", "prod", "--yes", "--confirm-env", "prod",
                           "--json"]))  # prod's older one: no --force, though side's came after
    one_line_error(runner.invoke(app, ["backup", "delete", prods[1], "--env", "prod", "--yes", "--confirm-env",
                                       "prod"]), 2, "newest", "--force")
    assert _ids(runner, "side") == [prods[1], side]


def test_a_backup_dated_after_the_clock_stops_every_other_deletion(two, runner, monkeypatch):
    """Breaker 56 F1: a backup from a host whose clock ran ahead sorted as the newest, and the
    real newest was deleted without --force. While one is there, only it can be deleted."""
    import types

    from opsctl.backup import create as create_mod

    env, older, newer, repo = two

    class Ahead(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.now(tz) + dt.timedelta(days=2)

    with monkeypatch.context() as m:
        m.setattr(create_mod, "dt", types.SimpleNamespace(datetime=Ahead, timezone=dt.timezone,
                                                          timedelta=dt.timedelta, date=dt.date))
        ahead = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    for bid in (older, newer):
        one_line_error(runner.invoke(app, ["backup", "delete", bid, "--env", env, "--yes", "--force"]), 2,
                       f"backup {ahead} is dated after this host's clock", f"delete {ahead} first")
    doc = ok(runner.invoke(app, ["backup", "delete", ahead, "--env", env, "--yes", "--json"]))
    assert doc["newest_of"] == []
    assert _ids(runner, env) == [older, newer]


def test_the_newest_is_judged_again_after_the_question(two, runner, monkeypatch):
    """Breaker 56 F4: "is this the newest?" was decided before the prompt: the other backup
    deleted while it waited, a yes deleted the environment's last backup without --force."""
    env, older, newer, repo = two
    from opsctl.backup import retention

    def approve_while_newer_goes(question):
        retention.remove(retention_repo(), newer)  # another operator, while this one was asked

    def retention_repo():
        from opsctl.backup.repository import for_environment
        from opsctl.config import load_project

        project = load_project(os.environ["OPSCTL_ROOT"])
        return for_environment(project, project.env(env))

    monkeypatch.setattr("opsctl.approval.prune_approval", lambda *a, **k: approve_while_newer_goes)
    one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env]), 2,
                   "the newest complete backup holding db", "changed while you were asked", "nothing was deleted")
    assert (repo / older).is_dir()


def test_an_interrupt_before_the_manifest_goes_leaves_the_backup_whole_and_says_so(two, runner, monkeypatch):
    env, older, newer, repo = two
    from opsctl.backup import repository

    def interrupted(self, names):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(repository.FileRepository, "delete_names", interrupted)
        one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes"]), 130,
                       f"interrupted before backup {older} was deleted: it is whole")
    assert _ids(runner, env) == [older, newer]


def test_an_interrupt_while_deleting_says_what_is_left(two, runner, monkeypatch):
    """Breaker 56 F5: a CI cancel (SIGTERM) ended the command with exit 143 and no word; an
    interrupt now ends with exit 130 and says the backup is left incomplete, which prune removes."""
    env, older, newer, repo = two
    from opsctl.backup import repository

    real, calls = repository.FileRepository.delete_names, []

    def interrupted(self, names):  # the manifest goes, then the interrupt comes
        calls.append(names)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(self, names)

    with monkeypatch.context() as m:
        m.setattr(repository.FileRepository, "delete_names", interrupted)
        line = one_line_error(runner.invoke(app, ["backup", "delete", older, "--env", env, "--yes"]), 130,
                              f"interrupted while deleting backup {older}", "backup prune")
    assert "incomplete" in line
    rows = {b["id"]: b["status"] for b in ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]}
    assert rows[newer] == "complete" and rows.get(older) in ("incomplete", None), rows


@pytest.mark.parametrize("when", ["before its objects are read", "after they were read"])
def test_a_backup_deleted_while_it_is_verified_is_never_called_damaged(two, runner, monkeypatch, when):
    """Breaker 56 F3: a verify racing a delete said "the backup is damaged; it is marked
    damaged", and its verdict, written into the emptied folder, made that folder "not opsctl's"
    for list, create, prune and delete from then on."""
    env, older, newer, repo = two
    from opsctl.backup import retention
    from opsctl.backup import verify as verify_mod

    real = verify_mod.check_objects

    def racing(repository, manifest, key, report):
        if when.startswith("before"):
            retention.remove(repository, manifest.id)
            return real(repository, manifest, key, report)
        found = real(repository, manifest, key, report)
        retention.remove(repository, manifest.id)
        return found

    monkeypatch.setattr(verify_mod, "check_objects", racing)
    result = runner.invoke(app, ["backup", "verify", older, "--env", env, "--json"])
    if when.startswith("before"):
        one_line_error(result, 1, f"backup {older} was deleted while it was verified", "nothing was recorded")
    else:  # the objects it read were whole: the verdict stands, and is not recorded
        doc = ok(result)
        assert doc["ok"] is True and "was deleted while it was verified" in doc["not_recorded"], doc
    assert not (repo / older).exists()
    doc = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))
    assert [b["id"] for b in doc["backups"]] == [newer] and doc["foreign"] == [], doc


def test_a_start_record_whose_pid_another_process_took_is_no_running_backup(two, runner):
    """Breaker 56 F6: an interrupted backup whose start record named a pid another live process
    had since taken stayed `running` for good: delete refused it, prune passed it over."""
    env, older, newer, repo = two
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    reused, live = f"{stamp}-0003", f"{stamp}-0004"
    _start_record(repo, reused, os.getpid(), start="an-earlier-boot:12345")  # this pid, another process's record
    _start_record(repo, live, os.getpid(), start=pidstart.identity(os.getpid()))
    rows = {b["id"]: b["status"] for b in ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]}
    assert rows[reused] == "incomplete" and rows[live] == "running", rows
    result = runner.invoke(app, ["backup", "delete", reused, "--env", env, "--yes"])
    assert result.exit_code == 0, result.output
    assert not (repo / reused).exists() and (repo / live).is_dir()
