"""The base backup extractor (opsctl.pitr.unpack.TarWriter): what pg_basebackup writes is
restored byte for byte; anything that could leave the data directory, a link, a damaged
header or a cut stream is refused; an incremental's INCREMENTAL files are applied over the
files the chain wrote before, as pg_combinebackup's reconstruct.c does, and one that does not fit
names its base backup damaged."""

from __future__ import annotations

import io
import tarfile

import pytest

from opsctl.errors import OperationFailed
from opsctl.pitr.base import DamagedBase
from opsctl.pitr.unpack import TarWriter, finish_chain


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
def test_an_incremental_writes_its_blocks_over_the_earlier_file_cut_to_its_truncation_length(tmp_path, step):
    """reconstruct.c: a block from the newest backup holding it; below the truncation length
    the earlier file's block; past the earlier file's end (or between the truncation length
    and a later block) zeros; the file as long as its truncation length or its last block."""
    d = tmp_path / "d"
    old = {"16385": 5, "16386": 5, "16387": 2, "16388": 3, "16389": 4}  # relation: blocks before
    _feed(d, _tar([(f"base/1/{r}", tarfile.REGTYPE, _blocks(n, 1)) for r, n in old.items()]), step)
    inc = _tar([("base/1/INCREMENTAL.16385", tarfile.REGTYPE, _incremental([1, 4], 5, 9)),  # in place
                ("base/1/INCREMENTAL.16386", tarfile.REGTYPE, _incremental([1], 3, 9)),     # cut to 3
                ("base/1/INCREMENTAL.16387", tarfile.REGTYPE, _incremental([5], 4, 9)),     # longer
                ("base/1/INCREMENTAL.16388", tarfile.REGTYPE, _incremental([], 1, 0)),      # cut, no block
                ("base/1/16389", tarfile.REGTYPE, b"whole copy"),                          # sent whole
                ("PG_VERSION", tarfile.REGTYPE, b"18\n")])
    w = _feed(d, inc, step, overlay=True, base_id="B2")
    assert w.members == {"base/1/16385", "base/1/16386", "base/1/16387", "base/1/16388", "base/1/16389",
                         "PG_VERSION"}
    assert not list(d.glob("**/INCREMENTAL.*"))
    got = {r: _read_blocks(d / "base" / "1" / r) for r in old if r != "16389"}
    assert got["16385"] == [1, 9, 1, 1, 9]
    assert got["16386"] == [1, 9, 1]
    assert got["16387"] == [1, 1, 0, 0, 0, 9]
    assert got["16388"] == [1]
    assert (d / "base" / "1" / "16389").read_bytes() == b"whole copy"


@pytest.mark.parametrize("member, why", [
    (_incremental([0, 2], 3, 5)[:-8192], "holds 16384 bytes where its header names 2 blocks"),
    (b"\x00" * 8, "less than an incremental file's header"),
    (b"\x0d\x1f\xae\xd4" + b"\0" * 8, "not an incremental file PostgreSQL wrote"),
    (_incremental([0], 200_000, 5), "truncation length 200000"),
    (_incremental([131_072], 3, 5), "names block 131072, past the 131072 blocks"),
    (_incremental([1, 0xFFFF_FFFF], 3, 5), "names block 4294967295"),
])
def test_an_incremental_file_that_does_not_fit_its_header_names_its_base_backup_damaged(tmp_path, member, why):
    d = tmp_path / "d"
    _feed(d, _tar([("base/1/16390", tarfile.REGTYPE, _blocks(3, 1))]), 4096)
    with pytest.raises(DamagedBase, match=why) as caught:
        _feed(d, _tar([("base/1/INCREMENTAL.16390", tarfile.REGTYPE, member)]), 4096, overlay=True, base_id="B2")
    assert caught.value.base_id == "B2"


def test_an_incremental_file_with_no_earlier_version_or_in_a_full_base_backup_is_refused(tmp_path):
    inc = _tar([("base/1/INCREMENTAL.16391", tarfile.REGTYPE, _incremental([0], 1, 5))])
    with pytest.raises(DamagedBase, match="no earlier version"):
        _feed(tmp_path / "a", inc, 4096, overlay=True, base_id="B2")
    assert not (tmp_path / "a" / "base" / "1" / "16391").exists()
    with pytest.raises(DamagedBase, match="full base backup but holds the incremental file"):
        _feed(tmp_path / "b", inc, 4096, base_id="B1")


