"""Breaker 51 H1-H3: what `opsctl local status` and the pending-failover line tell about the
embedded standby and an interrupted local failover, on the real platform (the PITR cluster, a
standby built from its archive, Redis, S3, the router and a worker).

H1: a running `dr standby` was listed twice, the second time as a restore's throw-away copy
("fsync off: not for keeps"). H2: `local status` judged the standby by pg_isready ("streaming
from the primary" with no WAL receiver, even once promoted), never named a pending failover,
advised `dr standby` (refused while one is pending), and called Redis "running while the rest
of the platform is stopped" when only PostgreSQL was. H3: the pending-failover line offered
`failover --abandon` at every stage, also where abandon refuses."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from opsctl.errors import Interrupted
from opsctl.health.model import Status

STANDBY = "postgres-standby"
FINISH = "'opsctl failover --env local --yes'"
ABANDON = "'opsctl failover --env local --abandon'"


@pytest.fixture(scope="module")
def platform(pitr):
    """The pitr cluster plus the rest of the platform (Redis, S3, router, the worker)."""
    from opsctl.local import platform as pl

    pl.up(pitr.project())
    yield pitr
    pl.down(pitr.project())


@pytest.fixture(autouse=True)
def nothing_pending(platform, runner):
    """A failover a failed test left pending is finished (or undone) after it: the next test
    starts from a platform whose PostgreSQL takes writes."""
    yield
    if (platform.project().state_dir / "failover" / "local.pending.json").exists():
        if platform.cli(runner, "failover", "--env", "local", "--yes").exit_code != 0:
            platform.cli(runner, "failover", "--env", "local", "--abandon", "--yes")
        platform.ensure_archiver()


def _status(platform, runner) -> dict:
    """`opsctl local status --json`'s rows by name (and its exit code as "_rc")."""
    r = platform.cli(runner, "local", "status", "--json")
    assert r.exit_code in (0, 1), r.output
    rows = json.loads(r.stdout)["components"]
    by_name = {c["name"]: c for c in rows}
    assert len(by_name) == len(rows), [c["name"] for c in rows]  # no component twice
    return by_name | {"_rc": r.exit_code, "_rows": rows}


def _standby(platform, runner) -> dict:
    assert platform.cli(runner, "backup", "base").exit_code == 0
    r = platform.cli(runner, "dr", "standby", "--env", "local", "--json")
    log = platform.state().log(STANDBY)
    assert r.exit_code == 0, (r.output, log.read_text()[-3000:] if log.is_file() else "no standby log")
    return json.loads(r.stdout)


def _streaming_standby(platform, runner, timeout: float = 60.0) -> None:
    """A standby that streams from the primary, as the `standby` health check judges it: the one
    running kept (once it streams again), else one built."""
    if platform.state().components.get(STANDBY) is None or _check(platform).details.get("pid") is None:
        _standby(platform, runner)
    deadline = time.monotonic() + timeout
    while _check(platform).status != Status.OK:
        assert time.monotonic() < deadline, _check(platform)
        time.sleep(0.5)


