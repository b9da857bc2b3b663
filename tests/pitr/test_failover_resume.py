"""Issue 22 review (break 4): a local failover interrupted after the promotion (Ctrl-C, SIGTERM
taken as Ctrl-C, kill -9 while repointing) is finished by a rerun, and the old primary, fenced
before the promotion, never comes back writable beside the promoted standby."""
from __future__ import annotations

import psycopg
import pytest

from opsctl.errors import Interrupted


@pytest.mark.parametrize("at", ["promoting the standby", "repointing the environment"])
def test_an_interrupted_failover_is_finished_by_a_rerun_and_never_leaves_two_primaries(pitr, runner, at):
    from opsctl.local import postgres as pg
    from opsctl.pitr import standby

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'x' from generate_series(1, 20)")
    standby.start_standby(pitr.project(), pitr.env())
    old_data = pitr.state().data("postgres")
    kept_before = set(old_data.parent.glob("postgres.failed-*"))

    _interrupt_at(pitr, at)
    # fenced before the promotion: the platform's start (what `opsctl local up` does) brings the
    # old primary back read-only, never writable beside the promoted standby
    assert (old_data / "standby.signal").exists()
    sb_port = pitr.state().components["postgres-standby"].port
    pitr.start_postgres()
    with psycopg.connect(pg.url(pitr.port), autocommit=True) as c:
        assert c.execute("select pg_is_in_recovery()").fetchone()[0], "the old primary came back writable"
    with psycopg.connect(pg.url(sb_port), autocommit=True) as c:  # promoted unless stopped before
        assert c.execute("select pg_is_in_recovery()").fetchone()[0] == (at == "promoting the standby")
    r = pitr.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 0, r.output
    state = pitr.state()
    assert "postgres-standby" not in state.components
    with psycopg.connect(pg.url(pitr.port), autocommit=True) as c:  # the promoted server, at data/postgres
        assert not c.execute("select pg_is_in_recovery()").fetchone()[0]
    assert pitr.sql("select count(*) from events where note = 'x'")[0][0] >= 20
    assert not (state.data("postgres") / "standby.signal").exists()
    failed = set(old_data.parent.glob("postgres.failed-*")) - kept_before
    assert len(failed) == 1 and (failed.pop() / "standby.signal").exists()
    assert not (pitr.project().state_dir / "failover" / "local.pending.json").exists()
    pitr.ensure_archiver()


def test_dr_standby_is_refused_while_a_failover_or_restore_holds_the_lease(pitr, runner):
    """`dr standby` takes the deploy lease as failover does: a build racing a failover (which
    promotes the standby being replaced) or an in-place restore (which removes it) is refused
    at once, nothing built."""
    from opsctl.pitr import lease

    before = dict(pitr.state().components)
    with lease.held(pitr.project(), pitr.env(), "failover"):
        r = pitr.cli(runner, "dr", "standby", "--env", "local")
    assert r.exit_code == 2, r.output
    assert "refused" in r.output and "a failover (pid" in r.output and "nothing was changed" in r.output
    with lease.held(pitr.project(), pitr.env(), "restore"):
        r = pitr.cli(runner, "dr", "standby", "--env", "local")
    assert r.exit_code == 2 and "a restore (pid" in r.output, r.output
    assert pitr.state().components.keys() == before.keys()
    assert not pitr.state().data("postgres-standby").exists()


def _interrupt_at(pitr, at: str) -> None:
    """Run a failover that Ctrl-C stops when it reaches step `at`."""
    from opsctl.pitr import standby

    def ctrl_c_at(step):
        if step == at:
            raise KeyboardInterrupt

    try:
        standby.failover(pitr.project(), pitr.env(), progress=ctrl_c_at)
    except (KeyboardInterrupt, Interrupted):  # Interrupted once the failover is pending
        pass
    else:
        raise AssertionError("the failover was not interrupted")


def _read_only(port) -> bool:
    from opsctl.local import postgres as pg

    with psycopg.connect(pg.url(port), autocommit=True) as c:
        return c.execute("select pg_is_in_recovery()").fetchone()[0]


