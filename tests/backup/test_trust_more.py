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

from backup_support import KEY, keyed_file_repo, ok, one_line_error, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture
def filerepo(seeded, runner, tmp_path, monkeypatch):
    """(env name, repository folder, [two backup ids]) of an encrypted file:// repository."""
    return keyed_file_repo(runner, seeded, tmp_path, monkeypatch, 2)


def _listed(runner, env) -> dict:
    return ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))


# F1 ---------------------------------------------------------------------------------------

def test_a_link_planted_as_a_partial_file_is_never_written_through(filerepo, runner, tmp_path):
    env, repo, ids = filerepo
    victim = tmp_path / "bashrc"
    victim.write_text("the operator's shell settings\n")
    for name in ("opsctl-catalog.json.partial", "opsctl-repository.json.partial"):
        (repo / name).symlink_to(victim)
    (repo / ids[0] / "verified.json.partial").symlink_to(victim)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))
    assert made["id"]
    ok(runner.invoke(app, ["backup", "verify", ids[0], "--env", env, "--json"]))
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
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert ids[0] in pruned["foreign"]
    ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (repo / ids[0]).is_symlink()


def test_a_link_inside_a_backup_folder_is_not_followed(filerepo, runner, tmp_path):
    env, repo, ids = filerepo
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    (repo / ids[1] / "verified.json").symlink_to(victim)
    ok(runner.invoke(app, ["backup", "verify", ids[1], "--env", env, "--json"]))
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
    ok(runner.invoke(app, ["backup", "verify", ids[1], "--env", env, "--json"]))
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
        made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
        ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", env, "--restore-test", "--json"]))
    finally:
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            conn.execute("drop database if exists bk_no_tables with (force)")


# F2, F3, F5 -------------------------------------------------------------------------------

def _repo(path):
    from opsctl.backup.keys import parse
    from opsctl.backup.repository import FileRepository

    repo = FileRepository(path, f"file://{path}")
    repo.key = parse(KEY, "test")
    return repo


def _forge(path, backup_id, **changes) -> None:
    """Rewrite a manifest with `changes`, its MAC recomputed as a plain SHA-256 (no key)."""
    from opsctl.backup import manifest as mf

    m = mf.parse((path / backup_id / "manifest.json").read_bytes(), backup_id)
    for k, v in changes.items():
        setattr(m, k, v)
    mac = m.mac
    m.sign(None)
    assert m.mac != mac
    (path / backup_id / "manifest.json").write_bytes(m.to_bytes())


def test_a_manifest_overwritten_in_an_indexed_backup_is_untrusted(filerepo, runner):
    from opsctl.backup import catalog

    env, path, (old, new) = filerepo
    assert {old, new} <= set(json.loads((path / "opsctl-catalog.json").read_text())["backups"])
    _forge(path, new, label="forged")
    rows = {b["id"]: b for b in _listed(runner, env)["backups"]}
    assert rows[new]["status"] == "untrusted" and rows[old]["status"] == "complete", rows
    skipped: list[str] = []
    assert catalog.resolve(_repo(path), None, None, True, ["redis"], skipped) == old
    assert skipped == [f"{new} (untrusted)"]
    assert catalog.newest_complete(_repo(path))[0] == old
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert pruned["kept"] == [old] and pruned["removed"] == [] and pruned["untrusted"] == [new]
    assert (path / new / "manifest.json").exists() and (path / old / "manifest.json").exists()


def test_a_genuine_folder_replayed_under_another_id_is_untrusted(filerepo, runner):
    from opsctl.backup import catalog

    env, path, (old, new) = filerepo
    replay = "29991231T000000Z-beef"
    shutil.copytree(path / old, path / replay)
    rows = {b["id"]: b for b in _listed(runner, env)["backups"]}
    assert rows[replay]["status"] == "untrusted" and "is that of backup" in rows[replay]["note"], rows[replay]
    assert catalog.resolve(_repo(path), None, None, True) == new
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert pruned["kept"] == [new] and replay in pruned["untrusted"] and (path / replay / "manifest.json").exists()


@pytest.mark.parametrize("content", [b'{"tool": "someone else\'s manifest"}', b"not json at all"])
def test_unparseable_manifests_are_untrusted_never_damaged_nor_pruned(filerepo, runner, content):
    env, path, (old, new) = filerepo
    foreign = "20200101T000000Z-0f0f"
    (path / foreign).mkdir(mode=0o700)
    (path / foreign / "manifest.json").write_bytes(content)
    (path / foreign / "data.bin").write_bytes(b"another tool's data")
    (path / old / "manifest.json").write_bytes((path / old / "manifest.json").read_bytes()[:-40])  # edited
    rows = {b["id"]: b for b in _listed(runner, env)["backups"]}
    assert rows[foreign]["status"] == "untrusted" and rows[old]["status"] == "untrusted", rows
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert pruned["damaged"] == [] and {foreign, old} <= set(pruned["untrusted"]) and pruned["kept"] == [new]
    assert (path / foreign / "data.bin").read_bytes() == b"another tool's data"
    assert (path / old / "manifest.json").exists()


