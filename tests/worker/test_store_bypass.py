"""`Cache-Control: no-cache`: the model runs every time, and the transcript store is left alone.

Deploy analysis and load tests judge the model; a transcript answered from the store would
let a broken release pass (issue 17 section 1). Counted by the worker's own metrics:
`worker_dedup_hits_total` (store hits) and `worker_transcription_duration_seconds_count`
(real model runs).
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from worker_helpers import wait_for_job, metric, padded, sample, wer
from opsctl import httpclient

pytestmark = pytest.mark.integration
NO_CACHE = {"Cache-Control": "no-cache"}


def counts(worker) -> tuple[float, float]:
    text = worker.metrics()
    return (metric(text, "worker_dedup_hits_total"),
            metric(text, "worker_transcription_duration_seconds_count"))


def stored_rows(worker, audio: bytes) -> int:
    with psycopg.connect(worker.database_url) as conn:
        return conn.execute("SELECT count(*) FROM transcripts WHERE audio_sha256 = %s",
                            (hashlib.sha256(audio).hexdigest(),)).fetchone()[0]


@pytest.mark.parametrize("header", ["no-cache", "max-age=0, No-Cache", "no-store,no-cache"])
def test_no_cache_sync_request_runs_the_model_on_stored_audio(http, worker, header):
    audio, text = padded("hello", 1200 + len(header)), sample("hello")[1]
    first = http.post("/v1/audio/transcriptions", files={"file": ("h.wav", audio)})
    assert first.status_code == 200 and stored_rows(worker, audio) == 1  # now in the store
    hits, runs = counts(worker)
    for _ in range(2):
        r = http.post("/v1/audio/transcriptions", files={"file": ("h.wav", audio)},
                      headers={"Cache-Control": header})
        assert r.status_code == 200, r.text
        assert wer(text, r.json()["text"]) < 0.3
    assert counts(worker) == (hits, runs + 2)  # two model runs, no store hit
    plain = http.post("/v1/audio/transcriptions", files={"file": ("h.wav", audio)})
    assert plain.status_code == 200 and counts(worker) == (hits + 1, runs + 2)  # the store still serves others


def test_no_cache_sync_request_writes_nothing_to_the_store(http, worker):
    audio, text = padded("weather", 1301), sample("weather")[1]
    r = http.post("/v1/audio/transcriptions", files={"file": ("w.wav", audio)}, headers=NO_CACHE,
                  data={"response_format": "verbose_json"})
    assert r.status_code == 200 and wer(text, r.json()["text"]) < 0.3
    assert stored_rows(worker, audio) == 0
    hits, runs = counts(worker)
    again = http.post("/v1/audio/transcriptions", files={"file": ("w.wav", audio)})
    assert again.status_code == 200 and counts(worker) == (hits, runs + 1)  # nothing to hit


def test_no_cache_job_runs_the_model_and_keeps_its_own_transcript(http, worker):
    audio, text = padded("hello", 1402), sample("hello")[1]
    first = wait_for_job(http, http.post("/v1/jobs", files={"file": ("h.wav", audio)}).json()["id"])
    assert first["status"] == "succeeded" and stored_rows(worker, audio) == 1
    hits, runs = counts(worker)
    r = http.post("/v1/jobs", files={"file": ("h.wav", audio)}, headers=NO_CACHE)
    assert r.status_code == 202, r.text  # queued for the model, not answered from the store
    assert r.json()["deduplicated"] is False
    job = wait_for_job(http, r.json()["id"])
    assert job["status"] == "succeeded" and wer(text, job["result"]["text"]) < 0.3
    assert counts(worker) == (hits, runs + 1)
    assert stored_rows(worker, audio) == 1
    srt = http.get(f"/v1/jobs/{job['id']}", params={"response_format": "srt"}).json()["result"]
    assert srt.startswith("1\n00:00:00,000 --> ")


def test_no_cache_is_only_for_authenticated_callers(worker):
    r = httpclient.post(worker.url + "/v1/audio/transcriptions", headers=NO_CACHE,
                   files={"file": ("h.wav", sample("hello")[0])})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
