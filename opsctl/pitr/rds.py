"""Point-in-time recovery of a cloud environment's database: RDS's own, into a new instance.

RDS keeps the WAL of `BackupRetentionPeriod` days; `restore_db_instance_to_point_in_time`
creates a new instance from it (never over the live one), so opsctl checks the target lies
inside [now - retention, LatestRestorableTime] and the new name is free, creates it like the
source (class, subnet group, security groups), waits until it is available and returns its
endpoint. Pointing the environment at it is a deliberate, separate step.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from opsctl.errors import OperationFailed, UsageError

WAIT_SECONDS = 3600
POLL_SECONDS = 15


@dataclass
class RdsRestoreResult:
    """An RDS restore to a time: source and new instance ids, the time asked (None: latest
    restorable), RDS's latest restorable time then, the new endpoint (host:port) and seconds
    taken."""
    source: str
    target_instance: str
    restore_time: dt.datetime | None  # None: the latest restorable time
    latest_restorable: dt.datetime | None
    endpoint: str
    seconds: float
    aws_now: dt.datetime | None = None  # AWS's clock when it said latest_restorable (Date header, 1 s)


def client(env):
    """A boto3 RDS client for the environment's AWS account: `aws.profile` (else the default
    chain), `aws.region`, `aws.endpoint_url` (moto in tests). Used by restore, drill and failover."""
    import boto3

    session = boto3.Session(profile_name=env.aws.profile) if env.aws.profile else boto3.Session()
    return session.client("rds", region_name=env.aws.region, endpoint_url=env.aws.endpoint_url)


def restore_to_time(env, target_instance: str | None, when: dt.datetime | None, wait: bool = True,
                    poll: float = POLL_SECONDS) -> RdsRestoreResult:
    """`when` None: RDS's latest restorable time. UsageError for a bad name or time (nothing made)."""
    import time

    from botocore.exceptions import BotoCoreError, ClientError, WaiterError

    if not env.database.rds_instance:
        raise UsageError(f"set database.rds_instance for '{env.name}' in opsctl.yaml to restore its RDS database")
    if not target_instance:
        raise UsageError("RDS restores to a point in time into a new instance: name it with --target-instance NAME")
    began = time.monotonic()
    rds = client(env)
    source = env.database.rds_instance
    try:
        described = rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [source]}])
        found, aws_now = described["DBInstances"], _response_time(described)
        if not found:
            raise UsageError(f"RDS instance {source} (database.rds_instance of '{env.name}') does not exist")
        if rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [target_instance]}])["DBInstances"]:
            raise UsageError(f"RDS instance {target_instance} already exists: a point-in-time restore creates a new "
                             "one, choose another --target-instance")
        src = found[0]
        latest = src.get("LatestRestorableTime")
        retention = int(src.get("BackupRetentionPeriod") or 0)
        if retention == 0:
            raise UsageError(f"RDS instance {source} keeps no automated backups (retention 0 days): it has no "
                             "point-in-time recovery")
        if when is not None:
            earliest = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=retention)
            if latest is not None and when > latest:
                raise UsageError(f"{when.isoformat()} is after {source}'s latest restorable time "
                                 f"{latest.isoformat()}; choose an earlier --to-time or 'latest'")
            if when < earliest:
                raise UsageError(f"{when.isoformat()} is before {source}'s {retention}-day recovery window "
                                 f"(from {earliest.isoformat(timespec='seconds')})")
        like = {"DBInstanceClass": src.get("DBInstanceClass"),
                "VpcSecurityGroupIds": [g["VpcSecurityGroupId"] for g in src.get("VpcSecurityGroups", [])] or None,
                "DBSubnetGroupName": (src.get("DBSubnetGroup") or {}).get("DBSubnetGroupName")}
        when_args = {"RestoreTime": when} if when is not None else {"UseLatestRestorableTime": True}
        rds.restore_db_instance_to_point_in_time(
            SourceDBInstanceIdentifier=source, TargetDBInstanceIdentifier=target_instance,
            Tags=[{"Key": "opsctl:restored-from", "Value": source},
                  {"Key": "opsctl:restore-time", "Value": when.isoformat() if when else "latest"}],
            **when_args, **{k: v for k, v in like.items() if v})
        if wait:
            rds.get_waiter("db_instance_available").wait(
                DBInstanceIdentifier=target_instance,
                WaiterConfig={"Delay": poll, "MaxAttempts": max(1, int(WAIT_SECONDS // max(poll, 1)))})
        new = rds.describe_db_instances(DBInstanceIdentifier=target_instance)["DBInstances"][0]
    except (ClientError, WaiterError, BotoCoreError) as exc:
        from opsctl.redact import credentials

        raise OperationFailed(f"RDS point-in-time restore of {source} into {target_instance} failed: "
                              f"{credentials(str(exc))}") from None
    endpoint = new.get("Endpoint") or {}
    return RdsRestoreResult(source, target_instance, when, latest, f"{endpoint.get('Address', '?')}:"
                            f"{endpoint.get('Port', '?')}", round(time.monotonic() - began, 2), aws_now)


def _response_time(response: dict) -> dt.datetime | None:
    """The time (UTC, to the second) in an AWS API response's HTTP Date header (RFC 9110), or
    None without one: AWS's own clock, so a figure measured against a time AWS reported
    (LatestRestorableTime) does not take in this machine's clock error."""
    from email.utils import parsedate_to_datetime

    header = (response.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(header).astimezone(dt.timezone.utc) if header else None
    except (TypeError, ValueError):
        return None
