"""A file:// repository whose folder is not a folder (breaker 25 F13): listed as empty, it read as
"no backups yet" and, for point-in-time recovery, "no base backup yet". It can't be read; said so."""

from __future__ import annotations

import pytest

from opsctl.backup.repository import FileRepository
from opsctl.errors import UsageError


def test_a_missing_folder_is_an_empty_repository(tmp_path):
    assert FileRepository(tmp_path / "repo", "file:///x").names() == {}


@pytest.mark.parametrize("make", [
    lambda p: p.write_text("junk\n"),                  # a file where the folder belongs
    lambda p: p.symlink_to(p.parent / "gone"),         # a link to nothing
], ids=["file", "dangling-link"])
def test_a_repository_folder_that_is_not_a_folder_is_refused_not_empty(tmp_path, make):
    make(tmp_path / "repo")
    repo = FileRepository(tmp_path / "repo", f"file://{tmp_path / 'repo'}")
    for listing in (lambda: repo.names(), lambda: repo.names("pitr/1/base/"), repo.folders):
        with pytest.raises(UsageError, match=r"is not a folder; move it aside or point backup.repository"):
            listing()


def test_a_link_to_a_folder_is_read_through(tmp_path):
    (tmp_path / "real" / "a").mkdir(parents=True)
    (tmp_path / "real" / "a" / "b").write_bytes(b"x")
    (tmp_path / "repo").symlink_to(tmp_path / "real")
    assert FileRepository(tmp_path / "repo", "file:///x").names() == {"a/b": 1}
