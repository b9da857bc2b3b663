"""Breaker 63 G2: authentic WAL can hold a record PostgreSQL refuses (damaged in pg_wal before it
was archived, or written so by a writer with the key): the tags, the SHA-256 and AES-GCM all
hold, so verify-chain passes it. Recovery stops at that record and waits for WAL, as it does at
the real end of the archive; a restore to 'latest' then said success with every commit after
the record missing. It now fails naming where recovery stopped and why, nothing live changed."""

from __future__ import annotations

import hashlib
import json

import zstandard


def test_a_record_postgres_refuses_fails_the_restore_instead_of_ending_it_short(pitr, runner):
    from opsctl.backup import crypto
    from opsctl.pitr import chain, layout

    assert pitr.cli(runner, "backup", "base", "--json").exit_code == 0
    segments = [pitr.commit_archived("insert into events(note) select %s from generate_series(1, 50)",
                                     (f"MARKER-{name}-" + "z" * 40,)) for name in "abc"]
    key, sysid, repo = pitr.key(), pitr.sysid(), pitr.repo()
    files, _ = layout.parse_wal(sysid, repo.names(layout.wal_prefix(sysid)))
    (obj,) = files[segments[1]]
    plain = bytearray(chain.open_wal(repo, key, sysid, obj))
    plain[plain.find(b"MARKER-b-") + 9] ^= 0x20  # inside batch b's record: its CRC no longer holds
    stored = b"".join(crypto.encrypt([zstandard.ZstdCompressor().compress(bytes(plain))], key))
    path = pitr.root / "repo" / obj.name
    kept = path.read_bytes()
    forged = path.with_name(f"{obj.file}.{layout.tag(key, sysid, obj.file, hashlib.sha256(stored).hexdigest())}.zst")
    path.unlink()
    forged.write_bytes(stored)
    try:
        live = pitr.sql("select count(*) from events")[0][0]
        verified = pitr.cli(runner, "backup", "verify-chain", "--json")
        assert json.loads(verified.stdout)["ok"]  # authentic: nothing outside PostgreSQL sees inside it
        for target in ("latest",):
            r = pitr.cli(runner, "restore", "--to-time", target, "--beside", "--json")
            assert r.exit_code == 1, r.output
            assert "recovery stopped at" in r.output and "PostgreSQL refused the record there" in r.output, r.output
            assert segments[2] in r.output and "nothing live was changed" in r.output
            assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert pitr.sql("select count(*) from events")[0][0] == live
    finally:
        forged.unlink(missing_ok=True)
        path.write_bytes(kept)