@pytest.mark.parametrize("call, errno_", [("pwrite", 28), ("open", 24), ("pwrite", 5)])  # ENOSPC, EMFILE, EIO
def test_a_write_the_machine_refuses_fails_the_restore_and_blames_no_backup(tmp_path, monkeypatch, call, errno_):
    """A full disk while blocks are applied is the machine's fault: OperationFailed, never
    DamagedBase (which would send the restore on to an older chain, on the same full disk)."""
    import os

    d = tmp_path / "d"
    _feed(d, _tar([("base/1/16392", tarfile.REGTYPE, _blocks(3, 1))]), 4096)

    def refuse(*args, **kwargs):
        raise OSError(errno_, os.strerror(errno_))

    real_open = os.open
    if call == "open":
        monkeypatch.setattr(os, "open", lambda path, *a, **k: refuse() if "16392" in str(path) else real_open(path, *a, **k))
    else:
        monkeypatch.setattr(os, "pwrite", refuse)
    inc = _tar([("base/1/INCREMENTAL.16392", tarfile.REGTYPE, _incremental([1], 3, 9))])
    with pytest.raises(OperationFailed, match=os.strerror(errno_)) as caught:
        _feed(d, inc, 4096, overlay=True, base_id="B2")
    assert not isinstance(caught.value, DamagedBase)
    # the cause first, not a backup's id (breaker 61 G3: "base backup B2: ..." read as blaming it),
    # and what to do
    said = str(caught.value)
    assert said.startswith(f"writing the restored data directory {d} failed"), said
    assert "while base backup X was applied" in said and "run it again" in said, said


def test_a_full_disk_while_a_plain_file_is_written_names_the_cause_and_what_to_do(tmp_path, monkeypatch):
    import os

    def full(*args, **kwargs):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OperationFailed, match="No space left on device") as caught:
        _feed(tmp_path / "d", _tar([("PG_VERSION", tarfile.REGTYPE, b"18\n")]), 4096, overlay=True, base_id="B2")
    assert not isinstance(caught.value, DamagedBase)
    assert f"free space on the file system of {tmp_path}" in str(caught.value), caught.value


def test_a_backup_label_that_can_not_be_read_back_blames_the_machine_not_the_backup(tmp_path):
    """Breaker 61 G2: any OSError reading the label just written read as "its tar holds no
    backup_label" (DamagedBase): the restore passed over a good backup. Only a missing label is
    the backup's."""
    from types import SimpleNamespace

    from opsctl.pitr import unpack

    member = SimpleNamespace(id="B1")
    with pytest.raises(DamagedBase, match="holds no backup_label"):
        unpack._follows(member, tmp_path / "backup_label", None)
    (tmp_path / "backup_label").mkdir()  # a read that fails with an error of the machine's kind (EISDIR)
    with pytest.raises(OperationFailed, match="backup_label was read back") as caught:
        unpack._follows(member, tmp_path / "backup_label", None)
    assert not isinstance(caught.value, DamagedBase)


def test_the_applied_chain_keeps_what_the_newest_backup_names_and_a_label_recovery_accepts(tmp_path):
    """A relation or a database dropped since the full is gone, as pg_combinebackup leaves it
    out; the newest label without its INCREMENTAL FROM lines; no manifest (--no-manifest)."""
    d = tmp_path / "d"
    _feed(d, _tar([("base/1/16385", tarfile.REGTYPE, b"a"), ("base/1/16400", tarfile.REGTYPE, b"dropped"),
                   ("base/5", tarfile.DIRTYPE, b""), ("base/5/100", tarfile.REGTYPE, b"dropped db"),
                   ("pg_wal", tarfile.DIRTYPE, b""), ("backup_manifest", tarfile.REGTYPE, b"{}")]), 4096)
    label = (b"START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\nCHECKPOINT LOCATION: 0/5000080\n"
             b"INCREMENTAL FROM LSN: 0/2000028\nINCREMENTAL FROM TLI: 1\nSTART TIMELINE: 1\n")
    w = _feed(d, _tar([("base/1", tarfile.DIRTYPE, b""), ("base/1/16385", tarfile.REGTYPE, b"b"),
                       ("pg_wal", tarfile.DIRTYPE, b""), ("backup_label", tarfile.REGTYPE, label),
                       ("backup_manifest", tarfile.REGTYPE, b"{}")]), 4096, overlay=True)
    finish_chain(d, w.members)
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == ["backup_label", "base", "base/1",
                                                                    "base/1/16385", "pg_wal"]
    assert (d / "backup_label").read_bytes() == (b"START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n"
                                                 b"CHECKPOINT LOCATION: 0/5000080\nSTART TIMELINE: 1\n")


def _blocks(n: int, fill: int) -> bytes:
    return bytes([fill]) * (8192 * n)


def _read_blocks(path) -> list[int]:
    """Each 8 KiB block's fill byte (0 for zeros); a block of mixed bytes fails."""
    data = path.read_bytes()
    assert len(data) % 8192 == 0
    out = []
    for i in range(0, len(data), 8192):
        block = data[i:i + 8192]
        assert block == bytes([block[0]]) * 8192
        out.append(block[0])
    return out


