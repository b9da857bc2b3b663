"""Issue 22 review (breaker 10 B2, breaker 11): `--to-lsn` up to the window's end LSN (the last
byte of its last segment, which verify-chain shows as `to_lsn`) passed the plan, unpacked and
replayed, then failed with exit 1 "recovery replayed all archived WAL without reaching LSN":
recovery stops only at a record that starts at or after the target. Now a target after the
last archived record is exit 2 before any work, naming the last record's LSN, which restores."""
from __future__ import annotations

import json
import re

from test_restore_swap import _base_backup  # noqa: E402


def test_a_target_lsn_after_the_last_archived_record_is_refused_naming_the_last_one(pitr, runner):
    from opsctl.local import postgres as pg

    _base_backup(pitr, runner)
    pitr.sql("insert into events(note) select 'archived' from generate_series(1, 30)")
    pitr.wait_archived()
    checked = pitr.cli(runner, "backup", "verify-chain", "--json")
    end = json.loads(checked.stdout)["windows"][-1]["to_lsn"]
    r = pitr.cli(runner, "restore", "--to-lsn", end, "--beside")
    assert r.exit_code == 2 and "after the last archived WAL record" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    last = re.search(r"choose an LSN up to (\S+) ", r.output).group(1)
    ok = pitr.cli(runner, "restore", "--to-lsn", last, "--beside", "--json")
    assert ok.exit_code == 0, ok.output
    pg.stop(json.loads(ok.stdout)["pid"])
    assert json.loads(ok.stdout)["tables"]["public.events"] == pitr.sql("select count(*) from events")[0][0]


