"""The Kubernetes driver against kmock's KubernetesEmulator, through the real `kubernetes` client.

Only the API server is emulated. The test plays the Deployment controller: it reports the
replicas of the latest generation ready, except for images listed as broken. Deploys run
through the CLI (`opsctl deploy`) in a thread, since the client is blocking and kmock serves
from this test's event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
import time

import kmock
import pytest
import pytest_asyncio
import yaml
from typer.testing import CliRunner

from opsctl.cli import app

NS = "transcribe"
DEPLOYMENTS, SERVICES = "apps/v1/deployments", "v1/services"
CONFIGMAPS, LEASES = "v1/configmaps", "coordination.k8s.io/v1/leases"
PDBS = "policy/v1/poddisruptionbudgets"
SCALEDOBJECTS, HPAS = "keda.sh/v1alpha1/scaledobjects", "autoscaling/v2/horizontalpodautoscalers"
IMAGE = "registry.example.com/transcription-worker"

OPSCTL_YAML = """
version: 1
environments:
  prod:
    platform: kubernetes
    kubernetes: {kubeconfig: kubeconfig.yaml, context: kmock, namespace: transcribe}
    buckets: {audio: prod-audio}
    worker: {image: "registry.example.com/transcription-worker:1.0.0", replicas: 3, device: cuda,
             compute_type: float16, concurrency: 2, gpu: true, resources: {limits: {memory: 16Gi}}}
    deploy: {ready_timeout: 3, scale_down_delay: 600, analysis_window: 0, drain_timeout: 20}
"""


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus two API-server behaviours the driver relies on and kmock leaves
    out: server-side apply creates a missing object, and metadata.generation counts changes
    of the spec (which is what observedGeneration is compared with)."""

    freeze_on: str | None = None  # a color: once the active Service selects it, hold every request
    delay: float = 0.0  # seconds each request takes (a slow API server)
    no_keda: bool = False  # serve no keda.sh resources, as a cluster without KEDA's CRDs

    async def _handle(self, request):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.no_keda and "/apis/keda.sh/" in str(request.url):
            from aiohttp import web  # the real API server's answer for a resource it does not serve

            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": "the server could not find the requested resource",
                                      "reason": "NotFound", "details": {}, "code": 404}, status=404)
        if self.freeze_on is not None and getattr(self, "frozen", None) is not None and self.frozen.is_set():
            await self.thawed.wait()  # the deploying process hangs here, after its switch
        if request.resource is not None and request.name and request.method == kmock.method.PATCH \
                and isinstance(request.data, dict):
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if "apply-patch" in request.headers.get("Content-Type", ""):
                    if key not in self.objects:
                        self.objects[key] = {}
                    elif self.objects[key].deleted:
                        self.objects[key].create({})
                if key in self.objects and not self.objects[key].deleted and "spec" in request.data:
                    old = plain(self.objects[key].raw)
                    probe = kmock.Object(old)
                    probe.patch(request.data)
                    if plain(probe.raw).get("spec") != old.get("spec"):
                        generation = old.get("metadata", {}).get("generation", 0) + 1
                        request.data.setdefault("metadata", {})["generation"] = generation
        response = await super()._handle(request)
        if (self.freeze_on is not None and request.resource is not None and request.resource.plural == "services"
                and request.name == "transcription-worker" and isinstance(request.data, dict)
                and (request.data.get("spec", {}).get("selector") or {}).get("app.kubernetes.io/color") == self.freeze_on):
            self.frozen.set()
        return response

    def freeze_after_switch_to(self, color: str) -> None:
        self.frozen, self.thawed = asyncio.Event(), asyncio.Event()
        self.freeze_on = color

    def thaw(self) -> None:
        self.freeze_on = None
        self.thawed.set()


def plain(obj) -> dict:
    return json.loads(json.dumps(obj, default=dict))


