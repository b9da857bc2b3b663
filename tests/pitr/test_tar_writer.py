"""The base backup extractor (opsctl.pitr.base.TarWriter): what pg_basebackup writes is
restored byte for byte; anything that could leave the data directory, a link, a damaged
header or a cut stream is refused."""

from __future__ import annotations

import io
import tarfile

import pytest

from opsctl.errors import OperationFailed
from opsctl.pitr.base import TarWriter


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc"
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def _feed(target, data: bytes, step: int, **kw) -> TarWriter:
    w = TarWriter(target, "base backup X", **kw)
    try:
        for i in range(0, len(data), step):
            w.feed(data[i:i + step])
        w.finish()
    finally:
        w.close()
    return w


@pytest.mark.parametrize("step", [1, 511, 4096, 1 << 20])
def test_files_and_folders_come_back_byte_for_byte_whatever_the_block_size(tmp_path, step):
    big = bytes(range(256)) * 4099  # not a multiple of 512: padding is skipped right
    data = _tar([("base", tarfile.DIRTYPE, b""), ("base/1/1259", tarfile.REGTYPE, big),
                 ("PG_VERSION", tarfile.REGTYPE, b"18\n"), ("empty", tarfile.REGTYPE, b""),
                 ("pg_wal", tarfile.DIRTYPE, b"")])
    w = _feed(tmp_path / "d", data, step)
    assert w.files == 3
    assert (tmp_path / "d" / "base" / "1" / "1259").read_bytes() == big
    assert (tmp_path / "d" / "PG_VERSION").read_bytes() == b"18\n"
    assert (tmp_path / "d" / "empty").read_bytes() == b""
    assert (tmp_path / "d" / "pg_wal").is_dir()
    assert (tmp_path / "d" / "PG_VERSION").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name, kind, why", [
    ("../escape", tarfile.REGTYPE, "outside"),
    ("base/../../escape", tarfile.REGTYPE, "outside"),
    ("/etc/escape", tarfile.REGTYPE, "outside"),
    ("pg_tblspc/16400", tarfile.SYMTYPE, "link"),
    ("fifo", tarfile.FIFOTYPE, "special"),
])
def test_a_member_that_could_leave_the_folder_or_is_no_file_is_refused(tmp_path, name, kind, why):
    data = _tar([(name, kind, b"x")])
    with pytest.raises(OperationFailed, match=why):
        _feed(tmp_path / "d", data, 4096)
    assert not (tmp_path / "escape").exists()
    assert not list(tmp_path.glob("**/escape"))


def test_a_damaged_header_and_a_cut_stream_are_refused(tmp_path):
    data = bytearray(_tar([("PG_VERSION", tarfile.REGTYPE, b"18\n" * 400)]))
    with pytest.raises(OperationFailed, match="cut short"):
        _feed(tmp_path / "a", bytes(data[:700]), 4096)
    data[10] ^= 1  # a flipped bit in the name: the header checksum no longer matches
    with pytest.raises(OperationFailed, match="checksum"):
        _feed(tmp_path / "b", bytes(data), 4096)



def test_a_name_that_is_both_a_file_and_a_folder_is_refused_in_one_line(tmp_path):
    data = _tar([("PG_VERSION", tarfile.REGTYPE, b"18\n"), ("PG_VERSION/inner", tarfile.REGTYPE, b"x")])
    with pytest.raises(OperationFailed, match="can't be written"):
        _feed(tmp_path / "d", data, 4096)


def _incremental(blocks: list[int], truncation: int, fill: int) -> bytes:
    """An INCREMENTAL file as PostgreSQL writes it: magic, count, truncation length, block
    numbers (native order), padded to a block when it holds any, then the blocks."""
    import struct

    head = struct.pack(f"={3 + len(blocks)}I", 0xD3AE1F0D, len(blocks), truncation, *blocks)
    if blocks:
        head += b"\0" * ((-len(head)) % 8192)
    return head + bytes([fill]) * (8192 * len(blocks))


@pytest.mark.parametrize("step", [1000, 1 << 20])
def test_a_full_base_backup_leaves_out_the_blocks_a_later_incremental_holds(tmp_path, step):
    """Issue 22 (session 9): a chain's incrementals name the blocks they hold (their INCREMENTAL
    headers); the full base backup's copy of those blocks, which pg_combinebackup never reads,
    is left as a hole, every other byte written and each file at its full size."""
    blocks: dict = {}
    inc = _tar([("base/1/INCREMENTAL.16385", tarfile.REGTYPE, _incremental([1, 4], 5, 9)),
                ("base/1/INCREMENTAL.16386", tarfile.REGTYPE, _incremental([], 2, 0)),
                ("PG_VERSION", tarfile.REGTYPE, b"18\n")])
    w = _feed(tmp_path / "inc", inc, step, blocks=blocks)
    assert w.incremental_sizes_ok and blocks == {"base/1/16385": {1, 4}, "base/1/16386": set()}
    assert (tmp_path / "inc" / "base" / "1" / "INCREMENTAL.16385").read_bytes() == _incremental([1, 4], 5, 9)

    rel = b"".join(bytes([b + 1]) * 8192 for b in range(5))
    other = bytes(range(256)) * 64
    full = _tar([("base/1/16385", tarfile.REGTYPE, rel), ("base/1/16386", tarfile.REGTYPE, other)])
    _feed(tmp_path / "full", full, step, skip=blocks)
    got = (tmp_path / "full" / "base" / "1" / "16385").read_bytes()
    hole = b"\0" * 8192
    assert len(got) == len(rel)  # the last block was a hole: the size is still whole
    assert [got[b * 8192:(b + 1) * 8192] == (hole if b in (1, 4) else rel[b * 8192:(b + 1) * 8192])
            for b in range(5)] == [True] * 5
    assert (tmp_path / "full" / "base" / "1" / "16386").read_bytes() == other


def test_an_incremental_whose_size_does_not_match_its_header_lets_no_block_be_left_out(tmp_path):
    cut = _incremental([0, 2], 3, 5)[:-8192]  # one block short of what its header names
    w = _feed(tmp_path / "inc", _tar([("base/1/INCREMENTAL.16390", tarfile.REGTYPE, cut)]), 4096, blocks={})
    assert not w.incremental_sizes_ok
    assert (tmp_path / "inc" / "base" / "1" / "INCREMENTAL.16390").read_bytes() == cut
