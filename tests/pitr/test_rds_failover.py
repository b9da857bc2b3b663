"""`opsctl failover --env E` on a kubernetes environment (issue 22): the RDS read replica is
promoted (moto's RDS control plane), the worker Secret's database-url is repointed at it and
the worker Deployments of both colors are restarted (kmock's Kubernetes API, through the real
`kubernetes` client), all recorded; each failure branch is recorded, reported in one line and
resumed by a re-run."""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import urlsplit

import boto3
import kmock
import pytest
import pytest_asyncio
import yaml
from typer.testing import CliRunner

from opsctl.cli import app
from pitr_support import record_windows

NS = "transcribe"
SECRETS, DEPLOYMENTS = "v1/secrets", "apps/v1/deployments"
PASSWORD = "pa%40ss-w0rd-not-printed"
OLD_URL = f"postgresql://transcribe:{PASSWORD}@{{host}}:5432/transcribe?sslmode=require&application_name=worker"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def plain(obj) -> dict:
    return json.loads(json.dumps(obj, default=dict))


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus metadata.generation counting spec changes (what a restart waits
    on), and switches to refuse Secret writes (RBAC) or be unreachable."""

    refuse_secret_patch = False
    refuse_deployment_reads = False

    async def _handle(self, request):
        from aiohttp import web

        refused = (self.refuse_secret_patch and request.method == kmock.method.PATCH and "/secrets/" in str(request.url)) \
            or (self.refuse_deployment_reads and request.method == kmock.method.GET and "/deployments" in str(request.url))
        if refused:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                                      "reason": "Forbidden", "message": "forbidden by RBAC"}, status=403)
        if request.resource is not None and request.name and request.method == kmock.method.PATCH \
                and isinstance(request.data, dict) and "spec" in request.data:
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key in self.objects and not self.objects[key].deleted:
                    old = plain(self.objects[key].raw)
                    probe = kmock.Object(old)
                    probe.patch(request.data)
                    if plain(probe.raw).get("spec") != old.get("spec"):
                        request.data.setdefault("metadata", {})["generation"] = old["metadata"].get("generation", 0) + 1
        return await super()._handle(request)


class Controller:
    """Plays the Deployment controller: the latest generation's replicas become ready, except
    the Deployments named in `broken` (their new pods never pass readiness)."""

    def __init__(self, server: ApiServer):
        self.server, self.broken = server, set()

    async def run(self) -> None:
        while True:
            for (resource, _, name), obj in list(self.server.objects.items()):
                if str(resource) != DEPLOYMENTS and getattr(resource, "plural", None) != "deployments" or obj.deleted:
                    continue
                raw = plain(obj.raw)
                want = raw["spec"].get("replicas", 1)
                ready = 0 if name in self.broken else want
                status = {"observedGeneration": raw["metadata"].get("generation", 1), "replicas": want,
                          "updatedReplicas": ready, "readyReplicas": ready}
                if raw.get("status") != status:
                    obj.patch({"status": status})
            await asyncio.sleep(0.05)


pytestmark = [pytest.mark.asyncio, pytest.mark.kmock(cls=ApiServer)]


class Env:
    def __init__(self, server, controller, rds, root, old_host):
        self.server, self.controller, self.rds, self.root, self.old_host = server, controller, rds, root, old_host
        self.runner = CliRunner()

    async def failover(self, *extra: str):
        return await asyncio.to_thread(self.runner.invoke, app, ["failover", "--env", "cloud", "--yes", *extra])

    def secret_url(self) -> str:
        raw = plain(self.server.objects[SECRETS, NS, "transcription-worker"].raw)
        return base64.b64decode(raw["data"]["database-url"]).decode()

    def deployment(self, color: str) -> dict:
        return plain(self.server.objects[DEPLOYMENTS, NS, f"transcription-worker-{color}"].raw)

    def restarted_at(self, color: str) -> str | None:
        return (self.deployment(color)["spec"]["template"]["metadata"].get("annotations") or {}).get(RESTARTED_AT)

    def journal(self) -> list[dict]:
        return json.loads((self.root / ".opsctl" / "failover" / "cloud.json").read_text())

    def promoted(self) -> bool:
        """Whether fo-replica is a standalone instance now. moto keeps reporting the source
        after a promotion (RDS does not), but refuses to stop a read replica: stop and start."""
        try:
            self.rds.stop_db_instance(DBInstanceIdentifier="fo-replica")
        except self.rds.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "InvalidDBClusterStateFault", exc
            return False
        self.rds.start_db_instance(DBInstanceIdentifier="fo-replica")
        return True

    def status(self, name: str) -> str:
        return self.rds.describe_db_instances(DBInstanceIdentifier=name)["DBInstances"][0]["DBInstanceStatus"]

    def new_host(self) -> str:
        return self.rds.describe_db_instances(DBInstanceIdentifier="fo-replica")["DBInstances"][0]["Endpoint"]["Address"]


def _deployment(color: str, replicas: int) -> dict:
    name = f"transcription-worker-{color}"
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS, "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "worker", "image": "w:1"}]}}},
            "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
                       "updatedReplicas": replicas}}


@pytest_asyncio.fixture
async def env(kmock, s3, ops_root, monkeypatch):
    (ops_root / "kubeconfig.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester", "namespace": NS}}]}))
    doc = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    doc["environments"]["cloud"] = {
        "platform": "kubernetes", "aws": {"endpoint_url": s3.endpoint_url},
        "kubernetes": {"kubeconfig": "kubeconfig.yaml", "context": "kmock", "namespace": NS},
        "database": {"rds_instance": "fo-primary", "replica_instance": "fo-replica", "url_env": "FO_DATABASE_URL"},
        "deploy": {"ready_timeout": 2}}
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(doc))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG", "FO_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    rds = boto3.client("rds", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    rds.create_db_instance(DBInstanceIdentifier="fo-primary", DBInstanceClass="db.r6g.large", Engine="postgres",
                           AllocatedStorage=50, MasterUsername="admin", MasterUserPassword="not-a-secret-1",
                           BackupRetentionPeriod=7)
    rds.create_db_instance_read_replica(DBInstanceIdentifier="fo-replica", SourceDBInstanceIdentifier="fo-primary")
    old_host = rds.describe_db_instances(DBInstanceIdentifier="fo-primary")["DBInstances"][0]["Endpoint"]["Address"]
    kmock.objects[SECRETS, NS, "transcription-worker"] = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "transcription-worker", "namespace": NS},
        "data": {"database-url": base64.b64encode(OLD_URL.format(host=old_host).encode()).decode(),
                 "redis-url": base64.b64encode(b"rediss://:r-secret@cache:6379/0").decode(),
                 "api-key-hashes": base64.b64encode(b"[]").decode()}}
    kmock.objects[DEPLOYMENTS, NS, "transcription-worker-blue"] = _deployment("blue", 3)
    kmock.objects[DEPLOYMENTS, NS, "transcription-worker-green"] = _deployment("green", 0)
    controller = Controller(kmock)
    task = asyncio.create_task(controller.run())
    yield Env(kmock, controller, rds, ops_root, old_host)
    task.cancel()
    for name in ("fo-replica", "fo-primary"):
        try:
            rds.delete_db_instance(DBInstanceIdentifier=name, SkipFinalSnapshot=True)
        except rds.exceptions.DBInstanceNotFoundFault:
            pass


def _no_secret_in(env: Env, *texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text and "r-secret" not in text


async def test_failover_promotes_repoints_the_secret_and_restarts_both_colors(env, monkeypatch):
    monkeypatch.setenv("FO_DATABASE_URL", OLD_URL.format(host=env.old_host))
    r = await env.failover("--json")
    assert r.exit_code == 0, r.output
    new_host = env.new_host()
    assert env.promoted() and new_host != env.old_host
    # host and port changed; user, password (as encoded), database and parameters kept
    before, after = urlsplit(OLD_URL.format(host=env.old_host)), urlsplit(env.secret_url())
    assert after.hostname == new_host and after.port == 5432
    assert (after.scheme, after.username, after.password, after.path, after.query) == \
        (before.scheme, before.username, before.password, before.path, before.query)
    assert base64.b64decode(plain(env.server.objects[SECRETS, NS, "transcription-worker"].raw)["data"]["redis-url"]) \
        == b"rediss://:r-secret@cache:6379/0"
    blue, green = env.restarted_at("blue"), env.restarted_at("green")
    assert blue and blue == green
    assert env.deployment("blue")["metadata"]["generation"] == 2
    doc = json.loads(r.stdout)
    assert doc["restarted"] == ["transcription-worker-blue", "transcription-worker-green"]
    assert doc["secret"] == "updated" and doc["old_host"] == env.old_host and doc["new_host"] == new_host
    assert any("FO_DATABASE_URL" in n and env.old_host in n for n in doc["notes"])
    [rec] = env.journal()
    assert rec["outcome"] == "done" and rec["old_host"] == env.old_host and rec["new_host"] == new_host
    assert [(s["step"], s["outcome"]) for s in rec["steps"]] == [
        ("promote", "done"), ("fence-old-primary", "stopped"), ("repoint-secret", "updated"),
        ("restart transcription-worker-blue", "done"), ("restart transcription-worker-green", "done")]
    assert all(s["started"] <= s["ended"] for s in rec["steps"])
    # fenced: the old primary was stopped after the promotion, before anything was repointed
    assert env.status("fo-primary") == "stopped" and doc["fenced"] == "stopped"
    assert any("fo-primary stopped" in n and "7 days" in n for n in doc["notes"])
    journal_file = env.root / ".opsctl" / "failover" / "cloud.json"
    assert journal_file.stat().st_mode & 0o077 == 0
    _no_secret_in(env, r.output, journal_file.read_text())
    # the human rendering says what happened
    r2 = await env.failover()
    assert r2.exit_code == 0, r2.output
    assert "already promoted" in r2.output and "none needed" in r2.output
    # a re-run after a complete failover changes nothing in the cluster
    assert env.restarted_at("blue") == blue and env.deployment("blue")["metadata"]["generation"] == 2
    assert urlsplit(env.secret_url()).hostname == new_host
    assert len(env.journal()) == 1


@pytest.mark.parametrize("extra, said", [
    (("--replica", ""), "--replica is empty; give the RDS read replica to promote, or leave --replica out"),
    (("--abandon",), "--abandon undoes an interrupted failover of the embedded platform only; 'cloud' runs on "
                     "kubernetes: re-run 'opsctl failover --env cloud' without --abandon"),
])
async def test_an_empty_replica_or_abandon_is_refused_and_nothing_is_promoted(env, extra, said):
    """Breaker F11: `--replica ""` (an unset CI variable) promoted database.replica_instance, exit
    0; `--abandon` answered with `dr standby`'s message. One line, exit 2, nothing changed."""
    r = await env.failover(*extra)
    line = r.output.strip()
    assert r.exit_code == 2 and len(line.splitlines()) == 1, r.output
    assert said in line and "nothing was changed" in line and "a standby from the archive" not in line, line
    assert not env.promoted() and env.restarted_at("blue") is None
    assert not (env.root / ".opsctl" / "failover" / "cloud.json").exists()


