"""Native snapshots for cloud environments: RDS DB snapshots and ElastiCache snapshots (boto3).

A managed database's own snapshot is the fast, provider-side backup; opsctl takes it under
the backup's id, waits until the provider reports it available, and records it in the
manifest next to the logical dump. A snapshot is restored the only way providers allow:
into a new RDS instance or replication group, named by the user, never over the live one.
The new one copies the source's class, network and security groups when the source still
exists, so it lands where the application can reach it; pointing the environment at it is
a deliberate, separate step.
"""

from __future__ import annotations

import time

from opsctl.backup import manifest as mf
from opsctl.config import Environment
from opsctl.errors import OperationFailed, UsageError

WAIT_SECONDS = 3600  # large instances take a long time to come up from a snapshot
POLL_SECONDS = 15


def _client(env: Environment, service: str):
    from opsctl.endpoints import aws_session

    session = aws_session(env.aws.profile)
    return session.client(service, region_name=env.aws.region, endpoint_url=env.aws.endpoint_url)


def snapshot_name(backup_id: str) -> str:
    """The native snapshot's identifier for a backup id (lower case, as RDS requires)."""
    return "opsctl-" + backup_id.lower().replace("t", "-", 1).replace("z-", "-")


def take(env: Environment, kind: str, backup_id: str, wait: bool = True) -> mf.SnapshotPart:
    """Take a native snapshot (`kind` "rds-snapshot" or "elasticache-snapshot") of a cloud
    environment's database or replication group, waiting until it is available unless
    `wait` is False. UsageError outside cloud environments or when opsctl.yaml names no
    instance/replication group; OperationFailed when AWS refuses or the snapshot fails."""
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
        if wait:  # boto3 has no waiter for ElastiCache snapshots
            _wait_elasticache_snapshot(ec, name)
        return mf.SnapshotPart(kind="elasticache", identifier=name, source=env.redis.replication_group)
    except (ClientError, WaiterError, BotoCoreError) as exc:
        raise OperationFailed(f"{kind} for '{env.name}' failed: {exc}") from None


def _wait_elasticache_snapshot(ec, name: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status = ec.describe_snapshots(SnapshotName=name)["Snapshots"][0]["SnapshotStatus"]
        if status == "available":
            return
        if status in ("failed", "deleting") or time.monotonic() > deadline:
            raise OperationFailed(f"ElastiCache snapshot {name} is {status}, not available")
        time.sleep(POLL_SECONDS)


def target_exists(env: Environment, part: mf.SnapshotPart, target: str) -> bool:
    """Whether the RDS instance or ElastiCache replication group `target` already exists."""
    from botocore.exceptions import ClientError

    try:
        if part.kind == "rds":
            _client(env, "rds").describe_db_instances(DBInstanceIdentifier=target)
        else:
            _client(env, "elasticache").describe_replication_groups(ReplicationGroupId=target)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("DBInstanceNotFound", "DBInstanceNotFoundFault",
                                             "ReplicationGroupNotFoundFault", "ReplicationGroupNotFound"):
            return False
        raise OperationFailed(f"checking whether {target} exists failed: {exc}") from None


def restore(env: Environment, part: mf.SnapshotPart, target: str, wait: bool = True) -> str:
    """Create `target` from the snapshot; return its endpoint (host:port) once available."""
    from botocore.exceptions import BotoCoreError, ClientError, WaiterError

    try:
        if part.kind == "rds":
            return _restore_rds(_client(env, "rds"), part, target, wait)
        return _restore_elasticache(_client(env, "elasticache"), part, target, wait)
    except (ClientError, WaiterError, BotoCoreError) as exc:
        raise OperationFailed(f"restoring {part.kind} snapshot {part.identifier} into {target} failed: {exc}") from None


def _restore_rds(rds, part: mf.SnapshotPart, target: str, wait: bool) -> str:
    like: dict = {}
    found = rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [part.source]}])["DBInstances"]
    if found:
        src = found[0]
        like = {"DBInstanceClass": src["DBInstanceClass"],
                "VpcSecurityGroupIds": [g["VpcSecurityGroupId"] for g in src.get("VpcSecurityGroups", [])]}
        if src.get("DBSubnetGroup"):
            like["DBSubnetGroupName"] = src["DBSubnetGroup"]["DBSubnetGroupName"]
    rds.restore_db_instance_from_db_snapshot(DBInstanceIdentifier=target, DBSnapshotIdentifier=part.identifier,
                                             Tags=[{"Key": "opsctl:restored-from", "Value": part.identifier}],
                                             **{k: v for k, v in like.items() if v})
    if wait:
        rds.get_waiter("db_instance_available").wait(DBInstanceIdentifier=target,
                                                       WaiterConfig={"Delay": POLL_SECONDS,
                                                                     "MaxAttempts": WAIT_SECONDS // POLL_SECONDS})
    endpoint = rds.describe_db_instances(DBInstanceIdentifier=target)["DBInstances"][0].get("Endpoint") or {}
    return f"{endpoint.get('Address', '?')}:{endpoint.get('Port', '?')}"


def _restore_elasticache(ec, part: mf.SnapshotPart, target: str, wait: bool) -> str:
    snap = ec.describe_snapshots(SnapshotName=part.identifier)["Snapshots"][0]
    like = {"CacheNodeType": snap.get("CacheNodeType"), "CacheSubnetGroupName": snap.get("CacheSubnetGroupName"),
            "Engine": snap.get("Engine"), "EngineVersion": snap.get("EngineVersion")}
    ec.create_replication_group(ReplicationGroupId=target, SnapshotName=part.identifier,
                                ReplicationGroupDescription=f"restored by opsctl from {part.identifier}",
                                **{k: v for k, v in like.items() if v})
    if wait:
        ec.get_waiter("replication_group_available").wait(ReplicationGroupId=target,
                                                           WaiterConfig={"Delay": POLL_SECONDS,
                                                                         "MaxAttempts": WAIT_SECONDS // POLL_SECONDS})
    group = ec.describe_replication_groups(ReplicationGroupId=target)["ReplicationGroups"][0]
    primary = next((g.get("PrimaryEndpoint") for g in group.get("NodeGroups", []) if g.get("PrimaryEndpoint")), None)
    endpoint = primary or group.get("ConfigurationEndpoint") or {}
    return f"{endpoint.get('Address', '?')}:{endpoint.get('Port', '?')}"