def test_files_made_ahead_from_the_manifests_stay_inside_and_what_a_tar_lacks_goes(tmp_path):
    """unpack._Precreate creates the files each member writes whole (unpack._made_ahead, from the
    members' manifests) before the tars reach them, the full's first: never a path TarWriter
    would refuse, never over a file already written. One a member's tar does not hold is no
    earlier version (session 35): an incremental after it names its backup damaged, where it
    would have been applied to an empty file; and the newest member not naming it, it goes
    with the chain's other leftovers (finish_chain)."""
    from opsctl.pitr import unpack

    named = [["PG_VERSION", "base/1/1259", "base/1/5", "dropped/since", "backup_label"],
             ["PG_VERSION", "base/1/INCREMENTAL.1259", "base/1/INCREMENTAL.5", "base/1/7", "backup_label"]]
    replaced = unpack._replaced(named)
    assert replaced == [frozenset({"PG_VERSION", "dropped/since"}), frozenset()]
    assert unpack._made_ahead(named, replaced) == [(0, "base/1/1259"), (0, "base/1/5"), (0, "backup_label"),
                                                   (1, "PG_VERSION"), (1, "base/1/7"), (1, "backup_label")]
    # breaker 63 G1: nothing below a path a manifest names as a file (it would make that a folder)
    assert unpack._made_ahead([["global/pg_control", "backup_label"], ["global/pg_control/x", "PG_VERSION/y",
                                                                       "global/pg_control", "PG_VERSION"]],
                              [frozenset({"global/pg_control"}), frozenset()]) == [
        (0, "backup_label"), (1, "global/pg_control"), (1, "PG_VERSION")]
    d = tmp_path / "d"
    d.mkdir()
    (d / "PG_VERSION").write_bytes(b"18\n")  # the writer was first: left as it is
    ahead = unpack._Precreate(d, [(0, "base/1/1259"), (0, "../escape"), (0, "/abs"), (0, "base/1/5"),
                                  (1, "PG_VERSION"), (1, "base/1/7")])
    ahead._thread.join()  # let it go through the whole list (stop() would cut it short)
    ahead.stop()
    assert [(d / f).read_bytes() for f in ("base/1/1259", "base/1/5", "base/1/7")] == [b"", b"", b""]
    assert (d / "PG_VERSION").read_bytes() == b"18\n" and not (tmp_path / "escape").exists()
    full = _feed(d, _tar([("base/1/1259", tarfile.REGTYPE, b"catalog"),
                          ("backup_label", tarfile.REGTYPE, b"START TIMELINE: 1\n")]), 4096, skip=replaced[0])
    assert (d / "base/1/1259").read_bytes() == b"catalog" and full.written == {"base/1/1259", "backup_label"}
    with pytest.raises(DamagedBase, match="INCREMENTAL.5 has no earlier version"):
        _feed(d, _tar([("base/1/INCREMENTAL.5", tarfile.REGTYPE, _incremental([0], 1, 3))]), 4096,
              overlay=True, base_id="B2", earlier=frozenset(full.written))
    unpack.finish_chain(d, full.members | {"base/1/7", "PG_VERSION"})
    assert not (d / "base/1/5").exists() and (d / "base/1/7").read_bytes() == b""


@pytest.mark.parametrize("step", [1, 511, 4096, 1 << 20])
def test_files_a_newer_member_replaces_are_read_but_not_written(tmp_path, step):
    """Issue 22 (session 35): a member's file the chain takes from a newer member (unpack._replaced)
    is passed over unwritten, its bytes still read past so the members after it come back whole;
    it is named all the same (finish_chain keeps what the newest names)."""
    data = _tar([("base/1/16384", tarfile.REGTYPE, b"old" * 5000), ("base/1/16390", tarfile.REGTYPE, b""),
                 ("base/1/INCREMENTAL.16386", tarfile.REGTYPE, _incremental([0, 2], 3, 7)),
                 ("base/1/16385", tarfile.REGTYPE, b"kept" * 3000), ("backup_label", tarfile.REGTYPE, b"label")])
    # an incremental version below a newer whole one is not applied (it has no earlier version here)
    w = _feed(tmp_path, data, step, overlay=True, skip=frozenset({"base/1/16384", "base/1/16390", "base/1/16386"}))
    assert not [p.name for p in (tmp_path / "base/1").iterdir() if p.name != "16385"]
    assert (tmp_path / "base/1/16385").read_bytes() == b"kept" * 3000
    assert (tmp_path / "backup_label").read_bytes() == b"label"
    assert {"base/1/16384", "base/1/16390", "base/1/16386", "base/1/16385"} <= w.members and w.files == 5


def test_an_incremental_applies_only_to_a_file_an_earlier_member_wrote(tmp_path):
    """Breaker 62 F1: an empty file made ahead for a member (its manifest called the file whole,
    its tar holds the INCREMENTAL version) is no earlier version: within a chain (`earlier`, the
    files earlier members wrote) the member is named damaged, never applied over zeros."""
    (tmp_path / "base/1").mkdir(parents=True)
    (tmp_path / "base/1/5").write_bytes(b"")  # made ahead, never written
    (tmp_path / "base/1/6").write_bytes(_blocks(2, 1))  # written by the full
    tar = _tar([("base/1/INCREMENTAL.6", tarfile.REGTYPE, _incremental([1], 2, 9)),
                ("base/1/INCREMENTAL.5", tarfile.REGTYPE, _incremental([0], 1, 3))])
    with pytest.raises(DamagedBase, match="INCREMENTAL.5 has no earlier version") as caught:
        _feed(tmp_path, tar, 4096, overlay=True, base_id="B2", earlier=frozenset({"base/1/6"}))
    assert caught.value.base_id == "B2"
    assert _read_blocks(tmp_path / "base/1/6") == [1, 9]  # what came before the refusal was applied
