"""`opsctl failover --env E`: promote the read replica of a cloud environment's RDS database
and repoint the workers at it.

The stack creates a read replica for protected environments (`database.replica_instance`
in opsctl.yaml names it, or `--replica`). On a kubernetes environment failover

1. checks that the replica really replicates the environment's primary
   (`database.rds_instance`) and that the worker Secret `transcription-worker` holds a
   `database-url` it can repoint (else nothing changes: UsageError),
2. promotes the replica (`promote_read_replica`) and waits until RDS reports it available,
3. writes the promoted instance's host and port into the Secret's `database-url`, keeping its
   user, password, database name and parameters (the URL is never printed nor recorded),
4. restarts the worker Deployments of both colors as `kubectl rollout restart` does (the pod
   template annotation `kubectl.kubernetes.io/restartedAt`) and waits until they are ready
   (`deploy.ready_timeout` seconds each), so no worker keeps a connection to the old primary,

and records it, 0600, in `.opsctl/failover/<env>.json` (every failover, newest last): when,
from which primary and host to which instance and host, and each step with its time and
outcome. A run that stops after the promotion records outcome "partial" and raises
OperationFailed naming what to do; the next run for the same replica resumes it (the
promotion is not repeated, a Secret already naming the new host is left alone) and a run after
a complete failover changes nothing. opsctl keeps no database endpoint of its own for a
kubernetes environment: it reads the URL from `database.url_env`, and the result says when
that variable still names the old primary's host.
On the embedded platform `failover` promotes the standby built from the archive
(opsctl/pitr/standby.py) and repoints the platform's database URL and its workers itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError, not_empty

SECRET = "transcription-worker"  # the stack's worker Secret (stacks/transcribe_infra/workloads.py)
URL_KEY = "database-url"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets
POLL_SECONDS = 1.0


@dataclass
class FailoverResult:
    """An RDS failover: old primary and promoted replica (instance ids), the new endpoint
    (host:port), when it began (UTC), seconds taken, the journal file it was recorded in, the
    old and new database hosts, the worker Secret's fate ("updated", "already" when it named
    the new host), the worker Deployments restarted, `resumed` when an earlier partial run's
    promotion was taken over, `fenced` (what became of the old primary: "stopped" by
    stop-db-instance, "already stopped", "gone", or "unconfirmed" when RDS would not stop it),
    `steps` as recorded, and `notes` for the user."""
    environment: str
    old_primary: str
    new_primary: str
    endpoint: str
    at: dt.datetime
    seconds: float
    journal: str
    old_host: str | None = None
    new_host: str = ""
    secret: str = ""
    restarted: list[str] = field(default_factory=list)
    resumed: bool = False
    fenced: str = ""  # the old primary after the promotion: stopped | already stopped | gone | unconfirmed
    steps: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _journal_path(project: Project, env: Environment):
    return project.state_dir / "failover" / f"{env.name}.json"


def _history(project: Project, env: Environment) -> list[dict]:
    path = _journal_path(project, env)
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise UsageError(f"{path} is not valid JSON; repair or move it away") from None
    if not isinstance(doc, list):
        raise UsageError(f"{path} is not a list of failovers; repair or move it away")
    return doc


def _resumable(project: Project, env: Environment, primary: str, replica: str) -> dict | None:
    """The newest journal record promoting `replica` in place of `primary`, if any."""
    for rec in reversed(_history(project, env)):
        if isinstance(rec, dict) and rec.get("new_primary") == replica and rec.get("old_primary") == primary:
            return rec
    return None


def plan(project: Project, env: Environment, replica: str | None = None,
         secret_host: str | None = None) -> tuple[str, str, dict | None]:
    """(old primary, replica to promote, journal record of an earlier run to resume or None),
    checked; UsageError when there is nothing to promote. The newest journal record promoting
    this replica in place of this primary is resumed when RDS no longer reports the replica's
    source, when that run did not finish, or when the worker Secret's host (`secret_host`)
    already is the one it recorded (a re-run of a finished failover: nothing left to do; moto,
    unlike RDS, keeps reporting the source after a promotion)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from opsctl.pitr.rds import client as _client

    if env.platform != "kubernetes":
        raise UsageError(f"failover promotes an RDS read replica; '{env.name}' runs on {env.platform} "
                         "(its standby: 'opsctl dr standby')")
    primary = env.database.rds_instance
    _replica_given(replica)
    replica = replica if replica is not None else env.database.replica_instance
    if not primary or not replica:
        raise UsageError(f"set database.rds_instance and database.replica_instance for '{env.name}' in opsctl.yaml "
                         "(or pass --replica NAME)")
    try:
        found = _client(env).describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": [replica]}])
    except (ClientError, BotoCoreError) as exc:
        raise OperationFailed(f"reading RDS instance {replica} failed: {exc}") from None
    if not found["DBInstances"]:
        raise UsageError(f"RDS instance {replica} does not exist")
    source = found["DBInstances"][0].get("ReadReplicaSourceDBInstanceIdentifier")
    earlier = _resumable(project, env, primary, replica)
    if earlier is not None and (source is None or earlier.get("outcome") != "done"
                                or (secret_host is not None and secret_host == earlier.get("new_host"))):
        return primary, replica, earlier
    if source is None or source.rsplit(":", 1)[-1] != primary:
        raise UsageError(f"RDS instance {replica} is not a read replica of {primary} "
                         f"(its source: {source or 'none'}); nothing was promoted")
    return primary, replica, None


