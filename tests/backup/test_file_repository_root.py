"""A file:// repository whose folder is not a folder (breaker 25 F13): listed as empty, it read as
"no backups yet" and, for point-in-time recovery, "no base backup yet". It can't be read; said so."""

from __future__ import annotations

import pytest

from opsctl.backup.repository import FileRepository
from opsctl.errors import UsageError


def test_a_missing_folder_is_an_empty_repository(tmp_path):
    assert FileRepository(tmp_path / "repo", "file:///x").names() == {}


def _loop(p):
    p.symlink_to(p.parent / "loop")
    (p.parent / "loop").symlink_to(p)


@pytest.mark.parametrize("make, where, said", [
    (lambda p: p.write_text("junk\n"), "repo", "is not a folder"),          # a file where the folder belongs
    (lambda p: p.symlink_to(p.parent / "gone"), "repo", "is not a folder"),  # a link to nothing
    (_loop, "repo", "can't be read"),                                         # a loop of links (breaker 27 F8)
    (lambda p: p.write_text("junk\n"), "repo/inner", "a file is where one of its parent folders belongs"),
], ids=["file", "dangling-link", "link-loop", "file-above"])
def test_a_repository_folder_that_is_not_a_folder_is_refused_not_empty(tmp_path, make, where, said):
    make(tmp_path / "repo")
    root = tmp_path / where
    repo = FileRepository(root, f"file://{root}")
    reads = (lambda: repo.names(), lambda: repo.names("pitr/1/base/"), repo.folders,
             lambda: repo.get_bytes("repository.json"),  # backup list reads the record first (breaker 27 F8)
             lambda: repo.put_bytes("x/y", b"z"))
    for read in reads:
        with pytest.raises(UsageError, match=rf"{said}.*; move it aside or point backup.repository"):
            read()


def test_a_link_to_a_folder_is_read_through(tmp_path):
    (tmp_path / "real" / "a").mkdir(parents=True)
    (tmp_path / "real" / "a" / "b").write_bytes(b"x")
    (tmp_path / "repo").symlink_to(tmp_path / "real")
    assert FileRepository(tmp_path / "repo", "file:///x").names() == {"a/b": 1}


def test_reading_a_folder_where_an_object_belongs_leaves_no_descriptor_open(tmp_path):
    """An object's name that is a folder (verify-chain's record, say) is refused as before (an
    OSError its readers take as unreadable), and the descriptor opened to look at it is closed:
    os.fdopen refuses a folder and leaves the descriptor it was given open, and each such read
    kept one (found with the fd count of a pytest worker, CI stop 51)."""
    import os

    root = tmp_path / "repo"
    (root / "pitr" / "verified.json").mkdir(parents=True)
    repo = FileRepository(root, f"file://{root}")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(IsADirectoryError):
            repo.get_bytes("pitr/verified.json")
    assert len(os.listdir("/proc/self/fd")) == before