def test_a_target_in_a_record_running_into_a_missing_segment_is_refused_before_any_work(pitr, runner):
    """Breaker 12: a 40 MB logical message spans three segments and the archive lost the last:
    targets inside the window's last segment, just after the message's start and at its start
    passed the plan (only the last segment was checked), replayed, then failed with exit 1."""
    from opsctl.pitr import layout

    _base_backup(pitr, runner)
    before = pitr.sql("select pg_current_wal_insert_lsn()::text", db="postgres")[0][0]
    end = pitr.sql("select pg_logical_emit_message(true, 'big', repeat('x', 40 * 1024 * 1024))::text",
                   db="postgres")[0][0]
    pitr.sql("insert into events(note) select 'after the message' from generate_series(1, 10)")
    pitr.wait_archived()
    endseg = pitr.sql("select pg_walfile_name(%s::pg_lsn)", (end,), db="postgres")[0][0]
    repo, sysid = pitr.repo(), pitr.sysid()
    repo.delete_names([n for n in repo.names(layout.wal_prefix(sysid)) if n.rsplit("/", 1)[1].startswith(endseg)])
    start = layout.lsn(before)
    inside_next = (start // layout.SEGMENT_BYTES + 1) * layout.SEGMENT_BYTES + 4196
    for lsn in (inside_next, start + 200, start):
        r = pitr.cli(runner, "restore", "--to-lsn", layout.lsn_text(lsn), "--beside")
        assert r.exit_code == 2 and "no whole record starts at or after it" in r.output, (layout.lsn_text(lsn), r.output)


def test_a_target_between_a_timelines_last_record_and_its_switch_names_both_sides(pitr, runner):
    """Breaker 13: an in-place restore to latest made a new timeline at S, a segment boundary
    (the old timeline's last archived record is a WAL switch). `--to-lsn S-1` (in the switch's
    padding) was refused saying "later WAL is not archived yet" and advising an LSN above S-1.
    Refusing is right (no record starts between it and S on the old timeline, and recovery
    along it never crosses the switch); the message now says so and names an LSN on each side,
    both of which restore. Runs last in this module: it moves the live cluster to a new timeline."""
    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    assert pitr.cli(runner, "backup", "base").exit_code == 0  # after the segment the test above deleted
    pitr.sql("insert into events(note) select 'old timeline' from generate_series(1, 20)")
    pitr.wait_archived()
    swapped = pitr.cli(runner, "restore", "--to-time", "latest", "--yes")
    assert swapped.exit_code == 0, swapped.output
    pitr.sql("insert into events(note) select 'new timeline' from generate_series(1, 20)")
    pitr.wait_archived()
    history = sorted((pitr.state().data("postgres") / "pg_wal").glob("*.history"))[-1]
    old, point = history.read_text().strip().splitlines()[-1].split("\t")[:2]
    new, switch = int(history.name.split(".")[0], 16), layout.lsn(point)
    assert switch % layout.SEGMENT_BYTES == 0, history.read_text()  # the case: the switch at a segment boundary
    r = pitr.cli(runner, "restore", "--to-lsn", layout.lsn_text(switch - 1), "--beside")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert (f"after the last WAL record of timeline {int(old)}, before its switch to timeline {new} at "
            f"{layout.lsn_text(switch)}") in r.output and "not archived" not in r.output, r.output
    before = re.search(r"choose an LSN up to (\S+) or one at or after (\S+) ", r.output)
    assert layout.lsn(before.group(1)) < switch - 1 and before.group(2) == layout.lsn_text(switch), r.output
    for target in (before.group(1), before.group(2)):
        ok = pitr.cli(runner, "restore", "--to-lsn", target, "--beside", "--json")
        assert ok.exit_code == 0, (target, ok.output)
        pg.stop(json.loads(ok.stdout)["pid"])


def test_a_target_just_before_a_mid_segment_switch_point_restores_the_state_at_it(pitr, runner):
    """Breaker 14: an in-place restore to a past time forked a new timeline at S, mid-segment,
    just before a discarded transaction's commit. `--to-lsn S-1` followed the old timeline and
    replayed the first record at or after it: that commit, which the live history discarded
    (a lower LSN restored more rows than S itself). Now it gives the state at S, as S does.
    Runs after the test above (the live cluster on its new timeline)."""
    import datetime as dt

    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    pitr.sql("insert into events(note) select 'kept' from generate_series(1, 30)")
    (kept_at,) = pitr.sql("select max(pg_xact_commit_timestamp(xmin)) from events")[0]
    pitr.sql("insert into events(note) select 'discarded' from generate_series(1, 30)")
    pitr.wait_archived()
    target = (kept_at + dt.timedelta(microseconds=1)).isoformat()
    assert pitr.cli(runner, "restore", "--to-time", target, "--yes").exit_code == 0
    assert {r[0] for r in pitr.sql("select distinct note from events")} >= {"kept"}
    assert not pitr.sql("select 1 from events where note = 'discarded'")
    pitr.sql("insert into events(note) select 'after' from generate_series(1, 5)")
    pitr.wait_archived()
    history = sorted((pitr.state().data("postgres") / "pg_wal").glob("*.history"))[-1]
    switch = layout.lsn(history.read_text().strip().splitlines()[-1].split("\t")[1])
    assert switch % layout.SEGMENT_BYTES, history.read_text()  # the case: a switch point mid-segment
    notes = {}
    for lsn in (switch - 1, switch):
        r = pitr.cli(runner, "restore", "--to-lsn", layout.lsn_text(lsn), "--beside", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        try:
            import psycopg

            with psycopg.connect(doc["url"].rsplit("/", 1)[0] + "/pitrdb") as conn:
                notes[lsn] = sorted(n for (n,) in conn.execute("select distinct note from events"))
        finally:
            pg.stop(doc["pid"])
    assert "discarded" not in notes[switch - 1] and notes[switch - 1] == notes[switch], notes


def test_a_target_past_the_end_of_a_timeline_that_was_left_says_where_it_ended(pitr, runner):
    """Session 14 (breaker 15 leftover): `--timeline N --to-time T` with T after timeline N was
    left for N+1 (an in-place restore) said "later WAL is not archived yet", as if waiting
    would help. Timeline N's WAL ends for good there; the refusal (exit 2, one line) now names
    the branch and its switch point, for a time and for an LSN, and the branch restores T."""
    import datetime as dt

    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    _base_backup(pitr, runner)
    pitr.sql("insert into events(note) values ('early on the old timeline')")
    pitr.wait_archived()
    early = dt.datetime.now(dt.timezone.utc).isoformat()
    pitr.sql("insert into events(note) values ('later on the old timeline')")
    pitr.wait_archived()
    (old,) = pitr.sql("select timeline_id from pg_control_checkpoint()", db="postgres")[0]
    swapped = pitr.cli(runner, "restore", "--to-time", "latest", "--yes", "--json")
    assert swapped.exit_code == 0, swapped.output
    new = json.loads(swapped.stdout)["timeline"]
    pitr.sql("insert into events(note) select 'on the branch' from generate_series(1, 20)")
    pitr.wait_archived()
    after = dt.datetime.now(dt.timezone.utc).isoformat()
    pitr.sql("insert into events(note) values ('later on the branch')")
    pitr.wait_archived()
    history = (pitr.state().data("postgres") / "pg_wal" / f"{new:08X}.history").read_text()
    switch = dict(layout.parse_history(history))[old]
    end_lsn = pitr.sql("select pg_current_wal_lsn()::text", db="postgres")[0][0]
    for target in (("--to-time", after), ("--to-lsn", end_lsn)):
        r = pitr.cli(runner, "restore", *target, "--beside", "--timeline", str(old))
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert "not archived yet" not in r.output, r.output
        assert (f"timeline {old} ends there: timeline {new} branched from it at {layout.lsn_text(switch)}"
                in r.output), r.output
    # verify-chain along the old timeline says the same of where its window ends (breaker 17 F9:
    # "end of the archive")
    checked = pitr.cli(runner, "backup", "verify-chain", "--timeline", str(old), "--json")
    assert checked.exit_code in (0, 1), checked.output  # 1: the segment a test above deleted breaks an older window
    assert json.loads(checked.stdout)["windows"][-1]["ends_at"] == (
        f"timeline {old} ends there: timeline {new} branched from it at {layout.lsn_text(switch)}"), checked.output
    ok = pitr.cli(runner, "restore", "--to-time", after, "--beside", "--timeline", str(new), "--json")
    assert ok.exit_code == 0, ok.output
    pg.stop(json.loads(ok.stdout)["pid"])
    assert json.loads(ok.stdout)["tables"]["public.events"] == pitr.sql("select count(*) from events")[0][0] - 1
    # breaker 16 F2: an in-place restore to a time before that branch makes a sibling (from the
    # old timeline): the branch is left too, though no timeline branched from it
    sibling = pitr.cli(runner, "restore", "--to-time", early, "--yes", "--json")
    assert sibling.exit_code == 0, sibling.output
    third = json.loads(sibling.stdout)["timeline"]
    pitr.wait_archived()  # its history reaches the repository
    fork = dict(layout.parse_history((pitr.state().data("postgres") / "pg_wal" / f"{third:08X}.history")
                                     .read_text()))[old]
    r = pitr.cli(runner, "restore", "--to-time", dt.datetime.now(dt.timezone.utc).isoformat(), "--beside",
                 "--timeline", str(new))
    assert r.exit_code == 2 and "not archived yet" not in r.output, r.output
    assert (f"timeline {new} ends there: the server left it for timeline {third}, which branched from timeline "
            f"{old} at {layout.lsn_text(fork)}") in r.output, r.output
    checked = pitr.cli(runner, "backup", "verify-chain", "--timeline", str(new), "--json")
    assert checked.exit_code in (0, 1), checked.output  # 1: the segment a test above deleted breaks an older window
    assert json.loads(checked.stdout)["windows"][-1]["ends_at"] == (
        f"timeline {new} ends there: the server left it for timeline {third}, which branched from timeline "
        f"{old} at {layout.lsn_text(fork)}"), checked.output
    # the timeline followed by default ends at the archive's end
    checked = pitr.cli(runner, "backup", "verify-chain", "--json")
    assert json.loads(checked.stdout)["windows"][-1]["ends_at"] == "end of the archive", checked.output


def test_a_timeline_left_twice_ends_at_the_branch_that_holds_the_most_of_it(pitr, runner):
    """Breaker 18 F1: timeline 1 left for timeline 2 by a restore to a past time, then again
    for timeline 3 by a restore along timeline 1 to its end. Past timeline 1's end, restore and
    verify-chain named timeline 2 ("branched from it at" its early switch, beside "archived WAL
    up to" a later LSN) and advised restoring it, though it lacks timeline 1's later commits.
    Both now name timeline 3, which branched where timeline 1 ends; a child that branched
    before the end is said to lack the later commits."""
    import datetime as dt

    from opsctl.pitr import layout

    _base_backup(pitr, runner)
    pitr.sql("insert into events(note) values ('before the first fork')")
    pitr.wait_archived()
    fork = dt.datetime.now(dt.timezone.utc).isoformat()
    (old,) = pitr.sql("select timeline_id from pg_control_checkpoint()", db="postgres")[0]
    for _ in range(2):  # timeline `old` goes on for two more segments after the first fork
        pitr.sql("insert into events(note) select 'after the first fork' from generate_series(1, 20)")
        pitr.wait_archived()

    def switch_of(tli: int) -> int:
        history = (pitr.state().data("postgres") / "pg_wal" / f"{tli:08X}.history").read_text()
        return dict(layout.parse_history(history))[old]

    early = pitr.cli(runner, "restore", "--to-time", fork, "--yes", "--json")
    assert early.exit_code == 0, early.output
    second = json.loads(early.stdout)["timeline"]
    pitr.sql("insert into events(note) values ('on the early branch')")
    pitr.wait_archived()
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    r = pitr.cli(runner, "restore", "--to-time", now, "--beside", "--timeline", str(old))
    assert r.exit_code == 2, r.output
    assert (f"the server left it for timeline {second}, which branched from it at "
            f"{layout.lsn_text(switch_of(second))}, before its end (timeline {second} lacks its later commits)"
            in r.output), r.output
    # and no advice that could not restore past it (breaker 25 F10: "--timeline 2 or leave out --timeline")
    said = " ".join(r.output.split())
    assert "to restore past it" not in said and "no later time along it can be restored" in said, r.output
    along = pitr.cli(runner, "restore", "--timeline", str(old), "--to-time", "latest", "--yes", "--json")
    assert along.exit_code == 0, along.output
    third = json.loads(along.stdout)["timeline"]
    pitr.wait_archived()
    said = f"timeline {old} ends there: timeline {third} branched from it at {layout.lsn_text(switch_of(third))}"
    r = pitr.cli(runner, "restore", "--to-time", dt.datetime.now(dt.timezone.utc).isoformat(), "--beside",
                 "--timeline", str(old))
    assert r.exit_code == 2 and said in r.output and f"--timeline {third} or" in r.output, r.output
    checked = pitr.cli(runner, "backup", "verify-chain", "--timeline", str(old), "--json")
    assert checked.exit_code in (0, 1), checked.output  # 1: the segment a test above deleted breaks an older window
    assert json.loads(checked.stdout)["windows"][-1]["ends_at"] == said, checked.output
    notes = {n for (n,) in pitr.sql("select distinct note from events")}  # the live server: on the third
    assert {"before the first fork", "after the first fork"} <= notes and "on the early branch" not in notes, notes
