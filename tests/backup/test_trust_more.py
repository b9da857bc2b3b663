"""More of the repository's trust boundary (issue 18, second review): no link inside a
file:// repository is ever followed; deletions remove exact names or a backup's own folder;
a manifest is trusted only when it verifies under the key and binds its folder's id, also
when the catalog index already holds the id; unauthenticated manifests are `untrusted`
(never pruned), `damaged` is for authenticated backups that failed verify; an encrypted
repository can't be flipped to unencrypted; verdicts count only with a MAC binding the id;
ids are ASCII digits only; a database without user tables can be backed up."""

from __future__ import annotations

import json
import os
import shutil

import psycopg
import pytest

from backup_support import KEY, one_line_error, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow


def _ok(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def filerepo(seeded, runner, tmp_path, monkeypatch):
    """(env name, repository folder, [two backup ids]) of an encrypted file:// repository."""
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    ids = [_ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--label", f"n{i}",
                                   "--json"]))["id"] for i in range(2)]
    return env, tmp_path / "repo", ids


def _listed(runner, env) -> dict:
    return _ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))


# F1 ---------------------------------------------------------------------------------------

def test_a_link_planted_as_a_partial_file_is_never_written_through(filerepo, runner, tmp_path):
    env, repo, ids = filerepo
    victim = tmp_path / "bashrc"
    victim.write_text("the operator's shell settings\n")
    for name in ("opsctl-catalog.json.partial", "opsctl-repository.json.partial"):
        (repo / name).symlink_to(victim)
    (repo / ids[0] / "verified.json.partial").symlink_to(victim)
    made = _ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))
    assert made["id"]
    _ok(runner.invoke(app, ["backup", "verify", ids[0], "--env", env, "--json"]))
    assert victim.read_text() == "the operator's shell settings\n"
    assert not (repo / "opsctl-catalog.json").is_symlink()


def test_a_linked_backup_folder_is_foreign_and_never_written_or_deleted(filerepo, runner, tmp_path):
    env, repo, ids = filerepo
    outside = tmp_path / "outside"
    shutil.move(str(repo / ids[0]), outside)  # the genuine folder's content, now outside the repository
    (outside / "unrelated.txt").write_text("not opsctl's")
    (repo / ids[0]).symlink_to(outside, target_is_directory=True)
    before = sorted(p.name for p in outside.iterdir())
    listed = _listed(runner, env)
    assert ids[0] in listed["foreign"] and ids[0] not in {b["id"] for b in listed["backups"]}
    verified = runner.invoke(app, ["backup", "verify", ids[0], "--env", env, "--json"])
    assert verified.exit_code != 0 and "Traceback" not in verified.output
    pruned = _ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert ids[0] in pruned["foreign"]
    _ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (repo / ids[0]).is_symlink()


def test_a_link_inside_a_backup_folder_is_not_followed(filerepo, runner, tmp_path):
    env, repo, ids = filerepo
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    (repo / ids[1] / "verified.json").symlink_to(victim)
    _ok(runner.invoke(app, ["backup", "verify", ids[1], "--env", env, "--json"]))
    assert victim.read_text() == "keep me" and not (repo / ids[1] / "verified.json").is_symlink()
    (repo / ids[0] / "manifest.json").unlink()
    (repo / ids[0] / "manifest.json").symlink_to(victim)
    row = next(b for b in _listed(runner, env)["backups"] if b["id"] == ids[0])
    assert row["status"] == "untrusted", row
    assert victim.read_text() == "keep me"


def test_deleting_an_object_never_deletes_names_that_start_like_it(filerepo, runner, backup_envs):
    env, repo, ids = filerepo
    (repo / ids[1] / "verify-failed.json.notes").write_text("an operator's notes")
    (repo / ids[1] / "verified.json-old").write_text("kept")
    _ok(runner.invoke(app, ["backup", "verify", ids[1], "--env", env, "--json"]))
    assert (repo / ids[1] / "verify-failed.json.notes").read_text() == "an operator's notes"
    from opsctl.backup.repository import FileRepository

    r = FileRepository(repo, f"file://{repo}")
    r.delete_prefix(f"{ids[1]}/verified.json")
    assert (repo / ids[1] / "verified.json-old").read_text() == "kept"
    assert not (repo / ids[1] / "verified.json").exists()


def test_s3_deletes_exact_names_and_whole_folders_only(s3):
    from opsctl.backup.repository import S3Repository

    bucket = s3.make_bucket("bk-exact")
    repo = S3Repository(s3.client(), bucket, "p", f"s3://{bucket}/p")
    for name in ("a/verified.json", "a/verified.json-old", "ab/x", "a/sub/y"):
        repo.put_bytes(name, b"x")
    repo.delete_prefix("a/verified.json")
    assert set(repo.names()) == {"a/verified.json-old", "ab/x", "a/sub/y"}
    repo.delete_prefix("a/")
    assert set(repo.names()) == {"ab/x"}


# F6 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["٢٠٢٦٠١٠١T000000Z-abcd", "20260101T00000\uff10Z-abcd", "20260101T000000Z-abcd\n"])
def test_ids_with_non_ascii_digits_are_refused(bad, tmp_path):
    from opsctl.backup import record
    from opsctl.errors import UsageError

    with pytest.raises(UsageError, match="is not a backup id"):
        record.check_id(bad)
    ours, foreign = record.layout({f"{bad}/manifest.json": 1})
    assert ours == {} and foreign


# F7 ---------------------------------------------------------------------------------------

def test_a_database_without_user_tables_is_backed_up(seeded, runner, tmp_path, monkeypatch):
    with psycopg.connect(seeded.db_url, autocommit=True) as conn:
        conn.execute("drop database if exists bk_no_tables with (force)")
        conn.execute("create database bk_no_tables")
    try:
        url = seeded.db_url.rsplit("/", 1)[0] + "/bk_no_tables"
        env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}", database_url=url)
        monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
        made = _ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
        _ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", env, "--restore-test", "--json"]))
    finally:
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            conn.execute("drop database if exists bk_no_tables with (force)")
