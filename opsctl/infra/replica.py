"""The database read replica the stack made for an environment: what `opsctl failover` promotes.

The Pulumi program (stacks/transcribe_infra/database.py) tags the replica of a protected
environment `opsctl:role=read-replica` and `opsctl:replica-of=<primary identifier>`; this
finds it from the RDS API alone, so failover works from any laptop or CI runner, without the
Pulumi state (which may be unreachable on the day the primary is lost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opsctl.errors import UsageError

ROLE_TAG = "opsctl:role"
REPLICA_ROLE = "read-replica"
REPLICA_OF_TAG = "opsctl:replica-of"


@dataclass(frozen=True)
class ReadReplica:
    """An RDS instance tagged as a primary's read replica (the stack's tags, ROLE_TAG and
    REPLICA_OF_TAG), as DescribeDBInstances reports it."""

    identifier: str
    arn: str
    status: str  # RDS's DBInstanceStatus: available, creating, modifying...
    source: str | None  # the instance it replicates now; None once promoted


def find_read_replica(rds: Any, primary: str) -> ReadReplica | None:
    """The replica tagged as `primary`'s, or None when the environment has none.

    `rds`: a boto3 RDS client. Raises UsageError when two instances claim to be the replica
    (a failover must never guess which one to promote).
    """
    found = []
    for page in rds.get_paginator("describe_db_instances").paginate():
        for db in page["DBInstances"]:
            tags = {t["Key"]: t["Value"] for t in db.get("TagList") or []}
            if tags.get(ROLE_TAG) == REPLICA_ROLE and tags.get(REPLICA_OF_TAG) == primary:
                found.append(ReadReplica(db["DBInstanceIdentifier"], db["DBInstanceArn"], db["DBInstanceStatus"],
                                         db.get("ReadReplicaSourceDBInstanceIdentifier")))
    if len(found) > 1:
        names = ", ".join(r.identifier for r in found)
        raise UsageError(f"{len(found)} instances are tagged {REPLICA_OF_TAG}={primary} ({names}); "
                         "remove the tag from all but the replica to promote")
    return found[0] if found else None
