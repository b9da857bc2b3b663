"""The posix repository's O_DIRECT writer: every size comes back byte for byte, and a
filesystem that refuses O_DIRECT (at open or at the first write) still gets the whole file."""

from __future__ import annotations

import errno
import os

import pytest

from opsctl.backup import direct_io
from opsctl.backup.direct_io import ALIGN, SPAN, DirectFile
from opsctl.backup.repository import FileRepository

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, SPAN - 1, SPAN, SPAN + 1, 3 * SPAN + 12345]


@pytest.mark.parametrize("size", SIZES)
def test_every_size_is_written_exactly(tmp_path, size):
    data = os.urandom(size)
    out = DirectFile(tmp_path / "f")
    for start in range(0, size, 777_777):  # odd-sized chunks cross every span boundary
        out.write(data[start:start + 777_777])
    out.close()
    assert (tmp_path / "f").read_bytes() == data


def test_memoryview_chunks_are_accepted(tmp_path):
    data = bytearray(os.urandom(SPAN + 10))
    out = DirectFile(tmp_path / "f")
    with memoryview(data) as view:
        out.write(view[:5])
        out.write(view[5:])
    out.close()
    assert (tmp_path / "f").read_bytes() == data


def test_refused_at_open_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, mode=0o777):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(direct_io.os, "open", no_direct)
    data = os.urandom(SPAN + 3)
    out = DirectFile(tmp_path / "f")
    assert not out.direct
    out.write(data)
    out.close()
    assert (tmp_path / "f").read_bytes() == data


def test_refused_at_first_write_falls_back_without_losing_bytes(tmp_path, monkeypatch):
    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("this platform has no O_DIRECT")
    real_write = os.write
    refused = []

    def einval_once(fd, data):
        if not refused:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct_io.os, "write", einval_once)
    data = os.urandom(2 * SPAN + 99)
    out = DirectFile(tmp_path / "f")
    out.write(data)
    out.close()
    assert refused == [SPAN]
    assert not out.direct
    assert (tmp_path / "f").read_bytes() == data


def test_a_failed_stream_leaves_no_file_and_no_partial(tmp_path):
    repo = FileRepository(tmp_path, f"file://{tmp_path}")

    def broken():
        yield os.urandom(SPAN + 1)
        raise OSError("source broke")

    with pytest.raises(OSError, match="source broke"):
        repo.put("b1/db.dump.zst", broken())
    assert repo.names() == {}
    assert repo.open_uploads() == []
    assert list(tmp_path.rglob("*.partial")) == []
