"""Issue 22 review (verify side): segments a full archive queue dropped (their markers
uploaded into the repository's dropped/) beyond the last archived segment were not named by
verify-chain (chain.inventory walked segments only up to the newest archived one), and a
restore to a time after them was not refused for their sake. Now they are gaps: verify names
each one as dropped (exit 1) and the window ends before the first."""
from __future__ import annotations

import datetime as dt
import json
import time

import yaml


def test_dropped_segments_at_the_archive_s_end_are_named_and_end_the_window(pitr, runner):
    from opsctl.local import postgres as pg
    from opsctl.pitr import local as pitr_local

    # the base backup and its WAL archived first: with the queue's limit of 2 in force, a loaded
    # machine's archiver fell behind the base backup's own switches and one of its segments was
    # dropped (the restore then refused the base backup instead of the time: one full run)
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    path = pitr.root / "opsctl.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["environments"]["local"]["backup"]["archive_queue"] = 2
    path.write_text(yaml.safe_dump(doc))
    pg.stop(pitr.pid)
    pitr.start_postgres()  # archive_command with the new limit
    pitr.wait_archived()  # the restart's own WAL, before the repository goes away
    state = pitr.state()
    queue = pitr_local.queue_dir(state)
    assert pitr_local.stop_archiver(state)  # the repository is unreachable for a while
    for i in range(5):
        pitr.sql("insert into events(note) values (%s)", (f"q{i}",))
        pitr.sql("select pg_switch_wal()", db="postgres")
    def markers() -> list[str]:  # the archive_command writes each as .NAME.new, then renames it
        return sorted(p.name for p in (queue / ".dropped").iterdir() if not p.name.startswith("."))

    deadline = time.monotonic() + 30
    while not markers() and time.monotonic() < deadline:
        time.sleep(0.2)
    dropped = markers()
    assert dropped, "the queue never dropped a segment"
    after = dt.datetime.now(dt.timezone.utc)
    # a base backup now (after the time restored to below): the full queue drops its WAL too, which will never be archived; said
    # at once, not as "restorable once its WAL is archived" after the whole wait (breaker 34 F4)
    base = pitr.cli(runner, "backup", "base")
    assert base.exit_code == 1 and "was dropped by the full local WAL queue" in base.output, base.output
    assert "will never be archived; take another base backup" in base.output, base.output
    pitr.ensure_archiver()  # the repository answers again: queue and markers are uploaded
    deadline = time.monotonic() + 60
    while (list((queue / ".dropped").iterdir()) or [p for p in queue.iterdir() if not p.name.startswith(".")]) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    v = pitr.cli(runner, "backup", "verify-chain", "--json")
    rep = json.loads(v.stdout)
    named = {p["file"]: p["kind"] for p in rep["problems"]}
    assert v.exit_code == 1 and all(named.get(f) == "dropped" for f in dropped), (dropped, rep["problems"])
    assert all(w["last_segment"] < min(dropped) for w in rep["windows"]), rep["windows"]
    r = pitr.cli(runner, "restore", "--to-time", after.isoformat(), "--beside", "--json")
    assert r.exit_code == 2 and "beyond the newest restorable time" in r.output and "dropped" in r.output, r.output
