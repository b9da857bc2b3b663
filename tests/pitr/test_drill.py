"""`opsctl dr drill` (embedded platform: restore beside, measure RTO/RPO, tear down) and, on
moto's RDS, the drill's scratch instance and `opsctl failover` promoting the read replica."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pytest

from opsctl.cli import app
from opsctl.pitr import drill
from pitr_support import delete_rds_instances, rds_environment, record_windows, set_dr


def test_local_drill_measures_and_tears_down(pitr, runner, tmp_path):
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("insert into events(note) select 'drill' from generate_series(1, 20)")
    pitr.wait_archived()
    data = pitr.state().folder / "data"
    before = sorted(p.name for p in data.iterdir())
    live_rows = pitr.sql("select count(*) from events")[0][0]
    junit, prom = tmp_path / "reports" / "drill.xml", tmp_path / "drill.prom"  # reports/ does not exist yet
    r = pitr.cli(runner, "dr", "drill", "--json", "--junit", str(junit), "--metrics-file", str(prom))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["passed"] and doc["torn_down"] and doc["rto_seconds"] > 0
    assert doc["rpo_seconds"] == 0  # everything committed was archived before the drill
    assert doc["rpo_basis"] == drill.RPO_LIVE
    assert doc["rows"] >= live_rows and doc["not_covered"] and doc["scope"] == ["database"]
    suite = ET.parse(junit).getroot().find("testsuite")
    # the RTO and RPO cases, and a skipped case for each part not covered (breaker F6)
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "0", "4")
    assert 'opsctl_dr_drill_success{env="local"} 1' in prom.read_text()
    time.sleep(0.5)
    assert sorted(p.name for p in data.iterdir() if not p.name.endswith(".deleting")) == before
    assert pitr.sql("select count(*) from events")[0][0] == live_rows


def test_a_platform_without_redis_s3_or_worker_says_so_part_by_part(pitr, runner, tmp_path):
    """Breaker F6: the reduced scope named part by part (--json reasons, a skipped JUnit case
    each, the note): this platform runs its PostgreSQL alone, `opsctl local up` never started
    Redis, S3 or a worker."""
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    junit = tmp_path / "d.xml"
    r = pitr.cli(runner, "dr", "drill", "--json", "--junit", str(junit))
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, (r.output, doc["problems"])
    parts = ["redis", "audio objects", "preview color + transcription", "load test"]
    assert doc["scope"] == ["database"] and doc["not_covered"] == parts, doc
    why = "the platform runs no Redis, S3 or worker: 'opsctl local up' started none"
    assert doc["not_covered_reasons"] == {p: why for p in parts}, doc
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert all(cases[f"{p} covered"].find("skipped").get("message") == why for p in parts), list(cases)
    text = pitr.cli(runner, "dr", "drill")
    said = " ".join(text.stdout.split())
    assert text.exit_code == 0 and why in said and "rows read" in said, text.stdout


def test_the_runbook_step_writes_its_reports_through_the_core_drill(pitr, runner, monkeypatch):
    """One place writes the drill's reports (opsctl.pitr.drill.drill, given the paths): the
    `dr-drill` step hands its paths to it and writes nothing itself."""
    from opsctl.pitr import drill as core

    writes = []
    real = core.write_reports
    monkeypatch.setattr(core, "write_reports", lambda result, *paths: (writes.append(paths), real(result, *paths)))
    book = pitr.root / "runbooks" / "drill-reports" / "v1.yaml"
    book.parent.mkdir(parents=True)
    book.write_text(json.dumps({"name": "drill-reports", "version": 1, "steps": [
        {"id": "drill", "action": "dr-drill", "with": {"junit": "reports/dr/drill.xml",
                                                        "metrics_file": "reports/dr/drill.prom"}}]}))
    try:
        r = pitr.cli(runner, "runbook", "run", "drill-reports", "--json")
        assert r.exit_code == 0, r.output
        junit, prom = pitr.root / "reports" / "dr" / "drill.xml", pitr.root / "reports" / "dr" / "drill.prom"
        assert writes == [(junit, prom)]  # once, by the core drill
        assert ET.parse(junit).getroot().find("testsuite").get("failures") == "0"
        assert 'opsctl_dr_drill_success{env="local"} 1' in prom.read_text()
    finally:
        import shutil

        shutil.rmtree(pitr.root / "runbooks" / "drill-reports")
        shutil.rmtree(pitr.root / "reports", ignore_errors=True)


def test_a_drill_whose_live_server_does_not_answer_says_its_rpo_is_an_upper_bound(pitr, runner):
    """Breaker 36 F8: with the primary down the RPO is the drill's start minus the newest commit
    recovered; it grew from one drill to the next and was reported met with nothing saying so."""
    from opsctl.local import postgres as pg

    pitr.sql("insert into events(note) values ('before the outage')")
    pitr.wait_archived()
    pg.stop(pitr.pid)  # the live server is down: the drill is the recovery
    try:
        r = pitr.cli(runner, "dr", "drill", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        assert doc["live_newest_commit"] is None and doc["rpo_seconds"] > 0
        assert doc["rpo_basis"] == drill.RPO_DOWN
        text = pitr.cli(runner, "dr", "drill")
        assert text.exit_code == 0, text.output
        said = " ".join(text.stdout.split())  # sentences wrap between words at the console's width
        assert "RPO of the database measured from the newest commit recovered to the drill's start" in said
        assert "upper bound" in said
    finally:
        pitr.start_postgres()


def test_local_drill_missing_its_rpo_exits_1(pitr, runner, tmp_path):
    from opsctl.pitr import local as pitr_local

    assert pitr_local.stop_archiver(pitr.state())  # newer commits never reach the repository
    try:
        pitr.sql("insert into events(note) values ('archived? no')")
        time.sleep(1.3)
        pitr.sql("insert into events(note) values ('nor this one')")
        set_dr(pitr, rpo="1s", rto="4h")
        junit = tmp_path / "drill.xml"
        r = pitr.cli(runner, "dr", "drill", "--json", "--junit", str(junit))
        assert r.exit_code == 1
        doc = json.loads(r.stdout)
        assert not doc["passed"] and doc["rpo_seconds"] >= 1.3
        assert "RPO" in doc["problems"][0]
        assert ET.parse(junit).getroot().find("testsuite").get("failures") == "1"
    finally:
        set_dr(pitr, rpo="1h", rto="4h")
        pitr.ensure_archiver()


def test_the_drill_s_rpo_runs_from_the_newest_commit_recovered_never_from_an_abort_after_it(pitr, runner):
    # a window is dated by commits and aborts; the RPO is not: the restore recovers the commit,
    # then an abort; the commit after them is lost. RPO = lost commit - recovered commit (an
    # abort's time, later than the commit, made it look smaller)
    import datetime as dt

    import psycopg

    from opsctl.pitr import local as pitr_local

    # no autovacuum commit on the table may land between 'kept' and the archiver's stop: it would
    # be the newest commit recovered (once in a loaded suite, restored_to came 17 s after 'kept')
    pitr.sql("alter table events set (autovacuum_enabled = off)")
    pitr.sql("insert into events(note) values ('newest recovered')")
    (kept,) = pitr.sql("select pg_xact_commit_timestamp(xmin) from events where note = 'newest recovered'")[0]
    with psycopg.connect(pitr.url("pitrdb")) as conn:
        conn.execute("insert into events(note) values ('rolled back')")
        conn.rollback()
    pitr.wait_archived()
    assert pitr_local.stop_archiver(pitr.state())  # what is committed now never reaches the repository
    try:
        pitr.sql("insert into events(note) values ('lost')")
        (lost,) = pitr.sql("select pg_xact_commit_timestamp(xmin) from events where note = 'lost'")[0]
        r = pitr.cli(runner, "dr", "drill", "--json")
        assert r.exit_code == 1, r.output  # no archiver runs: the drill fails (breaker 44 T8), its RPO still measured
        doc = json.loads(r.stdout)
        assert any("the WAL archive is not advancing" in p for p in doc["problems"]), doc["problems"]
        assert dt.datetime.fromisoformat(doc["restored_to"]) == kept, (kept, lost, doc)
        assert dt.datetime.fromisoformat(doc["live_newest_commit"]) == lost
        assert doc["rpo_seconds"] == round((lost - kept).total_seconds(), 3)
    finally:
        pitr.ensure_archiver()
        pitr.sql("alter table events reset (autovacuum_enabled)")


@pytest.fixture
def cloud(ops_root, s3):
    rds = rds_environment(ops_root, s3, "dr-db", replica="dr-db-replica")
    rds.create_db_instance(DBInstanceIdentifier="other-db", DBInstanceClass="db.t3.micro", Engine="postgres",
                           AllocatedStorage=20, MasterUsername="admin", MasterUserPassword="not-a-secret-1")
    yield rds
    delete_rds_instances(rds)


def _names(rds) -> list[str]:
    return sorted(i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"])


def test_rds_drill_uses_a_scratch_instance_and_deletes_it(cloud, runner):
    before = _names(cloud)  # the moto server is shared: other tests' instances may be there
    assert {"dr-db", "dr-db-replica", "other-db"} <= set(before)
    r = runner.invoke(app, ["dr", "drill", "--env", "cloud", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["scratch"].startswith("dr-db-drill-") and doc["torn_down"] and doc["passed"]
    assert doc["rpo_basis"] == drill.RPO_RDS
    assert _names(cloud) == before  # the scratch instance is gone, nothing else touched


def test_the_rds_drill_says_what_it_checked_and_no_row_figures(cloud, runner):
    """Breaker F17: "(0 tables, 0 rows)" read as an empty restore of an instance never connected
    to, and "not covered: ... load test ()" had no reason."""
    r = runner.invoke(app, ["dr", "drill", "--env", "cloud", "--json"])
    doc = json.loads(r.stdout)
    assert doc["error"] is None and doc["rows"] is None and doc["tables"] is None, doc
    assert doc["checked"].startswith("RDS reports it available at "), doc
    assert set(doc["not_covered_reasons"].values()) == {"a cloud drill restores the database alone"}, doc
    text = runner.invoke(app, ["dr", "drill", "--env", "cloud"])
    said = " ".join(text.stdout.split())
    assert "RDS reports it available at" in said and "rows)" not in said and "()" not in said, text.stdout
    assert "(a cloud drill restores the database alone)" in said, text.stdout


def test_the_rds_drill_rpo_is_measured_on_aws_clock_not_this_machines(cloud, runner, monkeypatch):
    """The RDS drill's RPO was this machine's clock at the start minus RDS's latest restorable
    time: a local clock an hour fast reported an hour of data lost. It is now AWS's clock (the
    response's Date header) minus that time, whatever this machine's clock says."""
    import datetime as real
    import types

    from opsctl.pitr import drill

    class Fast(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return real.datetime.now(tz) + real.timedelta(hours=1)

    honest = runner.invoke(app, ["dr", "drill", "--env", "cloud", "--json"])
    assert honest.exit_code == 0, honest.output
    monkeypatch.setattr(drill, "dt", types.SimpleNamespace(datetime=Fast, timezone=real.timezone,
                                                           timedelta=real.timedelta))
    skewed = runner.invoke(app, ["dr", "drill", "--env", "cloud", "--json"])
    assert skewed.exit_code == 0, skewed.output
    a, b = json.loads(honest.stdout), json.loads(skewed.stdout)
    assert a["rpo_seconds"] is not None and b["rpo_seconds"] is not None
    assert abs(b["rpo_seconds"] - a["rpo_seconds"]) < 600, (a["rpo_seconds"], b["rpo_seconds"])
    assert b["passed"], b


@pytest.mark.parametrize("args, message", [
    (["--env", "cloud", "--replica", "other-db", "--yes"], "not a read replica of dr-db"),
    (["--env", "cloud", "--replica", "missing-db", "--yes"], "does not exist"),
    (["--env", "local", "--yes"], "never started"),  # local: the standby of a running platform
])
def test_failover_refusals_change_nothing(cloud, runner, args, message):
    r = runner.invoke(app, ["failover", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    replica = cloud.describe_db_instances(DBInstanceIdentifier="dr-db-replica")["DBInstances"][0]
    assert replica.get("ReadReplicaSourceDBInstanceIdentifier")  # still a replica


def test_dr_drill_runbook_runs_the_drill(pitr, runner):
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "runbooks" / "dr-drill", pitr.root / "runbooks" / "dr-drill", dirs_exist_ok=True)
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.wait_archived()
    r = pitr.cli(runner, "runbook", "run", "dr-drill", "--env", "local", "--yes", "--json")
    assert r.stdout.strip(), r.output
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, [(s["id"], s["status"], s["detail"]) for s in doc["steps"]]
    drill = next(s for s in doc["steps"] if s["id"] == "drill")
    assert drill["outputs"]["passed"] and drill["outputs"]["rto_seconds"] > 0
    assert (pitr.root / ".opsctl" / "dr" / "drill.prom").read_text().count("opsctl_dr_drill_") >= 4


def test_the_drill_runs_inside_the_operation_window_and_a_refused_failover_opens_none(cloud, runner, monkeypatch):
    """NOTIFICATIONS contract: failover and the drill are announced through
    opsctl.health.notify.operation_window with their operation names; a failure inside is
    seen by the window (it marks the outcome failed)."""
    seen = record_windows(monkeypatch)
    assert runner.invoke(app, ["dr", "drill", "--env", "cloud", "--json"]).exit_code == 0
    refused = runner.invoke(app, ["failover", "--env", "cloud", "--replica", "other-db", "--yes"])
    assert refused.exit_code == 2  # refused before anything: no window opened
    # a whole failover in its window (it needs the cluster and the worker Secret) is
    # tests/pitr/test_rds_failover.py::test_failover_runs_inside_the_operation_window
    assert seen == [("cloud", "drill", "succeeded")]



def test_a_part_restored_from_a_backup_older_than_the_rpo_fails_the_drill():
    """Breaker 41 Q3: the drill judged the database's RPO only; Redis and the audio restored
    from a backup days old passed a 1 h target. Each part's RPO (the drill's start minus the
    start of the backup it came from) is judged against dr.rpo, in the problems, the JUnit
    file and the metrics."""
    import datetime as dt

    now = dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.timezone.utc)
    result = drill.DrillResult("prod", "local", now, 40.0, 0.0, 14400.0, 3600.0, False, now, now, "scratch",
                               backups={"redis": "20261202T020000Z-aaaaaa", "audio objects": "20261129T020000Z-bbbbbb"},
                               part_rpo_seconds={"redis": 3600.0, "audio objects": 262800.0})
    drill._judge(result)
    assert not result.passed
    assert result.problems == ["RPO of audio objects 262800 s above the target 3600 s: its newest backup, "
                               "20261129T020000Z-bbbbbb, began that long before the drill"]
    suite = ET.fromstring(drill.junit(result)).find("testsuite")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["rpo of audio objects within 3600 s"]
    prom = drill.metrics(result)
    assert 'opsctl_dr_drill_part_rpo_seconds{env="prod",part="audio objects"} 262800.0' in prom
    assert 'opsctl_dr_drill_success{env="prod"} 0' in prom
    # a failed drill achieved no RPO of any part
    result.error = "the preview worker never served"
    drill._judge(result)
    assert result.part_rpo_seconds == {} and "part=\"redis\"} NaN" in drill.metrics(result)
