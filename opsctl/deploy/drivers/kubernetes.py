"""The Kubernetes driver: a color is a Deployment, the switch is the active Service's selector.

Everything is applied with server-side apply (field manager "opsctl"), the documents
rendered by opsctl.deploy.manifests, so `opsctl render` prints exactly what a deploy applies.
State lives in the cluster, where any laptop or CI runner sees it: the active color is the
active Service's selector, each color's version is its Deployment's annotation, the deploy
history is the ConfigMap `opsctl-deploy-history` (JSON, last 100 records) and the lock is the
Lease `opsctl-deploy` (opsctl.deploy.lease).

Autoscaling: the KEDA ScaledObject `transcription-worker` (worker.autoscaling) scales the
active color only. `switch` moves it to the color traffic moves to, with a minimum of at least
one pod while the deploy still judges that color, and waits (deploy.ready_timeout) until KEDA
reports it Ready with its HPA on that color; `save` of a finished record restores the
configured minimum (0 allowed where the environment is not protected). The preview is never
its target, so KEDA never scales a color under analysis, and the preview is sized to the active
color (as the autoscaler left it) before the switch.

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
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from opsctl.config import Environment, Project
from opsctl.deploy import manifests
from opsctl.deploy.lease import Lease
from opsctl.deploy.model import COLORS, ColorState, DeployRecord, Release, upsert
from opsctl.errors import OperationFailed, UsageError

log = logging.getLogger("opsctl.deploy")

FIELD_MANAGER = "opsctl"
HISTORY = "opsctl-deploy-history"
REQUEST_TIMEOUT = 30.0
POLL_SECONDS = 1.0
# the API server's answer for a path it does not serve (no such resource: a CRD not installed);
# a missing object of a served resource answers 404 with the object's name in its details
UNSERVED = "the server could not find the requested resource"
FINAL = ("promoted", "rolled-back", "failed", "aborted", "interrupted")  # a record no deploy still runs


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
    """The deploy Driver protocol (opsctl.deploy.model.Driver) on one namespace of a cluster.

    API failures are OperationFailed (exit 1) with the API's own message; a missing or broken
    kubeconfig and a damaged history are UsageError (exit 2). Every request is bounded by
    REQUEST_TIMEOUT seconds."""

    name = "kubernetes"

    def __init__(self, project: Project, env: Environment, lease_seconds: int = 60):
        self.project, self.env, self.ns = project, env, env.kubernetes.namespace
        self.lease_seconds = lease_seconds
        self._client = None  # connected on first use: render and --dry-run need no cluster
        self._deadline: float | None = None  # time.monotonic() by which the current operation ends
        self._lease = None  # the Lease while lock() holds it: every change is fenced on it (_fence)
        self._applied: dict[str, tuple[str, str]] = {}  # color -> (image, settings JSON) bring_up applied

    # -- API plumbing -------------------------------------------------------------------
    def _api(self, kind: str):
        from kubernetes import client

        if self._client is None:
            self._client = connect(self.project, self.env)
        return {"apps": client.AppsV1Api, "core": client.CoreV1Api, "policy": client.PolicyV1Api,
                "coordination": client.CoordinationV1Api, "custom": client.CustomObjectsApi,
                "autoscaling": client.AutoscalingV2Api}[kind](self._client)

    def _call(self, fn, *args, missing_ok: bool = False, conflict_ok: bool = False,
              rejected_ok: bool = False, unknown_kind: str | None = None, **kwargs) -> dict | None:
        """One API call; its JSON as a dict. Expected refusals become None, the rest one line.
        `unknown_kind`: the UsageError to raise when the API server does not serve the resource
        at all (a CRD not installed), which a 404 for a missing object must not be taken for."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        limit = REQUEST_TIMEOUT
        if self._deadline is not None:
            limit = min(limit, self._deadline - time.monotonic())
            if limit <= 0:
                raise OperationFailed(f"Kubernetes API {getattr(fn, '__name__', 'call')} in namespace {self.ns}: "
                                      "the operation's timeout passed before this request; is the API server slow?")
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=limit, **kwargs)
        except ApiException as exc:
            try:
                message = json.loads(exc.body or "{}").get("message", "")
            except ValueError:
                message = ""
            if exc.status == 404 and unknown_kind and message == UNSERVED:
                raise UsageError(unknown_kind) from None
            if (exc.status == 404 and missing_ok) or (exc.status == 409 and conflict_ok):
                return None
            if rejected_ok and exc.status not in (401, 403, 404):
                return None  # a JSON patch whose test failed (422; some servers answer 500)
            hint = "; check your credentials and RBAC" if exc.status in (401, 403) else ""
            raise OperationFailed(f"Kubernetes API {getattr(fn, '__name__', 'call')} in namespace {self.ns} answered "
                                  f"{exc.status} {exc.reason}: {message[:200]}{hint}") from None
        except urllib3.exceptions.HTTPError as exc:
            if self._deadline is not None and time.monotonic() >= self._deadline - 0.05:
                raise OperationFailed(f"Kubernetes API {getattr(fn, '__name__', 'call')} in namespace {self.ns}: the "
                                      "operation's timeout passed waiting for its answer; is the API server slow?") from None
            raise OperationFailed(f"cannot reach the Kubernetes API of env '{self.env.name}' ({exc}); "
                                  "check kubernetes.context in opsctl.yaml") from None
        return json.loads(resp.data or b"{}")

    def _apply(self, doc: dict) -> dict:
        """Server-side apply under the field manager "opsctl", creating what is absent. Forced:
        opsctl owns these objects, so a hand edit (kubectl scale/edit) is taken back, as GitOps would."""
        if doc["kind"] == "ScaledObject":
            group, version, plural = manifests.KEDA_API
            return self._call(self._api("custom").patch_namespaced_custom_object, group, version, self.ns, plural,
                              doc["metadata"]["name"], doc, field_manager=FIELD_MANAGER, force=True,
                              _content_type="application/apply-patch+yaml")
        api, fn = {"Deployment": ("apps", "patch_namespaced_deployment"),
                   "Service": ("core", "patch_namespaced_service"),
                   "PodDisruptionBudget": ("policy", "patch_namespaced_pod_disruption_budget"),
                   "ConfigMap": ("core", "patch_namespaced_config_map")}[doc["kind"]]
        method = getattr(self._api(api), fn)
        return self._call(method, doc["metadata"]["name"], self.ns, doc, field_manager=FIELD_MANAGER,
                          force=True, _content_type="application/apply-patch+yaml")

    def _deployment(self, color: str) -> dict | None:
        return self._call(self._api("apps").read_namespaced_deployment, manifests.deployment_name(color), self.ns,
                          missing_ok=True)

    def _selector_color(self, service: str) -> str | None:
        svc = self._call(self._api("core").read_namespaced_service, service, self.ns, missing_ok=True)
        return ((svc or {}).get("spec", {}).get("selector") or {}).get(manifests.COLOR_LABEL)

    def _scaled_object(self) -> dict | None:
        """The ScaledObject; None when absent. UsageError when the cluster has no KEDA at all."""
        group, version, plural = manifests.KEDA_API
        return self._call(self._api("custom").get_namespaced_custom_object, group, version, self.ns, plural,
                          manifests.SCALED_OBJECT, missing_ok=True, unknown_kind=(
                              f"env '{self.env.name}': the cluster does not serve KEDA's ScaledObject "
                              "(scaledobjects.keda.sh): install KEDA (the stack does: 'opsctl infra up') or set "
                              "worker.autoscaling.enabled: false in opsctl.yaml"))

    def _autoscaled(self) -> tuple[str | None, int | None]:
        """(color, minReplicaCount) of the Deployment the ScaledObject scales; (None, None) without
        one, and without asking the cluster when worker.autoscaling is off."""
        if not self.env.worker.autoscaling.enabled:
            return None, None
        so = self._scaled_object()
        if so is None:
            return None, None
        spec = so.get("spec") or {}
        target = (spec.get("scaleTargetRef") or {}).get("name") or ""
        color = next((c for c in COLORS if manifests.deployment_name(c) == target), None)
        return color, spec.get("minReplicaCount")

    @contextmanager
    def _bounded(self, timeout: float) -> Iterator[None]:
        """Every API request inside ends by `timeout` seconds from now (the nearer of two bounds)."""
        outer = self._deadline
        mine = time.monotonic() + timeout
        self._deadline = mine if outer is None else min(outer, mine)
        try:
            yield
        finally:
            self._deadline = outer

    # -- the Driver protocol --------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the Lease `opsctl-deploy` (renewed in the background) for the block; raises
        OperationFailed naming the holder when another live deploy has it."""
        lease = Lease(self._api("coordination"), self.ns, self.env.name, self.lease_seconds, call=self._call)
        with lease.held():
            self._lease = lease
            try:
                yield
            finally:
                self._lease = None

    def _fence(self) -> None:
        """Before each change: OperationFailed unless the Lease this driver holds is still ours
        (Lease.check), so a deploy that stalled and lost it changes nothing (no lock held: a read)."""
        if self._lease is not None:
            self._lease.check()

    def deploy_running(self) -> bool:
        """Whether another process holds an unexpired deploy Lease now (a read; takes nothing)."""
        from opsctl.deploy.lease import NAME, held_by_other

        lease = self._call(self._api("coordination").read_namespaced_lease, NAME, self.ns, missing_ok=True)
        return bool(held_by_other((lease or {}).get("spec") or {}, "", dt.datetime.now(dt.timezone.utc)))

    def active_color(self) -> str | None:
        """The color the active Service selects; None before the first deploy."""
        return self._selector_color(manifests.ACTIVE_SERVICE)

    def colors(self) -> dict[str, ColorState]:
        """Both colors as the cluster has them. The active color scaled to zero by its
        ScaledObject (minReplicaCount 0, idle) still counts as running: KEDA wakes it."""
        out = {}
        try:
            scaled_color, scaled_min = self._autoscaled()
        except UsageError:  # no KEDA: status, rollback and abort still work; a deploy refuses in bring_up
            scaled_color, scaled_min = None, None
        active = None if scaled_min != 0 else self.active_color()
        for color in COLORS:
            dep = self._deployment(color)
            if dep is None:
                out[color] = ColorState(color, None, False, False, None, "no Deployment")
                continue
            ready, detail = _readiness(dep)
            running = (dep.get("spec", {}).get("replicas") or 0) > 0
            version = dep.get("metadata", {}).get("annotations", {}).get(manifests.VERSION_ANNOTATION)
            if not running and color == scaled_color == active:
                running, ready, detail = True, True, "idle: scaled to zero by its ScaledObject (KEDA wakes it)"
            out[color] = ColorState(color, version, running, running and ready, self.url(color), detail)
        return out

    def bring_up(self, color: str, release: Release, timeout: float) -> None:
        """Apply this color's Deployment (deploy.preview_replicas, see preview_size), its
        PodDisruptionBudget, and point the preview Service at it; the active color's Deployment
        is never part of the request, so it is never rescaled. A ScaledObject left on `color`
        (a deploy killed between its switch and moving it) is moved to the active color first.

        `timeout` (seconds) bounds the whole call: each API request gets what remains of it
        (at most REQUEST_TIMEOUT), and OperationFailed is raised once it has passed. Waiting
        for the pods is wait_ready's job, with its own timeout."""
        from opsctl.infra.target import check_gpu_capacity_of

        check_gpu_capacity_of(self.project, self.env)  # before any change: pods past the GPU limit never start
        self._fence()
        self._applied[color] = (release.image, json.dumps(release.settings, sort_keys=True))
        with self._bounded(timeout):
            current = self._deployment(color)
            active = self.active_color()
            if color == active and current and current.get("spec", {}).get("replicas"):
                raise OperationFailed(f"refusing to replace the active color {color}")
            if self._autoscaled()[0] == color:  # asked first: a cluster without KEDA stops here
                if active and active != color:
                    self._apply(manifests.parse(manifests.scaled_object(self.project, self.env, active))[0])
                else:
                    self._delete_scaled_object()
            self._apply(manifests.parse(manifests.deployment(self.project, self.env, release, color,
                                               replicas=self.preview_size()))[0])
            self._apply(manifests.parse(manifests.disruption_budget(self.project, self.env, color))[0])
            self._apply(manifests.parse(manifests.service(self.project, self.env, "preview", color))[0])

    def wait_ready(self, color: str, timeout: float) -> None:
        """Poll until every wanted replica of the color's latest generation is ready; after
        `timeout` seconds raise OperationFailed with the last state seen (e.g. "0/3 ready")."""
        deadline = time.monotonic() + timeout
        detail = "no Deployment"
        while True:
            dep = self._deployment(color)
            if dep is not None:
                ready, detail = _readiness(dep)
                runs = (dep["spec"]["template"]["spec"]["containers"][0].get("image"),
                        (dep.get("metadata", {}).get("annotations") or {}).get(manifests.SETTINGS_ANNOTATION) or "{}")
                if color in self._applied and runs != self._applied[color]:  # not ours: someone changed it
                    raise OperationFailed(f"{manifests.deployment_name(color)} runs {runs[0]}, not the release this deploy "
                                          f"applied ({self._applied[color][0]}): another deploy changed it; "
                                          "check 'opsctl status'")
                if ready:
                    return
            if time.monotonic() >= deadline:
                raise OperationFailed(f"{manifests.deployment_name(color)} not ready after {timeout:.0f}s ({detail}); "
                                      f"see 'kubectl -n {self.ns} describe deployment {manifests.deployment_name(color)}'")
            time.sleep(min(POLL_SECONDS, max(0.05, deadline - time.monotonic())))

    def _active_size(self) -> int:
        """The active color's replicas as the cluster has them (an autoscaler may have moved
        them), else worker.replicas from opsctl.yaml."""
        active = self.active_color()
        dep = self._deployment(active) if active else None
        size = (dep or {}).get("spec", {}).get("replicas")
        return size if size else self.env.worker.replicas

    def preview_size(self) -> int:
        """The replicas bring_up gives a color: deploy.preview_replicas, never more than the active color has (Argo Rollouts'
        previewReplicaCount): production does not hold two full fleets of GPUs during a deploy.
        With no color serving yet (the first deploy) there is nothing to double: full size."""
        active = self.active_color()
        if not (active and self.colors()[active].running):
            return self.env.worker.replicas
        return min(self.env.deploy.preview_replicas, self._active_size())

    _preview_size = preview_size

    def switch_size(self, color: str) -> tuple[int, int] | None:
        """(the color's replicas, the active color's) when the color has fewer, else None: what
        the preview must grow to before the switch so capacity never drops."""
        dep = self._deployment(color)
        have = (dep or {}).get("spec", {}).get("replicas") or 0
        want = self._active_size()
        return (have, want) if have < want else None

    def scale(self, color: str, replicas: int) -> None:
        """Set a color's replicas (the preview, brought to the active size before the switch).
        Refuses (OperationFailed) the active color, which its ScaledObject sizes."""
        self._fence()
        if color == self.active_color():
            raise OperationFailed(f"refusing to rescale the active color {color}")
        dep = self._deployment(color)
        if dep is None:
            raise OperationFailed(f"{manifests.deployment_name(color)} does not exist; deploy again")
        # the same server-side apply as bring_up, of the release the Deployment runs, so opsctl
        # keeps owning every field it set
        notes = dep.get("metadata", {}).get("annotations", {})
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        release = Release(image, json.loads(notes.get(manifests.SETTINGS_ANNOTATION) or "{}"))
        self._apply(manifests.parse(manifests.deployment(self.project, self.env, release, color, replicas=replicas))[0])

    def switch(self, color: str) -> None:
        """Apply the active Service selecting `color`: created on the first deploy, afterwards
        a change of nothing but its selector. kube-proxy drains nothing itself, which is why the
        pods sleep in preStop and keep the grace period of deploy.drain_timeout.

        Then the ScaledObject follows traffic to `color` (at least one pod while the deploy
        judges it; `save` of the finished record restores the configured minimum). Used by the
        switch, the switch back, rollback and abort alike, so the autoscaler always follows.
        A deploy's switch forward (the last record is an unfinished deploy to `color`) then waits
        up to deploy.ready_timeout for KEDA to report it Ready with its HPA on `color`, and
        raises OperationFailed if not (traffic has moved by then, and the message says so); a
        return to an earlier color does not wait, so a broken autoscaler never delays a rollback.
        Refuses (OperationFailed, nothing changed) to move traffic to another color whose Deployment
        has no ready pod: a standby KEDA scaled to zero must be brought up (and waited for) first."""
        self._fence()
        if color != self.active_color():  # never traffic to a color with no pod (a scaled-to-zero standby)
            dep = self._deployment(color)
            if not ((dep or {}).get("status") or {}).get("readyReplicas"):
                detail = _readiness(dep)[1] if dep else "no Deployment"
                raise OperationFailed(f"refusing to move traffic to {color}: {manifests.deployment_name(color)} has no ready "
                                      f"pod ({detail}); traffic stays where it is; bring {color} up and wait for it first")
        self._apply(manifests.parse(manifests.service(self.project, self.env, "active", color))[0])
        if not self.env.worker.autoscaling.enabled:
            self._delete_scaled_object()
            return
        forward = [r for r in self.history()[-1:]
                   if r.outcome == "in-progress" and r.strategy != "rollback" and r.to_color == color]
        try:
            self._apply(manifests.parse(manifests.scaled_object(self.project, self.env, color, floor=1))[0])
        except (OperationFailed, UsageError) as exc:
            if forward:
                raise
            log.warning("traffic is on %s, but the ScaledObject %s could not follow it: %s", color,
                        manifests.SCALED_OBJECT, exc)
            return
        if forward:
            self._wait_autoscaler(color, self.env.deploy.ready_timeout, forward[0].from_color)

    def _wait_autoscaler(self, color: str, timeout: float, previous: str | None = None) -> None:
        """Until the ScaledObject is Ready (its status condition) and its HPA scales `color`."""
        deadline = time.monotonic() + timeout
        want = manifests.deployment_name(color)
        while True:
            so = self._scaled_object() or {}
            status = so.get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
            detail = f"Ready={ready.get('status', 'Unknown')}" + (f": {ready['message']}" if ready.get("message") else "")
            if ready.get("status") == "True":
                name = status.get("hpaName") or f"keda-hpa-{manifests.SCALED_OBJECT}"
                hpa = self._call(self._api("autoscaling").read_namespaced_horizontal_pod_autoscaler, name, self.ns,
                                 missing_ok=True)
                target = ((hpa or {}).get("spec", {}).get("scaleTargetRef") or {}).get("name")
                if target == want:
                    return
                detail = f"its HPA {name} scales {target or 'nothing yet'}"
            if time.monotonic() >= deadline:
                raise OperationFailed(
                    f"traffic is on {color}, but the ScaledObject {manifests.SCALED_OBJECT} is not ready for {want} after "
                    f"{timeout:.0f}s ({detail[:200]}); see 'kubectl -n {self.ns} describe scaledobject "
                    f"{manifests.SCALED_OBJECT}' (is Prometheus reachable at worker.autoscaling.prometheus_url?)"
                    + (f"; 'opsctl rollback' returns traffic to {previous} at once" if previous else ""))
            time.sleep(min(POLL_SECONDS, max(0.05, deadline - time.monotonic())))

    def _delete_scaled_object(self) -> None:
        """Remove the ScaledObject (autoscaling turned off); absent, or no KEDA at all: nothing to do."""
        group, version, plural = manifests.KEDA_API
        self._call(self._api("custom").delete_namespaced_custom_object, group, version, self.ns, plural,
                   manifests.SCALED_OBJECT, missing_ok=True)

    def scale_down(self, color: str) -> None:
        """Set a non-active color's replicas to 0 (absent: nothing to do); refuses the active color."""
        self._fence()
        if color == self.active_color():
            raise OperationFailed(f"refusing to scale down the active color {color}")
        if self._deployment(color) is None:
            return
        self._call(self._api("apps").patch_namespaced_deployment, manifests.deployment_name(color), self.ns,
                   {"spec": {"replicas": 0}}, field_manager=FIELD_MANAGER)

    def url(self, color: str) -> str | None:
        """The preview Service's in-cluster address while `color` is the preview and opsctl runs
        in a pod; None otherwise (see the module docstring)."""
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            return None
        if self._selector_color(manifests.PREVIEW_SERVICE) != color or self.active_color() == color:
            return None
        return manifests.service_url(self.env, manifests.PREVIEW_SERVICE)

    def router_url(self) -> str | None:
        """Where canaries reach the active color: opsctl.yaml's router_url, in a pod the active
        Service's address, else None (post-promotion analysis is then skipped)."""
        if self.env.router_url:
            return self.env.router_url.rstrip("/")
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return manifests.service_url(self.env, manifests.ACTIVE_SERVICE)
        return None

    def history(self) -> list[DeployRecord]:
        """The deploy records, oldest first (the ConfigMap's key history.json); UsageError when damaged."""
        cm = self._call(self._api("core").read_namespaced_config_map, HISTORY, self.ns, missing_ok=True)
        raw = ((cm or {}).get("data") or {}).get("history.json")
        try:
            return [DeployRecord.from_dict(d) for d in json.loads(raw)] if raw else []
        except (ValueError, TypeError, AttributeError) as exc:
            raise UsageError(f"the deploy history (ConfigMap {self.ns}/{HISTORY}, key history.json) is damaged "
                                  f"({exc}); fix or delete that key to start a new history") from None

    def save(self, record: DeployRecord) -> None:
        """Rewrite the history ConfigMap; only the lease holder writes, so no update is lost.
        A finished record (no deploy judges a color any more) gives the ScaledObject back its
        configured minimum, which may be 0 where the environment is not protected."""
        self._fence()
        records = upsert(self.history(), record)
        self._apply({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": HISTORY, "namespace": self.ns,
                                  "labels": {"app.kubernetes.io/managed-by": "opsctl",
                                             "app.kubernetes.io/part-of": "transcribe"}},
                     "data": {"history.json": json.dumps([r.to_dict() for r in records])}})
        if record.outcome in FINAL and self.env.worker.autoscaling.enabled:
            low = manifests.autoscaling_bounds(self.env)[0]
            try:
                color, current = self._autoscaled()
                if color is not None and current != low and color == self.active_color():
                    self._apply(manifests.parse(manifests.scaled_object(self.project, self.env, color))[0])
            except UsageError:  # no KEDA at all: no minimum to restore
                pass
            except OperationFailed as exc:  # the record is saved; the minimum waits for the next one
                log.warning("the ScaledObject %s keeps its deploy-time minimum: %s", manifests.SCALED_OBJECT, exc)

    def render(self, release: Release, color: str) -> str:
        """Every manifest a deploy of `release` onto `color` applies (manifests.render_all), its
        Deployment at the size bring_up gives it (preview_size: reads the cluster)."""
        from opsctl.infra.target import check_gpu_capacity_of

        check_gpu_capacity_of(self.project, self.env)  # a dry run refuses what bring_up would refuse
        return manifests.render_all(self.project, self.env, release, color, replicas=self.preview_size())


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