def test_a_pending_failover_whose_standby_is_gone_is_refused_and_can_be_abandoned(pitr, runner):
    """Issue 22 review (break 1): `dr standby --stop` (and a new build) and an in-place restore to a
    time are refused while a failover journal is pending; when the standby is removed anyway
    (stop_standby, what an in-place restore did to it before it was refused here), the rerun
    refuses in one line (exit 2) instead of recording a failover that promoted nothing, and
    `failover --abandon` unfences the old primary, writable again."""
    from opsctl.pitr import standby

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    standby.start_standby(pitr.project(), pitr.env())
    _interrupt_at(pitr, "promoting the standby")
    journal = pitr.project().state_dir / "failover" / "local.pending.json"
    record = pitr.project().state_dir / "failover" / "local.json"
    recorded = record.read_text() if record.exists() else None
    assert journal.exists()
    for args in (["--stop"], []):
        r = pitr.cli(runner, "dr", "standby", "--env", "local", *args)
        assert r.exit_code == 2 and "refused" in r.output and "--abandon" in r.output, r.output
    # an in-place restore would start a writable primary in place of the fenced one and remove the
    # standby meant to become the primary: refused in one line, before anything is unpacked
    data_root = pitr.state().data("postgres").parent
    folders = sorted(p.name for p in data_root.iterdir())
    r = pitr.cli(runner, "restore", "--env", "local", "--to-time", "latest", "--yes")
    assert r.exit_code == 2, r.output
    assert "an in-place restore refused" in r.output and "failover --env local --abandon" in r.output, r.output
    assert "Traceback" not in r.output and sorted(p.name for p in data_root.iterdir()) == folders
    assert (pitr.state().data("postgres") / "standby.signal").exists()  # the old primary is still fenced
    assert "postgres-standby" in pitr.state().components and pitr.state().data("postgres-standby").is_dir()
    assert standby.stop_standby(pitr.project(), pitr.env())  # removed anyway (by hand)
    r = pitr.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 2, r.output
    assert "is gone" in r.output and "--abandon" in r.output and "read-only" in r.output, r.output
    assert journal.exists() and (record.read_text() if record.exists() else None) == recorded
    pitr.start_postgres()  # `opsctl local up`: the fenced old primary comes back read-only
    assert _read_only(pitr.port)
    r = pitr.cli(runner, "failover", "--env", "local", "--abandon", "--yes")
    assert r.exit_code == 0, r.output
    assert not journal.exists() and not (pitr.state().data("postgres") / "standby.signal").exists()
    assert not _read_only(pitr.port)
    pitr.sql("insert into events(note) values ('after abandon')")
    r = pitr.cli(runner, "failover", "--env", "local", "--abandon", "--yes")
    assert r.exit_code == 2 and "no interrupted failover" in r.output, r.output
    pitr.ensure_archiver()


def test_a_failover_killed_after_its_fence_is_journaled_and_finished_by_the_rerun(pitr, runner, monkeypatch):
    """Issue 22 review (break 3): the journal is written before the fence, so a run killed right
    after fencing (the old primary read-only) is recognised by the rerun, which promotes the
    standby rather than advising to rebuild it."""
    from opsctl.pitr import standby

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    standby.start_standby(pitr.project(), pitr.env())
    pitr.sql("insert into events(note) select 'k' from generate_series(1, 5)")
    real = standby._fence

    def fence_then_killed(data):
        real(data)
        raise KeyboardInterrupt  # kill -9 right after the fence

    with monkeypatch.context() as m:
        m.setattr(standby, "_fence", fence_then_killed)
        with pytest.raises(Interrupted) as stopped:  # breaker 36 F6: "interrupted" alone said nothing
            standby.failover(pitr.project(), pitr.env())
    assert stopped.value.exit_code == 130 and "interrupted at 'fencing' is pending" in str(stopped.value), stopped.value
    assert "'opsctl failover --env local --yes'" in str(stopped.value)
    assert (pitr.project().state_dir / "failover" / "local.pending.json").exists()
    pitr.start_postgres()  # `opsctl local up`
    assert _read_only(pitr.port)
    # breaker 36 F2: the checks said OK (the standby's blamed the archive's lag) while every
    # write failed; the standby check now says the failover is pending, and both ways out
    from opsctl.health.model import Status
    from opsctl.pitr.health import standby_health

    check = standby_health(pitr.project(), pitr.env())
    assert check.status == Status.CRITICAL, check
    assert "a failover of local interrupted at '" in check.message and "read-only: every write fails" in check.message
    assert "'opsctl failover --env local --yes'" in check.message and "--abandon'" in check.message, check.message
    r = pitr.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert not _read_only(pitr.port)
    assert "is pending" not in standby_health(pitr.project(), pitr.env()).message
    assert pitr.sql("select count(*) from events where note = 'k'")[0][0] == 5
    pitr.ensure_archiver()


