"""Point-in-time recovery of a cloud environment's database: RDS's own, into a new instance.

RDS keeps the WAL of `BackupRetentionPeriod` days; `restore_db_instance_to_point_in_time`
creates a new instance from it (never over the live one), so opsctl checks the new name is one
RDS takes and is free, and the target lies inside [earliest restorable, LatestRestorableTime]
(`earliest_restorable`: never before the instance existed), creates it like the
source (class, subnet group, security groups), waits until it is available and returns its
endpoint. Pointing the environment at it is a deliberate, separate step.
"""

from __future__ import annotations

import datetime as dt
import re
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


def client(env, timeout: float | None = None):
    """A boto3 RDS client for the environment's AWS account: `aws.profile` (else the default
    chain), `aws.region`, `aws.endpoint_url` (moto in tests). Used by restore, drill and failover.
    `timeout`: seconds to connect and to read, one attempt (a listing that must not hang)."""
    from opsctl.endpoints import aws_session

    session = aws_session(env.aws.profile)
    config = None
    if timeout is not None:
        from botocore.config import Config

        config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1})
    return session.client("rds", region_name=env.aws.region, endpoint_url=env.aws.endpoint_url, config=config)


_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def check_instance_identifier(name: str, given_as: str = "--target-instance",
                              remedy: str = "choose another --target-instance") -> None:
    """Refuse a name RDS would refuse for a new DB instance (UsageError), before any AWS call.

    AWS's rule for DBInstanceIdentifier (Amazon RDS API Reference, CreateDBInstance): 1 to 63
    letters, digits or hyphens; the first a letter; no hyphen at the end, no two in a row.
    RDS stores it lowercase, so capitals are taken. `given_as` says where the name came from
    and `remedy` what to do, for the message."""
    if not name:
        problem = "is empty"
    elif len(name) > 63:
        problem = f"is {len(name)} characters long"
    elif not name[0].isascii() or not name[0].isalpha():
        problem = "does not begin with a letter"
    elif not _IDENTIFIER.fullmatch(name):
        problem = "holds a character other than a letter, digit or hyphen"
    elif name.endswith("-"):
        problem = "ends with a hyphen"
    elif "--" in name:
        problem = "holds two hyphens in a row"
    else:
        return
    raise UsageError(f"{given_as} {name!r} {problem}; an RDS instance name is 1 to 63 letters, digits or "
                     f"hyphens, begins with a letter and has no hyphen at the end or two in a row: {remedy}")


def earliest_restorable(rds, src: dict, retention: int) -> tuple[dt.datetime, str]:
    """The earliest time RDS can restore instance `src` (a describe_db_instances entry) to, and
    what sets it: the latest of now minus the `retention` days, the instance's creation (no WAL
    before it) and RDS's own RestoreWindow.EarliestTime. That last comes from
    describe_db_instance_automated_backups, which may fail (permissions) or not answer it (moto):
    then the other two stand."""
    from botocore.exceptions import BotoCoreError, ClientError

    bounds = [(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=retention),
               f"the start of its {retention}-day recovery window")]
    created = src.get("InstanceCreateTime")
    if created is not None:
        bounds.append((created.astimezone(dt.timezone.utc), "when it was created"))
    try:
        backups = rds.describe_db_instance_automated_backups(
            DBInstanceIdentifier=src["DBInstanceIdentifier"]).get("DBInstanceAutomatedBackups", [])
    except (ClientError, BotoCoreError):
        backups = []
    for backup in backups:  # a deleted namesake's retained backups are not this instance's
        if src.get("DbiResourceId") and backup.get("DbiResourceId") not in (None, src["DbiResourceId"]):
            continue
        earliest = (backup.get("RestoreWindow") or {}).get("EarliestTime")
        if earliest is not None:
            bounds.append((earliest.astimezone(dt.timezone.utc), "RDS's restore window"))
    return max(bounds, key=lambda bound: bound[0])


def window(env) -> dict:
    """The recoverable window of `env`'s RDS instance (database.rds_instance), as `backup list`
    shows a cluster's: {"windows": [{"from", "to", "base", "ends_at"}] (from its earliest to its
    latest restorable time; none while RDS keeps no automated backups), "newest_restorable",
    "base_backups": [], "sysid": None, "note", "rds_instance"}. What can't be asked (no such
    instance, no credentials, RDS unreachable) is the `note`, never an error: the listing of the
    logical backups stands on its own."""
    from botocore.exceptions import BotoCoreError, ClientError

    from opsctl.redact import credentials

    source = env.database.rds_instance
    doc = {"sysid": None, "windows": [], "newest_restorable": None, "base_backups": [], "note": None,
           "rds_instance": source}
    try:
        rds = client(env, timeout=10)
        found = rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [source]}])["DBInstances"]
        if not found:
            doc["note"] = f"RDS instance {source} (database.rds_instance) does not exist"
            return doc
        src = found[0]
        retention = int(src.get("BackupRetentionPeriod") or 0)
        latest = src.get("LatestRestorableTime")
        if retention == 0 or latest is None:
            doc["note"] = f"RDS instance {source} keeps no automated backups (retention 0 days): no point-in-time recovery"
            return doc
        earliest, bound = earliest_restorable(rds, src, retention)
    except (ClientError, BotoCoreError, UsageError) as exc:
        doc["note"] = f"RDS instance {source} can't be asked: {credentials(str(exc))}"
        return doc
    latest = latest.astimezone(dt.timezone.utc)
    doc["windows"] = [{"from": earliest.isoformat(), "to": latest.isoformat(), "base": f"RDS {source}",
                       "ends_at": f"its latest restorable time ({retention}-day retention; from {bound})"}]
    doc["newest_restorable"] = latest.isoformat()
    return doc


def restore_to_time(env, target_instance: str | None, when: dt.datetime | None, wait: bool = True,
                    poll: float = POLL_SECONDS) -> RdsRestoreResult:
    """`when` None: RDS's latest restorable time. UsageError for a bad name or time (nothing made;
    a name RDS would refuse, before any AWS call)."""
    import time

    from botocore.exceptions import BotoCoreError, ClientError, WaiterError

    if not env.database.rds_instance:
        raise UsageError(f"set database.rds_instance for '{env.name}' in opsctl.yaml to restore its RDS database")
    if not target_instance:
        raise UsageError("RDS restores to a point in time into a new instance: name it with --target-instance NAME")
    check_instance_identifier(target_instance)
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
            if latest is not None and when > latest:
                raise UsageError(f"{when.isoformat()} is after {source}'s latest restorable time "
                                 f"{latest.isoformat()}; choose an earlier --to-time or 'latest'")
            earliest, bound = earliest_restorable(rds, src, retention)
            if when < earliest:
                shown = (earliest + dt.timedelta(microseconds=999_999)).replace(microsecond=0)  # a time to give
                raise UsageError(f"{when.isoformat()} is before {source}'s earliest restorable time "
                                 f"{shown.isoformat()} ({bound}); choose a later --to-time or 'latest'")
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