def failover(project: Project, env: Environment, replica: str | None = None, approve=None, progress=None):
    """The whole failover, as `opsctl failover` and a runbook step run it, inside the
    environment's operation window (notifications, maintenance window).

    Embedded platform: opsctl.pitr.standby.failover (returns a LocalFailoverResult);
    kubernetes: promote the RDS read replica and repoint the workers (FailoverResult).
    `approve(text)` is called before anything changes (raise to stop); `progress(step)` is
    told each step. The environment's deploy lease (opsctl.pitr.lease) is held throughout: a
    deploy, restore or failover already holding it refuses this one (UsageError, nothing
    changed). After the promotion the old primary is fenced (stopped) before anything is
    repointed; when that can't be confirmed it is said (result notes, the record), never an
    error. UsageError when there is nothing to promote or the worker Secret cannot be
    repointed (nothing changed), OperationFailed when the promotion or a later step fails
    (a later step's failure is recorded as "partial"; re-running resumes). `replica` given
    empty (an unset CI variable, `--replica "$R"`) is refused, never read as not given.
    """
    from opsctl.pitr import lease

    _replica_given(replica)
    if env.platform == "local" and replica is not None:
        raise UsageError("--replica names an RDS read replica; the embedded platform promotes its standby")
    if env.platform != "local":
        plan(project, env, replica)  # RDS's refusals (no such replica, not a replica) first: read-only
    with lease.held(project, env, "failover"):  # a deploy, restore or second failover is refused meanwhile
        return _failover(project, env, replica, approve, progress)


def _replica_given(replica: str | None) -> None:
    """UsageError when `--replica` was given empty or blank (opsctl.errors.not_empty): promoting
    database.replica_instance instead is not what the caller wrote."""
    not_empty(replica, "--replica", "give the RDS read replica to promote, or leave --replica out for "
                                    "database.replica_instance; nothing was changed")


def abandon(project: Project, env: Environment, replica: str | None = None, approve=None) -> dict:
    """`failover --abandon`: undo an interrupted failover of the embedded platform
    (opsctl.pitr.standby.abandon). UsageError, nothing changed, on a kubernetes environment (an
    interrupted RDS failover is finished by running it again: it resumes) and when `replica`
    is given too (--abandon promotes nothing: a replica named beside it is a mistake, never
    ignored)."""
    if env.platform != "local":
        raise UsageError(f"--abandon undoes an interrupted failover of the embedded platform only; '{env.name}' runs "
                         f"on {env.platform}: re-run 'opsctl failover --env {env.name}' without --abandon, which "
                         "resumes an interrupted RDS failover; nothing was changed")
    if replica is not None:
        raise UsageError("--abandon and --replica given together: --abandon undoes an interrupted local failover and "
                         "promotes nothing; leave --replica out; nothing was changed")
    from opsctl.pitr import standby

    return standby.abandon(project, env, approve)


