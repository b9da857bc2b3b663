"""Native snapshots for cloud environments: RDS DB snapshots and ElastiCache snapshots (boto3).

A managed database's own snapshot is the fast, provider-side backup; opsctl takes it under
the backup's id, waits until the provider reports it available, and records it in the
manifest next to the logical dump. Restoring one means creating a new instance from it,
which is the provider's operation (`aws rds restore-db-instance-from-db-snapshot`).
"""

from __future__ import annotations

from opsctl.backup import manifest as mf
from opsctl.config import Environment
from opsctl.errors import OperationFailed, UsageError


def _client(env: Environment, service: str):
    import boto3

    session = boto3.Session(profile_name=env.aws.profile) if env.aws.profile else boto3.Session()
    return session.client(service, region_name=env.aws.region, endpoint_url=env.aws.endpoint_url)


def snapshot_name(backup_id: str) -> str:
    return "opsctl-" + backup_id.lower().replace("t", "-", 1).replace("z-", "-")


def take(env: Environment, kind: str, backup_id: str, wait: bool = True) -> mf.SnapshotPart:
    from botocore.exceptions import BotoCoreError, ClientError, WaiterError

    if env.platform != "kubernetes":
        raise UsageError(f"--type {kind} is for cloud environments; '{env.name}' runs on {env.platform}")
    name = snapshot_name(backup_id)
    try:
        if kind == "rds-snapshot":
            if not env.database.rds_instance:
                raise UsageError(f"set database.rds_instance for '{env.name}' in opsctl.yaml to take RDS snapshots")
            rds = _client(env, "rds")
            rds.create_db_snapshot(DBInstanceIdentifier=env.database.rds_instance, DBSnapshotIdentifier=name)
            if wait:
                rds.get_waiter("db_snapshot_available").wait(DBSnapshotIdentifier=name)
            return mf.SnapshotPart(kind="rds", identifier=name, source=env.database.rds_instance)
        if not env.redis.replication_group:
            raise UsageError(f"set redis.replication_group for '{env.name}' in opsctl.yaml to take ElastiCache snapshots")
        ec = _client(env, "elasticache")
        ec.create_snapshot(ReplicationGroupId=env.redis.replication_group, SnapshotName=name)
        return mf.SnapshotPart(kind="elasticache", identifier=name, source=env.redis.replication_group)
    except (ClientError, WaiterError, BotoCoreError) as exc:
        raise OperationFailed(f"{kind} for '{env.name}' failed: {exc}") from None
