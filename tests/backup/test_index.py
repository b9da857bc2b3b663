"""The catalog index (issue 27): consistent with the manifests through interrupted creates,
interrupted prunes and a deleted index; a tampered index is ignored in favour of the
manifests; the newest complete backup is found without reading every manifest."""

from __future__ import annotations

import json

import pytest

from backup_support import KEY, index_of, keyed_file_repo, ok, rows
from opsctl.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture
def three(seeded, runner, tmp_path, monkeypatch):
    return keyed_file_repo(runner, seeded, tmp_path, monkeypatch, 3)


def test_index_follows_creates_prunes_and_a_deleted_index(three, runner):
    env, repo_path, ids = three
    assert set(index_of(repo_path)) == set(ids)  # every create added itself
    # a create interrupted after its manifest, before the index: listed, and indexed again
    from opsctl.backup import index
    from opsctl.backup.keys import parse
    from opsctl.backup.repository import FileRepository

    repo = FileRepository(repo_path, f"file://{repo_path}")
    key = parse(KEY, "test")
    index.write(repo, {i: s for i, s in index_of(repo_path).items() if i != ids[1]}, key, True)
    assert set(rows(runner, env)) == set(ids) and set(index_of(repo_path)) == set(ids)
    # a create interrupted before its manifest: incomplete, never indexed, cleaned by the next create
    (repo_path / "20200101T000000Z-0bad").mkdir(mode=0o700)
    (repo_path / "20200101T000000Z-0bad" / "in-progress.json").write_text(json.dumps({"deleting": True}))
    assert rows(runner, env)["20200101T000000Z-0bad"]["status"] == "incomplete"
    assert "20200101T000000Z-0bad" not in index_of(repo_path)
    # a prune interrupted after deleting a backup, before the index: the id drops out
    import shutil

    shutil.rmtree(repo_path / ids[0])
    assert ids[0] in index_of(repo_path)
    assert set(rows(runner, env)) == {*ids[1:], "20200101T000000Z-0bad"}
    assert set(index_of(repo_path)) == set(ids[1:])
    # a prune: the index loses exactly what was removed
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert pruned["removed"] == [ids[1]] and set(index_of(repo_path)) == {ids[2]}
    # a deleted index is rebuilt from the manifests
    (repo_path / "opsctl-catalog.json").unlink()
    assert set(rows(runner, env)) == {ids[2]} and set(index_of(repo_path)) == {ids[2]}


def test_a_tampered_index_is_ignored(three, runner):
    env, repo_path, ids = three
    doc = json.loads((repo_path / "opsctl-catalog.json").read_text())
    doc["backups"][ids[0]]["label"] = "forged"
    doc["backups"]["20991231T000000Z-beef"] = dict(doc["backups"][ids[0]])
    (repo_path / "opsctl-catalog.json").write_text(json.dumps(doc))
    listed = rows(runner, env)
    assert set(listed) == set(ids) and listed[ids[0]]["label"] == "n0"
    assert index_of(repo_path)[ids[0]]["label"] == "n0"  # rewritten from the manifests, sealed again
    done = ok(runner.invoke(app, ["restore", "--env", env, "--latest", "--components", "redis", "--yes", "--json"]))
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


def test_list_pages_the_newest_backups_on_both_repository_kinds(benv, runner):
    ids = [ok(runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "redis", "--label", f"p{i}",
                                  "--json"]))["id"] for i in range(3)]
    page = ok(runner.invoke(app, ["backup", "list", "--env", benv.name, "--limit", "2", "--json"]))
    assert [(b["id"], b["status"], b["label"]) for b in page["backups"]] == [(ids[1], "complete", "p1"),
                                                                           (ids[2], "complete", "p2")]
    assert ok(runner.invoke(app, ["backup", "list", "--env", benv.name, "--limit", "0", "--json"]))["backups"] == []
    # a newest folder that vanished between the two listings, or another tool's, never breaks the page
    repo = benv.repo()
    repo.put_bytes("29991231T000000Z-0bad/notes.txt", b"not a backup")
    try:
        page = ok(runner.invoke(app, ["backup", "list", "--env", benv.name, "--limit", "2", "--json"]))
        assert [b["id"] for b in page["backups"]] == ids[1:] and "29991231T000000Z-0bad/" in page["foreign"]
    finally:
        repo.delete_prefix("29991231T000000Z-0bad/")
    whole = rows(runner, benv.name)
    assert all(whole[i]["label"] == f"p{n}" for n, i in enumerate(ids))
    # at 80 columns a table, one line per backup (breaker 37 G18: always name: value blocks)
    text = runner.invoke(app, ["backup", "list", "--env", benv.name, "--limit", "2"], env={"COLUMNS": "80"}).stdout
    lines = text.splitlines()
    assert any(line.split()[:4] == ["id", "status", "holds", "size"] for line in lines if line.strip()), text
    for i, label in ((ids[1], "p1"), (ids[2], "p2")):
        (row,) = [line for line in lines if i in line]
        assert row.split()[1:3] == ["complete", "redis"] and row.rstrip().endswith(label) and len(row) <= 80, text
