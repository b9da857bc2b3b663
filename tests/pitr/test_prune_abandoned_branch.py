"""Issue 22 review (break 1): `backup prune-chain` kept the newest full base backups by id,
so after an in-place restore that abandoned a branch holding a base backup (B1), it kept B1
(which no restore can start from) and deleted B0, the only base backup on the live timeline's
history, with the WAL after it. Now it keeps the newest full base backups a restore would use
(whole, on the newest timeline's history, newest by stop LSN) and removes the abandoned one."""
from __future__ import annotations

import datetime as dt
import json
import time


def _prune(pitr, runner, *args: str) -> dict:
    r = pitr.cli(runner, "backup", "prune-chain", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_prune_keeps_the_chains_on_the_live_timeline_not_the_abandoned_branch(pitr, runner):
    from opsctl.pitr import base as bb
    from opsctl.pitr import layout

    b0 = json.loads(pitr.cli(runner, "backup", "base", "--json").stdout)["id"]
    pitr.sql("insert into events(note) select 'a' from generate_series(1, 20)")
    pitr.wait_archived()
    time.sleep(0.3)
    fork = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.3)
    pitr.sql("insert into events(note) select 'b' from generate_series(1, 20)")
    pitr.wait_archived()
    r = pitr.cli(runner, "backup", "base", "--json")  # B1, on the branch the restore abandons
    assert r.exit_code == 0, r.output
    b1 = json.loads(r.stdout)["id"]
    r = pitr.cli(runner, "restore", "--to-time", fork.isoformat(), "--yes", "--json")
    assert r.exit_code == 0, r.output

    dry = _prune(pitr, runner, "--keep-full", "1", "--dry-run")
    assert dry["kept"] == [b0] and dry["removed"] == [b1], dry

    # a new full base backup on timeline 2: with two kept, B0 and B2 stay, the abandoned B1 goes
    r = pitr.cli(runner, "backup", "base", "--json")
    assert r.exit_code == 0, r.output
    b2 = json.loads(r.stdout)["id"]
    done = _prune(pitr, runner, "--keep-full", "2", "--yes")
    assert sorted(done["kept"]) == sorted([b0, b2]) and done["removed"] == [b1], done
    left, _ = bb.load_all(pitr.repo(), pitr.sysid(), pitr.key())
    assert {b.id for b in left} == {b0, b2}
    first = layout.segno(layout.lsn(left[0].start_lsn))
    assert done["wal_kept_from"] is not None and layout.parse_segment(done["wal_kept_from"])[1] == first
    # the newest one alone: B2 (on timeline 2) is kept by its stop LSN along the live history
    assert _prune(pitr, runner, "--keep-full", "1", "--dry-run")["kept"] == [b2]
    # breaker 18 F10: with B0 and B1 pruned, timeline 1 has no base backup left; a restore along
    # it said "take one with 'opsctl backup base'", which lands on the live timeline and can't help
    (old,) = {b.timeline for b in left if b.id == b0}
    done = _prune(pitr, runner, "--keep-full", "1", "--yes")
    assert done["kept"] == [b2], done
    r = pitr.cli(runner, "restore", "--timeline", str(old), "--to-time", "latest", "--beside")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"lies on timeline {old}'s history" in r.output and "pruned or taken on another branch" in r.output, r.output
    assert "take one with" not in r.output, r.output
