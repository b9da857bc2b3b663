"""Asynchronous jobs: PostgreSQL row, S3 object, Idempotency-Key, SHA-256 dedup."""

from __future__ import annotations

import hashlib
import time

import psycopg
import pytest
from worker_helpers import padded, reversed_speech, sample, wait_for_job, wer
from opsctl import httpclient

pytestmark = pytest.mark.integration


def job_rows(worker, sql: str, *params):
    with psycopg.connect(worker.database_url) as conn:
        return conn.execute(sql, params).fetchall()


def test_job_flow_through_postgres_and_s3(http, worker):
    audio, text = sample("weather")
    r = http.post("/v1/jobs", files={"file": ("weather.wav", audio, "audio/wav")},
                  data={"language": "en"}, headers={"Idempotency-Key": "flow-1"})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{created['id']}"

    job = wait_for_job(http, created["id"])
    assert job["status"] == "succeeded", job
    assert wer(text, job["result"]["text"]) < 0.3, job["result"]["text"]
    assert job["completed_at"] >= job["started_at"] >= job["created_at"]

    (row,) = job_rows(worker, "SELECT status, audio_sha256, audio_key, audio_bytes FROM jobs"
                      " WHERE id = %s", created["id"])
    assert row[:2] == ("succeeded", hashlib.sha256(audio).hexdigest()) and row[3] == len(audio)
    head = worker.s3.head_object(Bucket=worker.bucket, Key=row[2])
    assert head["ContentLength"] == len(audio)
    stored = worker.s3.get_object(Bucket=worker.bucket, Key=row[2])["Body"].read()
    assert stored == audio

    srt = http.get(f"/v1/jobs/{created['id']}", params={"response_format": "srt"}).json()
    assert srt["result"].startswith("1\n00:00:00,000 --> ")


