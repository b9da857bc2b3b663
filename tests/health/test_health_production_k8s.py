"""Issue 23 as production runs it (BREAKER23's cases and their kind): every outbound call of the
health area ends within its total deadline and never keeps the process alive; operation
windows hold checks the environment's sweep actually runs; the kubernetes check counts only
the worker fleet, accepts a fleet KEDA scaled to zero, and works inside a CronJob pod."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from opsctl.config import load_project

REPO = Path(__file__).resolve().parents[2]
NS = "transcribe"


class TrickleServer:
    """Answers 'HTTP/1.1 200 OK' then one header byte every 0.3 s, forever: every single read
    finishes well within any read timeout, the response never does."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\n")
            while not self.stop.is_set():
                c.sendall(b"X")
                time.sleep(0.3)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture
def trickle():
    server = TrickleServer()
    yield server
    server.close()


# --- (12) a total deadline on every outbound call; lanes never block exit ---------------------

def test_a_trickling_webhook_never_keeps_the_operation_process_alive(tmp_path, trickle):
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "health": {"sinks": [
            {"type": "webhook", "url": f"{trickle.url}/hook", "timeout": 1}]}}}}))
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from opsctl.config import load_project
        from opsctl.health.notify import operation_window
        with operation_window(load_project(Path({str(tmp_path)!r})), "ci", "deploy", "w:1") as w:
            pass
        print("block done", w.deliveries, flush=True)
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"process alive 120 s after the operation's block ended (stdout: {exc.stdout!r})")
    assert proc.returncode == 0, proc.stderr[-800:]
    assert "block done" in proc.stdout and "'ok': False" in proc.stdout  # both events failed, recorded


def test_every_sink_send_has_a_total_deadline(trickle, monkeypatch):
    """Alerts (the monitor's dispatcher) go through the same bounded exchange as events."""
    from opsctl.health import sinks
    from opsctl.health.settings import Sink as SinkSettings
    from opsctl.health.alerting import Alert

    monkeypatch.setenv("TEST_SINK_URL", f"{trickle.url}/x")  # a Slack sink's URL is its secret: url_env only
    for kind in ("webhook", "slack"):
        sender = sinks.build(SinkSettings(type=kind, name=kind, url_env="TEST_SINK_URL", timeout=1))
        alert = Alert("trigger", "ci", "router", "http", "CRITICAL", "down", 0.0, "ms", "2026-01-01T00:00:00Z",
                      "2026-01-01T00:00:01Z", 2)
        with pytest.raises(httpx.TimeoutException, match="total deadline"):
            sender.send(alert)


def test_a_trickling_alertmanager_fails_the_silence_instead_of_hanging(tmp_path, trickle, monkeypatch):
    from opsctl.errors import OperationFailed
    from opsctl.health import silences
    from opsctl.health.checks import http

    monkeypatch.setattr(http, "bounded_request", _with_timeout(http.bounded_request, 1))
    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {ci: {platform: kubernetes}}\n")
    project = load_project(tmp_path)
    with pytest.raises(OperationFailed, match="did not take the silence"):
        silences.add(project, "ci", "worker-*", 60, alertmanager=trickle.url)
    assert silences.active(project, "ci") == []


def _with_timeout(real, seconds):
    return lambda method, url, *, timeout, **kw: real(method, url, timeout=min(timeout, seconds), **kw)


def test_a_trickling_metrics_endpoint_is_critical_within_the_check_timeout(tmp_path, trickle):
    from opsctl.health.checks.metrics import worker_metrics
    from opsctl.health.checks.uploads import incomplete_uploads
    from opsctl.config import Thresholds
    from opsctl.health.settings import UploadLimits
    from opsctl.health.model import Status

    result = worker_metrics(trickle.url, 1.0, Thresholds(), tmp_path)
    assert result.status == Status.CRITICAL and "ReadTimeout" in result.message
    result = incomplete_uploads([trickle.url], 1.0, UploadLimits())
    assert "ReadTimeout" in result.message


# --- (11) operation windows hold the checks the platform's sweep runs ------------------------

@pytest.mark.parametrize("operation", ["deploy", "promote", "abort", "rollback", "failover", "restore"])
def test_an_operation_window_on_kubernetes_holds_checks_that_exist_there(tmp_path, operation):
    from opsctl.endpoints import resolve
    from opsctl.health import checks, silences
    from opsctl.health.notify import operation_window

    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {
        "k": {"platform": "kubernetes", "router_url": "http://127.0.0.1:9"}}}))
    project = load_project(tmp_path)
    env = project.env("k")
    planned = checks.plan(project, env, resolve(project, env))
    with operation_window(project, "k", operation, "w:2") as window:
        held = silences.active(project, "k")
    for s in held:  # no pattern held that matches nothing the sweep runs
        assert any(s.holds(c.name, c.kind) for c in planned), (s.check, [c.name for c in planned])
    holding = {c.name for c in planned if silences.holding(held, c.name, c.kind)}
    if operation != "restore":
        assert "kubernetes" in holding, (operation, window.checks)
    assert "router" not in holding and window.problems == []


