"""`opsctl restore --to-time` on a cloud environment: RDS's own point-in-time restore into a
new, named instance (moto's RDS control plane), refused for times outside the window."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from opsctl.cli import app
from pitr_support import delete_rds_instances, rds_environment, record_windows


@pytest.fixture
def cloud(ops_root, s3):
    rds = rds_environment(ops_root, s3, "pitr-db")
    yield rds
    delete_rds_instances(rds)


def test_rds_restore_to_time_creates_a_new_instance(cloud, runner):
    when = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)).replace(microsecond=0)
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", when.isoformat().replace("+00:00", "Z"),
                            "--target-instance", "pitr-db-restored", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    new = cloud.describe_db_instances(DBInstanceIdentifier="pitr-db-restored")["DBInstances"][0]
    assert new["DBInstanceStatus"] == "available" and new["DBInstanceClass"] == "db.r6g.large"
    assert doc["endpoint"] == f"{new['Endpoint']['Address']}:{new['Endpoint']['Port']}"
    tags = {t["Key"]: t["Value"] for t in cloud.list_tags_for_resource(ResourceName=new["DBInstanceArn"])["TagList"]}
    assert tags == {"opsctl:restored-from": "pitr-db", "opsctl:restore-time": when.isoformat()}
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", "latest", "--target-instance", "pitr-db-now"])
    assert r.exit_code == 0, r.output
    assert "pitr-db-now" in r.output


@pytest.mark.parametrize("args, message", [
    (["--to-time", "2999-01-01T00:00:00Z", "--target-instance", "x-new"], "latest restorable time"),
    (["--to-time", "2020-01-01T00:00:00Z", "--target-instance", "x-new"], "7-day recovery window"),
    (["--to-time", "latest", "--target-instance", "pitr-db"], "already exists"),
    (["--to-time", "latest"], "--target-instance"),
    (["--to-lsn", "0/3000060", "--target-instance", "x-new"], "--to-time"),
    (["--to-time", "yesterday", "--target-instance", "x-new"], "not a time"),
])
def test_rds_restore_refusals_make_nothing(cloud, runner, args, message):
    r = runner.invoke(app, ["restore", "--env", "cloud", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert [i["DBInstanceIdentifier"] for i in cloud.describe_db_instances()["DBInstances"]] == ["pitr-db"]


def test_rds_restore_to_time_runs_inside_the_operation_window(cloud, runner, monkeypatch):
    """NOTIFICATIONS contract: the PITR restore is announced as operation "restore"."""
    seen = record_windows(monkeypatch, note=lambda kw: kw.get("checks"))
    r = runner.invoke(app, ["restore", "--env", "cloud", "--to-time", "latest", "--target-instance", "pitr-db-win"])
    assert r.exit_code == 0, r.output
    assert seen == [("cloud", "restore", "succeeded", None)]