def _failover(project: Project, env: Environment, replica: str | None, approve, progress):
    from opsctl.pitr.ops import window

    if env.platform == "local":
        from opsctl.pitr import standby

        with window(project, env, "failover", f"promote the standby of {env.name}"):
            return standby.failover(project, env, approve, progress)
    primary, target, earlier = plan(project, env, replica)
    workers = _Workers(project, env)
    secret_host = _host(workers.read_url())  # before anything changes: a Secret it cannot repoint stops it
    if earlier is None:
        primary, target, earlier = plan(project, env, replica, secret_host)
    if approve is not None:
        approve(f"{'finish the failover of' if earlier else 'promote'} {target} to be {env.name}'s primary "
                f"in place of {primary}, repoint the worker Secret {SECRET} and restart the workers")
    with window(project, env, "failover", f"promote {target} in place of {primary}") as w:
        result = run(project, env, primary, target, workers=workers, earlier=earlier, progress=progress)
        if w is not None:
            w.outcome = "succeeded" if not result.resumed else "succeeded (resumed)"
        return result


class _Workers:
    """The worker Secret and Deployments of a kubernetes environment, through the Kubernetes
    API as the deploy driver reaches it (opsctl.deploy.drivers.kubernetes.connect)."""

    def __init__(self, project: Project, env: Environment):
        self.project, self.env, self.ns = project, env, env.kubernetes.namespace
        self._client = None

    def _api(self, kind: str):
        from kubernetes import client

        from opsctl.deploy.drivers.kubernetes import connect

        if self._client is None:
            self._client = connect(self.project, self.env)
        return {"apps": client.AppsV1Api, "core": client.CoreV1Api}[kind](self._client)

    def _call(self, fn, *args, missing_ok: bool = False, **kwargs) -> dict | None:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        from opsctl.deploy.drivers.kubernetes import REQUEST_TIMEOUT
        from opsctl.redact import credentials

        name = getattr(fn, "__name__", "call")
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            try:
                message = json.loads(exc.body or "{}").get("message", "")
            except ValueError:
                message = ""
            hint = "; check your credentials and RBAC" if exc.status in (401, 403) else ""
            raise OperationFailed(credentials(f"Kubernetes API {name} in namespace {self.ns} answered "
                                              f"{exc.status} {exc.reason}: {message[:200]}{hint}")) from None
        except urllib3.exceptions.HTTPError as exc:
            raise OperationFailed(credentials(f"cannot reach the Kubernetes API of env '{self.env.name}' ({exc}); "
                                              "check kubernetes.context in opsctl.yaml")) from None
        return json.loads(resp.data or b"{}")

    def read_url(self) -> str:
        """The Secret's database-url (its password remembered for redaction). UsageError when
        the Secret, the key or a URL with a host is missing."""
        from opsctl.redact import remember, url_password

        secret = self._call(self._api("core").read_namespaced_secret, SECRET, self.ns, missing_ok=True)
        if secret is None:
            raise UsageError(f"the worker Secret {SECRET} does not exist in namespace {self.ns} (the stack creates "
                             "it: run 'opsctl infra up'); nothing was promoted")
        raw = (secret.get("data") or {}).get(URL_KEY)
        if raw is None and URL_KEY in (secret.get("stringData") or {}):
            raw = base64.b64encode(secret["stringData"][URL_KEY].encode()).decode()
        try:
            url = base64.b64decode(raw or "", validate=True).decode()
        except ValueError:
            url = ""
        remember(url_password(url))
        if not url:
            raise UsageError(f"the worker Secret {SECRET} has no {URL_KEY}; set it (the stack does), then re-run; "
                             "nothing was promoted")
        if _host(url) is None:
            raise UsageError(f"the {URL_KEY} of the worker Secret {SECRET} is not a postgresql:// URL with a host; "
                             "fix it, then re-run; nothing was promoted")
        return url

    def write_url(self, url: str) -> None:
        """Replace the Secret's database-url (a merge patch of that one key)."""
        self._call(self._api("core").patch_namespaced_secret, SECRET, self.ns,
                   {"data": {URL_KEY: base64.b64encode(url.encode()).decode()}})

    def deployments(self) -> list[dict]:
        """The worker Deployments that exist: both colors' and a single rolling one."""
        from opsctl.deploy import manifests as mf
        from opsctl.deploy.model import COLORS

        found = []
        for name in [mf.deployment_name(c) for c in COLORS] + [mf.deployment_name(None)]:
            dep = self._call(self._api("apps").read_namespaced_deployment, name, self.ns, missing_ok=True)
            if dep is not None:
                found.append(dep)
        return found

    def restart(self, name: str, at: str) -> int | None:
        """`kubectl rollout restart`: stamp the pod template; the Deployment's new generation."""
        dep = self._call(self._api("apps").patch_namespaced_deployment, name, self.ns,
                         {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}})
        return (dep or {}).get("metadata", {}).get("generation")

    def wait_ready(self, name: str, generation: int | None, timeout: float) -> None:
        """Until the controller has observed `generation` and every wanted replica is updated
        and ready (a Deployment scaled to 0 is done once observed); OperationFailed after
        `timeout` seconds with the last state seen."""
        deadline = time.monotonic() + timeout
        detail = "no status yet"
        while True:
            dep = self._call(self._api("apps").read_namespaced_deployment, name, self.ns, missing_ok=True)
            if dep is None:
                raise OperationFailed(f"Deployment {name} disappeared while it restarted")
            ready, detail = _restarted(dep, generation)
            if ready:
                return
            if time.monotonic() >= deadline:
                raise OperationFailed(f"{name} not ready {timeout:.0f} s after its restart ({detail})")
            time.sleep(min(POLL_SECONDS, max(0.05, deadline - time.monotonic())))