async def test_failover_runs_inside_the_operation_window(env, monkeypatch):
    seen = record_windows(monkeypatch, note=lambda kw: env.restarted_at("blue"))
    r = await env.failover()
    assert r.exit_code == 0, r.output
    # the window closed after the workers were restarted: the restart ran inside it
    assert seen == [("cloud", "failover", "succeeded", env.restarted_at("blue"))] and seen[0][3]


@pytest.mark.parametrize("data, message", [
    (None, "does not exist"),
    ({"redis-url": base64.b64encode(b"redis://x").decode()}, "has no database-url"),
    ({"database-url": base64.b64encode(b"host=db user=x password=y").decode()}, "not a postgresql:// URL"),
])
async def test_a_secret_it_cannot_repoint_stops_failover_before_the_promotion(env, data, message):
    key = (SECRETS, NS, "transcription-worker")
    if data is None:
        del env.server.objects[key]
    else:
        env.server.objects[key] = {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "transcription-worker", "namespace": NS}, "data": data}
    r = await env.failover()
    assert r.exit_code == 2, r.output
    assert message in r.output and "nothing was promoted" in r.output and "Traceback" not in r.output
    assert not env.promoted() and env.restarted_at("blue") is None
    assert not (env.root / ".opsctl" / "failover" / "cloud.json").exists()