class Controller:
    """Plays the Deployment controller: every replica of the latest generation becomes ready,
    unless its image is in `broken` (those pods never pass their readiness probe). Plays KEDA
    too: a ScaledObject becomes Ready with its HPA `keda-hpa-<name>` on its target (unless
    `keda_down`), and with `idle` (no work in the queue) a minReplicaCount of 0 scales its
    target to zero at once, as KEDA does once the cooldown has passed; `keda_scaled` lists
    (Deployment, replicas, outcome of the last deploy record at that moment) of each such write."""

    def __init__(self, server: ApiServer):
        self.server, self.broken, self.paused = server, set(), False
        self.keda_down, self.idle, self.keda_scaled = False, False, []

    def _last_outcome(self) -> str | None:
        cm = self._get(CONFIGMAPS, "opsctl-deploy-history")
        records = json.loads(plain(cm.raw)["data"]["history.json"]) if cm is not None else []
        return records[-1]["outcome"] if records else None

    def _get(self, resource: str, name: str):
        try:
            return self.server.objects[resource, NS, name]
        except KeyError:
            return None

    def _keda(self, name: str, obj) -> None:
        raw = plain(obj.raw)
        spec = raw.get("spec", {})
        target = spec["scaleTargetRef"]["name"]
        ready = {"type": "Ready", "status": "False" if self.keda_down else "True",
                 "reason": "ScaledObjectCheckFailed" if self.keda_down else "ScaledObjectReady",
                 "message": "prometheus query failed" if self.keda_down else "ScaledObject is defined correctly"}
        status = {"conditions": [ready], "hpaName": f"keda-hpa-{name}"}
        if raw.get("status") != status:
            obj.patch({"status": status})
        if self.keda_down:
            return
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": f"keda-hpa-{name}", "namespace": NS},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                        "minReplicas": max(1, spec["minReplicaCount"]), "maxReplicas": spec["maxReplicaCount"]}}
        current = self._get(HPAS, f"keda-hpa-{name}")
        if current is None or plain(current.raw).get("spec") != hpa["spec"]:
            self.server.objects[HPAS, NS, f"keda-hpa-{name}"] = hpa
        dep = self._get(DEPLOYMENTS, target)
        if self.idle and spec["minReplicaCount"] == 0 and dep is not None and not dep.deleted \
                and plain(dep.raw)["spec"].get("replicas"):
            dep.patch({"spec": {"replicas": 0}})
            self.keda_scaled.append((target, 0, self._last_outcome()))

    async def run(self) -> None:
        while True:
            for (resource, _, name), obj in list(self.server.objects.items()):
                if not self.paused and resource.plural == "scaledobjects" and not obj.deleted:
                    self._keda(name, obj)
                if self.paused or resource.plural != "deployments" or obj.deleted:
                    continue
                raw = plain(obj.raw)
                spec = raw.get("spec", {})
                want = spec.get("replicas", 1)
                ready = 0 if spec["template"]["spec"]["containers"][0]["image"] in self.broken else want
                status = {"observedGeneration": raw["metadata"].get("generation", 1), "replicas": want,
                          "updatedReplicas": want, "readyReplicas": ready, "availableReplicas": ready}
                if raw.get("status") != status:
                    obj.patch({"status": status})
            await asyncio.sleep(0.05)


class Cluster:
    def __init__(self, server: ApiServer, controller: Controller, root):
        self.server, self.controller, self.root = server, controller, root
        self.runner = CliRunner()

    def obj(self, resource: str, name: str) -> dict | None:
        try:
            obj = self.server.objects[resource, NS, name]
        except KeyError:
            return None
        return None if obj.deleted else plain(obj.raw)

    def versions(self, resource: str, name: str) -> list[dict]:
        return [plain(v) for v in self.server.objects[resource, NS, name].history if v]

    def selector_color(self, service: str) -> str | None:
        return self.obj(SERVICES, service)["spec"]["selector"].get("app.kubernetes.io/color")

    def history(self) -> list[dict]:
        return json.loads(self.obj(CONFIGMAPS, "opsctl-deploy-history")["data"]["history.json"])

    def requests_to(self, path_part: str, method: str = "PATCH") -> list:
        return [r for r in list(self.server) if path_part in str(r.url) and r.method == method]

    async def opsctl(self, *args: str):
        return await asyncio.to_thread(self.runner.invoke, app, [*args, "--env", "prod"])

    def driver(self, **kwargs):
        from opsctl.config import load_project
        from opsctl.deploy.drivers.kubernetes import KubernetesDriver

        project = load_project(self.root)
        return KubernetesDriver(project, project.env("prod"), **kwargs)


@pytest_asyncio.fixture
async def cluster(kmock, tmp_path, monkeypatch):
    (tmp_path / "kubeconfig.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester", "namespace": NS}}]}))
    (tmp_path / "opsctl.yaml").write_text(OPSCTL_YAML)
    monkeypatch.chdir(tmp_path)
    for var in ("OPSCTL_ROOT", "OPSCTL_ENV", "KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    controller = Controller(kmock)
    task = asyncio.create_task(controller.run())
    yield Cluster(kmock, controller, tmp_path)
    task.cancel()


pytestmark = [pytest.mark.asyncio, pytest.mark.kmock(cls=ApiServer)]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


async def test_first_deploy_applies_the_rendered_objects(cluster):
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0", "--set", "beam_size=3")
    assert result.exit_code == 0, result.output

    dep = cluster.obj(DEPLOYMENTS, "transcription-worker-blue")
    assert dep["spec"]["replicas"] == 3 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "transcription-worker",
                                                      "app.kubernetes.io/color": "blue"}
    assert dep["metadata"]["annotations"]["opsctl.io/version"] == "1.0.0"
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/name": "transcription-worker", "app.kubernetes.io/instance": "transcription-worker-blue",
        "app.kubernetes.io/component": "worker", "app.kubernetes.io/part-of": "transcribe",
        "app.kubernetes.io/managed-by": "opsctl", "app.kubernetes.io/version": "1.0.0",
        "app.kubernetes.io/color": "blue"}
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "transcription-worker"
    assert spec["terminationGracePeriodSeconds"] == 30  # drain_timeout 20 + the preStop margin
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    spread = spec["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert all(c["maxSkew"] == 1 and c["labelSelector"]["matchLabels"]["app.kubernetes.io/color"] == "blue"
               for c in spread)
    (worker,) = spec["containers"]
    assert worker["image"] == f"{IMAGE}:1.0.0"
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 1, "memory": "16Gi"}  # opsctl.yaml over the default
    assert worker["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert worker["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"},
                               {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    env = _env(worker)
    assert (env["WORKER_COLOR"], env["WORKER_VERSION"], env["WORKER_DEVICE"]) == ("blue", "1.0.0", "cuda")
    assert (env["WORKER_COMPUTE_TYPE"], env["WORKER_CONCURRENCY"], env["WORKER_BEAM_SIZE"]) == ("float16", "2", "3")
    assert env["WORKER_S3_BUCKET"] == "prod-audio"
    assert env["WORKER_DATABASE_URL"] == {"secretKeyRef": {"name": "transcription-worker", "key": "database-url"}}
    # access is on: the worker refuses to start without keys, and the keys' Secret key is required
    assert env["WORKER_REQUIRE_API_KEYS"] == "true" and env["WORKER_METRICS_PORT"] == "9090"
    assert env["WORKER_API_KEY_HASHES"] == {"secretKeyRef": {"name": "transcription-worker", "key": "api-key-hashes"}}
    assert _env(spec["initContainers"][0]) == env  # the migration sees the same settings

    # server-side apply, owned by the "opsctl" field manager
    applies = cluster.requests_to("/deployments/transcription-worker-blue")
    assert applies and all(r.headers["Content-Type"] == "application/apply-patch+yaml"
                           and r.params["fieldManager"] == "opsctl" for r in applies)
    assert cluster.selector_color("transcription-worker") == "blue"
    assert cluster.selector_color("transcription-worker-preview") == "blue"
    pdb = cluster.obj(PDBS, "transcription-worker-blue")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]}}

    (record,) = cluster.history()
    assert (record["outcome"], record["version"], record["to_color"]) == ("promoted", "1.0.0", "blue")
    steps = {s["name"]: s["status"] for s in record["steps"]}
    assert steps["wait ready"] == "ok"
    assert steps["pre-promotion analysis"] == "skipped"  # no HTTP path to the preview from outside
    assert cluster.obj(LEASES, "opsctl-deploy")["spec"]["holderIdentity"] == ""  # released


