"""The catalog index (issue 27): consistent with the manifests through interrupted creates,
interrupted prunes and a deleted index; a tampered index is ignored in favour of the
manifests; the newest complete backup is found without reading every manifest."""

from __future__ import annotations

import json

import pytest

from backup_support import KEY, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow


def _ok(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def three(seeded, runner, tmp_path, monkeypatch):
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    ids = [_ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--label", f"n{i}",
                                   "--json"]))["id"] for i in range(3)]
    return env, tmp_path / "repo", ids


def _index(repo_path) -> dict:
    return json.loads((repo_path / "opsctl-catalog.json").read_text())["backups"]


def _listed(runner, env) -> dict:
    return {b["id"]: b for b in _ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]}


def test_index_follows_creates_prunes_and_a_deleted_index(three, runner):
    env, repo_path, ids = three
    assert set(_index(repo_path)) == set(ids)  # every create added itself
    # a create interrupted after its manifest, before the index: listed, and indexed again
    from opsctl.backup import index
    from opsctl.backup.keys import parse
    from opsctl.backup.repository import FileRepository

    repo = FileRepository(repo_path, f"file://{repo_path}")
    key = parse(KEY, "test")
    index.write(repo, {i: s for i, s in _index(repo_path).items() if i != ids[1]}, key, True)
    assert set(_listed(runner, env)) == set(ids) and set(_index(repo_path)) == set(ids)
    # a create interrupted before its manifest: incomplete, never indexed, cleaned by the next create
    (repo_path / "20200101T000000Z-0bad").mkdir(mode=0o700)
    (repo_path / "20200101T000000Z-0bad" / "in-progress.json").write_text(json.dumps({"deleting": True}))
    assert _listed(runner, env)["20200101T000000Z-0bad"]["status"] == "incomplete"
    assert "20200101T000000Z-0bad" not in _index(repo_path)
    # a prune interrupted after deleting a backup, before the index: the id drops out
    import shutil

    shutil.rmtree(repo_path / ids[0])
    assert ids[0] in _index(repo_path)
    assert set(_listed(runner, env)) == {*ids[1:], "20200101T000000Z-0bad"}
    assert set(_index(repo_path)) == set(ids[1:])
    # a prune: the index loses exactly what was removed
    pruned = _ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert pruned["removed"] == [ids[1]] and set(_index(repo_path)) == {ids[2]}
    # a deleted index is rebuilt from the manifests
    (repo_path / "opsctl-catalog.json").unlink()
    assert set(_listed(runner, env)) == {ids[2]} and set(_index(repo_path)) == {ids[2]}


def test_a_tampered_index_is_ignored(three, runner):
    env, repo_path, ids = three
    doc = json.loads((repo_path / "opsctl-catalog.json").read_text())
    doc["backups"][ids[0]]["label"] = "forged"
    doc["backups"]["20991231T000000Z-beef"] = dict(doc["backups"][ids[0]])
    (repo_path / "opsctl-catalog.json").write_text(json.dumps(doc))
    listed = _listed(runner, env)
    assert set(listed) == set(ids) and listed[ids[0]]["label"] == "n0"
    assert _index(repo_path)[ids[0]]["label"] == "n0"  # rewritten from the manifests, sealed again
    done = _ok(runner.invoke(app, ["restore", "--env", env, "--latest", "--components", "redis", "--yes", "--json"]))
    assert done["backup_id"] == ids[2]


def test_newest_backup_without_reading_every_manifest(three, monkeypatch):
    env, repo_path, ids = three
    from opsctl.backup import catalog
    from opsctl.backup.repository import FileRepository

    repo = FileRepository(repo_path, f"file://{repo_path}")
    reads: list[str] = []
    real_get = FileRepository.get

    def counting(self, name):
        reads.append(name)
        return real_get(self, name)

    monkeypatch.setattr(FileRepository, "get", counting)
    newest = catalog.newest_complete(repo)
    assert newest[0] == ids[2]
    assert not [r for r in reads if r.endswith("manifest.json")], reads  # the index answered
    (repo_path / "opsctl-catalog.json").unlink()
    reads.clear()
    assert catalog.newest_complete(repo)[0] == ids[2]  # without an index: the manifests, then rebuilt
    assert len([r for r in reads if r.endswith("manifest.json")]) == 3
