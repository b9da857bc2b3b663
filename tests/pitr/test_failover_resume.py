"""Issue 22 review (break 4): a local failover interrupted after the promotion (Ctrl-C, SIGTERM
taken as Ctrl-C, kill -9 while repointing) is finished by a rerun, and the old primary, fenced
before the promotion, never comes back writable beside the promoted standby."""
from __future__ import annotations

import psycopg
import pytest


@pytest.mark.parametrize("at", ["promoting the standby", "repointing the environment"])
def test_an_interrupted_failover_is_finished_by_a_rerun_and_never_leaves_two_primaries(pitr, runner, at):
    from opsctl.local import postgres as pg
    from opsctl.pitr import standby

    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'x' from generate_series(1, 20)")
    standby.start_standby(pitr.project(), pitr.env())
    old_data = pitr.state().data("postgres")
    kept_before = set(old_data.parent.glob("postgres.failed-*"))

    def ctrl_c_at(step):
        if step == at:
            raise KeyboardInterrupt

    try:
        standby.failover(pitr.project(), pitr.env(), progress=ctrl_c_at)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the failover was not interrupted")
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
