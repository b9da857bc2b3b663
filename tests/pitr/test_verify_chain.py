"""Must show: a planted, missing or tampered WAL segment is named by `backup verify-chain`,
a restore to a time beyond it is refused and nothing changes; `backup list`'s window."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

import pytest


@pytest.fixture(scope="module")
def batches(pitr):
    """A base backup, then three committed batches, each in a segment of its own."""
    from typer.testing import CliRunner

    r = pitr.cli(CliRunner(), "backup", "base", "--json")
    assert r.exit_code == 0, r.output
    out = []
    for name in ("a", "b", "c"):
        # each batch's commit in the segment named for it (CI once had batch b's commit in the
        # segment before, an archive_timeout switch between them: tampering "b's" spared it)
        segment = pitr.commit_archived("insert into events(note) select %s from generate_series(1, 50)", (name,))
        (when,) = pitr.sql("select max(pg_xact_commit_timestamp(xmin)) from events where note = %s", (name,))[0]
        out.append((name, segment, when))
    return out


def _object(pitr, segment: str):
    from opsctl.pitr import layout

    sysid = pitr.sysid()
    files, _ = layout.parse_wal(sysid, pitr.repo().names(layout.wal_prefix(sysid)))
    (obj,) = files[segment]
    return pitr.root / "repo" / obj.name


def _verify(pitr, runner):
    r = pitr.cli(runner, "backup", "verify-chain", "--json")
    return r.exit_code, json.loads(r.stdout) if r.stdout.strip().startswith("{") else r.output


def _live(pitr) -> tuple:
    data = pitr.state().folder / "data"
    return pitr.pid, sorted(p.name for p in data.iterdir()), pitr.sql("select count(*) from events")[0][0]


def test_clean_chain_verifies_and_list_shows_the_window(pitr, batches, runner):
    code, doc = _verify(pitr, runner)
    assert code == 0, doc
    assert doc["ok"] and not doc["problems"] and doc["checked"] >= 4
    newest = dt.datetime.fromisoformat(doc["newest_restorable"])
    assert newest == batches[-1][2]  # the last commit archived
    listed = json.loads(pitr.cli(runner, "backup", "list", "--json").stdout)["pitr"]
    assert listed["windows"][-1]["to"] == doc["newest_restorable"] and listed["note"] is None


@pytest.mark.parametrize("fault", ["tampered", "missing", "planted"])
def test_bad_segment_is_named_and_a_restore_beyond_it_is_refused(pitr, batches, runner, fault):
    from opsctl.pitr import layout

    (_, seg_a, time_a), (_, seg_b, time_b), (_, seg_c, time_c) = batches
    target = _object(pitr, seg_b)
    kept = target.read_bytes()
    planted = None
    if fault == "tampered":
        flipped = bytearray(kept)
        flipped[len(flipped) // 2] ^= 0x01
        target.write_bytes(bytes(flipped))
    elif fault == "missing":
        target.unlink()
    else:  # someone without the key puts their own segment in its place
        target.unlink()
        planted = target.with_name(f"{seg_b}.{'0' * 32}.zst")
        planted.write_bytes(kept)
    try:
        before = _live(pitr)
        code, doc = _verify(pitr, runner)
        assert code == 1
        assert [p["file"] for p in doc["problems"]] == [seg_b]
        assert doc["problems"][0]["kind"] == {"tampered": "not authentic", "missing": "missing",
                                              "planted": "not authentic"}[fault]
        # the window ends before it: at batch a's commit, or at a later one of the same segment
        # (autovacuum's ANALYZE of the table commits too, when it runs is the server's choice)
        assert time_a <= dt.datetime.fromisoformat(doc["newest_restorable"]) < time_b
        beyond = time_c.isoformat()
        r = pitr.cli(runner, "restore", "--to-time", beyond, "--yes")
        assert r.exit_code == 2
        assert seg_b in r.output and "newest restorable time" in r.output
        # 'latest' stopped at the bad segment silently, short of the WAL archived after it
        r = pitr.cli(runner, "restore", "--to-time", "latest", "--beside")
        assert r.exit_code == 2 and "breaks before its end" in r.output and seg_b in r.output, r.output
        assert "--to-time <the newest restorable time" in r.output and "Traceback" not in r.output
        assert "or 'latest'" not in pitr.cli(runner, "restore", "--to-time", beyond, "--beside").output
        assert _live(pitr) == before  # nothing changed
        assert not list((pitr.state().folder / "data").glob("pitr-*"))
        # following that advice: the newest restorable time as verify-chain prints it (to the
        # millisecond) holds its own last commit; shown rounded down, it lost batch a
        shown = pitr.cli(runner, "backup", "verify-chain").output.split("newest restorable time: ", 1)[1].split()
        r = pitr.cli(runner, "restore", "--to-time", f"{shown[0]}T{shown[1]}", "--beside", "--json")
        assert r.exit_code == 0, r.output
        assert {n for (n,) in pitr.sql("select note from events where id = any(%s)",
                                       (list(_restored_ids(json.loads(r.stdout))),))} >= {"a"}
    finally:
        if planted is not None:
            planted.unlink()
        target.write_bytes(kept)
    assert layout.OBJECT.fullmatch(target.name)
    assert _verify(pitr, runner)[0] == 0


def test_restore_before_a_gap_still_works(pitr, batches, runner):
    (_, _, time_a), (_, seg_b, _), _ = batches
    target = _object(pitr, seg_b)
    aside = target.with_name(target.name + ".aside")
    shutil.move(target, aside)
    try:
        r = pitr.cli(runner, "restore", "--to-time", time_a.isoformat(), "--beside", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        from opsctl.local import postgres as pg

        pg.stop(doc["pid"])
        assert doc["tables"]["public.events"] == pitr.sql("select count(*) from events where note = 'a'")[0][0] \
            + pitr.sql("select count(*) from events where note not in ('a', 'b', 'c')")[0][0]
    finally:
        shutil.move(aside, target)


@pytest.mark.parametrize("args, message", [
    (["--to-time", "2026-01-01T00:00:00"], "no time zone"),
    (["--to-time", "soon"], "not a time"),
    (["--to-lsn", "zz/1"], "not an LSN"),
    (["--to-lsn", "FFF/0"], "beyond the archived WAL"),
    (["--to-time", "2999-01-01T00:00:00Z"], "beyond the newest restorable time"),
    (["--to-time", "latest", "--to-lsn", "0/1"], "give one of"),
    (["--to-time", "latest", "--latest"], "don't combine"),
    (["--to-time", "latest", "--no-owner"], "don't combine"),       # were silently ignored
    (["--to-lsn", "0/1", "--role", "someone"], "don't combine"),
    (["--beside", "--allow-damaged"], "don't combine"),
    (["--beside"], "give one of"),
])
def test_bad_restore_targets_exit_2_and_change_nothing(pitr, batches, runner, args, message):
    before = _live(pitr)
    r = pitr.cli(runner, "restore", *args, "--yes")
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert _live(pitr) == before


def test_a_time_after_the_last_commit_of_a_quiet_server_is_refused_for_what_it_is(pitr, batches, runner):
    """Breaker 22 F9: with every commit archived and none made since, a --to-time after the last
    commit was refused as "later WAL is not archived yet", sending the reader after an archiving
    fault that did not exist (a quiet database at 2 a.m.: "restore to 02:00", last commit
    01:55). The refusal now says what the live server tells: it committed nothing after the
    newest restorable time, and 'latest' restores that state; a later commit not archived yet
    is named with its time."""
    pitr.sql("alter system set autovacuum = off", db="postgres")  # no autoanalyze commit after ours
    pitr.sql("select pg_reload_conf()", db="postgres")
    try:
        pitr.commit_archived("insert into events(note) values ('the last commit')")
        pitr.wait_archived()
        (last,) = pitr.sql("select timestamp from pg_last_committed_xact()", db="postgres")[0]
        time.sleep(1)
        after = (last + dt.timedelta(seconds=0.5)).isoformat()
        before = _live(pitr)
        r = pitr.cli(runner, "restore", "--to-time", after, "--yes")
        assert r.exit_code == 2 and "beyond the newest restorable time" in r.output, r.output
        assert "the live server committed nothing after it" in r.output and "not archived yet" not in r.output, r.output
        assert _live(pitr) == before
    finally:
        pitr.sql("alter system reset autovacuum", db="postgres")
        pitr.sql("select pg_reload_conf()", db="postgres")


def test_a_time_whose_wal_is_not_archived_yet_is_refused_without_advising_latest(pitr, batches, runner):
    """Breaker 36 F4: a restore to just before a DELETE whose WAL was not archived yet was
    refused advising "choose an earlier --to-time or 'latest'": 'latest' brings the DELETE back.
    The refusal now says to run it again once the archiver has the WAL. The archiver is
    stopped here, so the WAL is either still in the server's open segment or queued (a
    switch on archive_timeout): both are 'not archived yet'."""
    from opsctl.pitr import local as pitr_local

    pitr.wait_archived()
    assert pitr_local.stop_archiver(pitr.state())
    try:
        pitr.sql("insert into events(note) values ('wanted')")
        time.sleep(0.3)
        target = dt.datetime.now(dt.timezone.utc)
        time.sleep(0.3)
        pitr.sql("delete from events where note = 'wanted'")  # the accident
        before = _live(pitr)
        r = pitr.cli(runner, "restore", "--to-time", target.isoformat(), "--beside")
        assert r.exit_code == 2 and "beyond the newest restorable time" in r.output, r.output
        said = " ".join(r.output.split())
        assert "run this again once the WAL archiver has it" in said, said
        assert "or 'latest'" not in said and "'latest' would also restore what was committed after it" in said, said
        assert _live(pitr) == before
    finally:
        pitr.ensure_archiver()
        pitr.wait_archived()


def _restored_ids(doc) -> set[int]:
    from pitr_support import beside_ids

    return beside_ids(doc)


def test_restore_to_an_lsn_mid_window_gives_the_rows_before_it(pitr, batches, runner):
    # the window's end LSN comes from the listing (its last segment), not from dating it: an
    # LSN inside the archived WAL was refused as "beyond the archived WAL (up to 0/0)"
    pitr.sql("insert into events(note) select 'before-lsn' from generate_series(1, 3)")
    (lsn,) = pitr.sql("select pg_current_wal_insert_lsn()::text", db="postgres")[0]
    pitr.sql("insert into events(note) select 'after-lsn' from generate_series(1, 3)")
    pitr.wait_archived()
    r = pitr.cli(runner, "restore", "--to-lsn", lsn, "--beside", "--json")
    assert r.exit_code == 0, r.output
    assert _restored_ids(json.loads(r.stdout)) == {
        row[0] for row in pitr.sql("select id from events where note <> 'after-lsn'")}


def test_an_abort_after_the_last_commit_does_not_block_a_restore_to_that_commit(pitr, batches, runner):
    # the window is dated by transaction ends, aborts included: recovery stops before the
    # abort (recovery_target_time) instead of replaying it and refusing its time as a commit
    import psycopg

    pitr.sql("insert into events(note) values ('last')")
    (last,) = pitr.sql("select pg_xact_commit_timestamp(xmin) from events where note = 'last'")[0]
    with psycopg.connect(pitr.url("pitrdb")) as conn:
        conn.execute("insert into events(note) values ('rolled back')")
        conn.rollback()
    pitr.wait_archived()
    want = {row[0] for row in pitr.sql("select id from events")}
    for target in (last.isoformat(), "latest"):
        r = pitr.cli(runner, "restore", "--to-time", target, "--beside", "--json")
        assert r.exit_code == 0, r.output
        assert _restored_ids(json.loads(r.stdout)) == want


def test_a_new_host_verifies_the_chain_and_lists_the_window_before_local_up(pitr, batches, runner, tmp_path):
    """On a new host (the old one lost; the platform never started here) `backup verify-chain`
    said "the local platform ... was never started; run 'opsctl local up'": the read-only check
    a disaster recovery starts with needed a server first. It now checks the one cluster the
    repository holds, with the same verdict as on the old host, and starts nothing."""
    import yaml

    from opsctl.cli import app

    (tmp_path / "opsctl.yaml").write_text((pitr.root / "opsctl.yaml").read_text())
    code, here = _verify(pitr, runner)
    r = runner.invoke(app, ["--root", str(tmp_path), "backup", "verify-chain", "--json"])
    assert r.exit_code == code == 0, r.output
    there = json.loads(r.stdout)
    assert there["sysid"] == here["sysid"] == pitr.sysid()
    assert there["windows"] == here["windows"] and there["newest_restorable"] == here["newest_restorable"]
    listed = runner.invoke(app, ["--root", str(tmp_path), "backup", "list", "--json"])
    assert listed.exit_code == 0, listed.output  # breaker 14: the command still needed the platform
    assert json.loads(listed.stdout)["pitr"]["windows"][-1]["to"] == here["newest_restorable"]
    shown = runner.invoke(app, ["--root", str(tmp_path), "backup", "list"])
    assert shown.exit_code == 0 and "point-in-time recovery: " in shown.output, shown.output
    assert not (tmp_path / ".opsctl" / "local" / "data").exists()  # nothing was started or made
    # a repository of two clusters can't say which one is meant: one line, exit 2
    doc = yaml.safe_load((tmp_path / "opsctl.yaml").read_text())
    other = tmp_path / "repo2"
    shutil.copytree(pitr.root / "repo", other)
    (other / "pitr" / "7400000000000000042" / "wal").mkdir(parents=True)  # another cluster's archive
    (other / "pitr" / "7400000000000000042" / "wal" / "00000001.history").write_bytes(b"x")
    doc["environments"]["local"]["backup"]["repository"] = f"file://{other}"
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    # its WAL alone restores nothing: the cluster with base backups is the one (breaker 16 F7:
    # list and verify-chain refused where a restore after a lost disk chose it)
    r = runner.invoke(app, ["--root", str(tmp_path), "backup", "verify-chain", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["sysid"] == pitr.sysid(), r.output
    base = other / "pitr" / "7400000000000000042" / "base" / "20261201T000000Z-0000"
    base.mkdir(parents=True)  # and with a base backup of its own, the two can't be told apart
    (base / "base.json").write_bytes(b"{}")
    r = runner.invoke(app, ["--root", str(tmp_path), "backup", "verify-chain"])
    assert r.exit_code == 2 and "holds 2 clusters" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "point backup.repository at a copy holding only the one to use" in r.output, r.output
    # backup list still lists the backups, and says why it shows no window (breaker 15 D: it
    # showed none and said nothing, as for a repository with no point-in-time data)
    listed = runner.invoke(app, ["--root", str(tmp_path), "backup", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    doc_listed = json.loads(listed.stdout)
    assert "holds 2 clusters" in doc_listed["pitr"]["note"] and doc_listed["pitr"]["windows"] == [], listed.stdout
    shown = runner.invoke(app, ["--root", str(tmp_path), "backup", "list"], terminal_width=80)
    assert shown.exit_code == 0 and "point-in-time recovery: not shown: " in shown.output, shown.output
    doc["environments"]["local"]["backup"]["repository"] = f"file://{tmp_path / 'no-such-repo'}"  # a typo
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["--root", str(tmp_path), "backup", "verify-chain"])
    assert r.exit_code == 2 and "holds no archived cluster" in r.output and "check backup.repository" in r.output, r.output


def test_an_lsn_past_the_archive_is_refused_naming_the_last_record_which_restores(pitr, batches, runner):
    """Breaker 36 F10: the refusal named the last segment's last byte (0/4FFFFFF), where no
    recovery can stop; it now names where the last whole record starts, a target that works."""
    import re

    pitr.sql("insert into events(note) values ('near the end')")
    pitr.wait_archived()
    r = pitr.cli(runner, "restore", "--to-lsn", "FFFFFFFF/FFFFFFFF", "--beside", "--yes")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    bound = re.search(r"its last record starts at ([0-9A-F]+/[0-9A-F]+)\).*choose an LSN up to \1;", text)
    assert bound and "nothing was changed" in text, text
    assert not bound[1].endswith("FFFFFF"), text
    ok = pitr.cli(runner, "restore", "--to-lsn", bound[1], "--beside", "--json")
    assert ok.exit_code == 0, ok.output
    (near,) = pitr.sql("select id from events where note = 'near the end'")[0]
    assert near in _restored_ids(json.loads(ok.stdout))  # the last record reached: every commit before it