async def test_secret_write_refused_after_promotion_is_recorded_and_a_rerun_finishes(env):
    env.server.refuse_secret_patch = True
    r = await env.failover()
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "could not be repointed" in r.output and "re-run 'opsctl failover --env cloud'" in r.output
    _no_secret_in(env, r.output)
    assert env.promoted()
    assert urlsplit(env.secret_url()).hostname == env.old_host and env.restarted_at("blue") is None
    [rec] = env.journal()
    assert rec["outcome"] == "partial" and rec["steps"][-1]["step"] == "repoint-secret"
    assert rec["steps"][-1]["outcome"] == "failed" and "403" in rec["steps"][-1]["detail"]

    env.server.refuse_secret_patch = False
    r = await env.failover("--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["resumed"] and doc["secret"] == "updated"
    assert urlsplit(env.secret_url()).hostname == env.new_host() and env.restarted_at("green")
    [rec] = env.journal()
    assert rec["outcome"] == "done" and rec["old_host"] == env.old_host
    assert ("promote", "already promoted") in [(s["step"], s["outcome"]) for s in rec["steps"]]


async def test_restart_that_never_becomes_ready_is_partial_and_a_rerun_restarts_only_what_is_left(env):
    env.controller.broken.add("transcription-worker-blue")
    r = await env.failover()
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "worker restart failed" in r.output and "transcription-worker-blue not ready" in r.output
    assert "re-run 'opsctl failover --env cloud'" in r.output
    _no_secret_in(env, r.output)
    assert urlsplit(env.secret_url()).hostname == env.new_host()  # the Secret was updated
    [rec] = env.journal()
    assert rec["outcome"] == "partial"
    outcomes = {s["step"]: s["outcome"] for s in rec["steps"]}
    assert outcomes["restart transcription-worker-blue"] == "failed"
    assert outcomes["restart transcription-worker-green"] == "done"
    green = env.restarted_at("green")

    env.controller.broken.clear()
    r = await env.failover("--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["secret"] == "already" and doc["restarted"] == ["transcription-worker-blue"]
    assert env.restarted_at("green") == green  # not restarted twice
    assert env.journal()[0]["outcome"] == "done"


async def test_kubernetes_api_unreachable_stops_failover_before_the_promotion(env):
    (env.root / "kubeconfig.yaml").write_text((env.root / "kubeconfig.yaml").read_text().replace(
        str(env.server.url).rstrip("/"), "http://127.0.0.1:9"))
    r = await env.failover()
    assert r.exit_code == 1
    assert "cannot reach the Kubernetes API" in r.output and "Traceback" not in r.output
    assert not env.promoted()


def _rds_refusing(monkeypatch, operation: str, code: str, when=lambda params: True):
    """opsctl's RDS client, with moto's answer to `operation` replaced by the error RDS gives
    (`code`) while `when(params)` holds: states moto cannot be put in (a promotion refused, an
    instance that fails while it is waited for)."""
    from botocore.awsrequest import AWSResponse

    from opsctl.pitr import rds as rdsmod

    real = rdsmod.client

    def refuse(params, **_):  # params: the serialized request; its body the query's fields
        if when(params.get("body") or {}):
            return (AWSResponse("https://rds.test", 400, {}, None),
                    {"Error": {"Code": code, "Message": f"{operation} refused ({code})"},
                     "ResponseMetadata": {"HTTPStatusCode": 400}})
        return None

    def client(env):
        c = real(env)
        c.meta.events.register(f"before-call.rds.{operation}", refuse)
        return c

    monkeypatch.setattr(rdsmod, "client", client)


async def test_a_refused_promotion_changes_nothing_and_records_nothing(env, monkeypatch):
    _rds_refusing(monkeypatch, "PromoteReadReplica", "InvalidDBInstanceState")
    r = await env.failover()
    assert r.exit_code == 1
    assert "promoting fo-replica failed" in r.output and "InvalidDBInstanceState" in r.output
    assert not env.promoted() and env.restarted_at("blue") is None
    assert urlsplit(env.secret_url()).hostname == env.old_host
    assert not (env.root / ".opsctl" / "failover" / "cloud.json").exists()


async def test_a_promoted_instance_that_fails_while_waited_for_is_partial_and_a_rerun_finishes(env, monkeypatch):
    failing = [True]
    _rds_refusing(monkeypatch, "DescribeDBInstances", "InternalFailure",
                  when=lambda params: failing[0] and params.get("DBInstanceIdentifier") == "fo-replica")
    r = await env.failover()
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "fo-replica is not available" in r.output and "re-run 'opsctl failover --env cloud'" in r.output
    assert env.promoted()
    assert urlsplit(env.secret_url()).hostname == env.old_host and env.restarted_at("blue") is None
    [rec] = env.journal()
    assert rec["outcome"] == "partial" and (rec["steps"][-1]["step"], rec["steps"][-1]["outcome"]) == ("promote", "failed")

    # resuming while RDS still does not answer: recorded again, the workers still left alone
    r = await env.failover()
    assert r.exit_code == 1 and "re-run 'opsctl failover --env cloud'" in r.output
    assert env.restarted_at("blue") is None and env.journal()[0]["outcome"] == "partial"

    failing[0] = False
    r = await env.failover()
    assert r.exit_code == 0, r.output
    assert urlsplit(env.secret_url()).hostname == env.new_host() and env.restarted_at("blue")
    assert env.journal()[0]["outcome"] == "done"


async def test_workers_it_cannot_list_after_the_secret_is_repointed_are_recorded_and_a_rerun_restarts_them(env):
    env.server.refuse_deployment_reads = True
    r = await env.failover()
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "worker restart failed" in r.output and "403" in r.output and "re-run" in r.output
    assert urlsplit(env.secret_url()).hostname == env.new_host() and env.restarted_at("blue") is None
    [rec] = env.journal()
    assert rec["outcome"] == "partial" and (rec["steps"][-1]["step"], rec["steps"][-1]["outcome"]) == ("restart", "failed")

    env.server.refuse_deployment_reads = False
    r = await env.failover("--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["restarted"] == ["transcription-worker-blue", "transcription-worker-green"]
    assert env.restarted_at("blue") and env.journal()[0]["outcome"] == "done"


async def test_a_run_killed_before_its_promotion_reached_rds_is_promoted_by_the_rerun(env, monkeypatch):
    """The record is written before the promotion request: a run killed right there leaves
    outcome "promoting", and the re-run promotes (RDS still reports the source) and finishes."""
    from opsctl.pitr import rds as rdsmod

    real = rdsmod.client

    def killed(params, **_):
        raise KeyboardInterrupt  # the process dies before the request leaves

    def client(env_):
        c = real(env_)
        c.meta.events.register("before-call.rds.PromoteReadReplica", killed)
        return c

    monkeypatch.setattr(rdsmod, "client", client)
    r = await env.failover()
    assert r.exit_code != 0
    assert [rec["outcome"] for rec in env.journal()] == ["promoting"]
    assert not env.promoted()

    monkeypatch.setattr(rdsmod, "client", real)
    r = await env.failover("--json")
    assert r.exit_code == 0, r.output
    assert env.promoted() and urlsplit(env.secret_url()).hostname == env.new_host() and env.restarted_at("blue")
    [rec] = env.journal()
    assert rec["outcome"] == "done" and json.loads(r.stdout)["resumed"]


async def test_an_old_primary_rds_will_not_stop_is_said_and_the_failover_still_finishes(env, monkeypatch):
    """The usual failover: the old primary is broken or out of reach, so RDS refuses to stop it.
    Fencing can't be confirmed: said in the output and the record, never a failed failover."""
    from opsctl.pitr import rds as rdsmod

    real = rdsmod.client
    _rds_refusing(monkeypatch, "StopDBInstance", "InvalidDBInstanceState")
    r = await env.failover("--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["fenced"] == "unconfirmed"
    assert any(n.startswith("fencing not confirmed") and "fo-primary" in n for n in doc["notes"])
    assert urlsplit(env.secret_url()).hostname == env.new_host() and env.restarted_at("blue")
    [rec] = env.journal()
    fence = next(s for s in rec["steps"] if s["step"] == "fence-old-primary")
    assert rec["outcome"] == "done" and fence["outcome"] == "unconfirmed" and "InvalidDBInstanceState" in fence["detail"]
    assert env.status("fo-primary") == "available"
    # a re-run, RDS answering again, fences it
    monkeypatch.setattr(rdsmod, "client", real)
    r = await env.failover("--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fenced"] == "stopped" and env.status("fo-primary") == "stopped"


async def test_two_failovers_at_once_one_is_refused_by_the_deploy_lease(env):
    """Two failovers of one environment: the second finds the deploy Lease (the one deploys
    take) held by the first and is refused in one line, exit 2, changing nothing; the first
    finishes. A deploy holding the Lease refuses a failover the same way."""
    import threading

    from opsctl.config import load_project
    from opsctl.pitr import failover as core

    project = load_project(env.root)
    asked, go = threading.Event(), threading.Event()

    def approve(_text):  # the first failover waits here, its Lease held
        asked.set()
        assert go.wait(30)

    first = asyncio.create_task(asyncio.to_thread(core.failover, project, project.env("cloud"), None, approve))
    assert await asyncio.to_thread(asked.wait, 30)
    r = await env.failover()
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert "failover refused" in r.output and "busy" in r.output and "opsctl-deploy" in r.output
    assert not env.promoted() and not (env.root / ".opsctl" / "failover" / "cloud.json").exists()
    go.set()
    result = await first
    assert result.fenced == "stopped" and env.promoted()
    assert plain(env.server.objects["coordination.k8s.io/v1/leases", NS, "opsctl-deploy"].raw)["spec"]["holderIdentity"] == ""

    from opsctl.deploy.drivers.kubernetes import KubernetesDriver

    held, release = threading.Event(), threading.Event()

    def deploy():
        with KubernetesDriver(project, project.env("cloud")).lock():
            held.set()
            release.wait(30)

    holder = asyncio.create_task(asyncio.to_thread(deploy))
    assert await asyncio.to_thread(held.wait, 30)
    r = await env.failover()
    release.set()
    await holder
    assert r.exit_code == 2 and "busy" in r.output, r.output


@pytest.mark.parametrize("password", ["pa#ss", "pa?ss", "p%40ss", "plain"])
def test_the_secret_is_repointed_as_libpq_reads_it_whatever_the_password(password):
    """Breaker 54 F2's kind: urllib ends a URL's authority at '#' or '?', libpq does not. With
    such a password, urllib had taken the password's tail for the host: the Secret was judged
    to name another host and repointed with the credentials lost."""
    from opsctl.backup.postgres import params
    from opsctl.pitr.failover import _host_port, _repointed

    url = f"postgresql://app:{password}@old.example:5432/transcribe?sslmode=require"
    assert _host_port(url) == ("old.example", 5432)
    moved = _repointed(url, "new.example", 6432)
    assert _host_port(moved) == ("new.example", 6432)
    got = params(moved)
    assert (got["user"], got["host"], got["port"], got["dbname"], got["sslmode"]) == (
        "app", "new.example", "6432", "transcribe", "require")
    assert got["password"] == params(url)["password"]
