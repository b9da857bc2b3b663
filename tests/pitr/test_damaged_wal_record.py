"""Breaker 63 G2: authentic WAL can hold a record PostgreSQL refuses (damaged in pg_wal before it
was archived, or written so by a writer with the key): the tags, the SHA-256 and AES-GCM all
hold, so verify-chain passes it. Recovery stops at that record and waits for WAL, as it does at
the real end of the archive; a restore to 'latest' then said success with every commit after
the record missing. It now fails naming where recovery stopped and why, nothing live changed.
Session 36: a record refused in the window's last segment too (the server stopped, so no
segment comes after it): it is followed by more than zeros and does not go on into a next
segment, so it is no end of the WAL."""

from __future__ import annotations

import hashlib
import json

import pytest
import zstandard

from pitr_support import beside_ids


@pytest.mark.parametrize("damaged", ["b", "c"])  # c: the window's last segment
def test_a_record_postgres_refuses_fails_the_restore_instead_of_ending_it_short(pitr, runner, damaged):
    from opsctl.backup import crypto
    from opsctl.local import postgres as pg
    from opsctl.pitr import chain, layout

    assert pitr.cli(runner, "backup", "base", "--json").exit_code == 0
    segments = [pitr.commit_archived("insert into events(note) select %s from generate_series(1, 50)",
                                     (f"MARKER-{name}-" + "z" * 40,)) for name in "abc"]
    key, sysid, repo = pitr.key(), pitr.sysid(), pitr.repo()
    files, _ = layout.parse_wal(sysid, repo.names(layout.wal_prefix(sysid)))
    (obj,) = files[segments["abc".index(damaged)]]
    plain = bytearray(chain.open_wal(repo, key, sysid, obj))
    plain[plain.find(f"MARKER-{damaged}-".encode()) + 9] ^= 0x20  # inside the batch's record: its CRC no longer holds
    stored = b"".join(crypto.encrypt([zstandard.ZstdCompressor().compress(bytes(plain))], key))
    path = pitr.root / "repo" / obj.name
    kept = path.read_bytes()
    forged = path.with_name(f"{obj.file}.{layout.tag(key, sysid, obj.file, hashlib.sha256(stored).hexdigest())}.zst")
    path.unlink()
    forged.write_bytes(stored)
    live = pitr.sql("select count(*) from events")[0][0]
    marked = {row[0] for row in pitr.sql("select id from events where note like %s", (f"MARKER-{damaged}-%",))}
    if damaged == "c":
        pg.stop(pitr.pid)  # no commit after c's segment: it ends the archived WAL
    try:
        verified = pitr.cli(runner, "backup", "verify-chain", "--json")
        assert json.loads(verified.stdout)["ok"]  # authentic: nothing outside PostgreSQL sees inside it
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert r.exit_code == 1, r.output
        assert "recovery stopped at" in r.output and "PostgreSQL refused the record there" in r.output, r.output
        assert segments[2] in r.output and "nothing live was changed" in r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
        forged.unlink()
        path.write_bytes(kept)
        # the same WAL undamaged: the restore ends at its true end (for c, the switch after it)
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
        assert r.exit_code == 0, r.output
        assert marked <= beside_ids(json.loads(r.stdout))
    finally:
        forged.unlink(missing_ok=True)
        path.write_bytes(kept)
        if damaged == "c":
            pitr.start_postgres()
    assert pitr.sql("select count(*) from events")[0][0] == live
