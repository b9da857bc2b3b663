"""Checks against real components on their own: a real Prometheus exposition (from
prometheus_client, served over HTTP), and backup manifests in a folder and in moto's S3."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

from opsctl.config import Thresholds
from opsctl.health.checks.backup import _read_manifests
from opsctl.health.checks.metrics import TRANSCRIBE_ROUTE, worker_metrics
from opsctl.health.model import Status

pytestmark = pytest.mark.integration


@pytest.fixture
def worker_like():
    """The worker's metric names in a registry of their own, served by prometheus_client."""
    reg = CollectorRegistry()
    m = SimpleNamespace(
        requests=Counter("worker_requests_total", "r", ["method", "route", "status"], registry=reg),
        duration=Histogram("worker_request_duration_seconds", "d", ["method", "route", "status"],
                           buckets=(0.5, 1, 2.5, 5, 10), registry=reg),
        queue=Gauge("worker_queue_depth", "q", registry=reg))
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler.factory(reg))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    m.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield m
    server.shutdown()
    server.server_close()


def transcribe(m, status: str, seconds: float, n: int) -> None:
    for _ in range(n):
        m.requests.labels("POST", TRANSCRIBE_ROUTE, status).inc()
        m.duration.labels("POST", TRANSCRIBE_ROUTE, status).observe(seconds)


def test_error_rate_p95_and_queue_are_judged_over_the_window(worker_like, tmp_path):
    t = Thresholds()
    transcribe(worker_like, "500", 0.2, 50)  # old errors, before the baseline: must not count
    first = worker_metrics(worker_like.url, 5, t, tmp_path)
    assert first.status == Status.OK and "baseline" in first.message

    transcribe(worker_like, "200", 0.3, 90)
    transcribe(worker_like, "200", 4.0, 10)
    ok = worker_metrics(worker_like.url, 5, t, tmp_path)
    assert ok.details["requests"] == 100 and ok.details["error_rate_percent"] == 0.0
    assert ok.status == Status.WARNING and "p95 transcription" in ok.message  # 4 s > 2000 ms
    assert 2500 < ok.details["p95_ms"] <= 5000

    transcribe(worker_like, "200", 0.1, 90)
    transcribe(worker_like, "503", 0.1, 10)
    worker_like.queue.set(t.queue_depth + 1)
    bad = worker_metrics(worker_like.url, 5, t, tmp_path)
    assert bad.status == Status.CRITICAL and bad.value == 10.0
    assert "error rate 10% above 5%" in bad.message and "queue depth" in bad.message


def manifest(folder: Path, name: str, hours_ago: float, **extra) -> None:
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours_ago)
    (folder / name).mkdir(parents=True)
    (folder / name / "manifest.json").write_text(json.dumps({"id": name, "created_at": when.isoformat(), **extra}))


def test_manifest_reader_on_a_folder_repository(tmp_path):
    """The fallback reader (no backup capability, or another version of it)."""
    repo = tmp_path / "backups"
    assert _read_manifests(f"file://{repo}", tmp_path, None) is None
    manifest(repo, "b1", 30)
    manifest(repo, "b2", 2)
    manifest(repo, "b3", 0.5, status="failed")  # an incomplete backup does not count
    (repo / "b4").mkdir()  # no manifest: interrupted, does not count
    newest = _read_manifests("file://backups", tmp_path, None)  # relative to the ops root
    age = (dt.datetime.now(dt.timezone.utc) - newest).total_seconds() / 3600
    assert 1.9 < age < 2.1


def test_manifest_reader_on_an_s3_repository(s3, tmp_path):
    bucket = s3.make_bucket("bk")
    client = s3.client()
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=5)
    client.put_object(Bucket=bucket, Key="opsctl/2026/b1/data.zst", Body=b"x")
    client.put_object(Bucket=bucket, Key="opsctl/2026/b1/manifest.json",
                      Body=json.dumps({"finished_at": when.isoformat()}).encode())
    client.put_object(Bucket=bucket, Key="other/b9/manifest.json",  # outside the prefix
                      Body=json.dumps({"finished_at": dt.datetime.now(dt.timezone.utc).isoformat()}).encode())
    ep = SimpleNamespace(s3_endpoint_url=s3.endpoint_url, aws_region="us-east-1", aws_profile=None,
                         aws_credentials={})
    assert _read_manifests(f"s3://{bucket}/opsctl", tmp_path, ep) == when


def test_metrics_check_sends_the_api_key_when_keys_are_on(worker_like, tmp_path, monkeypatch):
    """With keys on, the worker's main port answers /metrics only to a key (RULES contract):
    the metrics check sends $<deploy.api_key_env> as a Bearer token."""
    from opsctl.config import load_project
    from opsctl.endpoints import Endpoints
    from opsctl.health import checks, sweep

    seen = []
    reg_handler = MetricsHandler.factory(CollectorRegistry())

    class Keyed(reg_handler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != "Bearer sk-health":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keyed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "opsctl.yaml").write_text("environments:\n  ci: {platform: kubernetes}\n")
    project = load_project(tmp_path)
    ep = Endpoints(env="ci", platform="kubernetes", database_url=None, redis_url=None, s3_endpoint_url=None,
                   audio_bucket="a", backup_bucket="b", router_url=None,
                   workers={"blue": f"http://127.0.0.1:{server.server_address[1]}"})
    try:
        monkeypatch.delenv("OPSCTL_WORKER_API_KEY", raising=False)
        (refused,) = sweep.run("ci", checks.plan(project, project.env("ci"), ep, only=["metrics-blue"])).results
        monkeypatch.setenv("OPSCTL_WORKER_API_KEY", "sk-health")
        (read,) = sweep.run("ci", checks.plan(project, project.env("ci"), ep, only=["metrics-blue"])).results
    finally:
        server.shutdown()
        server.server_close()
    assert refused.status == Status.CRITICAL and seen[0] is None
    assert read.status != Status.CRITICAL and seen[-1] == "Bearer sk-health", read.message
