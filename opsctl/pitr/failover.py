"""`opsctl failover --env E`: promote the read replica of a cloud environment's RDS database.

The stack creates a read replica for protected environments (`database.replica_instance`
in opsctl.yaml names it, or `--replica`). Failover checks that it really replicates the
environment's primary (`database.rds_instance`), promotes it (`promote_read_replica`), waits
until RDS reports it available, and records what it did, 0600, in
`.opsctl/failover/<env>.json` (every failover, newest last): when, from which primary, to which
instance, its endpoint. The new primary's endpoint is printed; on a cloud environment the
database URL lives in the variable `database.url_env` names and in the worker's Secret, which
this command does not rewrite: point them at the endpoint.
On the embedded platform `failover` promotes the standby built from the archive
(opsctl/pitr/standby.py) and repoints the platform's database URL and its workers itself.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError


@dataclass
class FailoverResult:
    """An RDS failover: old primary and promoted replica (instance ids), the new endpoint
    (host:port), when (UTC), seconds taken, and the journal file it was recorded in."""
    environment: str
    old_primary: str
    new_primary: str
    endpoint: str
    at: dt.datetime
    seconds: float
    journal: str


def plan(project: Project, env: Environment, replica: str | None = None) -> tuple[str, str]:
    """(old primary, replica to promote), checked; UsageError when there is nothing to promote."""
    from botocore.exceptions import BotoCoreError, ClientError

    from opsctl.pitr.rds import client

    if env.platform != "kubernetes":
        raise UsageError(f"failover promotes an RDS read replica; '{env.name}' runs on {env.platform} "
                         "(its standby: 'opsctl dr standby')")
    primary = env.database.rds_instance
    replica = replica or env.database.replica_instance
    if not primary or not replica:
        raise UsageError(f"set database.rds_instance and database.replica_instance for '{env.name}' in opsctl.yaml "
                         "(or pass --replica NAME)")
    try:
        found = client(env).describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [replica]}])
    except (ClientError, BotoCoreError) as exc:
        raise OperationFailed(f"reading RDS instance {replica} failed: {exc}") from None
    if not found["DBInstances"]:
        raise UsageError(f"RDS instance {replica} does not exist")
    source = found["DBInstances"][0].get("ReadReplicaSourceDBInstanceIdentifier")
    if source is None or source.rsplit(":", 1)[-1] != primary:
        raise UsageError(f"RDS instance {replica} is not a read replica of {primary} "
                         f"(its source: {source or 'none'}); nothing was promoted")
    return primary, replica


def failover(project: Project, env: Environment, replica: str | None = None, approve=None, progress=None):
    """The whole failover, as `opsctl failover` and a runbook step run it, inside the
    environment's operation window (notifications, maintenance window).

    Embedded platform: opsctl.pitr.standby.failover (returns a LocalFailoverResult);
    kubernetes: promote the RDS read replica (FailoverResult). `approve(text)` is called
    before anything changes (raise to stop); `progress(step)` for the local steps. UsageError
    when there is nothing to promote, OperationFailed when the promotion fails.
    """
    from opsctl.pitr.ops import window

    if env.platform == "local":
        from opsctl.pitr import standby

        if replica:
            raise UsageError("--replica names an RDS read replica; the embedded platform promotes its standby")
        with window(project, env, "failover", f"promote the standby of {env.name}"):
            return standby.failover(project, env, approve, progress)
    primary, target = plan(project, env, replica)
    if approve is not None:
        approve(f"promote {target} to be {env.name}'s primary in place of {primary}")
    with window(project, env, "failover", f"promote {target} in place of {primary}"):
        return run(project, env, primary, target)


def run(project: Project, env: Environment, primary: str, replica: str, poll: float = 15.0) -> FailoverResult:
    """Promote `replica` (checked by `plan`), wait until RDS reports it available (polling every
    `poll` seconds), record it in `.opsctl/failover/<env>.json` (0600). OperationFailed when RDS
    refuses or the wait ends."""
    from botocore.exceptions import BotoCoreError, ClientError, WaiterError

    from opsctl.files import write_json
    from opsctl.pitr.rds import client

    began = time.monotonic()
    rds = client(env)
    try:
        rds.promote_read_replica(DBInstanceIdentifier=replica)
        rds.get_waiter("db_instance_available").wait(DBInstanceIdentifier=replica,
                                                      WaiterConfig={"Delay": poll, "MaxAttempts": 240})
        endpoint = rds.describe_db_instances(DBInstanceIdentifier=replica)["DBInstances"][0].get("Endpoint") or {}
    except (ClientError, WaiterError, BotoCoreError) as exc:
        raise OperationFailed(f"promoting {replica} failed: {exc}") from None
    result = FailoverResult(env.name, primary, replica, f"{endpoint.get('Address', '?')}:{endpoint.get('Port', '?')}",
                            dt.datetime.now(dt.timezone.utc), round(time.monotonic() - began, 2), "")
    path = project.state_dir / "failover" / f"{env.name}.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append({"at": result.at.isoformat(), "old_primary": primary, "new_primary": replica,
                    "endpoint": result.endpoint, "seconds": result.seconds})
    write_json(path, history, private=True)
    result.journal = str(path)
    return result
