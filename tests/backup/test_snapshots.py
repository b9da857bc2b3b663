"""Native snapshots of a cloud environment (RDS) through boto3, against moto's AWS control plane."""

from __future__ import annotations

import json

import boto3
import pytest
import yaml

from backup_support import KEY
from opsctl.backup.snapshots import snapshot_name
from opsctl.cli import app

pytestmark = pytest.mark.integration


def test_rds_snapshot_is_taken_and_recorded(s3, ops_root, runner, monkeypatch):
    bucket = s3.make_bucket("bk")
    rds = boto3.client("rds", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    rds.create_db_instance(DBInstanceIdentifier="transcribe-db", DBInstanceClass="db.t3.micro", Engine="postgres",
                           MasterUsername="transcribe", MasterUserPassword="not-a-secret-1", AllocatedStorage=20)
    doc = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    doc["environments"]["cloud"] = {
        "platform": "kubernetes", "aws": {"endpoint_url": s3.endpoint_url},
        "database": {"rds_instance": "transcribe-db"},
        "backup": {"repository": f"s3://{bucket}/opsctl"},
    }
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)

    made = runner.invoke(app, ["backup", "create", "--env", "cloud", "--type", "rds-snapshot", "--json"])
    assert made.exit_code == 0, made.output
    backup = json.loads(made.stdout)
    assert backup["components"] == ["rds-snapshot"]
    snaps = rds.describe_db_snapshots(DBInstanceIdentifier="transcribe-db", SnapshotType="manual")["DBSnapshots"]
    assert [(s["DBSnapshotIdentifier"], s["Status"]) for s in snaps] == [(snapshot_name(backup["id"]), "available")]
    listed = json.loads(runner.invoke(app, ["backup", "list", "--env", "cloud", "--json"]).stdout)
    assert [(b["id"], b["status"]) for b in listed["backups"]] == [(backup["id"], "complete")]

    # nothing opsctl restores by itself: a clear line, exit 2
    result = runner.invoke(app, ["restore", "--env", "cloud", "--id", backup["id"], "--yes"])
    assert result.exit_code == 2 and "holds nothing opsctl restores" in result.stderr
    # snapshots are for cloud environments only
    result = runner.invoke(app, ["backup", "create", "--env", "local", "--type", "rds-snapshot"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