def test_the_window_bound_covers_a_production_deploy_and_callers_may_pass_theirs(tmp_path):
    from opsctl.health import silences
    from opsctl.health.notify import operation_window, window_seconds

    project = load_project(REPO)
    assert window_seconds(project.env("production"), "deploy") >= 4800
    # issue 23 (B23b): a restore's bound covers its own WAL replay / RDS wait (3600 s each) with room
    import inspect

    from opsctl.pitr import rds, restore

    replay = inspect.signature(restore.run).parameters["timeout"].default
    for operation in ("restore", "drill", "failover"):
        bound = window_seconds(project.env("production"), operation)
        assert bound > max(replay, rds.WAIT_SECONDS) + 2 * project.env("production").deploy.ready_timeout, operation
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {
        "k": {"platform": "kubernetes", "deploy": {"ready_timeout": 900, "scale_down_delay": 900,
                                                   "analysis_window": 300}}}}))
    project = load_project(tmp_path)
    import datetime as dt
    now = dt.datetime.now(dt.timezone.utc)
    with operation_window(project, "k", "deploy", "x"):
        (held,) = silences.active(project, "k")
    assert held.ends - now >= dt.timedelta(seconds=4800)
    with operation_window(project, "k", "deploy", "x", max_seconds=9000):
        (held,) = silences.active(project, "k")
    assert held.ends - now >= dt.timedelta(seconds=8990)


# --- (8, 9, 10) the kubernetes check ---------------------------------------------------------

def _client(kmock):
    from kubernetes import client
    c = client.Configuration()
    c.host = str(kmock.url).rstrip("/")
    return client.ApiClient(c)


def _worker(name, ready=True, phase="Running"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS,
            "labels": {"app.kubernetes.io/name": "transcription-worker"}},
            "spec": {"containers": [{"name": "worker", "image": "w"}]},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "worker", "ready": ready, "restartCount": 0, "image": "w", "imageID": "",
                 "state": {"running": {}}, "lastState": {}}]}}


def _other(name, phase, labels):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "o"}], "restartPolicy": "Never"},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "c", "ready": False, "restartCount": 0, "image": "o", "imageID": "",
                 "state": {"terminated": {"exitCode": 0}}, "lastState": {}}]}}


def _run(kmock, want_gpu=False, scale_to_zero=False):
    from opsctl.config import KubernetesSettings
    from opsctl.health.checks.kubernetes import kubernetes

    return asyncio.to_thread(kubernetes, KubernetesSettings(namespace=NS), want_gpu, 5.0, _client(kmock),
                             scale_to_zero=scale_to_zero)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_finished_and_foreign_pods_do_not_make_a_healthy_fleet_warn(kmock):
    from opsctl.health.model import Status

    kmock.resources["v1/pods"] = {}
    kmock.objects["v1/pods", NS, "transcription-worker-blue-1"] = _worker("transcription-worker-blue-1")
    kmock.objects["v1/pods", NS, "transcription-worker-blue-2"] = _worker("transcription-worker-blue-2")
    cron = {"app.kubernetes.io/name": "opsctl", "app.kubernetes.io/component": "schedule"}
    kmock.objects["v1/pods", NS, "opsctl-nightly-backup-1"] = _other("opsctl-nightly-backup-1", "Succeeded", cron)
    kmock.objects["v1/pods", NS, "opsctl-sweep-2"] = _other("opsctl-sweep-2", "Failed", cron)
    kmock.objects["v1/pods", NS, "grafana-0"] = _other("grafana-0", "Pending", {"app": "grafana"})
    evicted = _worker("transcription-worker-blue-0", ready=False, phase="Failed")
    kmock.objects["v1/pods", NS, "transcription-worker-blue-0"] = evicted
    result = await _run(kmock)
    assert result.status == Status.OK, result.message
    assert "2/2 worker pods ready" in result.message


def _scaled_object(ready: str | None):
    status = {"conditions": [{"type": "Ready", "status": ready, "reason": "X"}]} if ready else {}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "transcription-worker", "namespace": NS}, "spec": {}, "status": status}


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize("keda, expected", [("True", "OK"), ("False", "CRITICAL"), (None, "CRITICAL"),
                                            ("missing", "CRITICAL")])
async def test_a_fleet_scaled_to_zero_is_idle_only_while_keda_can_wake_it(kmock, keda, expected):
    from opsctl.health.model import Status

    kmock.resources["v1/pods"] = {}
    kmock.resources["v1/nodes"] = {}
    kmock.resources["keda.sh/v1alpha1/scaledobjects"] = {}
    kmock.objects["v1/nodes", None, "system-1"] = {"apiVersion": "v1", "kind": "Node",
                                                   "metadata": {"name": "system-1"},
                                                   "status": {"allocatable": {"cpu": "4"}}}
    if keda != "missing":
        kmock.objects["keda.sh/v1alpha1/scaledobjects", NS, "transcription-worker"] = _scaled_object(keda)
    result = await _run(kmock, want_gpu=True, scale_to_zero=True)
    assert result.status == Status[expected], result.message
    if expected == "OK":
        assert "idle" in result.message
    else:
        assert "ScaledObject" in result.message
    # without scale to zero, no pods is an outage whatever KEDA says
    assert (await _run(kmock, want_gpu=True)).status == Status.CRITICAL


