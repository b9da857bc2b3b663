"""The Kubernetes driver: a color is a Deployment, the switch is the active Service's selector.

Everything is applied with server-side apply (field manager "opsctl"), the documents
rendered by opsctl.deploy.manifests, so `opsctl render` prints exactly what a deploy applies.
State lives in the cluster, where any laptop or CI runner sees it: the active color is the
active Service's selector, each color's version is its Deployment's annotation, the deploy
history is the ConfigMap `opsctl-deploy-history` (JSON, last 100 records) and the lock is the
Lease `opsctl-deploy` (opsctl.deploy.lease).

Where analysis reaches a color (`url`): the Services are ClusterIP, reachable only from
inside the cluster. When opsctl runs in a pod (KUBERNETES_SERVICE_HOST is set, e.g. an
in-cluster CI job), `url(color)` is the preview Service's DNS name while that color is the
preview and not yet active, so pre-promotion analysis (/readyz and a real transcription)
runs on it. From anywhere else `url` is None: the pre-promotion transcription is skipped
and says so (readiness then rests on the pods' /readyz probes, which wait_ready checked
through readyReplicas). The active color's `url` is always None, because /metrics through a
Service load-balances over N pods and their counters cannot be subtracted; post-promotion
analysis instead sends canary transcriptions through `router_url()` (opsctl.yaml's
router_url, or in-cluster the active Service) and judges their error rate and p95.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from opsctl.config import Environment, Project
from opsctl.deploy import manifests as mf
from opsctl.deploy.lease import Lease
from opsctl.deploy.model import COLORS, ColorState, DeployRecord, Release
from opsctl.errors import OperationFailed, UsageError

FIELD_MANAGER = "opsctl"
HISTORY = "opsctl-deploy-history"
KEEP_RECORDS = 100
REQUEST_TIMEOUT = 30.0
POLL_SECONDS = 1.0


def connect(project: Project, env: Environment):
    """An ApiClient of its own (never the global default), from opsctl.yaml's kubeconfig and
    context, the standard kubeconfig (KUBECONFIG, ~/.kube/config), or the pod's service account."""
    from kubernetes import client, config

    k = env.kubernetes
    try:
        if k.kubeconfig or k.context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            path = None
            if k.kubeconfig:
                path = Path(k.kubeconfig).expanduser()
                path = str(path if path.is_absolute() else project.root / path)
            return config.new_client_from_config(config_file=path, context=k.context, persist_config=False)
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    except (config.ConfigException, OSError) as exc:
        raise UsageError(f"env '{env.name}': no usable Kubernetes configuration ({exc}); set kubernetes.kubeconfig "
                         "and kubernetes.context in opsctl.yaml, or KUBECONFIG") from None