def test_retry_with_same_idempotency_key_returns_the_same_job(http, worker):
    audio = padded("hello", 333)
    first = http.post("/v1/jobs", files={"file": ("a.wav", audio)}, headers={"Idempotency-Key": "retry-1"})
    again = http.post("/v1/jobs", files={"file": ("a.wav", audio)}, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == 202 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    rows = job_rows(worker, "SELECT id FROM jobs WHERE idempotency_key = 'retry-1'")
    assert [str(r[0]) for r in rows] == [first.json()["id"]]

    other = http.post("/v1/jobs", files={"file": ("b.wav", padded("hello", 334))},
                      headers={"Idempotency-Key": "retry-1"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert wait_for_job(http, first.json()["id"])["status"] == "succeeded"


def test_identical_audio_job_is_answered_from_stored_transcript(http, worker):
    audio, text = padded("weather", 55), sample("weather")[1]
    first = wait_for_job(http, http.post("/v1/jobs", files={"file": ("w.wav", audio)}).json()["id"])
    assert first["status"] == "succeeded" and not first["deduplicated"]
    r = http.post("/v1/jobs", files={"file": ("w2.wav", audio)})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["status"] == "succeeded" and second["deduplicated"] is True
    assert second["id"] != first["id"] and second["result"] == first["result"]
    assert wer(text, second["result"]["text"]) < 0.3
    sha = hashlib.sha256(audio).hexdigest()
    assert len(job_rows(worker, "SELECT id FROM jobs WHERE audio_sha256 = %s", sha)) == 2
    assert len(job_rows(worker, "SELECT 1 FROM transcripts WHERE audio_sha256 = %s", sha)) == 1


def test_jobs_are_private_to_their_api_key(http, worker):
    job = http.post("/v1/jobs", files={"file": ("h.wav", sample("hello")[0])}).json()
    other_key = worker.keys.pop()
    r = http.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {other_key}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert http.get("/v1/jobs/not-a-uuid").status_code == 404
    assert wait_for_job(http, job["id"])["status"] == "succeeded"


@pytest.mark.parametrize("change", [
    {"data": {"language": "fr", "prompt": "Bonjour."}},
    {"data": {"language": "de"}},
    {"data": {"language": "en", "prompt": "Weather report."}},
    {"data": {"language": "en", "temperature": "0.4"}},
    {"data": {"language": "en", "response_format": "text"}},
    {"data": {"language": "en", "model": "whisper-large"}},
    {"data": {"language": "en", "timestamp_granularities[]": "word"}},
    {"data": {"language": "en"}, "file": 2},
])
def test_idempotency_key_reused_with_a_different_request_is_422(http, worker, change):
    """IETF Idempotency-Key draft / Stripe: same key, different request -> 422, nothing made."""
    key = f"idem-{hashlib.sha256(repr(change).encode()).hexdigest()[:12]}"
    audio = padded("hello", 1600)
    first = http.post("/v1/jobs", files={"file": ("a.wav", audio)}, data={"language": "en"},
                      headers={"Idempotency-Key": key})
    assert first.status_code in (200, 202), first.text
    assert wait_for_job(http, first.json()["id"])["status"] == "succeeded"  # later cases: from the store
    other = padded("hello", 1601) if change.get("file") else audio
    r = http.post("/v1/jobs", files={"file": ("a.wav", other)}, data=change["data"],
                  headers={"Idempotency-Key": key})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "idempotency_key_reused" and err["type"] == "invalid_request_error"
    assert err["param"] == "Idempotency-Key"
    assert len(job_rows(worker, "SELECT id FROM jobs WHERE idempotency_key = %s", key)) == 1
    same = http.post("/v1/jobs", files={"file": ("renamed.wav", audio)}, data={"language": "en"},
                     headers={"Idempotency-Key": key})
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert same.headers["idempotent-replayed"] == "true"


def test_connections_the_server_dropped_are_never_handed_to_a_request(http, worker):
    # After a database failover, a restart or an idle-timeout kill, every connection the pool
    # holds is dead; each was once handed to the next request, which answered 503 (a load
    # test counted two such 503s against its error-rate SLO after another test restarted
    # PostgreSQL). The pool now checks a connection before lending it.
    audio = padded("hello", 444)
    job_id = http.post("/v1/jobs", files={"file": ("a.wav", audio)}, data={"language": "en"}).json()["id"]
    for _ in range(3):
        with psycopg.connect(worker.database_url, autocommit=True) as conn:
            killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                  " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
        assert killed >= 1  # the pool's idle connections, at least
        answers = [http.get(f"/v1/jobs/{job_id}").status_code for _ in range(6)]
        assert answers == [200] * 6, answers
    wait_for_job(http, job_id)


def test_jobs_past_the_queue_wait_in_the_backlog_and_all_run(http, worker):
    """Breaker 29 F11: with the model busy and its one queue place taken, further jobs were
    refused 429 `queue_full`, though a job lives in PostgreSQL and S3 anyway. Five posted at
    once (capacity two; five keys, as one key may send two uploads at once) are all accepted;
    those beyond the queue wait unowned and are taken as slots free; all succeed."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    audio, text = sample("passage")
    clients = [httpx.Client(base_url=worker.url, timeout=300, headers={"Authorization": f"Bearer {worker.keys.pop()}"})
               for _ in range(5)]
    for c in clients:
        c.worker = worker  # wait_for_job polls the row

    def post(i: int):
        return clients[i].post("/v1/jobs", files={"file": (f"p{i}.wav", padded("passage", 1800 + i))})

    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(post, range(5)))
    assert [r.status_code for r in responses] == [202] * 5, [r.text for r in responses]
    backlogged = [ln for ln in worker.metrics().splitlines() if ln.startswith('worker_jobs_total{status="backlogged"}')]
    assert backlogged and float(backlogged[0].split()[1]) >= 1, backlogged
    for c, r in zip(clients, responses):
        job = wait_for_job(c, r.json()["id"])
        assert job["status"] == "succeeded" and wer(text, job["result"]["text"]) < 0.1, job
    assert not job_rows(worker, "SELECT id FROM jobs WHERE owner IS NULL AND status IN ('queued', 'running')")


def test_a_full_backlog_is_refused_429(model_dir, postgres, s3, tmp_path):
    """WORKER_JOB_BACKLOG bounds the jobs waiting unowned (all workers together): at 1, with
    no queue places, of three jobs posted one after another one runs, one waits and one is
    refused `queue_full` with Retry-After, having made no job."""
    import secrets
    import subprocess
    from types import SimpleNamespace

    import httpx
    from worker_helpers import BIN
    from worker_support import start_worker, stop_worker, wait_until, worker_env

    suffix = secrets.token_hex(4)
    database_url = postgres.make_database(f"worker_backlog_{suffix}")
    bucket = f"worker-backlog-{suffix}"
    s3.client().create_bucket(Bucket=bucket)
    env = worker_env(model_dir, WORKER_JOB_BACKLOG="1", WORKER_QUEUE_SIZE="0", WORKER_DATABASE_URL=database_url,
                     WORKER_S3_ENDPOINT_URL=s3.endpoint_url, WORKER_S3_BUCKET=bucket)
    assert subprocess.run([str(BIN), "migrate"], env=env, capture_output=True).returncode == 0
    log = tmp_path / "w.log"
    proc, url = start_worker(env, log)
    try:
        wait_until(url, proc, log, ready=True)
        client = httpx.Client(base_url=url, timeout=300)
        client.worker = SimpleNamespace(database_url=database_url)  # wait_for_job polls the row
        # one job the model is busy with (reversed speech loops: about 10 s), one that waits in
        # the backlog, one the full backlog refuses
        busy = client.post("/v1/jobs", files={"file": ("backwards.wav", reversed_speech("weather"))})
        waiting = client.post("/v1/jobs", files={"file": ("h.wav", sample("hello")[0])})
        refused = client.post("/v1/jobs", files={"file": ("w.wav", sample("weather")[0])})
        assert (busy.status_code, waiting.status_code) == (202, 202), (busy.text, waiting.text)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full", refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert wait_for_job(client, waiting.json()["id"])["status"] == "succeeded"
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2
    finally:
        stop_worker(proc)


def _budget_worker(model_dir, postgres, s3, tmp_path, **settings):
    """A worker of its own (PostgreSQL, S3, no keys) with `settings`; (process, url, database URL, log)."""
    import secrets
    import subprocess

    from worker_helpers import BIN
    from worker_support import start_worker, wait_until, worker_env

    suffix = secrets.token_hex(4)
    database_url = postgres.make_database(f"worker_jobs_{suffix}")
    bucket = f"worker-jobs-{suffix}"
    s3.client().create_bucket(Bucket=bucket)
    env = worker_env(model_dir, WORKER_DATABASE_URL=database_url, WORKER_S3_ENDPOINT_URL=s3.endpoint_url,
                     WORKER_S3_BUCKET=bucket, **settings)
    assert subprocess.run([str(BIN), "migrate"], env=env, capture_output=True).returncode == 0
    log = tmp_path / "w.log"
    proc, url = start_worker(env, log)
    wait_until(url, proc, log, ready=True)
    return proc, url, database_url, log


def test_a_backlog_leaves_the_queue_to_sync_requests(model_dir, postgres, s3, tmp_path):
    """Breaker 31 F2, 32 G3: jobs took every queue place (posted at once, or refilled from
    the backlog as places freed), so each sync request was refused 429 until they had all run.
    A job now starts only on an idle model thread, else waits in the backlog: the sync request
    posted right after four jobs gets the queue place and runs before the jobs still waiting."""
    import httpx
    from worker_support import stop_worker

    proc, url, database_url, _ = _budget_worker(model_dir, postgres, s3, tmp_path, WORKER_QUEUE_SIZE="1")
    try:
        client = httpx.Client(base_url=url, timeout=300)
        ids = [client.post("/v1/jobs", files={"file": (f"p{i}.wav", padded("passage", 2000 + i))}).json()["id"]
               for i in range(4)]  # one runs, three wait in the backlog
        sent = time.time()
        r = client.post("/v1/audio/transcriptions", files={"file": ("h.wav", sample("hello")[0])},
                        headers={"Cache-Control": "no-cache"})
        assert r.status_code == 200, r.text
        with psycopg.connect(database_url) as conn:
            deadline = time.monotonic() + 120
            while conn.execute("SELECT count(*) FROM jobs WHERE status <> 'succeeded'").fetchone()[0]:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            last_start = conn.execute("SELECT max(extract(epoch FROM started_at)) FROM jobs WHERE id = ANY(%s)",
                                      (ids,)).fetchone()[0]
        assert float(last_start) > sent  # the sync request was let in while jobs still waited
    finally:
        stop_worker(proc)


def test_steady_sync_traffic_holds_a_backlog_job_no_longer_than_its_patience(model_dir, postgres, s3, tmp_path):
    """Breaker 32 G2: a backlog job starts on an idle model thread, and two clients sending sync
    requests back to back keep the thread busy: the job waited until they stopped. Past
    WORKER_JOB_PATIENCE_SECONDS (2 s here) it takes a free queue place: it finishes while the
    sync traffic goes on."""
    import threading

    import httpx
    from worker_support import stop_worker

    proc, url, database_url, _ = _budget_worker(model_dir, postgres, s3, tmp_path, WORKER_QUEUE_SIZE="2",
                                                WORKER_JOB_PATIENCE_SECONDS="2")
    stop = threading.Event()
    codes: list[int] = []

    def traffic(i: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while not stop.is_set():
                codes.append(c.post("/v1/audio/transcriptions", headers={"Cache-Control": "no-cache"},
                                    files={"file": ("w.wav", padded("weather", 2100 + i))}).status_code)

    clients = [threading.Thread(target=traffic, args=(i,)) for i in range(2)]
    try:
        for t in clients:
            t.start()
        time.sleep(3)  # both clients' requests running and waiting
        job = httpclient.post(url + "/v1/jobs", files={"file": ("h.wav", sample("hello")[0])}, timeout=60).json()
        with psycopg.connect(database_url) as conn:
            deadline = time.monotonic() + 90
            while conn.execute("SELECT status FROM jobs WHERE id = %s", (job["id"],)).fetchone()[0] != "succeeded":
                assert time.monotonic() < deadline, "the job waited for the sync traffic to end"
                time.sleep(0.2)
        assert not stop.is_set() and all(t.is_alive() for t in clients)  # the traffic went on all along
    finally:
        stop.set()
        for t in clients:
            t.join(120)
        stop_worker(proc)
    assert codes and set(codes) == {200}, codes


def test_a_stopping_worker_takes_no_more_backlog_jobs(model_dir, postgres, s3, tmp_path):
    """Breaker 31 F3: a worker sent SIGTERM went on taking backlog jobs while its in-flight
    requests finished (up to a transcription's budget), pulling them from workers that stay.
    Told to stop, it takes nothing more: the backlog is left to the others."""
    import signal
    import threading

    import httpx
    from worker_support import stop_worker

    proc, url, database_url, _ = _budget_worker(
        model_dir, postgres, s3, tmp_path, WORKER_QUEUE_SIZE="0",
        WORKER_TRANSCRIPTION_BUDGET_FACTOR="0.01", WORKER_TRANSCRIPTION_BUDGET_MIN_SECONDS="4")
    try:
        answers: list = []
        busy = threading.Thread(target=lambda: answers.append(httpclient.post(
            url + "/v1/audio/transcriptions", files={"file": ("b.wav", reversed_speech("passage"))}, timeout=300)))
        busy.start()  # the model's one thread, until its 4 s budget runs out
        deadline = time.monotonic() + 60
        while "worker_transcriptions_in_progress 1.0" not in httpclient.get(url + "/metrics", timeout=10).text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client = httpx.Client(base_url=url, timeout=60)
        for name in ("hello", "weather"):
            assert client.post("/v1/jobs", files={"file": (f"{name}.wav", sample(name)[0])}).status_code == 202
        proc.send_signal(signal.SIGTERM)
        busy.join(300)
        assert answers and answers[0].status_code == 422, answers  # the in-flight request finished
        assert proc.wait(60) == 0
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT status, owner FROM jobs").fetchall()
        assert rows == [("queued", None), ("queued", None)], rows
    finally:
        stop_worker(proc)
