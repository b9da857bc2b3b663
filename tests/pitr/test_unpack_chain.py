"""Issue 22: a restore applies the base backup chain itself (opsctl.pitr.unpack.chain) instead of
unpacking each member for pg_combinebackup. PostgreSQL's own tool is the oracle: on a real chain
whose incrementals saw rows changed in place, a table cut short by VACUUM and grown again, a
table and a database dropped, a table and an index created, the data directory unpack.chain
writes is pg_combinebackup's output file for file and byte for byte; and a chain whose
incremental was taken on another parent is refused naming it, as pg_combinebackup refuses it."""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path

import pytest


def _base(pitr, kind: str):
    from opsctl.pitr import ops

    return ops.create_base(pitr.project(), pitr.env(), kind)


def _records(pitr, *results):
    from opsctl.pitr import chain

    inv = chain.inventory(pitr.repo(), pitr.key(), pitr.sysid(), end_times=False, findings=False)
    by_id = {b.id: b for b in inv.bases}
    return [by_id[r.id] for r in results]


def _oracle(pitr, backups, folder: Path) -> Path:
    """pg_combinebackup's output for `backups`, each member unpacked by tarfile into a folder of its own."""
    import subprocess

    from opsctl.backup.pipeline import IterReader, unpack
    from opsctl.local.postgres import tool

    dirs = []
    for b in backups:
        d = folder / b.id
        d.mkdir(parents=True)
        obj = b.object("base.tar.zst")
        plain = unpack(pitr.repo().get(obj.name), obj.name, obj.sha256, obj.size, pitr.key())
        with tarfile.open(fileobj=IterReader(plain), mode="r|") as tf:
            tf.extractall(d, filter="data")
        dirs.append(d)
    out = folder / "combined"
    done = subprocess.run([tool("pg_combinebackup"), "--no-manifest", *map(str, dirs), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def _member_head(pitr, b, name: str) -> bytes | None:
    """The first 12 bytes of member `name` of base backup `b`'s tar (None when it has none)."""
    from opsctl.backup.pipeline import IterReader, unpack

    obj = b.object("base.tar.zst")
    plain = unpack(pitr.repo().get(obj.name), obj.name, obj.sha256, obj.size, pitr.key())
    with tarfile.open(fileobj=IterReader(plain), mode="r|") as tf:
        for m in tf:
            if m.name == name:
                return tf.extractfile(m).read(12)
    return None


def _listing(d: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def test_the_chain_applied_in_place_is_what_pg_combinebackup_writes(pitr, tmp_path):
    from opsctl.pitr import unpack

    pitr.sql("create table kept (id int primary key, note text)")
    pitr.sql("insert into kept select g, repeat('k', 200) from generate_series(1, 20000) g")
    pitr.sql("create table shrinks (id int, note text) with (autovacuum_enabled = off)")
    pitr.sql("insert into shrinks select g, repeat('s', 200) from generate_series(1, 20000) g")
    pitr.sql("create table dropped (id int)")
    pitr.sql("insert into dropped select generate_series(1, 1000)")
    pitr.sql("create table rewritten (id int, n int)")
    pitr.sql("insert into rewritten select g, 0 from generate_series(1, 5000) g")
    pitr.sql("create database scratch", db="postgres")
    pitr.sql("vacuum shrinks")  # all-visible now: the next VACUUM WAL-logs only the blocks it changes
    pitr.sql("checkpoint", db="postgres")
    shrinks, full_blocks = pitr.sql("select pg_relation_filepath('shrinks'), pg_relation_size('shrinks') / 8192")[0]
    dropped = pitr.sql("select pg_relation_filepath('dropped')")[0][0]
    scratch_oid = pitr.sql("select oid from pg_database where datname = 'scratch'", db="postgres")[0][0]
    full = _base(pitr, "full")

    pitr.sql("update kept set note = repeat('u', 200) where id %% 97 = 0")  # blocks changed in place
    pitr.sql("delete from shrinks where id > 15000")  # its last blocks only: sent as an INCREMENTAL file
    pitr.sql("vacuum shrinks")  # the empty tail is cut off: the file is shorter than the full's
    pitr.sql("drop table dropped")
    pitr.sql("create table added as select g as id from generate_series(1, 3000) g")
    pitr.sql("update rewritten set n = 1")  # every block changed: inc1 holds the file whole
    inc1 = _base(pitr, "incremental")

    pitr.sql("insert into shrinks select g, repeat('g', 200) from generate_series(1, 3000) g")  # grows again
    pitr.sql("update kept set note = 'second' where id between 100 and 400")
    pitr.sql("create index on added (id)")
    pitr.sql("drop database scratch", db="postgres")
    inc2 = _base(pitr, "incremental")

    backups = _records(pitr, full, inc1, inc2)
    assert [b.kind for b in backups] == ["full", "incremental", "incremental"]
    # the case this is for: inc1 holds shrinks as an INCREMENTAL file cut below the full's length
    folder, file = shrinks.rsplit("/", 1)
    head = _member_head(pitr, backups[1], f"{folder}/INCREMENTAL.{file}")
    assert head is not None and struct.unpack("=III", head)[2] < full_blocks
    # what the full holds that the result takes from a newer member is never written (session 35):
    # the dropped table, the dropped database, the file inc1 holds whole; not what is applied over
    replaced = unpack._replaced(unpack._manifests(pitr.repo(), pitr.key(), backups))
    rewritten = pitr.sql("select pg_relation_filepath('rewritten')")[0][0]
    assert _member_head(pitr, backups[1], rewritten) is not None  # whole in inc1, not INCREMENTAL.
    assert _member_head(pitr, backups[2], f"{folder}/INCREMENTAL.{file}") is not None  # shrinks: applied twice
    assert {dropped, rewritten} <= replaced[0] and shrinks not in replaced[0] | replaced[1]
    assert any(p.startswith(f"base/{scratch_oid}/") for p in replaced[0]) and "backup_label" not in replaced[0]
    assert rewritten not in replaced[1] and not replaced[2]
    seconds = unpack.chain(pitr.repo(), pitr.key(), backups, tmp_path / "applied")
    assert set(seconds) == {"full", "unpacked"}
    ours, theirs = _listing(tmp_path / "applied"), _listing(_oracle(pitr, backups, tmp_path / "oracle"))
    assert sorted(ours) == sorted(theirs)
    assert [name for name in ours if ours[name] != theirs[name]] == []
    assert not [name for name in ours if "INCREMENTAL." in name]
    assert b"INCREMENTAL FROM" not in ours["backup_label"] and "backup_manifest" not in ours


def test_an_incremental_on_another_parent_is_refused_naming_it(pitr, tmp_path):
    """The chain given says inc2 follows the full; its label says it was taken on inc1
    (pg_combinebackup: "backup at ... starts at LSN ..., but expected ..."). It is refused for
    that, from its backup_label (the tar's first member), before its blocks are applied: inc2
    holds an incremental file of a table created after the full, which has no earlier version
    in [full, inc2] and was named first (breaker 60 F3). An incremental alone, with no full
    under it, is refused too."""
    from opsctl.pitr import unpack
    from opsctl.pitr.base import DamagedBase

    full = _base(pitr, "full")
    pitr.sql("create table since_full as select g as id, repeat('x', 200) as pad from generate_series(1, 20000) g")
    pitr.sql("vacuum since_full")  # its hint bits set now: inc2 holds only the block updated, not all
    inc1 = _base(pitr, "incremental")
    pitr.sql("update since_full set pad = 'y' where id = 1")
    inc2 = _base(pitr, "incremental")
    backups = _records(pitr, full, inc1, inc2)
    with pytest.raises(DamagedBase, match="built on a base backup starting at") as caught:
        unpack.chain(pitr.repo(), pitr.key(), [backups[0], backups[2]], tmp_path / "a")
    assert caught.value.base_id == inc2.id
    relation = pitr.sql("select pg_relation_filepath('since_full')")[0][0]
    assert _member_head(pitr, backups[2], relation.rsplit("/", 1)[0] + "/INCREMENTAL." + relation.rsplit("/", 1)[1])
    with pytest.raises(DamagedBase, match="starts its chain but its backup_label says it is incremental") as caught:
        unpack.chain(pitr.repo(), pitr.key(), [backups[1]], tmp_path / "b")
    assert caught.value.base_id == inc1.id


def _reseal_manifest(pitr, b, edit) -> None:
    """Rewrite base backup `b`'s backup_manifest.zst as edit(doc) leaves it and seal its record
    again with the key: a manifest that disagrees with its authentic tar, as only the key's
    holder (or a writer's bug) can store it."""
    import io
    import json

    from opsctl.backup.manifest import StoredObject
    from opsctl.backup.pipeline import StreamStats, pack
    from opsctl.pitr import layout
    from opsctl.pitr.base import RECORD, fetch_plain

    repo, key = pitr.repo(), pitr.key()
    obj = b.object("backup_manifest.zst")
    doc = json.loads(fetch_plain(repo, obj, key))
    edit(doc)
    stats = StreamStats()
    repo.put_bytes(obj.name, b"".join(pack(io.BytesIO(json.dumps(doc).encode()), 1, key, stats, threads=0)))
    objects = [o if o.name != obj.name else StoredObject(name=o.name, size=stats.stored_bytes, sha256=stats.sha256,
                                                          raw_size=stats.raw_bytes, encrypted=True, compressed=True)
               for o in b.objects]
    rec = b.model_copy(update={"objects": objects})
    rec.seal(key)
    repo.put_bytes(f"{layout.base_prefix(pitr.sysid())}{b.id}/{RECORD}", rec.model_dump_json().encode())


def test_a_manifest_that_calls_an_incremental_file_whole_names_its_backup_damaged(pitr, tmp_path):
    """Breaker 62 F1: inc1's manifest, re-sealed with the key, lists a relation whole where its tar
    holds the INCREMENTAL version. The full's copy is then passed over (_replaced) and an empty
    file is made ahead for inc1 (_Precreate): applied over it, 832 of 834 pages came back zeros,
    silently, whenever the thread making files had reached it. Now the incremental applies only
    to a file an earlier member wrote: inc1 is named damaged, every time."""
    from opsctl.pitr import unpack
    from opsctl.pitr.base import DamagedBase

    pitr.sql("create table victim (id int primary key, pad text) with (autovacuum_enabled = off)")
    pitr.sql("insert into victim select g, repeat('v', 300) from generate_series(1, 20000) g")
    pitr.sql("vacuum victim")
    pitr.sql("checkpoint", db="postgres")
    full = _base(pitr, "full")
    pitr.sql("update victim set pad = 'changed' where id = 5")
    inc1 = _base(pitr, "incremental")
    rel = pitr.sql("select pg_relation_filepath('victim')")[0][0]
    folder, file = rel.rsplit("/", 1)
    backups = _records(pitr, full, inc1)
    assert _member_head(pitr, backups[1], f"{folder}/INCREMENTAL.{file}") is not None

    def whole(doc):
        (entry,) = [e for e in doc["Files"] if e.get("Path") == f"{folder}/INCREMENTAL.{file}"]
        entry["Path"] = rel

    _reseal_manifest(pitr, backups[1], whole)
    backups = _records(pitr, full, inc1)
    assert rel in unpack._replaced(unpack._manifests(pitr.repo(), pitr.key(), backups))[0]
    for attempt in range(3):  # the thread making files ahead may or may not reach it first
        with pytest.raises(DamagedBase, match=f"INCREMENTAL.{file} has no earlier version") as caught:
            unpack.chain(pitr.repo(), pitr.key(), backups, tmp_path / f"applied-{attempt}")
        assert caught.value.base_id == inc1.id


def test_verify_reads_a_base_tar_as_the_restore_does(pitr, tmp_path):
    """Breaker 62 F2: a base tar stored (with the key) as its zstd frame and then a second one
    passed verify-chain's deep read (pipeline.unpack stops at the first frame) while the restore
    refused it (unpack_into: more than the record's raw size). Both now name it unusable."""
    import hashlib

    import zstandard

    from opsctl.backup import crypto
    from opsctl.backup.manifest import StoredObject
    from opsctl.backup.pipeline import unpack
    from opsctl.pitr import chain, layout
    from opsctl.pitr import unpack as unpacking
    from opsctl.pitr.base import RECORD, DamagedBase

    full = _base(pitr, "full")
    (b,) = _records(pitr, full)
    repo, key = pitr.repo(), pitr.key()
    folder = f"{layout.base_prefix(pitr.sysid())}{b.id}/"
    obj = b.object("base.tar.zst")
    old_tar, old_rec = repo.get_bytes(obj.name), repo.get_bytes(folder + RECORD)
    plain = b"".join(unpack([old_tar], obj.name, obj.sha256, obj.size, key))
    stored = b"".join(crypto.encrypt([zstandard.ZstdCompressor().compress(plain)
                                      + zstandard.ZstdCompressor().compress(bytes(4096))], key))
    repo.put_bytes(obj.name, stored)
    objects = [o if o.name != obj.name else StoredObject(name=o.name, size=len(stored), raw_size=o.raw_size,
                                                          sha256=hashlib.sha256(stored).hexdigest(), encrypted=True,
                                                          compressed=True) for o in b.objects]
    rec = b.model_copy(update={"objects": objects})
    rec.seal(key)
    repo.put_bytes(folder + RECORD, rec.model_dump_json().encode())
    try:
        inv = chain.inventory(repo, key, pitr.sysid(), deep=True, end_times=False)
        assert "decompresses to more than the" in inv.bad_bases.get(b.id, ""), inv.bad_bases
        (forged,) = [x for x in chain.inventory(repo, key, pitr.sysid(), end_times=False, findings=False).bases
                     if x.id == b.id]
        with pytest.raises(DamagedBase, match="decompresses to more than the"):
            unpacking.chain(repo, key, [forged], tmp_path / "applied")
    finally:
        repo.put_bytes(obj.name, old_tar)
        repo.put_bytes(folder + RECORD, old_rec)