def _restarted(dep: dict, generation: int | None) -> tuple[bool, str]:
    want = dep.get("spec", {}).get("replicas")
    want = 1 if want is None else want
    status = dep.get("status") or {}
    generation = generation or dep.get("metadata", {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False, f"controller has not observed generation {generation} yet"
    updated, ready = status.get("updatedReplicas") or 0, status.get("readyReplicas") or 0
    if want and updated < want:
        return False, f"{updated}/{want} replicas updated"
    return ready >= want, f"{ready}/{want} ready"


def _host_port(url: str) -> tuple[str | None, int | None]:
    """The (first) host and port of a postgres URL, split as libpq splits it (endpoints.
    libpq_parts: a password holding '#' or '?' had its tail taken for the host by urllib)."""
    from opsctl.endpoints import libpq_parts

    parts = libpq_parts(url)
    if parts is None:
        return None, None
    try:
        split = urlsplit(f"//{parts[2].split(',')[0]}")
        return split.hostname or None, split.port
    except ValueError:
        return None, None


def _host(url: str) -> str | None:
    return _host_port(url)[0]


def _repointed(url: str, host: str, port: int | None) -> str:
    """`url` with its host and port replaced; user, password (as encoded), path and query kept."""
    from opsctl.endpoints import libpq_parts

    scheme, userinfo, _hosts, rest = libpq_parts(url)
    hostport = f"[{host}]" if ":" in host else host
    if port:
        hostport += f":{port}"
    return f"{scheme}://{userinfo + '@' if userinfo else ''}{hostport}{rest}"


FENCED = ("stopped", "already stopped", "gone")  # outcomes of fence() that confirm it


def fence(rds, primary: str) -> tuple[str, str]:
    """Stop the old primary after its replica was promoted (`stop-db-instance`, what RDS users
    do so an old primary that comes back takes no more writes: split brain). Returns (outcome,
    detail): "stopped", "already stopped" (stopped or stopping, or being deleted), "gone" (no
    such instance), or "unconfirmed" when RDS can't be asked or refuses (an old primary that is
    unreachable or failed: the usual failover). Never raises: a failover is not undone for it.
    RDS starts a stopped instance again after seven days, which the detail says."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        found = rds.describe_db_instances(DBInstanceIdentifier=primary)["DBInstances"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "DBInstanceNotFound":
            return "gone", f"old primary {primary} no longer exists"
        return "unconfirmed", f"RDS did not describe the old primary {primary} ({exc}); stop it yourself"
    except BotoCoreError as exc:
        return "unconfirmed", f"RDS did not describe the old primary {primary} ({exc}); stop it yourself"
    status = (found[0].get("DBInstanceStatus") if found else None) or "unknown"
    if not found:
        return "gone", f"old primary {primary} no longer exists"
    if status in ("stopped", "stopping", "deleting"):
        return "already stopped", f"old primary {primary} is {status}"
    try:
        rds.stop_db_instance(DBInstanceIdentifier=primary)
    except (ClientError, BotoCoreError) as exc:
        return "unconfirmed", (f"RDS refused to stop the old primary {primary} (status {status}: {exc}); it may "
                               "still take writes: stop or delete it, or cut its network, before anyone writes to it")
    return "stopped", (f"old primary {primary} stopped (stop-db-instance); RDS starts a stopped instance again after "
                       "7 days: delete it (with a final snapshot) once the failover is settled")


def _still_replica(rds, replica: str) -> bool:
    """Whether RDS still reports `replica`'s source (not promoted, or a promotion under way)."""
    found = rds.describe_db_instances(DBInstanceIdentifier=replica)["DBInstances"]
    return bool(found and found[0].get("ReadReplicaSourceDBInstanceIdentifier"))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run(project: Project, env: Environment, primary: str, replica: str, poll: float = 15.0, *,
        workers: _Workers | None = None, earlier: dict | None = None, progress=None) -> FailoverResult:
    """Promote `replica` (checked by `plan`; skipped when `earlier`, the journal record of a
    partial run, says it was), wait until RDS reports it available (polling every `poll`
    seconds), repoint the worker Secret, restart the worker Deployments and wait until they are
    ready; every step recorded in `.opsctl/failover/<env>.json` (0600) as it ends.
    OperationFailed when RDS refuses or the wait ends (nothing recorded when the promotion
    itself was refused), or when a later step fails (recorded "partial", with what to do)."""
    from botocore.exceptions import BotoCoreError, ClientError, WaiterError

    from opsctl.files import write_json
    from opsctl.pitr.rds import client as _client
    from opsctl.redact import credentials, remember, url_password

    began = time.monotonic()
    started = dt.datetime.now(dt.timezone.utc)
    workers = workers or _Workers(project, env)
    tell = progress or (lambda step: None)
    rds = _client(env)
    path = _journal_path(project, env)
    history = _history(project, env)
    # the journal's own copy of the record to resume, updated in place
    record = history[history.index(earlier)] if earlier is not None and earlier in history else None
    url = workers.read_url()
    old_host = _host(url)
    if record is None:
        try:
            old = rds.describe_db_instances(DBInstanceIdentifier=primary)["DBInstances"][0].get("Endpoint") or {}
            old_host = old.get("Address") or old_host
        except (ClientError, BotoCoreError, IndexError):
            pass  # the lost primary may not answer; the Secret's host is the old one
    steps = record.setdefault("steps", []) if record is not None else []

    prior = float(record.get("seconds") or 0) if record is not None else 0.0

    def save(outcome: str) -> None:
        nonlocal record
        if record is None:
            record = {"at": started.isoformat(), "old_primary": primary, "new_primary": replica, "old_host": old_host}
            history.append(record)
        record.update({"new_host": new_host, "endpoint": endpoint, "steps": steps, "outcome": outcome,
                       "seconds": round(prior + time.monotonic() - began, 2)})
        write_json(path, history, private=True)

    def step(name: str, outcome: str, t0: str, detail: str = "") -> None:
        steps.append({"step": name, "started": t0, "ended": _now(), "outcome": outcome,
                      **({"detail": detail} if detail else {})})

    t0 = _now()
    new_host, endpoint = (record or {}).get("new_host", ""), (record or {}).get("endpoint", "?")
    fresh = record is None
    if fresh:  # recorded before the request: a run killed from here on is resumed, never refused
        save("promoting")
    try:
        if fresh or _still_replica(rds, replica):  # a resumed run killed before its request reached RDS
            tell(f"promoting {replica}")
            rds.promote_read_replica(DBInstanceIdentifier=replica)
    except (ClientError, BotoCoreError) as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if fresh:  # refused: nothing changed, nothing to record
            history.remove(record)
            if history:
                write_json(path, history, private=True)
            else:
                path.unlink(missing_ok=True)
        elif code == "InvalidDBInstanceState":  # the promotion a killed run asked for is under way
            exc = None
        else:
            step("promote", "failed", t0, str(exc))
            save("partial")
            raise OperationFailed(f"resuming the promotion of {replica} failed ({exc}); re-run 'opsctl failover "
                                  f"--env {env.name}' once RDS answers") from None
        if exc is not None:
            raise OperationFailed(f"promoting {replica} failed: {exc}") from None
    try:
        rds.get_waiter("db_instance_available").wait(DBInstanceIdentifier=replica,
                                                      WaiterConfig={"Delay": poll, "MaxAttempts": 240})
        ep = rds.describe_db_instances(DBInstanceIdentifier=replica)["DBInstances"][0].get("Endpoint") or {}
    except (ClientError, WaiterError, BotoCoreError) as exc:
        step("promote", "failed", t0, str(exc))
        save("partial")
        raise OperationFailed(f"{replica} is not available ({exc}); re-run 'opsctl failover --env {env.name}' "
                              "once RDS reports it available") from None
    new_host, port = ep.get("Address") or "", ep.get("Port")
    endpoint = f"{new_host or '?'}:{port or '?'}"
    resumed = not fresh
    step("promote", "already promoted" if resumed else "done", t0)
    save("running")
    result = FailoverResult(env.name, primary, replica, endpoint, started, 0.0, str(path),
                            old_host=record.get("old_host", old_host), new_host=new_host, resumed=resumed)
    if not any(s["step"] == "fence-old-primary" and s["outcome"] in FENCED for s in steps):
        t0 = _now()
        tell(f"fencing {primary}")
        result.fenced, detail = fence(rds, primary)
        step("fence-old-primary", result.fenced, t0, detail)
        save("running")
        if result.fenced not in FENCED:
            result.notes.append(f"fencing not confirmed: {detail}")
        else:
            result.notes.append(detail)
    else:
        result.fenced = next(s["outcome"] for s in steps if s["step"] == "fence-old-primary" and s["outcome"] in FENCED)
    if not new_host:
        step("repoint-secret", "failed", _now(), "RDS reports no endpoint address")
        save("partial")
        raise OperationFailed(f"{replica} was promoted but RDS reports no endpoint for it; the worker Secret still "
                              f"names {old_host}; re-run 'opsctl failover --env {env.name}' once it has one")

    t0 = _now()
    try:
        if _host_port(url) == (new_host, port):
            result.secret = "already"
        else:
            tell(f"repointing Secret {SECRET}")
            workers.write_url(_repointed(url, new_host, port))
            result.secret = "updated"
    except OperationFailed as exc:
        step("repoint-secret", "failed", t0, credentials(str(exc)))
        save("partial")
        raise OperationFailed(f"{replica} is the primary now, but the worker Secret {SECRET} could not be repointed "
                              f"({credentials(str(exc))}); the workers still use {old_host}: fix access and re-run "
                              f"'opsctl failover --env {env.name}'") from None
    step("repoint-secret", result.secret, t0)
    save("running")

    # restart what was not restarted since the Secret was last repointed (all of them when it was now)
    skip: set[str] = set()
    for done in steps:
        if done["step"] == "repoint-secret" and done["outcome"] == "updated":
            skip = set()
        elif done["step"].startswith("restart ") and done["outcome"] == "done":
            skip.add(done["step"].removeprefix("restart "))
    stamp, failed = _now(), None
    try:
        deployments = [d["metadata"]["name"] for d in workers.deployments()]
    except OperationFailed as exc:
        step("restart", "failed", _now(), credentials(str(exc)))
        deployments, failed = [], credentials(str(exc))
    for name in deployments:
        if name in skip:
            continue
        t0 = _now()
        try:
            tell(f"restarting {name}")
            generation = workers.restart(name, stamp)
            workers.wait_ready(name, generation, env.deploy.ready_timeout)
        except OperationFailed as exc:
            step(f"restart {name}", "failed", t0, credentials(str(exc)))
            failed = failed or credentials(str(exc))
            continue
        step(f"restart {name}", "done", t0)
        result.restarted.append(name)
    if failed is not None:
        save("partial")
        raise OperationFailed(f"{replica} is the primary and the worker Secret names it, but the worker restart "
                              f"failed ({failed}); workers may hold connections to {result.old_host}: fix them and "
                              f"re-run 'opsctl failover --env {env.name}' (recorded in {path})")

    local = os.environ.get(env.database.url_env)
    remember(url_password(local))
    if local and _host(local) not in (None, new_host):
        result.notes.append(f"${env.database.url_env} here still names {_host(local)}: point it at {endpoint}")
    result.seconds = round(time.monotonic() - began, 2)
    save("done")
    result.steps = list(steps)
    return result
