"""verify-chain's findings kept in the repository (chain.record_findings, chain.found_damaged):
sealed, bound to their cluster and key, replaced by the next whole read."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from opsctl.backup.keys import BackupKey
from opsctl.backup.repository import FileRepository
from opsctl.pitr import chain, layout

SYSID = "7714409350495966038"
AT = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def repo(tmp_path):
    return FileRepository(tmp_path / "repo", f"file://{tmp_path / 'repo'}")


@pytest.mark.parametrize("key", [BackupKey(os.urandom(32)), None], ids=["sealed", "unencrypted"])
def test_findings_are_read_back_and_a_later_sound_read_clears_them(repo, key):
    assert chain.read_findings(repo, key, SYSID) == ({}, {}, None)  # none recorded yet: nothing to say
    chain.record_findings(repo, key, SYSID, {"20261201T010000Z-aaaa": "its object x fails its check: bad header"}, AT)
    found = chain.found_damaged(repo, key, SYSID)
    assert found == {"20261201T010000Z-aaaa": "verify-chain found it damaged (2026-12-01 02:00 UTC; if it was repaired "
                                              "since, run 'opsctl backup verify-chain'): its object x "
                                              "fails its check: bad header"}
    chain.record_findings(repo, key, SYSID, {}, AT + dt.timedelta(days=1),
                          {"20261201T010000Z-aaaa": "its object y fails its check"})
    assert chain.read_findings(repo, key, SYSID) == (
        {}, {"20261201T010000Z-aaaa": "verify-chain found (2026-12-02 02:00 UTC) its object y fails its check"}, None)


def _edit(repo, change) -> None:
    path = repo.root / layout.verified(SYSID)
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))


@pytest.mark.parametrize("change", [
    lambda b: b["damaged"].clear(),                       # a finding removed to hide a damaged tar
    lambda b: b["damaged"].update({"20261201T020000Z-bbbb": "planted"}),  # a sound one marked damaged
    lambda b: b.update(sysid="1234567890123456789"),      # another cluster's record
    lambda b: b.update(mac="0" * 64),                     # a forged seal
], ids=["removed", "planted", "other-cluster", "forged"])
def test_an_edited_record_is_ignored_and_said(repo, change, caplog):
    key = BackupKey(os.urandom(32))
    chain.record_findings(repo, key, SYSID, {"20261201T010000Z-aaaa": "damaged"}, AT)
    _edit(repo, change)
    found, unfit, why = chain.read_findings(repo, key, SYSID)
    assert found == {} == unfit and "is not authentic" in why and "run 'opsctl backup verify-chain'" in why
    assert "is not authentic" in caplog.text


def test_a_record_sealed_by_another_key_or_unreadable_is_ignored(repo, caplog, monkeypatch):
    chain.record_findings(repo, BackupKey(os.urandom(32)), SYSID, {"20261201T010000Z-aaaa": "damaged"}, AT)
    assert chain.found_damaged(repo, BackupKey(os.urandom(32)), SYSID) == {}
    path = repo.root / layout.verified(SYSID)
    path.write_bytes(b"\x00not json")
    assert chain.found_damaged(repo, None, SYSID) == {}
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)  # nested past the parser's recursion
    assert chain.found_damaged(repo, None, SYSID) == {}
    monkeypatch.setattr(chain, "_FINDINGS_MAX", 1000)
    path.write_bytes(b" " * 5000)  # longer than any record of ours: not read on
    assert chain.found_damaged(repo, None, SYSID) == {}
    path.unlink()
    path.mkdir()  # a folder where the record belongs
    assert chain.found_damaged(repo, None, SYSID) == {}
    assert caplog.text.count("is not authentic") == 5


def test_a_parent_with_a_later_id_than_its_incrementals_is_still_their_parent(repo):
    """Breaker 27 F7: base backup ids are the wall clock's. A clock stepped back after a full
    base backup (an NTP step, a VM restored from a snapshot) gave the full a later id than the
    incrementals built on it, and whole_bases, walking ids in order, called every one of them
    "missing its parent". Parents now come before children by where their WAL starts."""
    from opsctl.backup.manifest import StoredObject
    from opsctl.pitr import base as bb

    def record(bid: str, kind: str, parent: str | None, start: str) -> bb.BaseBackup:
        obj = StoredObject(name=f"{layout.base_prefix(SYSID)}{bid}/base.tar.zst", size=10, sha256="0" * 64)
        return bb.BaseBackup(id=bid, sysid=SYSID, kind=kind, parent=parent, timeline=1, start_lsn=start,
                             stop_lsn=start, started_at=AT, finished_at=AT, server_version="18", objects=[obj])

    full = record("20261209T220140Z-1b43", "full", None, "0/2000028")  # taken with the clock 8 days ahead
    inc = record("20261201T220155Z-0e66", "incremental", full.id, "0/4000028")
    later = record("20261201T230000Z-030f", "incremental", inc.id, "0/6000028")
    bases = sorted([full, inc, later], key=lambda b: b.id)  # as load_all gives them: by id
    names = {o.name: o.size for b in bases for o in b.objects}
    bad: dict[str, str] = {}
    assert chain.whole_bases(repo, None, bases, bad, names) == bases and bad == {}