class KubernetesDriver:
    name = "kubernetes"

    def __init__(self, project: Project, env: Environment, lease_seconds: int = 60):
        self.project, self.env, self.ns = project, env, env.kubernetes.namespace
        self.lease_seconds = lease_seconds
        self._client = None  # connected on first use: render and --dry-run need no cluster

    # -- API plumbing -------------------------------------------------------------------
    def _api(self, kind: str):
        from kubernetes import client

        if self._client is None:
            self._client = connect(self.project, self.env)
        return {"apps": client.AppsV1Api, "core": client.CoreV1Api, "policy": client.PolicyV1Api,
                "coordination": client.CoordinationV1Api}[kind](self._client)

    def _call(self, fn, *args, missing_ok: bool = False, conflict_ok: bool = False,
              rejected_ok: bool = False, **kwargs) -> dict | None:
        """One API call; its JSON as a dict. Expected refusals become None, the rest one line."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            resp = fn(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            if (exc.status == 404 and missing_ok) or (exc.status == 409 and conflict_ok):
                return None
            if rejected_ok and exc.status not in (401, 403, 404):
                return None  # a JSON patch whose test failed (422; some servers answer 500)
            try:
                message = json.loads(exc.body or "{}").get("message", "")
            except ValueError:
                message = ""
            hint = "; check your credentials and RBAC" if exc.status in (401, 403) else ""
            raise OperationFailed(f"Kubernetes API {getattr(fn, '__name__', 'call')} in namespace {self.ns} answered "
                                  f"{exc.status} {exc.reason}: {message[:200]}{hint}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise OperationFailed(f"cannot reach the Kubernetes API of env '{self.env.name}' ({exc}); "
                                  "check kubernetes.context in opsctl.yaml") from None
        return json.loads(resp.data or b"{}")

    def _apply(self, doc: dict) -> dict:
        """Server-side apply under the field manager "opsctl", creating what is absent. Forced:
        opsctl owns these objects, so a hand edit (kubectl scale/edit) is taken back, as GitOps would."""
        api, fn = {"Deployment": ("apps", "patch_namespaced_deployment"),
                   "Service": ("core", "patch_namespaced_service"),
                   "PodDisruptionBudget": ("policy", "patch_namespaced_pod_disruption_budget"),
                   "ConfigMap": ("core", "patch_namespaced_config_map")}[doc["kind"]]
        method = getattr(self._api(api), fn)
        return self._call(method, doc["metadata"]["name"], self.ns, doc, field_manager=FIELD_MANAGER,
                          force=True, _content_type="application/apply-patch+yaml")

    def _deployment(self, color: str) -> dict | None:
        return self._call(self._api("apps").read_namespaced_deployment, mf.deployment_name(color), self.ns,
                          missing_ok=True)

    def _selector_color(self, service: str) -> str | None:
        svc = self._call(self._api("core").read_namespaced_service, service, self.ns, missing_ok=True)
        return ((svc or {}).get("spec", {}).get("selector") or {}).get(mf.COLOR_LABEL)

    # -- the Driver protocol --------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        lease = Lease(self._api("coordination"), self.ns, self.env.name, self.lease_seconds, call=self._call)
        with lease.held():
            yield

    def deploy_running(self) -> bool:
        from opsctl.deploy.lease import NAME, held_by_other

        lease = self._call(self._api("coordination").read_namespaced_lease, NAME, self.ns, missing_ok=True)
        return bool(held_by_other((lease or {}).get("spec") or {}, "", dt.datetime.now(dt.timezone.utc)))

    def active_color(self) -> str | None:
        return self._selector_color(mf.ACTIVE_SERVICE)

    def colors(self) -> dict[str, ColorState]:
        out = {}
        for color in COLORS:
            dep = self._deployment(color)
            if dep is None:
                out[color] = ColorState(color, None, False, False, None, "no Deployment")
                continue
            ready, detail = _readiness(dep)
            running = (dep.get("spec", {}).get("replicas") or 0) > 0
            version = dep.get("metadata", {}).get("annotations", {}).get(mf.VERSION_ANNOTATION)
            out[color] = ColorState(color, version, running, running and ready, self.url(color), detail)
        return out

    def bring_up(self, color: str, release: Release, timeout: float) -> None:
        """Apply this color's Deployment and point the preview Service at it; the active
        color's Deployment is never part of the request, so it is never rescaled."""
        current = self._deployment(color)
        if color == self.active_color() and current and current.get("spec", {}).get("replicas"):
            raise OperationFailed(f"refusing to replace the active color {color}")
        self._apply(mf.parse(mf.deployment(self.project, self.env, release, color,
                                           replicas=self._preview_size()))[0])
        self._apply(mf.parse(mf.disruption_budget(self.project, self.env, color))[0])
        self._apply(mf.parse(mf.service(self.project, self.env, "preview", color))[0])

    def wait_ready(self, color: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        detail = "no Deployment"
        while True:
            dep = self._deployment(color)
            if dep is not None:
                ready, detail = _readiness(dep)
                if ready:
                    return
            if time.monotonic() >= deadline:
                raise OperationFailed(f"{mf.deployment_name(color)} not ready after {timeout:.0f}s ({detail}); "
                                      f"see 'kubectl -n {self.ns} describe deployment {mf.deployment_name(color)}'")
            time.sleep(min(POLL_SECONDS, max(0.05, deadline - time.monotonic())))

    def _active_size(self) -> int:
        """The active color's replicas as the cluster has them (an autoscaler may have moved
        them), else worker.replicas from opsctl.yaml."""
        active = self.active_color()
        dep = self._deployment(active) if active else None
        size = (dep or {}).get("spec", {}).get("replicas")
        return size if size else self.env.worker.replicas

    def _preview_size(self) -> int:
        """deploy.preview_replicas, never more than the active color has (Argo Rollouts'
        previewReplicaCount): production does not hold two full fleets of GPUs during a deploy.
        With no color serving yet (the first deploy) there is nothing to double: full size."""
        active = self.active_color()
        dep = self._deployment(active) if active else None
        if not (dep or {}).get("spec", {}).get("replicas"):
            return self.env.worker.replicas
        return min(self.env.deploy.preview_replicas, self._active_size())

    def switch_size(self, color: str) -> tuple[int, int] | None:
        dep = self._deployment(color)
        have = (dep or {}).get("spec", {}).get("replicas") or 0
        want = self._active_size()
        return (have, want) if have < want else None

    def scale(self, color: str, replicas: int) -> None:
        """Set a color's replicas (the preview, brought to the active size before the switch)."""
        if color == self.active_color():
            raise OperationFailed(f"refusing to rescale the active color {color}")
        dep = self._deployment(color)
        if dep is None:
            raise OperationFailed(f"{mf.deployment_name(color)} does not exist; deploy again")
        # the same server-side apply as bring_up, of the release the Deployment runs, so opsctl
        # keeps owning every field it set
        notes = dep.get("metadata", {}).get("annotations", {})
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        release = Release(image, json.loads(notes.get(mf.SETTINGS_ANNOTATION) or "{}"))
        self._apply(mf.parse(mf.deployment(self.project, self.env, release, color, replicas=replicas))[0])

    def switch(self, color: str) -> None:
        """Apply the active Service selecting `color`: created on the first deploy, afterwards
        a change of nothing but its selector. kube-proxy drains nothing itself, which is why the
        pods sleep in preStop and keep the grace period of deploy.drain_timeout."""
        self._apply(mf.parse(mf.service(self.project, self.env, "active", color))[0])

    def scale_down(self, color: str) -> None:
        if color == self.active_color():
            raise OperationFailed(f"refusing to scale down the active color {color}")
        if self._deployment(color) is None:
            return
        self._call(self._api("apps").patch_namespaced_deployment, mf.deployment_name(color), self.ns,
                   {"spec": {"replicas": 0}}, field_manager=FIELD_MANAGER)

    def url(self, color: str) -> str | None:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            return None
        if self._selector_color(mf.PREVIEW_SERVICE) != color or self.active_color() == color:
            return None
        return mf.service_url(self.env, mf.PREVIEW_SERVICE)

    def router_url(self) -> str | None:
        if self.env.router_url:
            return self.env.router_url.rstrip("/")
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return mf.service_url(self.env, mf.ACTIVE_SERVICE)
        return None

    def history(self) -> list[DeployRecord]:
        cm = self._call(self._api("core").read_namespaced_config_map, HISTORY, self.ns, missing_ok=True)
        raw = ((cm or {}).get("data") or {}).get("history.json")
        try:
            return [DeployRecord.from_dict(d) for d in json.loads(raw)] if raw else []
        except (ValueError, TypeError, AttributeError) as exc:
            raise UsageError(f"the deploy history (ConfigMap {self.ns}/{HISTORY}, key history.json) is damaged "
                                  f"({exc}); fix or delete that key to start a new history") from None

    def save(self, record: DeployRecord) -> None:
        """Rewrite the history ConfigMap; only the lease holder writes, so no update is lost."""
        records = [r for r in self.history() if r.id != record.id] + [record]
        self._apply({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": HISTORY, "namespace": self.ns,
                                  "labels": {"app.kubernetes.io/managed-by": "opsctl",
                                             "app.kubernetes.io/part-of": "transcribe"}},
                     "data": {"history.json": json.dumps([r.to_dict() for r in records[-KEEP_RECORDS:]])}})

    def render(self, release: Release, color: str) -> str:
        return mf.render_all(self.project, self.env, release, color)


def _readiness(dep: dict) -> tuple[bool, str]:
    """Ready when the controller has seen the latest spec and every wanted replica is ready."""
    want = dep.get("spec", {}).get("replicas")
    want = 1 if want is None else want
    status = dep.get("status") or {}
    generation = dep.get("metadata", {}).get("generation")
    observed = status.get("observedGeneration")
    ready_n = status.get("readyReplicas") or 0
    updated = status.get("updatedReplicas")
    if generation is not None and (observed is None or observed < generation):
        return False, f"controller has not observed generation {generation} yet"
    if want == 0:
        return False, "scaled to 0"
    if updated is not None and updated < want:
        return False, f"{updated}/{want} replicas updated"
    return ready_n >= want, f"{ready_n}/{want} ready"