def test_a_failover_killed_before_its_fence_says_so_and_local_up_brings_the_old_primary_back_fenced(
        pitr, runner, monkeypatch):
    """Breaker 64 F2: killed right after its journal ('fencing'), before it stopped the old
    primary, a failover left that primary unfenced: the status said "fenced (read-only: every
    write fails)" while it took writes, `opsctl local up` (after it stopped) started it writable
    beside the standby meant to take over, and the record said `fenced: was down` of a primary
    that ran. Now the line says what the server does (asked), `local up` fences it first, and
    the rerun records it stopped."""
    import json

    from opsctl.health.model import Status
    from opsctl.local import postgres as pg
    from opsctl.pitr import standby
    from opsctl.pitr.health import standby_health

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    standby.start_standby(pitr.project(), pitr.env())
    pitr.sql("insert into events(note) select 'f' from generate_series(1, 5)")
    real = standby._save_pending

    def journal_then_killed(project, env, doc):
        real(project, env, doc)
        if doc["stage"] == "fencing":
            raise KeyboardInterrupt  # kill -9 between the journal and the stop

    with monkeypatch.context() as m:
        m.setattr(standby, "_save_pending", journal_then_killed)
        with pytest.raises(Interrupted):
            standby.failover(pitr.project(), pitr.env())
    assert not _read_only(pitr.port)  # still the primary: nothing was stopped yet
    check = standby_health(pitr.project(), pitr.env())
    assert check.status == Status.CRITICAL and "interrupted at 'fencing'" in check.message, check
    assert "not fenced yet and still takes writes" in check.message and "read-only" not in check.message, check
    pg.stop(pitr.pid)  # it stops (a crash, `local down`); then `opsctl local up`
    pitr.start_postgres()
    assert _read_only(pitr.port), "local up brought the old primary back writable beside the standby"
    assert "read-only: every write fails" in standby_health(pitr.project(), pitr.env()).message
    r = pitr.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fenced"] == "stopped", r.stdout
    assert not _read_only(pitr.port)
    assert pitr.sql("select count(*) from events where note = 'f'")[0][0] == 5
    pitr.ensure_archiver()


def test_a_failover_killed_between_its_stop_and_its_fence_says_the_old_primary_is_not_fenced(
        pitr, runner, monkeypatch):
    """Breaker 65 G7: killed after it stopped the old primary and before it fenced it, the
    failover's pending line said "fenced (read-only)" of a server that was down with no
    standby.signal; it says so now, and `local up` fences it before it starts it."""
    from opsctl.pitr import standby
    from opsctl.pitr.health import standby_health

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    standby.start_standby(pitr.project(), pitr.env())

    def killed_before_the_fence(data):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(standby, "_fence", killed_before_the_fence)
        with pytest.raises(Interrupted):
            standby.failover(pitr.project(), pitr.env())
    assert not (pitr.state().data("postgres") / "standby.signal").exists()
    message = standby_health(pitr.project(), pitr.env()).message
    assert "down and not fenced yet" in message and "read-only" not in message, message
    pitr.start_postgres()
    assert _read_only(pitr.port)
    assert "read-only: every write fails" in standby_health(pitr.project(), pitr.env()).message
    r = pitr.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 0, r.output
    pitr.ensure_archiver()


