"""The kubernetes check against kmock's KubernetesEmulator (the Kubernetes API is the one
thing, with AWS's control plane, that this machine cannot run for real)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from opsctl.config import KubernetesSettings
from opsctl.health.checks.kubernetes import kubernetes
from opsctl.health.model import Status

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

NS = "transcribe"
WORKER = {"app.kubernetes.io/name": "transcription-worker", "app.kubernetes.io/color": "blue"}


def pod(name: str, ready: bool, restarts: int = 0, died_minutes_ago: float | None = None) -> dict:
    status = {"name": "worker", "ready": ready, "restartCount": restarts, "image": "w", "imageID": "",
              "state": {"running": {}}, "lastState": {}}
    if died_minutes_ago is not None:
        died = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=died_minutes_ago)
        status["lastState"] = {"terminated": {"exitCode": 137, "finishedAt": died.strftime("%Y-%m-%dT%H:%M:%SZ")}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": WORKER},
            "spec": {"containers": [{"name": "worker", "image": "w"}]},
            "status": {"phase": "Running", "containerStatuses": [status]}}


def node(name: str, gpus: int) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "8", "nvidia.com/gpu": str(gpus)}}}


def client_for(kmock):
    from kubernetes import client

    config = client.Configuration()
    config.host = str(kmock.url).rstrip("/")
    return client.ApiClient(config)


async def run(kmock, want_gpu: bool):
    settings = KubernetesSettings(namespace=NS)
    return await asyncio.to_thread(kubernetes, settings, want_gpu, 5.0, client_for(kmock))


async def test_ready_pods_and_gpu_nodes_are_ok(kmock):
    kmock.resources["v1/pods"] = {}
    kmock.resources["v1/nodes"] = {}
    kmock.objects["v1/pods", NS, "worker-blue-1"] = pod("worker-blue-1", True, restarts=2, died_minutes_ago=600)
    kmock.objects["v1/pods", NS, "worker-blue-2"] = pod("worker-blue-2", True)
    kmock.objects["v1/nodes", None, "gpu-1"] = node("gpu-1", 1)
    result = await run(kmock, want_gpu=True)
    assert result.status == Status.OK, result.message
    assert result.details == {"pods": 2, "ready": 2, "restarts": 2, "recent_restarts": 0, "gpus_allocatable": 1,
                              "idle": False, "finished_pods_ignored": 0}


async def test_unready_pod_recent_restart_and_no_gpu(kmock):
    kmock.resources["v1/pods"] = {}
    kmock.resources["v1/nodes"] = {}
    kmock.objects["v1/pods", NS, "worker-green-1"] = pod("worker-green-1", True, restarts=4, died_minutes_ago=5)
    kmock.objects["v1/pods", NS, "worker-green-2"] = pod("worker-green-2", False)
    kmock.objects["v1/nodes", None, "cpu-1"] = node("cpu-1", 0)
    result = await run(kmock, want_gpu=True)
    assert result.status == Status.CRITICAL
    assert "1/2 worker pods ready" in result.message and "restarted in the last hour" in result.message
    assert "no node has nvidia.com/gpu allocatable" in result.message


async def test_empty_namespace_is_critical(kmock):
    kmock.resources["v1/pods"] = {}
    result = await run(kmock, want_gpu=False)
    assert result.status == Status.CRITICAL and f"no worker pods in namespace {NS}" in result.message
