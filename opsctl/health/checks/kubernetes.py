"""Kubernetes environments: the namespace's pods ready, recent restarts, GPU nodes allocatable.

Read through the official client with the kubeconfig context from opsctl.yaml, every call
bounded by the check's timeout. Restarts count only when the container last died within
the hour: a pod that restarted once last month is not a problem today.
"""

from __future__ import annotations

import datetime as dt

from opsctl.health.model import CheckResult, Judge, Status

GPU = "nvidia.com/gpu"


def _api_client(settings):
    """A Kubernetes API client for the environment's kubeconfig and context."""
    from kubernetes import config

    return config.new_client_from_config(config_file=settings.kubeconfig, context=settings.context)


def kubernetes(settings, want_gpu: bool, timeout: float, client=None) -> CheckResult:
    """Worker pods in the namespace: CRITICAL when none is ready or (with `want_gpu`) no node
    has a GPU allocatable; WARNING for some pods not ready or recent restarts."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    try:
        core = k8s.CoreV1Api(client or _api_client(settings))
        pods = core.list_namespaced_pod(settings.namespace, _request_timeout=timeout).items
        nodes = core.list_node(_request_timeout=timeout).items if want_gpu else []
    except ConfigException as exc:
        return CheckResult("", "kubernetes", Status.UNKNOWN, f"no usable kubeconfig: {exc}")
    except (ApiException, HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return CheckResult("", "kubernetes", Status.CRITICAL, f"cannot list pods in {settings.namespace}: {reason}")
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
    if not pods:
        judge.add(Status.CRITICAL, f"no pods in namespace {settings.namespace}")
    elif ready == 0:
        judge.add(Status.CRITICAL, f"0/{len(pods)} pods ready")
    elif ready < len(pods):
        judge.add(Status.WARNING, f"{ready}/{len(pods)} pods ready")
    if recent:
        judge.add(Status.WARNING, f"{recent} containers restarted in the last hour")
    gpus = sum(int((n.status.allocatable or {}).get(GPU, 0) or 0) for n in nodes if n.status)
    if want_gpu and gpus == 0:
        judge.add(Status.CRITICAL, f"no node has {GPU} allocatable")
    text = f"{ready}/{len(pods)} pods ready, {restarts} restarts" + (f", {gpus} GPUs allocatable" if want_gpu else "")
    return CheckResult("", "kubernetes", judge.status(), judge.message(text), float(ready), "pods",
                       details={"pods": len(pods), "ready": ready, "restarts": restarts,
                                "recent_restarts": recent, "gpus_allocatable": gpus if want_gpu else None})