def test_a_failover_killed_between_its_renames_is_finished_and_local_up_makes_no_empty_cluster(pitr, runner,
                                                                                              monkeypatch):
    """Issue 22 review (break 4): killed between data/postgres -> postgres.failed-* and
    postgres-standby -> data/postgres: `opsctl local up` refuses to initdb an empty cluster there
    while the journal is pending, and the rerun finishes the rename (a folder made at
    data/postgres meanwhile is kept aside, not in the way)."""
    from pathlib import Path

    from opsctl.errors import UsageError
    from opsctl.pitr import standby

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    standby.start_standby(pitr.project(), pitr.env())
    pitr.sql("insert into events(note) select 'y' from generate_series(1, 5)")
    old_sysid = pitr.sysid()
    real = Path.rename

    def rename(self, target):
        if self.name == "postgres-standby":
            raise KeyboardInterrupt  # kill -9 after live -> postgres.failed-*, before new -> live
        return real(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "rename", rename)
        with pytest.raises(Interrupted, match="is pending"):  # journaled before the fence
            standby.failover(pitr.project(), pitr.env())
    live = pitr.state().data("postgres")
    assert not live.exists()
    with pytest.raises(UsageError, match="failover of local is pending"):
        pitr.start_postgres()  # `opsctl local up`
    assert not live.exists()
    live.mkdir()  # what an older `local up` made there
    (live / "PG_VERSION").write_text("16\n")
    r = pitr.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert pitr.sysid() == old_sysid and not _read_only(pitr.port)
    assert pitr.sql("select count(*) from events where note = 'y'")[0][0] == 5
    assert list(live.parent.glob("postgres.stray-*"))
    pitr.ensure_archiver()


def test_abandon_is_refused_once_the_standby_was_promoted_even_when_it_is_stopped_or_gone(pitr, runner,
                                                                                          monkeypatch):
    """Issue 22 review (22d): a failover killed right after pg_promote, then `local down` (the
    promoted standby stopped): `failover --abandon` must not start the old primary writable on the
    old timeline while the promoted one's history file is archived (restores follow it: rows
    written after the abandon would be lost). The standby's pg_control says it left recovery; with
    its data directory gone, its timeline's history file (queue or repository) says so. The rerun
    of `failover` still finishes it."""
    from opsctl.local import postgres as pg
    from opsctl.pitr import standby

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    standby.start_standby(pitr.project(), pitr.env())
    real = standby._save_pending

    def killed_after_promote(project, env, doc):
        if doc.get("stage") == "promoted":
            raise KeyboardInterrupt  # kill -9 right after pg_promote, before the journal says so
        real(project, env, doc)

    with monkeypatch.context() as m:
        m.setattr(standby, "_save_pending", killed_after_promote)
        with pytest.raises(Interrupted, match="is pending"):  # journaled before the fence
            standby.failover(pitr.project(), pitr.env())
    pg.stop(standby._standby_pid(pitr.state()))  # `opsctl local down` stopped the promoted standby
    pitr.start_postgres()  # `opsctl local up`: the fenced old primary, read-only
    journal = pitr.project().state_dir / "failover" / "local.pending.json"
    r = pitr.cli(runner, "failover", "--env", "local", "--abandon", "--yes")
    assert r.exit_code == 2, r.output
    assert "promoted its standby already" in r.output and "opsctl failover --env local" in r.output, r.output
    assert journal.exists() and _read_only(pitr.port)
    sb = pitr.state().data("postgres-standby")
    aside = sb.with_name("postgres-standby.aside")
    sb.rename(aside)  # the promoted standby's folder gone: its timeline's history file still tells
    try:
        r = pitr.cli(runner, "failover", "--env", "local", "--abandon", "--yes")
        assert r.exit_code == 2, r.output
        assert ".history in the" in r.output and "promoted its standby already" in r.output, r.output
        assert journal.exists() and _read_only(pitr.port)
    finally:
        aside.rename(sb)
    r = pitr.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert not _read_only(pitr.port) and not journal.exists()
    pitr.ensure_archiver()