def test_a_verdict_without_a_valid_mac_binding_the_id_is_not_believed(filerepo, runner):
    env, path, (old, new) = filerepo
    ok(runner.invoke(app, ["backup", "verify", new, "--env", env, "--json"]))
    real = json.loads((path / new / "verified.json").read_text())
    for doc in ({}, {"id": old, "ok": True}, {**real, "id": old}):  # empty, no MAC, another backup's
        (path / old / "verified.json").write_text(json.dumps(doc))
        rows = {b["id"]: b for b in _listed(runner, env)["backups"]}
        assert rows[old]["verified"] is False and rows[new]["verified"] is True, doc
    # a forged failed verdict does not make a good backup damaged either
    (path / new / "verify-failed.json").write_text(json.dumps({"id": new, "ok": False, "reason": "forged"}))
    assert {b["id"]: b for b in _listed(runner, env)["backups"]}[new]["status"] == "complete"
    (path / new / "verify-failed.json").unlink()
    # with the newest verified forged, prune keeps only the newest (the old one is not "newest verified")
    (path / new / "verified.json").unlink()
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert pruned["kept"] == [new] and pruned["removed"] == [old]


# F4 ---------------------------------------------------------------------------------------

def _flip_record(path) -> None:
    """The attack: the record rewritten to unencrypted, its SHA-256 recomputed."""
    from opsctl.backup.record import RepositoryRecord

    rec = RepositoryRecord.model_validate_json((path / "opsctl-repository.json").read_bytes())
    rec.encrypted, rec.key_id = False, None
    rec.seal(None)
    (path / "opsctl-repository.json").write_text(rec.model_dump_json())


def _plaintext(path) -> list[str]:
    return [p.name for p in path.rglob("*.rdb.zst") if not p.read_bytes().startswith(b"OPSCTLB1")]


def test_an_encrypted_repository_cant_be_flipped_to_unencrypted(filerepo, runner):
    env, path, ids = filerepo
    _flip_record(path)
    for argv in (["backup", "create", "--env", env, "--type", "redis"], ["backup", "list", "--env", env],
                 ["restore", "--env", env, "--latest", "--components", "redis", "--yes"]):
        result = runner.invoke(app, argv)
        line = one_line_error(result, (1, 2), "tampering")
        assert "--no-encrypt" not in result.output and "--no-encrypt" not in line
    assert _plaintext(path) == [] and sorted(p.name for p in path.iterdir() if p.is_dir()) == sorted(ids)


def test_a_deleted_record_is_not_reinitialised_unencrypted(filerepo, runner):
    env, path, ids = filerepo
    (path / "opsctl-repository.json").unlink()
    one_line_error(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--no-encrypt"]), 2,
                   "tampering", "sealed with key id")
    assert not (path / "opsctl-repository.json").exists() and _plaintext(path) == []
    # with the key, the location is adopted again as the encrypted repository it was
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))
    listed = _listed(runner, env)
    assert listed["encrypted"] is True and {*ids, made["id"]} <= {b["id"] for b in listed["backups"]}


def test_a_linked_index_or_start_record_is_replaced_never_followed(filerepo, runner, tmp_path):
    env, path, ids = filerepo
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (path / "opsctl-catalog.json").unlink()
    (path / "opsctl-catalog.json").symlink_to(victim)
    (path / ids[0] / "in-progress.json").unlink()
    (path / ids[0] / "in-progress.json").symlink_to(victim)
    rows = {b["id"]: b for b in _listed(runner, env)["backups"]}
    assert rows[ids[1]]["status"] == "complete"
    ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))
    assert victim.read_text() == "keep me" and not (path / "opsctl-catalog.json").is_symlink()


def test_s3_a_manifest_overwritten_in_an_indexed_backup_is_untrusted(backup_envs, seeded, runner, monkeypatch):
    from opsctl.backup import catalog
    from opsctl.backup import manifest as mf
    from opsctl.backup.keys import parse

    benv = backup_envs["s3"]
    monkeypatch.setenv("OPSCTL_ROOT", str(benv.platform.root))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    monkeypatch.setenv("CI", "true")
    bid = ok(runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "redis", "--json"]))["id"]
    repo = benv.repo()
    repo.key = parse(KEY, "test")
    original = repo.get_bytes(f"{bid}/{mf.NAME}")
    try:
        assert next(e for e in catalog.entries(repo) if e.id == bid).complete  # indexed, with its stamps
        m = mf.parse(original, bid)
        m.label = "forged"
        m.sign(None)
        repo.put_bytes(f"{bid}/{mf.NAME}", m.to_bytes())
        rows = {b["id"]: b for b in _listed(runner, benv.name)["backups"]}
        assert rows[bid]["status"] == "untrusted", rows[bid]
        newest = catalog.newest_complete(repo)
        assert newest is None or newest[0] != bid
    finally:
        repo.put_bytes(f"{bid}/{mf.NAME}", original)


def test_s3_foreign_manifest_is_untrusted_and_a_bare_verdict_is_not_believed(backup_envs, seeded, runner, monkeypatch):
    benv = backup_envs["s3"]
    monkeypatch.setenv("OPSCTL_ROOT", str(benv.platform.root))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    monkeypatch.setenv("CI", "true")
    bid = ok(runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "redis", "--json"]))["id"]
    repo = benv.repo()
    foreign = "20200101T000000Z-0f0f"
    repo.put_bytes(f"{foreign}/manifest.json", b'{"tool": "someone else\'s"}')
    repo.put_bytes(f"{bid}/verified.json", b"{}")
    try:
        rows = {b["id"]: b for b in _listed(runner, benv.name)["backups"]}
        assert rows[foreign]["status"] == "untrusted" and rows[bid]["verified"] is False, (rows[foreign], rows[bid])
        pruned = ok(runner.invoke(app, ["backup", "prune", "--env", benv.name, "--keep-last", "1", "--dry-run",
                                         "--json"]))
        assert foreign in pruned["untrusted"] and foreign not in pruned["damaged"] + pruned["removed"]
    finally:
        repo.delete_prefix(f"{foreign}/")
        repo.delete_prefix(f"{bid}/verified.json")