@pytest.mark.integration
@pytest.mark.asyncio
async def test_scale_to_zero_still_critical_when_pods_exist_but_none_ready(kmock):
    from opsctl.health.model import Status

    kmock.resources["v1/pods"] = {}
    kmock.resources["keda.sh/v1alpha1/scaledobjects"] = {}
    kmock.objects["keda.sh/v1alpha1/scaledobjects", NS, "transcription-worker"] = _scaled_object("True")
    kmock.objects["v1/pods", NS, "transcription-worker-blue-1"] = _worker("transcription-worker-blue-1", ready=False)
    result = await _run(kmock, scale_to_zero=True)
    assert result.status == Status.CRITICAL and "0/1 worker pods ready" in result.message


def test_the_sweep_passes_scale_to_zero_from_the_environment(tmp_path, monkeypatch):
    from opsctl.endpoints import resolve
    from opsctl.health import checks
    from opsctl.health.checks import kubernetes as kmod

    seen = {}
    monkeypatch.setattr(kmod, "kubernetes", lambda *a, **kw: seen.update(kw))
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {
        "k": {"platform": "kubernetes", "worker": {"autoscaling": {"min_replicas": 0, "wake_query": "sum(x)"}}}}}))
    project = load_project(tmp_path)
    env = project.env("k")
    (check,) = [c for c in checks.plan(project, env, resolve(project, env)) if c.name == "kubernetes"]
    check.run(1.0)
    assert seen == {"scale_to_zero": True}


def test_the_kubernetes_check_uses_the_service_account_in_a_cronjob_pod(tmp_path, monkeypatch):
    """The CronJob pod has a service-account token and KUBERNETES_SERVICE_HOST, no kubeconfig."""
    from kubernetes.config import incluster_config

    from opsctl.config import KubernetesSettings
    from opsctl.health.checks.kubernetes import _api_client, kubernetes
    from opsctl.health.model import Status

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok")
    (sa / "ca.crt").write_text("x")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "9")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    api = _api_client(KubernetesSettings(namespace=NS))
    assert api.configuration.host == "https://127.0.0.1:9"
    assert list(api.configuration.api_key.values()) == ["bearer tok"]  # the mounted token
    result = kubernetes(KubernetesSettings(namespace=NS), False, 2.0)
    assert result.status == Status.CRITICAL and "cannot list pods" in result.message, result.message
    # with no service account mounted, the message names the in-cluster configuration, not a kubeconfig
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "absent"))
    result = kubernetes(KubernetesSettings(namespace=NS), False, 2.0)
    assert result.status == Status.UNKNOWN and "in-cluster" in result.message


@pytest.mark.parametrize("security", ["none", "starttls"])
def test_a_trickling_smtp_server_fails_the_email_sink_within_its_timeout(security, monkeypatch):
    """smtplib's timeout is per socket operation too: a greeting sent a byte at a time never
    trips it. The e-mail sink's watchdog ends the exchange at its timeout in total. The
    watchdog's thread stays alive a moment after it shut the socket (as a busy machine
    leaves it): the session's failure is still told as the watchdog's timeout (a full suite
    run once saw smtplib's 'Server not connected' instead, judged by the thread's liveness)."""
    from opsctl.health import sinks
    from opsctl.health.alerting import Alert
    from opsctl.health.settings import Sink as SinkSettings

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def serve():
        try:
            conn, _ = server.accept()
        except OSError:
            return
        try:
            conn.sendall(b"220 ")
            while not stop.is_set():
                conn.sendall(b"X")
                time.sleep(0.3)
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    shut = sinks._shut
    monkeypatch.setattr(sinks, "_shut", lambda *a: (shut(*a), time.sleep(0.5)))
    try:
        sender = sinks.build(SinkSettings(type="email", name="mail", smtp_host="127.0.0.1",
                                          smtp_port=server.getsockname()[1], sender="a@example.org",
                                          to=["b@example.org"], security=security, timeout=1))
        alert = Alert("trigger", "ci", "router", "http", "CRITICAL", "down", 0.0, "ms", "2026-01-01T00:00:00Z",
                      "2026-01-01T00:00:01Z", 2)
        with pytest.raises(TimeoutError, match="within 1s in total"):
            sender.send(alert)
    finally:
        stop.set()
        server.close()


def test_a_trickling_router_fails_the_load_tests_reachability_check(tmp_path, trickle):
    from opsctl.errors import UsageError
    from opsctl.loadtest.plan import reachable

    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {ci: {platform: kubernetes}}\n")
    env = load_project(tmp_path).env("ci")
    with pytest.raises(UsageError, match="no answer within 5 s"):
        reachable(trickle.url, env, True)