def _streaming_again(platform, runner, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = _status(platform, runner)
        if rows[STANDBY]["healthy"]:
            return rows
        assert time.monotonic() < deadline, rows[STANDBY]
        time.sleep(0.5)


def _check(platform):
    from opsctl.pitr.health import standby_health

    return standby_health(platform.project(), platform.env())


def _in_recovery(port: int) -> bool:
    from opsctl.local import postgres as pg

    with psycopg.connect(pg.url(port), autocommit=True) as conn:
        return conn.execute("select pg_is_in_recovery()").fetchone()[0]


def _killed(platform, monkeypatch, *, after: str | None = None, before: str | None = None, step: str | None = None):
    """Run the local failover and stop it as a kill -9 would: right `after` its journal says a
    stage, right `before` it does (the work done, the journal not yet written), or when it
    reaches `step`. The journal is left pending."""
    from opsctl.pitr import standby

    real = standby._save_pending

    def save(project, env, doc):
        if doc.get("stage") == before:
            raise KeyboardInterrupt
        real(project, env, doc)
        if doc.get("stage") == after:
            raise KeyboardInterrupt

    def progress(name):
        if name == step:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(standby, "_save_pending", save)
        with pytest.raises(Interrupted) as stopped:
            standby.failover(platform.project(), platform.env(), progress=progress)
    assert (platform.project().state_dir / "failover" / "local.pending.json").exists()
    return str(stopped.value)


def _finish(platform, runner) -> None:
    r = platform.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert not (platform.project().state_dir / "failover" / "local.pending.json").exists()
    platform.ensure_archiver()


def test_a_running_standby_is_one_row_and_a_restore_copy_is_still_told_as_one(platform, runner):
    """H1: the standby is the platform's own server, never "a copy a restore left running"; a
    real `restore --beside` copy keeps its row, fsync off as it says."""
    from opsctl.local import postgres as pg
    from opsctl.local import state as st

    sb = _standby(platform, runner)
    rows = _status(platform, runner)
    assert [c["pid"] for c in rows["_rows"]].count(sb["pid"]) == 1, rows["_rows"]
    assert not [c for c in rows["_rows"] if c["name"].startswith("postgres (")], rows["_rows"]
    assert rows[STANDBY]["healthy"] and "streams from the primary" in rows[STANDBY]["note"], rows[STANDBY]
    r = platform.cli(runner, "local", "status")
    assert "postgres (postgres-standby)" not in r.output and "not for keeps" not in r.output, r.output
    # its record gone from the state file (moved aside, as a damaged one's message advises), the
    # standby is still its own row, found by its PID file, not a restore's copy and not hidden
    folder = st.folder_for(platform.root)
    with st.locked(folder):
        state = st.load(folder)
        kept = state.components.pop(STANDBY)
        state.save()
    try:
        rows = _status(platform, runner)
        assert rows[STANDBY]["pid"] == sb["pid"] and "found by its PID file" in rows[STANDBY]["note"], rows
        assert not [c for c in rows["_rows"] if c["name"].startswith("postgres (")], rows["_rows"]
    finally:
        with st.locked(folder):
            state = st.load(folder)
            state.components[STANDBY] = kept
            state.save()

    platform.wait_archived()
    r = platform.cli(runner, "restore", "--to-time", "latest", "--beside", "--json")
    assert r.exit_code == 0, r.output
    copy = json.loads(r.stdout)
    try:
        rows = _status(platform, runner)
        (beside,) = [c for c in rows["_rows"] if c["name"].startswith("postgres (postgres.restored-")]
        assert beside["pid"] == copy["pid"], beside
        assert "a copy a restore left running" in beside["note"] and "fsync off: not for keeps" in beside["note"]
        assert rows[STANDBY]["pid"] == sb["pid"]
    finally:
        pg.stop(copy["pid"])


def test_status_judges_streaming_as_the_health_check_and_redis_is_not_alone_when_postgres_is(platform, runner):
    """H2: the primary down, the standby answers pg_isready but streams nothing: status said
    "streaming from the primary" (healthy) where health's standby check WARNs, and Redis's row
    said the rest of the platform was stopped while S3, the router and the worker ran."""
    from opsctl.local import postgres as pg

    _streaming_standby(platform, runner)
    pg.stop(platform.pid)
    try:
        deadline = time.monotonic() + 30
        while _check(platform).details.get("streaming"):  # its WAL receiver sees the primary gone
            assert time.monotonic() < deadline
            time.sleep(0.2)
        check = _check(platform)
        rows = _status(platform, runner)
        assert check.status == Status.WARNING, check
        assert rows[STANDBY]["pid"] is not None and not rows[STANDBY]["healthy"], rows[STANDBY]
        assert rows[STANDBY]["note"] == check.message and "does not stream from the primary" in check.message
        assert rows["redis"]["healthy"] and rows["router"]["healthy"], rows
        assert "rest of the platform is stopped" not in rows["redis"]["note"], rows["redis"]
    finally:
        platform.start_postgres()
        _streaming_standby(platform, runner)
    rows = _streaming_again(platform, runner)
    assert _check(platform).status == Status.OK and rows[STANDBY]["note"] == _check(platform).message


def test_killed_at_promoted_status_names_the_failover_and_only_finishing_is_offered(platform, runner,
                                                                                    monkeypatch):
    """H2, H3: a failover killed right after its journal says 'promoted'. The standby is the
    new primary (out of recovery, no WAL receiver): status said "streaming from the primary",
    an empty note on postgres, Redis "alone"; every pending-failover line offered --abandon,
    which abandon refuses there."""
    _streaming_standby(platform, runner)
    sb_port = platform.state().components[STANDBY].port
    said = _killed(platform, monkeypatch, after="promoted")
    assert not _in_recovery(sb_port)

    rows = _status(platform, runner)
    assert rows["_rc"] == 1
    for name in ("postgres", STANDBY):
        note = rows[name]["note"]
        assert not rows[name]["healthy"] and "interrupted at 'promoted' is pending" in note, rows[name]
        assert FINISH in note and "--abandon" not in note and "streaming" not in note, rows[name]
    assert rows[STANDBY]["pid"] is not None and rows["postgres"]["pid"] is None
    assert not [c for c in rows["_rows"] if c["name"].startswith("postgres (")], rows["_rows"]
    assert rows["redis"]["healthy"] and "rest of the platform is stopped" not in rows["redis"]["note"]
    text = platform.cli(runner, "local", "status")
    assert text.exit_code == 1 and "is pending" in text.output and "--abandon" not in text.output, text.output

    # the interrupted failover itself, health, `dr standby`'s refusal (and `local up`'s warning): one line
    assert "interrupted at 'promoted' is pending" in said and FINISH in said and "--abandon" not in said, said
    check = _check(platform)
    assert check.status == Status.CRITICAL and FINISH in check.message and "--abandon" not in check.message
    r = platform.cli(runner, "dr", "standby", "--env", "local")
    assert r.exit_code == 2 and "refused" in r.output and "--abandon" not in r.output, r.output
    # what the line leaves out is what abandon refuses
    r = platform.cli(runner, "failover", "--env", "local", "--abandon", "--yes")
    assert r.exit_code == 2 and "got past the promotion" in r.output, r.output
    _finish(platform, runner)
    rows = _status(platform, runner)
    assert rows["postgres"]["healthy"] and "pending" not in rows["postgres"]["note"], rows["postgres"]


def test_killed_after_pg_promote_before_its_journal_says_so_offers_no_abandon(platform, runner, monkeypatch):
    """H3 by the rule, not the stage's name: the journal still says 'promoting', but the
    standby was promoted (kill -9 between pg_promote and the journal): abandon refuses, so the
    line offers finishing only."""
    _streaming_standby(platform, runner)
    sb_port = platform.state().components[STANDBY].port
    said = _killed(platform, monkeypatch, before="promoted")
    assert not _in_recovery(sb_port)
    assert "interrupted at 'promoting' is pending" in said and FINISH in said and "--abandon" not in said, said
    rows = _status(platform, runner)
    assert "--abandon" not in rows[STANDBY]["note"] and FINISH in rows[STANDBY]["note"], rows[STANDBY]
    r = platform.cli(runner, "failover", "--env", "local", "--abandon", "--yes")
    assert r.exit_code == 2 and "promoted already" in r.output, r.output
    _finish(platform, runner)


def test_killed_at_promoting_both_ways_out_are_offered_and_abandon_takes_it(platform, runner, monkeypatch):
    """H2, H3: killed at 'promoting' before pg_promote: the old primary stopped and fenced, the
    standby still in recovery streaming nothing. Status names the failover with both ways out,
    and abandon, offered, undoes it; the standby then streams again and status says so."""
    _streaming_standby(platform, runner)
    said = _killed(platform, monkeypatch, step="promoting the standby")
    assert "interrupted at 'promoting' is pending" in said and FINISH in said and ABANDON in said, said
    rows = _status(platform, runner)
    for name in ("postgres", STANDBY):
        note = rows[name]["note"]
        assert not rows[name]["healthy"] and FINISH in note and ABANDON in note, rows[name]
        assert "streaming" not in note and "streams" not in note, rows[name]
    assert "rest of the platform is stopped" not in rows["redis"]["note"], rows["redis"]
    r = platform.cli(runner, "failover", "--env", "local", "--abandon", "--yes")
    assert r.exit_code == 0, r.output
    rows = _streaming_again(platform, runner)
    assert rows["postgres"]["healthy"] and "pending" not in rows["postgres"]["note"], rows["postgres"]
    platform.ensure_archiver()


def test_killed_between_the_renames_status_names_the_failover_not_dr_standby(platform, runner, monkeypatch):
    """H2 variant: killed between data/postgres -> postgres.failed-* and postgres-standby ->
    data/postgres: the standby's row said "'opsctl dr standby' builds it again", which is
    refused while the failover is pending; finishing it is the way out."""
    from pathlib import Path

    from opsctl.pitr import standby

    _streaming_standby(platform, runner)
    real = Path.rename

    def rename(self, target):
        if self.name == STANDBY:
            raise KeyboardInterrupt  # kill -9 after live -> postgres.failed-*, before new -> live
        return real(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "rename", rename)
        with pytest.raises(Interrupted) as stopped:
            standby.failover(platform.project(), platform.env())
    assert not platform.state().data("postgres").exists()
    rows = _status(platform, runner)
    for name in ("postgres", STANDBY):
        note = rows[name]["note"]
        assert not rows[name]["healthy"] and "interrupted at 'repointing' is pending" in note, rows[name]
        assert FINISH in note and "dr standby" not in note and "--abandon" not in note, rows[name]
    assert "rest of the platform is stopped" not in rows["redis"]["note"], rows["redis"]
    assert FINISH in str(stopped.value) and "--abandon" not in str(stopped.value), stopped.value
    r = platform.cli(runner, "dr", "standby", "--env", "local")
    assert r.exit_code == 2 and "refused" in r.output, r.output
    _finish(platform, runner)
    rows = _status(platform, runner)
    assert rows["postgres"]["healthy"] and STANDBY not in rows, rows


def test_a_standby_promoted_by_hand_is_critical_and_never_kept_as_a_standby(platform, runner):
    """A standby promoted outside opsctl (pg_promote, `pg_ctl promote`) is a second primary that
    no failover can use (it refuses one "promoted already"): the health check said WARNING,
    "does not stream from the primary: it replays from the archive", and `dr standby` said it
    was already running. Both name the promotion now; `--stop` and a new build put it right."""
    from opsctl.local import postgres as pg

    _streaming_standby(platform, runner)
    port = platform.state().components[STANDBY].port
    with psycopg.connect(pg.url(port), autocommit=True) as conn:
        assert conn.execute("select pg_promote(true, 60)").fetchone()[0]
        conn.execute("select pg_logical_emit_message(false, 'opsctl-test', 'written on the second primary')")
        (segment,) = conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
        deadline = time.monotonic() + 30  # its archiver tried, and was refused
        while not conn.execute("select failed_count from pg_stat_archiver").fetchone()[0]:
            assert time.monotonic() < deadline, "the promoted standby's archiver never tried"
            time.sleep(0.2)
        assert conn.execute("select archived_count from pg_stat_archiver").fetchone()[0] == 0
    # breaker 54: its timeline had gone into the primary's repository, where `restore --to-time
    # latest` after a lost primary disk followed it, the primary's own last commits lost
    assert not platform.segment_archived(f"{segment[:8]}.history", 3)
    assert not platform.segment_archived(segment, 1)
    check = _check(platform)
    assert check.status == Status.CRITICAL and "promoted outside opsctl" in check.message, check
    assert check.details["in_recovery"] is False
    rows = _status(platform, runner)
    assert not rows[STANDBY]["healthy"] and rows[STANDBY]["note"] == check.message, rows[STANDBY]
    r = platform.cli(runner, "dr", "standby", "--env", "local")
    assert r.exit_code == 1 and "promoted outside opsctl" in r.stderr and "--stop" in r.stderr, r.output
    assert platform.cli(runner, "dr", "standby", "--env", "local", "--stop").exit_code == 0
    _streaming_standby(platform, runner)
    assert _in_recovery(platform.state().components[STANDBY].port)


def test_a_standby_of_another_cluster_is_critical_and_never_kept(platform, runner, tmp_path):
    """Breaker 54 F7: the primary's data directory lost and made anew (another cluster, another
    system identifier): the standby can never follow it and a failover refuses it, yet health
    said WARNING "replays from the archive" and `dr standby` kept it, "a failover promotes it".
    Here the primary's port is taken by a freshly made cluster while the real one is stopped."""
    from opsctl.local import postgres as pg
    from opsctl.local import procs
    from opsctl.local import state as st

    _streaming_standby(platform, runner)
    foreign_port = procs.free_port()
    foreign = pg.start(tmp_path / "other", foreign_port, tmp_path / "other.log")
    real_port = platform.port
    pg.stop(platform.pid)
    folder = st.folder_for(platform.root)

    def primary_port(port: int) -> None:
        with st.locked(folder):
            state = st.load(folder)
            state.components["postgres"].port = port
            state.save()

    try:
        primary_port(foreign_port)
        check = _check(platform)
        assert check.status == Status.CRITICAL and "another cluster" in check.message, check
        r = platform.cli(runner, "dr", "standby", "--env", "local")
        assert r.exit_code == 1 and "another cluster" in r.stderr and "--stop" in r.stderr, r.output
    finally:
        primary_port(real_port)
        pg.stop(foreign)
        platform.start_postgres()
    _streaming_standby(platform, runner)
    assert _check(platform).status == Status.OK
