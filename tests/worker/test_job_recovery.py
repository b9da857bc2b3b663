"""Jobs survive the worker that took them: a SIGKILLed worker's jobs are adopted and finished.

Two real worker processes in turn on one database and bucket, with a 2-second lease: the
first takes three jobs and is killed with SIGKILL while running the first; the second
adopts all three once the lease has run out, and fails (instead of running yet again) a job
whose workers already died as often as allowed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
import time
import uuid

import psycopg
import pytest
from worker_helpers import AWS_ENV, BIN, padded, sample, wer
from worker_support import start_worker, stop_worker, wait_until, worker_env
from opsctl import httpclient

pytestmark = pytest.mark.integration


def _rows(url: str, sql: str, *params):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _wait(condition, what: str, timeout: float = 600):  # a guard: a loaded 2-core machine ran the passage at 0.2x real time
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_jobs_of_a_killed_worker_are_adopted_and_finished(model_dir, postgres, s3, tmp_path):
    import os
    import subprocess

    os.environ.update(AWS_ENV)
    suffix = secrets.token_hex(4)
    database_url = postgres.make_database(f"recovery_{suffix}")
    bucket = f"recovery-{suffix}"
    s3.client().create_bucket(Bucket=bucket)
    env = worker_env(model_dir, WORKER_DATABASE_URL=database_url, WORKER_S3_ENDPOINT_URL=s3.endpoint_url,
                     WORKER_S3_BUCKET=bucket, WORKER_QUEUE_SIZE="4", WORKER_JOB_LEASE_SECONDS="2",
                     WORKER_JOB_MAX_ATTEMPTS="2")
    assert subprocess.run([str(BIN), "migrate"], env=env, capture_output=True).returncode == 0

    first, url = start_worker(env, tmp_path / "first.log")
    try:
        wait_until(url, first, tmp_path / "first.log", ready=True)
        audio, text = sample("passage")
        jobs = [httpclient.post(url + "/v1/jobs", timeout=60, data={"language": "en"},
                           files={"file": (f"{i}.wav", clip)}).json()["id"]
                for i, clip in enumerate([audio, padded("hello", 100), padded("weather", 200)])]
        _wait(lambda: _rows(database_url, "SELECT 1 FROM jobs WHERE id = %s AND status = 'running'", jobs[0]),
              "the first job to start")
        first.send_signal(signal.SIGKILL)  # no drain: the jobs stay queued or running, owned by a dead process
        first.wait(10)
    finally:
        stop_worker(first)
    before = dict(_rows(database_url, "SELECT id::text, status FROM jobs"))
    assert before == {jobs[0]: "running", jobs[1]: "queued", jobs[2]: "queued"}
    # the running job is the killed worker's; those posted while its thread was busy wait unowned
    owners = {owner for (owner,) in _rows(database_url, "SELECT DISTINCT owner FROM jobs")}
    assert len(owners - {None}) == 1

    # a job whose workers died as often as allowed (2) while running it: failed, never run again
    poisoned = str(uuid.uuid4())
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO jobs (id, api_key_id, status, audio_sha256, audio_key, audio_bytes, duration,"
                     " options, options_key, owner, heartbeat_at, attempts, started_at)"
                     " VALUES (%s, 'anonymous', 'running', %s, 'audio/none.wav', 1, 1, %s, 'k', 'gone/1/x',"
                     " now() - interval '1 hour', 2, now() - interval '1 hour')",
                     (poisoned, hashlib.sha256(b"x").hexdigest(), json.dumps({})))

    second, url = start_worker(env, tmp_path / "second.log")
    try:
        wait_until(url, second, tmp_path / "second.log", ready=True)
        done = _wait(lambda: (rows := _rows(database_url, "SELECT id::text, status, owner, attempts, error"
                                            " FROM jobs WHERE status IN ('succeeded', 'failed')"))
                     and len(rows) == 4 and rows, "every job to finish")
        final = {row[0]: row[1:] for row in done}
        assert {j: final[j][0] for j in jobs} == dict.fromkeys(jobs, "succeeded"), final
        assert final[jobs[0]][2] == 2 and final[jobs[1]][2] == 1  # the killed run counts as an attempt
        assert len({final[j][1] for j in jobs}) == 1 and final[jobs[0]][1] not in owners
        status, _owner, attempts, error = final[poisoned]
        assert status == "failed" and attempts == 2 and error.startswith("abandoned:"), final[poisoned]

        result = httpclient.get(f"{url}/v1/jobs/{jobs[0]}", timeout=30).json()["result"]
        assert wer(text, result["text"]) < 0.3, result["text"]
        metrics = httpclient.get(url + "/metrics", timeout=10).text
        assert 'worker_jobs_total{status="adopted"} 1.0' in metrics  # the running one; two were in the backlog
        assert 'worker_jobs_total{status="abandoned"} 1.0' in metrics
        log = (tmp_path / "second.log").read_text()
        assert log.count("adopted a job whose worker stopped") == 1 and "job abandoned" in log
        assert log.count("job taken from the backlog") == 2
    finally:
        assert stop_worker(second) == 0
