"""Kubernetes environments: the worker's pods ready, recent restarts, GPU nodes allocatable.

Read through the official client with the kubeconfig context from opsctl.yaml (or, in a
pod, its service account), every call bounded by the check's timeout. Restarts count only when the container last died within
the hour: a pod that restarted once last month is not a problem today.
"""

from __future__ import annotations

import datetime as dt
import os

from opsctl.health.model import CheckResult, Judge, Status

GPU = "nvidia.com/gpu"


WORKER_SELECTOR = "app.kubernetes.io/name=transcription-worker"  # opsctl.deploy.manifests' pod labels
_KEDA = ("keda.sh", "v1alpha1", "scaledobjects", "transcription-worker")  # manifests.KEDA_API, SCALED_OBJECT
_FINISHED = ("Succeeded", "Failed")  # a Job's pod that ran to its end, an evicted pod: not the fleet


def _api_client(settings):
    """A Kubernetes API client: the kubeconfig and context of opsctl.yaml, or the standard
    kubeconfig; inside a pod (KUBERNETES_SERVICE_HOST set, no kubeconfig/context named) the
    pod's service account, as the deploy driver's connect() does (the scheduled health sweep
    of `render schedules` runs there)."""
    import os

    from kubernetes import client, config

    if settings.kubeconfig or settings.context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return config.new_client_from_config(config_file=settings.kubeconfig, context=settings.context,
                                             persist_config=False)
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)


def _scaled_object_ready(api, namespace: str, timeout: float) -> tuple[bool, str]:
    """(ready, why not) of the worker's KEDA ScaledObject: its Ready condition is True."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    group, version, plural, name = _KEDA
    try:
        obj = k8s.CustomObjectsApi(api).get_namespaced_custom_object(group, version, namespace, plural, name,
                                                                     _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return False, f"ScaledObject {name} missing in {namespace}"
        return False, f"ScaledObject {name} unreadable: {exc.reason}"
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            if str(cond.get("status")) == "True":
                return True, ""
            return False, f"ScaledObject {name} not Ready ({cond.get('reason') or cond.get('message') or 'False'})"
    return False, f"ScaledObject {name} not Ready (no Ready condition yet)"


def kubernetes(settings, want_gpu: bool, timeout: float, client=None, *, scale_to_zero: bool = False) -> CheckResult:
    """The worker fleet: pods labelled app.kubernetes.io/name=transcription-worker in the
    namespace (a CronJob's finished pods and other apps' pods do not count; neither do
    finished worker pods, Succeeded or Failed/evicted). CRITICAL when none is ready or (with
    `want_gpu`) no node has a GPU allocatable; WARNING for some pods not ready or recent
    restarts. With `scale_to_zero` (worker.autoscaling.min_replicas 0), no worker pod at all
    is the intended idle state (OK, and no GPU node is expected then) as long as the KEDA
    ScaledObject exists and is Ready: it is what wakes the fleet. Value: ready pods."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    try:
        api = client or _api_client(settings)
        core = k8s.CoreV1Api(api)
        listed = core.list_namespaced_pod(settings.namespace, label_selector=WORKER_SELECTOR,
                                          _request_timeout=timeout).items
        nodes = core.list_node(_request_timeout=timeout).items if want_gpu else []
    except ConfigException as exc:
        where = "in-cluster (service account)" if os.environ.get("KUBERNETES_SERVICE_HOST") else "kubeconfig"
        return CheckResult("", "kubernetes", Status.UNKNOWN, f"no usable {where} configuration: {exc}")
    except (ApiException, HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return CheckResult("", "kubernetes", Status.CRITICAL, f"cannot list pods in {settings.namespace}: {reason}")
    pods = [p for p in listed if not (p.status and p.status.phase in _FINISHED)
            and ((p.metadata and p.metadata.labels) or {}).get("app.kubernetes.io/name") == "transcription-worker"]
    hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    ready, restarts, recent = 0, 0, 0
    for pod in pods:
        statuses = (pod.status and pod.status.container_statuses) or []
        if pod.status and pod.status.phase == "Running" and statuses and all(c.ready for c in statuses):
            ready += 1
        for c in statuses:
            restarts += c.restart_count or 0
            died = c.last_state and c.last_state.terminated and c.last_state.terminated.finished_at
            if died and died > hour_ago:
                recent += 1
    judge = Judge()
    idle = False
    if not pods and scale_to_zero:
        try:
            keda_ready, why = _scaled_object_ready(api, settings.namespace, timeout)
        except (HTTPError, OSError) as exc:
            keda_ready, why = False, f"ScaledObject unreadable: {type(exc).__name__}"
        if keda_ready:
            idle = True
        else:
            judge.add(Status.CRITICAL, f"no worker pods in {settings.namespace} and nothing to wake them: {why}")
    elif not pods:
        judge.add(Status.CRITICAL, f"no worker pods in namespace {settings.namespace}")
    elif ready == 0:
        judge.add(Status.CRITICAL, f"0/{len(pods)} worker pods ready")
    elif ready < len(pods):
        judge.add(Status.WARNING, f"{ready}/{len(pods)} worker pods ready")
    if recent:
        judge.add(Status.WARNING, f"{recent} containers restarted in the last hour")
    gpus = sum(int((n.status.allocatable or {}).get(GPU, 0) or 0) for n in nodes if n.status)
    if want_gpu and gpus == 0 and not idle:
        judge.add(Status.CRITICAL, f"no node has {GPU} allocatable")
    if idle:
        text = "idle: scaled to zero by KEDA (ScaledObject Ready), 0 worker pods"
    else:
        text = (f"{ready}/{len(pods)} worker pods ready, {restarts} restarts"
                + (f", {gpus} GPUs allocatable" if want_gpu else ""))
    return CheckResult("", "kubernetes", judge.status(), judge.message(text), float(ready), "pods",
                       details={"pods": len(pods), "ready": ready, "restarts": restarts, "idle": idle,
                                "finished_pods_ignored": len(listed) - len(pods),
                                "recent_restarts": recent, "gpus_allocatable": gpus if want_gpu else None})
