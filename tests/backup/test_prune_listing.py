"""Prune deletes each removed backup by the names its one scan listed (issue 27): no listing
per removed backup on either repository kind (on moto, and other S3 servers, a prefix
listing costs what the whole bucket holds, so one per backup made prune O(N) per removal),
while the trust rule holds: only the exact names listed under an authenticated backup's
folder are deleted, foreign folders and kept backups are untouched, nothing is left of a
removed backup."""
from __future__ import annotations

import datetime as dt

import pytest

from backup_support import keyed_file_repository, keyed_s3_repository
from opsctl.backup import catalog, index, record, retention
from opsctl.backup import manifest as mf

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def repo(tmp_path):
    return keyed_file_repository(tmp_path / "repo")


@pytest.fixture
def s3repo(s3):
    return keyed_s3_repository(s3, "b27prune")


def _create(r, when) -> str:
    """A complete backup with a data object in a nested folder, indexed as create leaves it."""
    bid = catalog.new_id(when)
    r.put_bytes(f"{bid}/{mf.IN_PROGRESS}", catalog.marker(when))
    r.put_bytes(f"{bid}/postgres/app.dump", b"data")
    m = mf.Manifest(id=bid, environment="e", platform="local", created_at=when, finished_at=when,
                    tool_version="t", key_id=r.key.id, encryption="aes-256-gcm-chunked-hkdf")
    m.sign(r.key)
    r.put_bytes(f"{bid}/{mf.NAME}", m.to_bytes())
    r.put_bytes(f"{bid}/{mf.IN_PROGRESS}", catalog.marker(when, done=True))
    index.update(r, r.key, True, {bid: catalog.indexed(r, bid, m)})
    return bid


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_prune_lists_once_and_deletes_only_the_listed_names(kind, request, monkeypatch):
    repo = request.getfixturevalue("repo" if kind == "file" else "s3repo")
    ids = [_create(repo, NOW - dt.timedelta(hours=20 - i)) for i in range(12)]
    old = catalog.new_id(NOW - dt.timedelta(days=9))  # id-shaped but not opsctl's: foreign
    repo.put_bytes(f"{old}/notes.txt", b"someone else's")
    repo.put_bytes("other-tool/state", b"x")

    cls = type(repo)
    listings: list[str] = []
    real_names, real_delete = cls.names, cls.delete_prefix

    def names(self, prefix=""):
        listings.append(prefix)
        return real_names(self, prefix)

    def delete_prefix(self, prefix):
        if prefix.endswith("/"):
            listings.append(f"delete_prefix {prefix}")  # a whole folder: a listing of it
        return real_delete(self, prefix)

    monkeypatch.setattr(cls, "names", names)
    monkeypatch.setattr(cls, "delete_prefix", delete_prefix)
    result = retention.prune(repo, keep_last=2)
    monkeypatch.undo()

    assert result.removed == ids[:10] and result.kept == ids[10:]
    assert listings == [""], f"prune listed more than once (its scan): {listings}"
    left = repo.names()
    assert not [n for n in left if n.partition("/")[0] in ids[:10]], "a removed backup left objects"
    for bid in ids[10:]:
        assert {f"{bid}/{mf.NAME}", f"{bid}/postgres/app.dump", f"{bid}/{mf.IN_PROGRESS}"} <= set(left)
    assert left[f"{old}/notes.txt"] and left["other-tool/state"], "a foreign folder was touched"
    assert sorted(result.foreign) == sorted([f"{old}/", "other-tool/"])
    if kind == "file":
        assert sorted(p.name for p in repo.root.iterdir() if p.is_dir()) == sorted([old, "other-tool", *ids[10:]])
    assert set(i for i in index.read(repo, repo.key, True) if record.ID.fullmatch(i)) == set(ids[10:])
    assert catalog.newest_complete(repo)[0] == ids[-1]
