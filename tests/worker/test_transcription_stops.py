"""A transcription stops when nobody will read it or when it runs past its time budget
(breaker 29 F5): audio that makes Whisper loop (here: speech played backwards) otherwise held
the model for minutes, after its client had given up, while the client's retries queued the
same work behind it."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from types import SimpleNamespace

import httpx
import pytest
from worker_helpers import metric, reversed_speech, sample, wait_for_job, wer
from worker_support import serving, worker_env
from opsctl import httpclient

pytestmark = pytest.mark.integration


def stopped(metrics_text: str, reason: str) -> float:
    return metric(metrics_text, f'worker_transcriptions_stopped_total{{reason="{reason}"}}')


def wait_for(condition, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_transcription_stops_when_its_client_leaves(worker, api_key):
    """The client gives up after a second and a half (a read timeout closes its connection):
    the running transcription (30 s of reversed speech: about 50 s of model time unstopped) is
    stopped, counted, logged as 499, and the model is free for the next request."""
    before = stopped(worker.metrics(), "client_gone")
    headers = {"Authorization": f"Bearer {api_key}", "Cache-Control": "no-cache"}
    with pytest.raises(httpx.ReadTimeout):
        httpclient.post(worker.url + "/v1/audio/transcriptions", headers=headers,
                   files={"file": ("backwards.wav", reversed_speech("passage"))},
                   timeout=httpx.Timeout(60, read=1.5))
    wait_for(lambda: stopped(worker.metrics(), "client_gone") == before + 1, what=worker.metrics())
    wait_for(lambda: metric(worker.metrics(), "worker_transcriptions_in_progress") == 0)
    logged = [json.loads(line) for line in worker.log().splitlines() if '"request"' in line]
    assert any(d.get("path") == "/v1/audio/transcriptions" and d.get("status") == 499 for d in logged)
    audio, text = sample("hello")
    r = httpclient.post(worker.url + "/v1/audio/transcriptions", headers=headers,
                   files={"file": ("hello.wav", audio)}, timeout=300)
    assert r.status_code == 200 and wer(text, r.json()["text"]) < 0.3, r.text


def test_a_transcription_past_its_budget_is_stopped(model_dir, postgres, s3, tmp_path):
    """A worker whose budget is one second: the sync request is answered 422
    `transcription_budget_exceeded` (the same audio sent again would loop again: no
    Retry-After), a job of the same audio fails with the reason on its row, both counted."""
    suffix = secrets.token_hex(4)
    database_url = postgres.make_database(f"worker_budget_{suffix}")
    bucket = f"worker-budget-{suffix}"
    s3.client().create_bucket(Bucket=bucket)
    key = f"sk-test-{secrets.token_hex(16)}"
    env = worker_env(model_dir, WORKER_TRANSCRIPTION_BUDGET_FACTOR="0.01",
                     WORKER_TRANSCRIPTION_BUDGET_MIN_SECONDS="1",
                     WORKER_DATABASE_URL=database_url,
                     WORKER_S3_ENDPOINT_URL=s3.endpoint_url, WORKER_S3_BUCKET=bucket,
                     WORKER_API_KEY_HASHES=hashlib.sha256(key.encode()).hexdigest())
    with serving(env, tmp_path / "w.log") as (_, url):
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        http.worker = SimpleNamespace(database_url=database_url)  # wait_for_job polls the row
        backwards = reversed_speech("passage")
        r = http.post("/v1/audio/transcriptions", files={"file": ("backwards.wav", backwards)})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "transcription_budget_exceeded" and "time budget of 1 s" in error["message"]
        assert "Retry-After" not in r.headers
        job = wait_for_job(http, http.post("/v1/jobs", files={"file": ("backwards.wav", backwards)}).json()["id"])
        assert job["status"] == "failed" and job["error"]["message"].startswith("the transcription ran past its "
                                                                                "time budget of 1 s"), job
        assert job["error"]["code"] == "transcription_budget_exceeded", job  # as the sync route (breaker 31 F8)
        text = http.get("/metrics").text
        assert stopped(text, "budget") == 2 and metric(text, "worker_transcriptions_in_progress") == 0


def test_a_client_that_leaves_while_queued_is_not_charged(worker):
    """Breaker 31 F4: a sync request whose client left while it waited in the queue gave its
    place back but stayed charged its audio seconds, though the model never ran on it: a key
    with 120 s a day that gave up on 30 s then could not send 95 s."""
    running_key, queued_key = worker.keys.pop(), worker.keys.pop()
    hold: dict = {}

    def occupy():  # reversed speech: the model is busy for tens of seconds, until this client leaves
        try:
            httpclient.post(worker.url + "/v1/audio/transcriptions", headers={"Authorization": f"Bearer {running_key}",
                       "Cache-Control": "no-cache"}, files={"file": ("b.wav", reversed_speech("passage"))},
                       timeout=httpx.Timeout(60, read=12))
        except httpx.ReadTimeout as exc:
            hold["left"] = exc

    import threading

    thread = threading.Thread(target=occupy)
    thread.start()
    wait_for(lambda: metric(worker.metrics(), "worker_transcriptions_in_progress") == 1, 60)
    headers = {"Authorization": f"Bearer {queued_key}", "Cache-Control": "no-cache"}
    with pytest.raises(httpx.ReadTimeout):  # 30 s of speech, queued behind the busy model
        httpclient.post(worker.url + "/v1/audio/transcriptions", headers=headers,
                   files={"file": ("p.wav", sample("passage")[0])}, timeout=httpx.Timeout(60, read=1.5))
    wait_for(lambda: metric(worker.metrics(), "worker_queue_depth") == 0, 60)
    thread.join(120)
    wait_for(lambda: metric(worker.metrics(), "worker_transcriptions_in_progress") == 0)
    from worker_helpers import silence_wav

    r = httpclient.post(worker.url + "/v1/audio/transcriptions", headers=headers,
                   files={"file": ("s.wav", silence_wav(95))}, timeout=300)
    assert r.status_code == 200, r.text  # 0 + 95 of 120 s: the queued 30 s were given back