async def test_switch_keeps_the_old_color_warm_and_rollback_returns_to_it(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    blue_before = cluster.obj(DEPLOYMENTS, "transcription-worker-blue")["spec"]
    blue_writes = len(cluster.requests_to("/deployments/transcription-worker-blue"))

    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")
    assert result.exit_code == 0, result.output
    assert cluster.selector_color("transcription-worker") == "green"
    green = cluster.obj(DEPLOYMENTS, "transcription-worker-green")
    assert green["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:1.1.0"
    # bringing up the preview never touched the active color: no write, same spec, 3 replicas
    assert len(cluster.requests_to("/deployments/transcription-worker-blue")) == blue_writes
    assert cluster.obj(DEPLOYMENTS, "transcription-worker-blue")["spec"] == blue_before
    # the active Service's selector went blue → green and nothing else changed in it
    selectors = [v["spec"]["selector"] for v in cluster.versions(SERVICES, "transcription-worker")]
    assert [s["app.kubernetes.io/color"] for s in selectors] == ["blue", "green"]

    status = await cluster.opsctl("status", "--json")
    doc = json.loads(status.stdout)
    assert doc["active_color"] == "green"
    assert doc["colors"]["blue"]["version"] == "1.0.0" and doc["colors"]["blue"]["ready"] is True

    result = await cluster.opsctl("rollback", "--no-wait")
    assert result.exit_code == 0, result.output
    assert cluster.selector_color("transcription-worker") == "blue"
    assert cluster.obj(DEPLOYMENTS, "transcription-worker-green")["spec"]["replicas"] == 3  # warm in turn
    history = cluster.history()
    assert [(r["strategy"], r["version"], r["outcome"]) for r in history] == [
        ("blue-green", "1.0.0", "promoted"), ("blue-green", "1.1.0", "promoted"), ("rollback", "1.0.0", "promoted")]
    assert "instant rollback to warm blue" in history[-1]["reason"]


async def test_a_color_that_never_becomes_ready_leaves_traffic_where_it_was(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    cluster.controller.broken.add(f"{IMAGE}:2.0.0")

    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:2.0.0")
    assert result.exit_code == 1
    assert "not ready after 3s (0/1 ready)" in result.stderr and "traffic stays on blue" in result.stderr
    # the active Service never selected green, and the failed color was scaled away
    assert [v["spec"]["selector"]["app.kubernetes.io/color"]
            for v in cluster.versions(SERVICES, "transcription-worker")] == ["blue"]
    assert cluster.obj(DEPLOYMENTS, "transcription-worker-green")["spec"]["replicas"] == 0
    assert cluster.obj(DEPLOYMENTS, "transcription-worker-blue")["spec"]["replicas"] == 3
    last = cluster.history()[-1]
    assert (last["version"], last["outcome"]) == ("2.0.0", "failed")


async def test_a_second_deploy_is_refused_while_the_lease_is_held(cluster):
    held, release = threading.Event(), threading.Event()

    def first_deploy_holding_the_lock() -> None:
        with cluster.driver().lock():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=first_deploy_holding_the_lock)
    holder.start()
    try:
        assert await asyncio.to_thread(held.wait, 10)
        result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")
        assert result.exit_code == 1
        assert "another deploy is running on env 'prod'" in result.stderr
        assert cluster.obj(DEPLOYMENTS, "transcription-worker-blue") is None  # nothing was applied
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0


async def test_an_expired_lease_is_taken_over(cluster):
    from opsctl.deploy.lease import micro_time

    stale = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
    cluster.server.objects[LEASES, NS, "opsctl-deploy"] = {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "opsctl-deploy", "namespace": NS},
        "spec": {"holderIdentity": "ci@runner-gone/pid-7/abc", "leaseDurationSeconds": 1,  # watched 1 s, then taken
                 "acquireTime": micro_time(stale), "renewTime": micro_time(stale), "leaseTransitions": 4}}
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")
    assert result.exit_code == 0, result.output
    taken = [v["spec"] for v in cluster.versions(LEASES, "opsctl-deploy")]
    assert taken[0]["holderIdentity"] == "ci@runner-gone/pid-7/abc"
    assert f"/pid-{os.getpid()}/" in taken[1]["holderIdentity"] and taken[1]["leaseTransitions"] == 5
    assert taken[-1]["holderIdentity"] == ""


async def test_the_holder_renews_the_lease(cluster):
    driver = cluster.driver(lease_seconds=3)  # renewed every second

    def hold() -> None:
        with driver.lock():
            time.sleep(2.5)

    await asyncio.to_thread(hold)
    renewals = [v["spec"]["renewTime"] for v in cluster.versions(LEASES, "opsctl-deploy")
                if v["spec"]["holderIdentity"]]
    assert len(set(renewals)) >= 3  # acquired, then renewed at least twice


async def test_wait_ready_waits_for_the_controller_to_observe_the_new_spec(cluster):
    from opsctl.deploy.model import Release
    from opsctl.errors import OperationFailed

    cluster.controller.paused = True
    driver = cluster.driver()
    await asyncio.to_thread(driver.bring_up, "blue", Release(f"{IMAGE}:1.0.0"), 3)
    obj = cluster.server.objects[DEPLOYMENTS, NS, "transcription-worker-blue"]
    generation = plain(obj.raw)["metadata"]["generation"]
    # stale status: every replica ready, but of an older spec
    obj.patch({"status": {"observedGeneration": generation - 1, "replicas": 3, "readyReplicas": 3}})
    with pytest.raises(OperationFailed, match="not observed generation"):
        await asyncio.to_thread(driver.wait_ready, "blue", 0.5)
    obj.patch({"status": {"observedGeneration": generation}})
    await asyncio.to_thread(driver.wait_ready, "blue", 2)


async def test_analysis_urls_exist_only_inside_the_cluster(cluster, monkeypatch):
    from opsctl.deploy.model import Release

    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    driver = cluster.driver()
    await asyncio.to_thread(driver.bring_up, "green", Release(f"{IMAGE}:1.1.0"), 3)
    assert await asyncio.to_thread(driver.url, "green") is None  # from a laptop or CI runner
    assert driver.router_url() is None
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # as in a pod
    assert await asyncio.to_thread(driver.url, "green") == "http://transcription-worker-preview.transcribe.svc.cluster.local"
    assert await asyncio.to_thread(driver.url, "blue") is None  # active: judged through the router
    assert driver.router_url() == "http://transcription-worker.transcribe.svc.cluster.local"


# -- the riskiest branches (issue 20 §3) ----------------------------------------------------

def _analysed_yaml(router_url: str) -> str:
    """A post-promotion window judged through `router_url` (the canaries' way in from outside)."""
    return OPSCTL_YAML.replace("analysis_window: 0", "analysis_window: 1").replace(
        "    platform: kubernetes\n", f"    platform: kubernetes\n    router_url: {router_url}\n", 1)


def _replicas(cluster, color: str) -> int:
    return cluster.obj(DEPLOYMENTS, f"transcription-worker-{color}")["spec"]["replicas"]


def _selectors(cluster) -> list[str]:
    """The colors the active Service selected, in turn (a re-applied unchanged selector once)."""
    seen = [v["spec"]["selector"]["app.kubernetes.io/color"] for v in cluster.versions(SERVICES, "transcription-worker")]
    return [c for i, c in enumerate(seen) if i == 0 or seen[i - 1] != c]


async def test_post_promotion_failure_switches_back(cluster):
    from opsctl.local import procs

    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    # the router cannot reach the new color: every canary fails (nothing listens on that port)
    (cluster.root / "opsctl.yaml").write_text(_analysed_yaml(f"http://127.0.0.1:{procs.free_port()}"))
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")
    assert result.exit_code == 1
    assert "rolled back to 1.0.0" in result.stderr and "canaries through the router, failed" in result.stderr
    assert _selectors(cluster) == ["blue", "green", "blue"]  # switched, then back
    assert _replicas(cluster, "green") == 0 and _replicas(cluster, "blue") == 3
    last = cluster.history()[-1]
    assert (last["version"], last["outcome"]) == ("1.1.0", "rolled-back")
    assert [s["name"] for s in last["steps"]][-3:] == ["switch", "post-promotion analysis", "switch back"]


async def test_awaiting_promotion_then_promote(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    waiting = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-auto-promote", "--json")
    assert waiting.exit_code == 0, waiting.output
    assert json.loads(waiting.stdout)["outcome"] == "awaiting-promotion"
    assert cluster.selector_color("transcription-worker") == "blue"
    assert cluster.selector_color("transcription-worker-preview") == "green" and _replicas(cluster, "green") == 1
    promoted = await cluster.opsctl("promote", "--no-wait", "--json")
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["outcome"] == "promoted"
    assert _selectors(cluster) == ["blue", "green"] and _replicas(cluster, "green") == 3
    assert [(r["version"], r["outcome"]) for r in cluster.history()] == [("1.0.0", "promoted"), ("1.1.0", "promoted")]
    assert _replicas(cluster, "blue") == 3  # warm for the scale-down delay


async def test_awaiting_promotion_then_abort(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-auto-promote")).exit_code == 0
    aborted = await cluster.opsctl("abort", "--json")
    assert aborted.exit_code == 0, aborted.output
    assert json.loads(aborted.stdout)["outcome"] == "aborted"
    assert _selectors(cluster) == ["blue"] and _replicas(cluster, "green") == 0 and _replicas(cluster, "blue") == 3
    assert cluster.history()[-1]["outcome"] == "aborted"
    again = await cluster.opsctl("abort")
    assert again.exit_code == 2 and "nothing to abort" in again.output


async def _kill_after_switch(cluster, version: str) -> None:
    """`opsctl deploy` in its own process, SIGKILLed while it hangs right after its switch
    (the API server holds its next request), then the lease left to expire, as time would."""
    import signal
    import subprocess
    import sys

    from opsctl.deploy.lease import micro_time

    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    cluster.server.freeze_after_switch_to("green")
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "deploy", "--image", f"{IMAGE}:{version}", "--env", "prod"],
                            cwd=cluster.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.wait_for(cluster.server.frozen.wait(), 120)
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        cluster.server.thaw()
    assert cluster.selector_color("transcription-worker") == "green"
    assert cluster.history()[-1]["outcome"] == "in-progress"
    stale = micro_time(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
    cluster.server.objects[LEASES, NS, "opsctl-deploy"].patch({"spec": {"renewTime": stale, "leaseDurationSeconds": 1}})


async def test_killed_after_switch_then_next_deploy_finishes_it(cluster):
    await _kill_after_switch(cluster, "1.1.0")
    doc = json.loads((await cluster.opsctl("status", "--json")).stdout)
    assert "interrupted after the switch" in doc["notice"]
    assert doc["known_good"] == {"color": "blue", "version": "1.0.0"} and _replicas(cluster, "blue") == 3

    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.2.0", "--no-wait")
    assert result.exit_code == 0, result.output
    history = cluster.history()
    assert [(r["version"], r["outcome"]) for r in history] == [
        ("1.0.0", "promoted"), ("1.1.0", "promoted"), ("1.2.0", "promoted")]
    assert "resume" in [s["name"] for s in history[1]["steps"]]
    assert _selectors(cluster) == ["blue", "green", "blue"]  # 1.1.0 on green, then 1.2.0 on blue


async def test_killed_after_switch_then_rollback_returns_at_once(cluster):
    await _kill_after_switch(cluster, "1.1.0")
    result = await cluster.opsctl("rollback", "--no-wait", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["to_color"] == "blue"
    assert _selectors(cluster) == ["blue", "green", "blue"]
    history = cluster.history()
    assert (history[1]["version"], history[1]["outcome"]) == ("1.1.0", "rolled-back")
    assert (history[-1]["strategy"], history[-1]["outcome"]) == ("rollback", "promoted")
    assert _replicas(cluster, "blue") == 3


async def test_killed_after_switch_then_abort(cluster):
    await _kill_after_switch(cluster, "1.1.0")
    result = await cluster.opsctl("abort", "--json")
    assert result.exit_code == 0, result.output
    assert _selectors(cluster) == ["blue", "green", "blue"]
    assert _replicas(cluster, "green") == 0 and cluster.history()[-1]["outcome"] == "aborted"


# -- the preview's size (issue 23) -------------------------------------------------------

async def test_preview_starts_at_preview_replicas_and_is_sized_up_before_the_switch(cluster):
    (cluster.root / "opsctl.yaml").write_text(OPSCTL_YAML.replace("deploy: {", "deploy: {preview_replicas: 1, "))
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    waiting = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-auto-promote")
    assert waiting.exit_code == 0, waiting.output
    assert _replicas(cluster, "green") == 1 and _replicas(cluster, "blue") == 3  # one GPU, not three more

    plan = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.2.0", "--dry-run", "--json")
    assert any("at 1 replica(s)" in s for s in json.loads(plan.stdout)["steps"])
    # the dry run shows the ScaledObject as it will stand once the target color is active
    (so,) = [d for d in yaml.safe_load_all(json.loads(plan.stdout)["manifests"]) if d and d["kind"] == "ScaledObject"]
    assert so["spec"]["scaleTargetRef"]["name"] == "transcription-worker-green" and _scaled_target(cluster) == "blue"

    promoted = await cluster.opsctl("promote", "--no-wait", "--json")
    assert promoted.exit_code == 0, promoted.output
    names = [s["name"] for s in json.loads(promoted.stdout)["steps"]]
    assert names.index("scale preview") < names.index("switch")
    assert [v["spec"]["replicas"] for v in cluster.versions(DEPLOYMENTS, "transcription-worker-green")
            if "spec" in v][-1] == 3
    # the order the API server saw: green scaled to 3 before the active Service selected green
    writes = [r for r in list(cluster.server) if r.method == "PATCH"]
    scaled = next(i for i, r in enumerate(writes) if "/deployments/transcription-worker-green" in str(r.url)
                  and isinstance(r.data, dict) and r.data.get("spec", {}).get("replicas") == 3
                  and r.headers["Content-Type"] == "application/apply-patch+yaml")
    switched = next(i for i, r in enumerate(writes) if str(r.url).split("?")[0].endswith("/services/transcription-worker")
                    and isinstance(r.data, dict) and r.data["spec"]["selector"]["app.kubernetes.io/color"] == "green")
    assert scaled < switched
    assert _replicas(cluster, "green") == 3 and cluster.selector_color("transcription-worker") == "green"


async def test_a_preview_that_cannot_grow_keeps_traffic_where_it_was(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-auto-promote")).exit_code == 0
    cluster.controller.paused = True  # no new replica becomes ready (no GPU capacity, say)
    result = await cluster.opsctl("promote", "--no-wait")
    assert result.exit_code == 1 and "traffic stays on blue" in result.stderr
    assert _selectors(cluster) == ["blue"] and _replicas(cluster, "green") == 0
    assert cluster.history()[-1]["outcome"] == "failed"


async def test_killed_after_switch_then_rollback_to_the_known_good_version(cluster):
    await _kill_after_switch(cluster, "1.1.0")
    result = await cluster.opsctl("rollback", "--to", "1.0.0", "--no-wait")
    assert result.exit_code == 0, result.output
    assert _selectors(cluster) == ["blue", "green", "blue"]
    assert [(r["version"], r["outcome"]) for r in cluster.history()][1:] == [("1.1.0", "rolled-back"), ("1.0.0", "promoted")]


# -- the worker's autoscaler follows the active color (issue 23) --------------------------------

def _scaled_target(cluster) -> str | None:
    so = cluster.obj(SCALEDOBJECTS, "transcription-worker")
    return so and so["spec"]["scaleTargetRef"]["name"].removeprefix("transcription-worker-")


def _targets(cluster) -> list[str]:
    """The colors the ScaledObject scaled, in turn."""
    seen = [v["spec"]["scaleTargetRef"]["name"].removeprefix("transcription-worker-")
            for v in cluster.versions(SCALEDOBJECTS, "transcription-worker") if v.get("spec")]
    return [c for i, c in enumerate(seen) if i == 0 or seen[i - 1] != c]


def _write_index(cluster, predicate) -> int:
    writes = [r for r in list(cluster.server) if r.method == "PATCH"]
    return next(i for i, r in enumerate(writes) if isinstance(r.data, dict) and predicate(str(r.url).split("?")[0], r.data))


async def test_the_scaled_object_follows_the_active_color_through_switch_and_rollback(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    assert _scaled_target(cluster) == "blue" == cluster.selector_color("transcription-worker")
    so = cluster.obj(SCALEDOBJECTS, "transcription-worker")
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (3, 9)
    assert cluster.obj(HPAS, "keda-hpa-transcription-worker")["spec"]["scaleTargetRef"]["name"] == "transcription-worker-blue"

    # the preview is created at preview_replicas and the autoscaler stays on the active color
    waiting = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-auto-promote")
    assert waiting.exit_code == 0, waiting.output
    assert _replicas(cluster, "green") == 1 and _scaled_target(cluster) == "blue"

    promoted = await cluster.opsctl("promote", "--no-wait")
    assert promoted.exit_code == 0, promoted.output
    assert _scaled_target(cluster) == "green" == cluster.selector_color("transcription-worker")
    assert _replicas(cluster, "green") == 3 and _replicas(cluster, "blue") == 3  # blue stays warm, unscaled
    # the order the API server saw: green sized up, then traffic moved, then the autoscaler
    grown = _write_index(cluster, lambda url, d: url.endswith("/deployments/transcription-worker-green")
                         and d.get("spec", {}).get("replicas") == 3)
    switched = _write_index(cluster, lambda url, d: url.endswith("/services/transcription-worker")
                            and d["spec"]["selector"]["app.kubernetes.io/color"] == "green")
    moved = _write_index(cluster, lambda url, d: url.endswith("/scaledobjects/transcription-worker")
                         and d["spec"]["scaleTargetRef"]["name"] == "transcription-worker-green")
    assert grown < switched < moved
    steps = {s["name"]: s["status"] for s in cluster.history()[-1]["steps"]}
    assert steps["switch"] == "ok"

    rolled = await cluster.opsctl("rollback", "--no-wait")
    assert rolled.exit_code == 0, rolled.output
    assert _scaled_target(cluster) == "blue" == cluster.selector_color("transcription-worker")
    assert _targets(cluster) == ["blue", "green", "blue"]
    assert cluster.obj(HPAS, "keda-hpa-transcription-worker")["spec"]["scaleTargetRef"]["name"] == "transcription-worker-blue"


async def test_a_failed_post_promotion_analysis_takes_the_autoscaler_back(cluster):
    from opsctl.local import procs

    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    (cluster.root / "opsctl.yaml").write_text(_analysed_yaml(f"http://127.0.0.1:{procs.free_port()}"))
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")
    assert result.exit_code == 1 and "rolled back to 1.0.0" in result.stderr
    assert _targets(cluster) == ["blue", "green", "blue"] and _scaled_target(cluster) == "blue"


async def test_killed_after_switch_then_abort_moves_the_autoscaler_back(cluster):
    await _kill_after_switch(cluster, "1.1.0")
    assert (await cluster.opsctl("abort")).exit_code == 0
    assert _scaled_target(cluster) == "blue" == cluster.selector_color("transcription-worker")


async def test_the_deploy_waits_for_the_scaled_object_to_be_ready(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    cluster.controller.keda_down = True  # KEDA cannot query Prometheus: Ready=False
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")
    assert result.exit_code == 1
    assert "the ScaledObject transcription-worker is not ready for transcription-worker-green after 3s" in result.stderr
    assert "Ready=False: prometheus query failed" in result.stderr and "traffic is on green" in result.stderr
    assert "'opsctl rollback' returns traffic to blue at once" in result.stderr
    steps = {s["name"]: s["status"] for s in cluster.history()[-1]["steps"]}
    assert steps["switch"] == "failed"
    # a return to the known-good color never waits for a broken autoscaler: traffic goes back at once
    back = await cluster.opsctl("rollback", "--no-wait")
    assert back.exit_code == 0, back.output
    assert _selectors(cluster) == ["blue", "green", "blue"] and _scaled_target(cluster) == "blue"


async def _eventually(check, seconds: float = 20.0) -> bool:
    """Whether `check()` holds within `seconds` (the emulated controllers act every 0.05 s)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# the operations here wait for nothing that never comes: 30 s, not 3, bounds each one, so a
# loaded machine's slow emulated API server is not taken for a failure (session 29: "bring back
# blue" ran out of its 3 s under a loaded suite)
SCALE_TO_ZERO = OPSCTL_YAML.replace(
    "gpu: true,", "gpu: true, autoscaling: {min_replicas: 0, wake_query: 'sum(rate(ingress_requests_total[1m]))'},"
).replace("ready_timeout: 3,", "ready_timeout: 30,")


async def test_scale_to_zero_never_touches_a_color_under_analysis(cluster):
    (cluster.root / "opsctl.yaml").write_text(SCALE_TO_ZERO)
    cluster.controller.idle = True  # no work queued: KEDA scales whatever it targets at min 0 to zero
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    assert await _eventually(lambda: _replicas(cluster, "blue") == 0)  # KEDA's turn, once the deploy ended
    assert cluster.obj(SCALEDOBJECTS, "transcription-worker")["spec"]["minReplicaCount"] == 0
    doc = json.loads((await cluster.opsctl("status", "--json")).stdout)
    assert doc["colors"]["blue"]["running"] is True and "scaled to zero" in doc["colors"]["blue"]["detail"]

    # an idle active color is still the color serving: the deploy goes blue → green, preview first
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")
    assert result.exit_code == 0, result.output
    assert await _eventually(lambda: _replicas(cluster, "green") == 0)
    assert cluster.history()[-1]["from_color"] == "blue" and _scaled_target(cluster) == "green"
    green = [v["spec"]["replicas"] for v in cluster.versions(DEPLOYMENTS, "transcription-worker-green") if v.get("spec")]
    assert green[:1] == [1] and 3 in green  # started at preview_replicas, grown before the switch
    # the ScaledObject reached green with a floor of one pod, lowered to 0 only by the finished record
    mins = [v["spec"]["minReplicaCount"] for v in cluster.versions(SCALEDOBJECTS, "transcription-worker")
            if v.get("spec") and v["spec"]["scaleTargetRef"]["name"].endswith("green")]
    assert mins[0] == 1 and mins[-1] == 0
    # KEDA only ever scaled a color to zero while no deploy judged it
    assert ("transcription-worker-green", 0) in [(t, r) for t, r, _ in cluster.controller.keda_scaled]
    assert all(outcome in ("promoted", None) for _, _, outcome in cluster.controller.keda_scaled)


async def test_bring_up_honours_its_timeout(cluster):
    from opsctl.deploy.model import Release
    from opsctl.errors import OperationFailed

    cluster.server.delay = 0.4  # a slow API server: each request takes 0.4 s
    driver = cluster.driver()
    with pytest.raises(OperationFailed, match="timeout passed"):
        await asyncio.to_thread(driver.bring_up, "blue", Release(f"{IMAGE}:1.0.0"), 1.0)


async def test_without_keda_a_deploy_is_refused_and_the_way_back_still_works(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")).exit_code == 0
    cluster.server.no_keda = True  # KEDA's CRDs gone
    # status and the instant rollback still work: a way back is never held by the autoscaler
    assert (await cluster.opsctl("status", "--json")).exit_code == 0
    back = await cluster.opsctl("rollback", "--no-wait")
    assert back.exit_code == 0, back.output
    assert _selectors(cluster) == ["blue", "green", "blue"]
    # a deploy is refused before it applies anything: one line saying what to do, exit 2
    blue = cluster.obj(DEPLOYMENTS, "transcription-worker-blue")["spec"]
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.2.0")
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "does not serve KEDA's ScaledObject" in last and "worker.autoscaling.enabled: false" in last
    assert cluster.obj(DEPLOYMENTS, "transcription-worker-blue")["spec"] == blue and _selectors(cluster)[-1] == "blue"
    assert "1.2.0" not in json.dumps(cluster.obj(DEPLOYMENTS, "transcription-worker-green"))
    assert cluster.history()[-1]["outcome"] == "failed"
    # turned off, the deploy needs no KEDA (and removes a ScaledObject it made, where one exists)
    (cluster.root / "opsctl.yaml").write_text(OPSCTL_YAML.replace("gpu: true,", "gpu: true, autoscaling: {enabled: false},"))
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.2.0", "--no-wait")
    assert result.exit_code == 0, result.output
    assert _selectors(cluster)[-1] == "green"


async def test_a_scaled_object_left_on_the_preview_is_taken_off_it_before_the_preview_starts(cluster):
    """A process killed between a switch back and moving the ScaledObject leaves it on the color
    the next deploy brings up: bring_up moves it to the active color first."""
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")).exit_code == 0
    assert (await cluster.opsctl("rollback", "--no-wait")).exit_code == 0  # blue active, green warm
    cluster.server.objects[SCALEDOBJECTS, NS, "transcription-worker"].patch(
        {"spec": {"scaleTargetRef": {"name": "transcription-worker-green"}}})  # left behind
    before = len([r for r in list(cluster.server) if r.method == "PATCH"])
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.2.0", "--no-wait")
    assert result.exit_code == 0, result.output
    writes = [(str(r.url).split("?")[0], r.data) for r in list(cluster.server) if r.method == "PATCH"][before:]
    back = next(i for i, (url, d) in enumerate(writes) if url.endswith("/scaledobjects/transcription-worker")
                and d["spec"]["scaleTargetRef"]["name"] == "transcription-worker-blue")
    preview = next(i for i, (url, d) in enumerate(writes) if url.endswith("/deployments/transcription-worker-green"))
    assert back < preview  # off the preview before the preview's Deployment was applied
    assert _targets(cluster)[-3:] == ["green", "blue", "green"]
    assert _scaled_target(cluster) == "green" == cluster.selector_color("transcription-worker")


async def test_the_preview_grows_to_the_size_the_autoscaler_gave_the_active_color(cluster):
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    cluster.server.objects[DEPLOYMENTS, NS, "transcription-worker-blue"].patch({"spec": {"replicas": 5}})  # KEDA, busy
    assert await _eventually(lambda: cluster.obj(DEPLOYMENTS, "transcription-worker-blue")["status"]["readyReplicas"] == 5)
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait", "--json")
    assert result.exit_code == 0, result.output
    sizes = [v["spec"]["replicas"] for v in cluster.versions(DEPLOYMENTS, "transcription-worker-green") if v.get("spec")]
    assert sizes[0] == 1 and sizes[-1] == 5  # preview_replicas, then the active color's 5 before the switch
    step = next(s for s in json.loads(result.stdout)["steps"] if s["name"] == "scale preview")
    assert "1 → 5" in step["detail"] and _scaled_target(cluster) == "green"


async def test_a_switch_back_to_a_color_keda_scaled_to_zero_brings_it_up_before_traffic_moves(cluster):
    """Scale to zero (issue 23, design risk): the warm standby is the old color, which KEDA took
    to 0 while it was active and idle. A failed post-promotion analysis must not send traffic to
    a color with no pod: the known-good color is brought back to the active color's size, ready,
    before the active Service selects it."""
    from opsctl.local import procs

    (cluster.root / "opsctl.yaml").write_text(SCALE_TO_ZERO)
    cluster.controller.idle = True
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    assert await _eventually(lambda: _replicas(cluster, "blue") == 0)  # idle: KEDA took blue to 0

    router = f"http://127.0.0.1:{procs.free_port()}"  # every canary fails: the analysis fails
    (cluster.root / "opsctl.yaml").write_text(SCALE_TO_ZERO.replace("analysis_window: 0", "analysis_window: 1").replace(
        "    platform: kubernetes\n", f"    platform: kubernetes\n    router_url: {router}\n", 1))
    result = await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-wait")
    assert result.exit_code == 1 and "rolled back to 1.0.0" in result.stderr, result.output
    assert _selectors(cluster) == ["blue", "green", "blue"]
    writes = [r for r in list(cluster.server) if r.method == "PATCH"]
    back = [i for i, r in enumerate(writes) if str(r.url).split("?")[0].endswith("/services/transcription-worker")][-1]
    grown = [i for i, r in enumerate(writes) if str(r.url).split("?")[0].endswith("/deployments/transcription-worker-blue")
             and isinstance(r.data, dict) and (r.data.get("spec") or {}).get("replicas") == 3]
    assert grown and grown[-1] < back, "traffic went back to blue before blue had its size again"
    steps = [s["name"] for s in cluster.history()[-1]["steps"]]
    assert steps.index("bring back blue") < steps.index("switch back"), steps


async def test_the_driver_never_moves_traffic_to_a_color_without_a_ready_pod(cluster):
    """The driver's own guard, whatever the caller did first: a switch to another color whose
    Deployment has no ready pod is refused and traffic stays where it is."""
    from opsctl.errors import OperationFailed

    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.0.0")).exit_code == 0
    assert (await cluster.opsctl("deploy", "--image", f"{IMAGE}:1.1.0", "--no-auto-promote")).exit_code == 0
    driver = cluster.driver()
    await asyncio.to_thread(driver.scale, "green", 0)
    assert await _eventually(lambda: cluster.obj(DEPLOYMENTS, "transcription-worker-green")["status"]["readyReplicas"] == 0)
    with pytest.raises(OperationFailed, match="transcription-worker-green has no ready pod"):
        await asyncio.to_thread(driver.switch, "green")
    assert cluster.selector_color("transcription-worker") == "blue"
