"""Native snapshots of a cloud environment (RDS, ElastiCache) through boto3, against moto's AWS control plane:
taken under the backup's id, recorded in the manifest, restored only into a new, named instance."""

from __future__ import annotations

import json

import boto3
import pytest
import yaml

from backup_support import KEY
from opsctl.backup.snapshots import snapshot_name
from opsctl.cli import app

pytestmark = pytest.mark.integration


def cloud_env(ops_root, s3, monkeypatch, **extra) -> None:
    """A `cloud` environment on moto's AWS, its backups in an S3 repository."""
    doc = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    doc["environments"]["cloud"] = {
        "platform": "kubernetes", "aws": {"endpoint_url": s3.endpoint_url},
        "backup": {"repository": f"s3://{s3.make_bucket('bk')}/opsctl"}, **extra,
    }
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)


def snapshot_backup(runner, kind: str) -> dict:
    made = runner.invoke(app, ["backup", "create", "--env", "cloud", "--type", kind, "--json"])
    assert made.exit_code == 0, made.output
    backup = json.loads(made.stdout)
    assert backup["components"] == [kind]
    return backup


def test_rds_snapshot_is_taken_recorded_and_restored_into_a_new_instance(s3, ops_root, runner, monkeypatch):
    rds = boto3.client("rds", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    rds.create_db_instance(DBInstanceIdentifier="transcribe-db", DBInstanceClass="db.r6g.large", Engine="postgres",
                           MasterUsername="transcribe", MasterUserPassword="not-a-secret-1", AllocatedStorage=20)
    cloud_env(ops_root, s3, monkeypatch, database={"rds_instance": "transcribe-db"})
    backup = snapshot_backup(runner, "rds-snapshot")
    snaps = rds.describe_db_snapshots(DBInstanceIdentifier="transcribe-db", SnapshotType="manual")["DBSnapshots"]
    assert [(s["DBSnapshotIdentifier"], s["Status"]) for s in snaps] == [(snapshot_name(backup["id"]), "available")]
    listed = json.loads(runner.invoke(app, ["backup", "list", "--env", "cloud", "--json"]).stdout)
    assert [(b["id"], b["status"]) for b in listed["backups"]] == [(backup["id"], "complete")]

    # a snapshot restores only into a new instance the user names
    result = runner.invoke(app, ["restore", "--env", "cloud", "--id", backup["id"], "--yes"])
    assert result.exit_code == 2 and "without --target-instance" in result.stderr
    result = runner.invoke(app, ["restore", "--env", "cloud", "--id", backup["id"], "--components", "rds-snapshot"])
    assert result.exit_code == 2 and "--target-instance NAME" in result.stderr
    result = runner.invoke(app, ["restore", "--env", "cloud", "--id", backup["id"], "--target-instance", "transcribe-db"])
    assert result.exit_code == 2 and "already exists" in result.stderr and result.stderr.count("\n") == 1
    assert len(rds.describe_db_instances()["DBInstances"]) == 1  # refused before anything was made

    restored = runner.invoke(app, ["restore", "--env", "cloud", "--id", backup["id"],
                                   "--target-instance", "transcribe-db-restored", "--json"])
    assert restored.exit_code == 0, restored.output
    out = json.loads(restored.stdout)
    new = rds.describe_db_instances(DBInstanceIdentifier="transcribe-db-restored")["DBInstances"][0]
    assert new["DBInstanceStatus"] == "available" and new["DBInstanceClass"] == "db.r6g.large"  # like its source
    assert out["instances"] == {"rds transcribe-db-restored":
                                f"{new['Endpoint']['Address']}:{new['Endpoint']['Port']}"}
    tags = rds.list_tags_for_resource(ResourceName=new["DBInstanceArn"])["TagList"]
    assert {"Key": "opsctl:restored-from", "Value": snapshot_name(backup["id"])} in tags
    assert rds.describe_db_instances(DBInstanceIdentifier="transcribe-db")["DBInstances"][0]["DBInstanceStatus"] \
        == "available"  # the live instance is untouched

    # snapshots are for cloud environments only
    result = runner.invoke(app, ["backup", "create", "--env", "local", "--type", "rds-snapshot"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_an_rds_snapshot_restore_refuses_a_target_instance_rds_would_refuse(s3, ops_root, runner, monkeypatch):
    """Breaker F10: the snapshot restore's --target-instance takes the rule the restore to a time
    does (opsctl.pitr.rds.check_instance_identifier), before any AWS call."""
    from opsctl.backup import snapshots

    rds = boto3.client("rds", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    rds.create_db_instance(DBInstanceIdentifier="names-db", DBInstanceClass="db.t3.micro", Engine="postgres",
                           MasterUsername="transcribe", MasterUserPassword="not-a-secret-1", AllocatedStorage=20)
    cloud_env(ops_root, s3, monkeypatch, database={"rds_instance": "names-db"})
    backup = snapshot_backup(runner, "rds-snapshot")
    before = [i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]]
    monkeypatch.setattr(snapshots, "_client", lambda env, service: pytest.fail("an AWS call for a name RDS refuses"))
    result = runner.invoke(app, ["restore", "--env", "cloud", "--id", backup["id"], "--target-instance", "a--b"])
    assert result.exit_code == 2, result.output
    assert "--target-instance 'a--b' holds two hyphens in a row; an RDS instance name is" in \
        " ".join(result.stderr.split())
    assert result.stderr.count("\n") == 1, result.stderr
    assert [i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]] == before


def test_elasticache_snapshot_is_taken_and_restored_into_a_new_group(s3, ops_root, runner, monkeypatch):
    ec = boto3.client("elasticache", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    ec.create_replication_group(ReplicationGroupId="transcribe-cache", ReplicationGroupDescription="cache",
                                Engine="redis", CacheNodeType="cache.t4g.small", NumCacheClusters=1)
    cloud_env(ops_root, s3, monkeypatch, redis={"replication_group": "transcribe-cache"})
    backup = snapshot_backup(runner, "elasticache-snapshot")
    snaps = ec.describe_snapshots(ReplicationGroupId="transcribe-cache")["Snapshots"]
    assert [(s["SnapshotName"], s["SnapshotStatus"]) for s in snaps] == [(snapshot_name(backup["id"]), "available")]
    shown = runner.invoke(app, ["backup", "list", "--env", "cloud", "--json"])
    assert json.loads(shown.stdout)["backups"][0]["components"] == ["elasticache-snapshot"]

    restored = runner.invoke(app, ["restore", "--env", "cloud", "--latest", "--components", "elasticache-snapshot",
                                   "--target-instance", "transcribe-cache-restored"])
    assert restored.exit_code == 0, restored.output
    assert "new elasticache transcribe-cache-restored available at" in restored.stdout
    group = ec.describe_replication_groups(ReplicationGroupId="transcribe-cache-restored")["ReplicationGroups"][0]
    assert group["Status"] == "available" and group["CacheNodeType"] == "cache.t4g.small"
    result = runner.invoke(app, ["restore", "--env", "cloud", "--latest", "--components", "elasticache-snapshot",
                                 "--target-instance", "transcribe-cache-restored"])
    assert result.exit_code == 2 and "already exists" in result.stderr
