"""The embedded platform's standby and failover (issue 22): a standby built from the archive
follows the primary by streaming; `opsctl failover --env local` fences the primary, promotes
the standby, repoints the database URL the platform hands out and restarts the workers, which
then reach the promoted server; it is recorded. Real PostgreSQL (two servers), a real worker."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from opsctl.health.model import Status

from pitr_support import pitr  # noqa: F401 - the module's archived cluster
from opsctl import httpclient


@pytest.fixture(scope="module")
def platform(pitr):  # noqa: F811
    """The pitr cluster plus the rest of the platform (Redis, S3, router, the worker)."""
    from opsctl.local import platform as pl

    pl.up(pitr.project())
    yield pitr
    pl.down(pitr.project())


def _worker(pitr):
    from opsctl.local import worker as wk

    return pitr.state().components[wk.name(pitr.state().active_color)]


def test_failover_without_a_standby_is_refused_and_changes_nothing(platform, runner):
    before = platform.port
    r = platform.cli(runner, "failover", "--env", "local", "--yes")
    assert r.exit_code == 2, r.output
    assert "no running standby" in r.output and "opsctl dr standby" in r.output
    assert platform.port == before and platform.sql("select 1", db="postgres") == [(1,)]


def test_a_drill_whose_serve_phase_stops_early_says_what_it_did_not_cover(platform, runner):
    """Breaker 22 F3: with no backup holding Redis and the audio yet, the drill's serve phase
    stops at once and the drill fails, but its `scope` listed Redis, the audio, the preview and
    the load test as covered. Each part is in `scope` once done; the rest is `not_covered`."""
    assert platform.cli(runner, "backup", "base").exit_code == 0
    platform.wait_archived()
    r = platform.cli(runner, "dr", "drill", "--env", "local", "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and not doc["passed"], r.output
    assert any("no backup with Redis and audio" in p for p in doc["problems"]), doc["problems"]
    # residual of F3: `error` was null; README: a failed serve phase writes it
    assert doc["error"] and "no backup with Redis and audio" in doc["error"], doc
    assert doc["rto_seconds"] is None, doc  # breaker 25 F7: nothing served, no RTO
    # breaker F8: the database was restored and checked before the serve phase: its RPO stays
    assert doc["rpo_seconds"] is not None and doc["rows"] and doc["restored_to"], doc
    assert doc["scope"] == ["database"], doc
    assert doc["not_covered"] == ["redis", "audio objects", "preview color + transcription", "load test"], doc


def test_drill_restores_redis_audio_and_serves_a_preview_color_then_tears_down(platform, runner):
    """The drill (issue 22): database to the newest restorable time, Redis and the audio of
    the newest backup into scratch resources, a preview worker on them, the sample
    transcription and a short load test through it, then everything torn down."""
    import redis

    from opsctl.endpoints import resolve
    from opsctl.local import procs

    ep = resolve(platform.project(), platform.env())
    redis.Redis.from_url(ep.redis_url).set("drill-key", "kept")
    s3 = ep.s3_client()
    s3.put_object(Bucket=ep.audio_bucket, Key="drill/one.wav", Body=b"RIFF" + b"\0" * 100)
    r = platform.cli(runner, "backup", "create", "--json")
    assert r.exit_code == 0, r.output
    nightly = json.loads(r.stdout)["id"]
    # the hourly Redis snapshot after it holds a key the nightly backup does not
    redis.Redis.from_url(ep.redis_url).set("drill-key-hourly", "newer")
    r = platform.cli(runner, "backup", "create", "--type", "redis", "--json")
    assert r.exit_code == 0, r.output
    hourly = json.loads(r.stdout)["id"]
    r = platform.cli(runner, "backup", "base")
    assert r.exit_code == 0, r.output
    platform.wait_archived()
    buckets_before = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    out, prom = platform.root / "drill.xml", platform.root / "drill.prom"
    r = platform.cli(runner, "dr", "drill", "--env", "local", "--json", "--junit", str(out), "--metrics-file", str(prom))
    assert r.stdout.strip(), r.output
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, (r.output, doc.get("problems"))
    assert doc["not_covered"] == [] and doc["passed"] and doc["torn_down"]
    # each part from the newest backup holding it (Q3: Redis came from the newest backup holding
    # Redis AND the audio, the nightly one, and its age was neither reported nor judged)
    assert doc["backups"] == {"redis": hourly, "audio objects": nightly}, doc["backups"]
    ages = doc["part_rpo_seconds"]
    assert set(ages) == {"redis", "audio objects"} and 0 <= ages["redis"] <= ages["audio objects"], ages
    started = dt.datetime.fromisoformat(doc["started_at"])
    from opsctl.backup.catalog import id_time

    assert ages["audio objects"] >= (started - id_time(nightly)).total_seconds() - 1, (ages, nightly, started)
    assert f'opsctl_dr_drill_part_rpo_seconds{{env="local",part="redis"}} {ages["redis"]}' in prom.read_text()
    # breaker 20 F7: it said ["database"] after restoring Redis and the audio and serving a preview
    assert doc["scope"] == ["database", "redis", "audio objects", "preview color + transcription", "load test"]
    assert doc["redis_keys"] >= 1 and doc["audio_objects"] >= 1
    assert "word error" in doc["transcription"] and "SLO met" in doc["load_test"]
    assert doc["rto_seconds"] >= doc["phases"]["database"] and doc["rpo_seconds"] is not None
    junit = out.read_text()
    assert "sample transcription through the preview color" in junit and "<failure" not in junit
    assert "rpo of redis within 3600 s" in junit and "rpo of audio objects within 3600 s" in junit
    # torn down: the scratch bucket, the preview worker and the restored server are gone
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == buckets_before
    preview_port = int(doc["scratch"].rsplit(":", 1)[1])
    assert not procs.port_open(preview_port)


def test_standby_from_the_archive_then_failover_repoints_database_and_workers(platform, runner):
    from opsctl.endpoints import resolve
    from opsctl.local import procs

    assert platform.cli(runner, "backup", "base", "--json").exit_code == 0
    platform.sql("insert into events(note) select 'before the standby' from generate_series(1, 50)")
    old_port, old_pid = platform.port, platform.pid
    worker_pid = _worker(platform).pid

    r = platform.cli(runner, "dr", "standby", "--env", "local", "--json")
    assert r.exit_code == 0, r.output
    sb = json.loads(r.stdout)
    assert sb["streaming"] is True and sb["kept"] is False and sb["chain"]
    assert platform.state().components["postgres-standby"].port == sb["port"]
    # streamed, not only archived: rows committed now show up on the standby
    platform.sql("insert into events(note) select 'after the standby' from generate_series(1, 25)")
    from opsctl.local import postgres as pg
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        with psycopg.connect(pg.url(sb["port"], "pitrdb")) as conn:
            if conn.execute("select count(*) from events where note = 'after the standby'").fetchone()[0] == 25:
                break
        assert time.monotonic() < deadline, "the standby never caught up"
        time.sleep(0.2)
    again = platform.cli(runner, "dr", "standby", "--env", "local", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["kept"] is True

    platform.sql("insert into events(note) select 'last before failover' from generate_series(1, 10)")
    committed = platform.sql("select count(*) from events")[0][0]
    r = platform.cli(runner, "failover", "--env", "local", "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["old_primary_was_running"] is True and doc["timeline"] >= 2
    assert doc["new_primary"].endswith(f":{sb['port']}") and doc["old_primary"].endswith(f":{old_port}")
    assert doc["workers_restarted"] == [platform.state().active_color]

    # fenced: the old primary is gone; the environment hands out the promoted server
    assert not procs.alive(old_pid, "postgres") and not procs.port_open(old_port)
    assert doc["fenced"] == "stopped"
    assert platform.port == sb["port"] and "postgres-standby" not in platform.state().components
    url = resolve(platform.project(), platform.env()).database_url
    assert url == doc["database_url"] and f":{sb['port']}/" in url
    # nothing committed on the old primary is lost (a planned failover: RPO 0), and it takes writes
    assert platform.sql("select count(*) from events")[0][0] == committed
    assert platform.sql("select pg_is_in_recovery()", db="postgres") == [(False,)]
    platform.sql("insert into events(note) values ('on the new primary')")
    # the workers were restarted and reach the promoted server (their readiness probes PostgreSQL)
    comp = _worker(platform)
    assert comp.pid != worker_pid
    ready = httpclient.get(f"http://127.0.0.1:{comp.port}/readyz", timeout=10).json()
    assert ready["checks"]["postgres"] == "ok", ready
    # breaker F18: no standby is left; the output says so and health warns, rather than the
    # standby check disappearing (health OK)
    left = "no standby is left: run 'opsctl dr standby --env local' to protect the new primary"
    assert left in doc["notes"], doc["notes"]
    warned = _standby_check(platform)
    assert warned.status == Status.WARNING, warned
    assert f"no standby since the failover at {doc['at'][:19]}Z" in warned.message, warned
    assert "run 'opsctl dr standby --env local'" in warned.message, warned
    # recorded, privately
    journal = platform.root / ".opsctl" / "failover" / "local.json"
    assert (journal.stat().st_mode & 0o777) == 0o600
    assert json.loads(journal.read_text())[-1]["new_primary"] == doc["new_primary"]
    # the promoted server archives its new timeline into the same repository
    platform.wait_archived()
    # and the old primary, should anyone start it again, refuses writes (no split brain)
    assert json.loads(journal.read_text())[-1]["fenced"] == "stopped"
    port = procs.free_port()
    old = pg.start(Path(doc["previous_data_dir"]), port, platform.root / "old-primary.log")
    try:
        with psycopg.connect(pg.url(port, "pitrdb"), autocommit=True) as conn:
            assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is True
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("insert into events(note) values ('split brain')")
    finally:
        pg.stop(old)


def test_a_failover_is_refused_while_a_deploy_holds_the_lease_and_a_restore_while_a_failover_does(platform, runner):
    """The deploy lease (the file lock deploys take) is the environment's one lease: a failover
    racing a deploy, or an in-place restore racing a failover, is refused at once, one line,
    exit 2, nothing changed."""
    from opsctl.deploy.drivers.local import LocalDriver
    from opsctl.errors import OperationFailed
    from opsctl.pitr import lease

    pid, port = platform.pid, platform.port
    with LocalDriver(platform.project(), platform.env()).lock():
        r = platform.cli(runner, "failover", "--env", "local", "--yes")
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "failover refused" in r.output and "a deploy (pid" in r.output
    with lease.held(platform.project(), platform.env(), "failover"):
        r = platform.cli(runner, "restore", "--env", "local", "--to-time", "latest", "--yes")
    assert r.exit_code == 2, r.output
    assert "restore refused" in r.output and "a failover (pid" in r.output and "nothing was changed" in r.output
    with lease.held(platform.project(), platform.env(), "failover"):  # and a deploy names it too
        with pytest.raises(OperationFailed, match=r"^a failover \(pid \d+\) is running on env 'local'"):
            with LocalDriver(platform.project(), platform.env()).lock():
                pass
    assert (platform.pid, platform.port) == (pid, port)
    # released: the lease is free again for the next operation
    with LocalDriver(platform.project(), platform.env()).lock():
        pass



def test_an_in_place_logical_restore_is_refused_while_a_failover_holds_the_lease_one_beside_is_not(platform, runner):
    # a logical restore over the live database takes the deploy lease failover and deploys hold
    # (it took none: it could replace the database under a failover); --target-db writes a
    # database beside the live one, which no deploy or failover touches: no lease
    from opsctl.pitr import lease

    made = platform.cli(runner, "backup", "create", "--type", "db", "--json")
    assert made.exit_code == 0, made.output
    before = platform.sql("select datname from pg_database order by 1", db="postgres"), \
        platform.sql("select count(*) from events")
    with lease.held(platform.project(), platform.env(), "failover"):
        r = platform.cli(runner, "restore", "--latest", "--yes")
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and "restore refused" in lines[0] and "a failover (pid" in lines[0], r.output
        assert (platform.sql("select datname from pg_database order by 1", db="postgres"),
                platform.sql("select count(*) from events")) == before
        r = platform.cli(runner, "restore", "--latest", "--target-db", "pitrdb_beside", "--yes", "--json")
        assert r.exit_code == 0, r.output
    assert platform.sql("select count(*) from events", db="pitrdb_beside") == before[1]
    platform.sql("drop database pitrdb_beside", db="postgres")


def test_a_new_standby_follows_the_promoted_server_and_local_down_stops_it(platform, runner):
    """After a failover the promoted server (a new timeline) gets its own standby from the
    archive; `opsctl local down` stops it with the rest of the platform."""
    from opsctl.local import platform as pl
    from opsctl.local import procs

    assert platform.cli(runner, "backup", "base").exit_code == 0
    r = platform.cli(runner, "dr", "standby", "--env", "local", "--json")
    assert r.exit_code == 0, r.output
    sb = json.loads(r.stdout)
    assert sb["streaming"] is True
    from opsctl.pitr import standby

    # the failover's "no standby since" warning ends with the new standby (breaker F18)
    assert standby.unprotected_since(platform.project(), platform.env()) is None
    row = {c.name: c for c in pl.status(platform.project())}["postgres-standby"]
    assert row.pid == sb["pid"] and row.healthy, row  # breaker 20 F2: status showed no standby
    ok = _standby_check(platform)
    assert ok.status == Status.OK and ok.details["streaming"] and f"pid {sb['pid']}" in ok.message, ok
    stopped = pl.down(platform.project())
    assert "postgres-standby" in stopped and not procs.alive(sb["pid"])
    pl.up(platform.project())  # the fixture's teardown expects a running platform
    # up does not start it again: shown as not running, what a failover would find out too late
    row = {c.name: c for c in pl.status(platform.project())}["postgres-standby"]
    assert row.pid is None and not row.healthy and "nothing to promote" in row.note, row
    # and health says so: no check of it at all before (breaker 20 F2)
    dead = _standby_check(platform)
    assert dead.status == Status.CRITICAL and "not running: a failover has nothing to promote" in dead.message, dead
    assert "'opsctl dr standby' builds it again" in dead.message and dead.details["pid"] is None


def _standby_check(platform):
    from types import SimpleNamespace

    from opsctl.health.checks import plan

    ep = SimpleNamespace(router_url=None, workers={}, database_url=None, redis_url=None,
                         backup_bucket="unused", active_color="blue")
    (check,) = plan(platform.project(), platform.env(), ep, only=["standby"])
    return check.run(check.timeout)


def test_a_standby_the_restore_left_behind_is_never_promoted_and_an_in_place_restore_removes_it(platform, runner,
                                                                                              monkeypatch):
    """An in-place restore forks a new timeline the standby can't follow: promoted, the standby
    would undo the restore. The restore stops and removes it; and failover refuses a standby
    that does not stream from the running primary, or (the primary down) replayed past the
    point where the primary's history left its timeline. One line, exit 2, nothing changed."""
    import datetime as dt

    from opsctl.local import postgres as pg
    from opsctl.local import procs
    from opsctl.pitr import restore as pr

    assert platform.cli(runner, "backup", "base").exit_code == 0
    r = platform.cli(runner, "dr", "standby", "--env", "local", "--json")
    assert r.exit_code == 0, r.output
    sb = json.loads(r.stdout)
    platform.sql("insert into events(note) values ('kept by the restore')")
    time.sleep(1.1)
    target = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.1)
    platform.sql("insert into events(note) values ('undone by the restore')")
    platform.wait_archived()
    # the standby left as it was before this fix: a restore that does not remove it
    with monkeypatch.context() as m:
        m.setattr(pr, "_drop_standby", lambda project, env: [])
        r = platform.cli(runner, "restore", "--to-time", target.isoformat(), "--yes", "--json")
    assert r.exit_code == 0, r.output
    restored = platform.sql("select count(*) from events where note = 'undone by the restore'")
    assert restored == [(0,)] and procs.alive(sb["pid"])

    def refused(why: str) -> None:
        before = (platform.state().components["postgres"].port, platform.state().components["postgres-standby"].pid)
        r = platform.cli(runner, "failover", "--env", "local", "--yes")
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1 and "failover refused" in r.output and why in r.output
        assert (platform.state().components["postgres"].port,
                platform.state().components["postgres-standby"].pid) == before

    refused("does not stream from the running primary")
    pg.stop(platform.pid)
    try:
        refused("follows a history the primary replaced")
    finally:
        platform.start_postgres()
    assert platform.sql("select count(*) from events where note = 'undone by the restore'") == [(0,)]

    # an in-place restore removes the standby (and says so); a failover then has none to promote
    r = platform.cli(runner, "restore", "--to-time", "latest", "--yes")
    assert r.exit_code == 0, r.output
    assert "the standby followed the replaced history: it was stopped and removed" in " ".join(r.output.split())
    assert not procs.alive(sb["pid"]) and "postgres-standby" not in platform.state().components
    assert not platform.state().data("postgres-standby").exists()
    r = platform.cli(runner, "failover", "--env", "local", "--yes")
    assert r.exit_code == 2 and "no running standby" in r.output
    # breaker 65 G5: the standby check said nothing (it had disappeared) once the restore removed it
    from opsctl.health.model import Status
    from opsctl.pitr.health import standby_health

    check = standby_health(platform.project(), platform.env())
    assert check.status == Status.WARNING and "no standby since the in-place restore at" in check.message, check
