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


class _Worker:
    """One worker process's metrics (its own registry, process_start_time_seconds `started`)."""

    def __init__(self, started: float):
        self.reg = CollectorRegistry()
        self.requests = Counter("worker_requests_total", "r", ["method", "route", "status"], registry=self.reg)
        self.duration = Histogram("worker_request_duration_seconds", "d", ["method", "route", "status"],
                                  buckets=(0.5, 1, 2.5, 5, 10), registry=self.reg)
        Gauge("process_start_time_seconds", "s", registry=self.reg).set(started)

    def answer(self, route: str, status: str, n: int, method: str = "POST") -> None:
        for _ in range(n):
            self.requests.labels(method, route, status).inc()
            if route == TRANSCRIBE_ROUTE:
                self.duration.labels(method, route, status).observe(0.2)


@pytest.fixture
def color_port():
    """One URL whose process can be replaced, as a color's port is by the next deploy: set
    `.worker` to the process serving it."""
    from http.server import BaseHTTPRequestHandler

    from prometheus_client import generate_latest

    port = SimpleNamespace(worker=_Worker(1000.0))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = generate_latest(port.worker.reg)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield port
    server.shutdown()
    server.server_close()


def test_probes_are_not_traffic_and_a_new_process_counts_from_its_start(color_port, tmp_path):
    """Breaker 53 F1: the first sweep after a clean deploy said "error rate 32% above 5%"
    (CRITICAL): the new process's start-up /readyz 503s, counted as errors, its totals
    subtracted from the old process's on the same port."""
    t = Thresholds()
    old = color_port.worker
    old.answer(TRANSCRIBE_ROUTE, "200", 20)
    old.answer("/readyz", "200", 30, "GET")
    assert "baseline" in worker_metrics(color_port.url, 5, t, tmp_path).message
    new = color_port.worker = _Worker(2000.0)  # the next deploy of this color
    new.answer("/readyz", "503", 8, "GET")  # its model still loading
    new.answer("/readyz", "200", 10, "GET")
    new.answer(TRANSCRIBE_ROUTE, "200", 5)
    after = worker_metrics(color_port.url, 5, t, tmp_path)
    assert after.status == Status.OK and after.details["error_rate_percent"] == 0.0, after
    assert after.details["requests"] == 5 and after.details["restarted"] is True
    assert "restarted" in after.message


def test_a_failing_new_process_is_not_hidden_by_the_errors_of_the_one_before(color_port, tmp_path):
    """The other way round: the old process's 100 errors minus the new one's 20 gave a negative
    error rate, OK, for a worker failing 12 % of its transcriptions now."""
    t = Thresholds()
    old = color_port.worker
    old.answer(TRANSCRIBE_ROUTE, "500", 100)
    old.answer(TRANSCRIBE_ROUTE, "200", 10)
    worker_metrics(color_port.url, 5, t, tmp_path)
    new = color_port.worker = _Worker(2000.0)
    new.answer(TRANSCRIBE_ROUTE, "200", 150)
    new.answer(TRANSCRIBE_ROUTE, "500", 20)
    bad = worker_metrics(color_port.url, 5, t, tmp_path)
    assert bad.status == Status.CRITICAL and bad.details["error_rate_percent"] == pytest.approx(11.76), bad


def test_probe_answers_do_not_dilute_the_apis_errors(color_port, tmp_path):
    """Half the transcriptions failing under a steady stream of healthy probes: 5 errors in 215
    requests was 2.3 %, under the 5 % limit."""
    t = Thresholds()
    w = color_port.worker
    worker_metrics(color_port.url, 5, t, tmp_path)
    w.answer(TRANSCRIBE_ROUTE, "200", 5)
    w.answer(TRANSCRIBE_ROUTE, "500", 5)
    w.answer("/readyz", "200", 100, "GET")
    w.answer("/healthz", "200", 100, "GET")
    w.answer("/metrics", "200", 5, "GET")
    bad = worker_metrics(color_port.url, 5, t, tmp_path)
    assert bad.status == Status.CRITICAL and bad.details["error_rate_percent"] == 50.0, bad
    assert bad.details["requests"] == 10 and bad.details["restarted"] is False


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-3"])
def test_a_counter_that_is_no_count_leaves_the_window_unjudged(value):
    """A NaN, infinite or negative counter is a broken exposition: the check is UNKNOWN (the
    sums had turned NaN, and NaN compares false against every limit: OK)."""
    from opsctl.health.checks.metrics import _read_sample

    with pytest.raises(ValueError, match="no count"):
        _read_sample(f'worker_requests_total{{method="POST",route="/v1/audio/transcriptions",status="500"}} {value}\n')


def test_a_series_that_fell_counts_from_zero_and_an_older_sample_is_no_baseline(color_port, tmp_path):
    """Without process_start_time_seconds, a series that fell restarted (Prometheus's rule, per
    series, not on the total); a sample file an older opsctl kept (totals) starts a new baseline."""
    from opsctl.health.checks.metrics import _read_sample, increase

    prev = _read_sample('worker_requests_total{method="POST",route="/v1/audio/transcriptions",status="500"} 90\n'
                        'worker_requests_total{method="POST",route="/v1/audio/transcriptions",status="200"} 10\n')
    cur = _read_sample('worker_requests_total{method="POST",route="/v1/audio/transcriptions",status="500"} 4\n'
                       'worker_requests_total{method="POST",route="/v1/audio/transcriptions",status="200"} 200\n')
    prev["t"], cur["t"] = 1.0, 2.0
    window = increase(cur, prev)
    assert window["requests"] == 194 and window["errors"] == 4 and not window["restarted"]
    assert increase(cur, {"requests": 7.0, "errors": 1.0, "buckets": {}}) is None


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


@pytest.mark.parametrize("kept", ['{"version": 2}', '{"version": 2, "requests": {"x": "NaN"}, "buckets": {}, "t": 1}',
                                  '[1, 2]', '{"version": 2, "requests": {}, "buckets": {"noseparator": 1}, "t": 1}',
                                  '{"version": 2, "requests": {"a b c": NaN}, "buckets": {}, "t": 1}'])
def test_a_damaged_or_edited_sample_is_no_baseline(color_port, tmp_path, kept):
    """Breaker 54: an edited sample file made the check raise ("check failed", UNKNOWN) at every
    sweep; it is a new baseline now."""
    import hashlib

    t = Thresholds()
    worker_metrics(color_port.url, 5, t, tmp_path)  # the file the next sweep reads
    (tmp_path / f"{hashlib.sha1(color_port.url.encode()).hexdigest()[:16]}.json").write_text(kept)
    again = worker_metrics(color_port.url, 5, t, tmp_path)
    assert again.status == Status.OK and "baseline taken" in again.message, again
    assert "baseline taken" not in worker_metrics(color_port.url, 5, t, tmp_path).message
