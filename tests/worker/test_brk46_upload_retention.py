"""Breaker 46 F3: nothing of an upload is kept forever once it ended.

Before, `upload_parts` rows were never deleted (and `GET /v1/uploads/{id}` of a completed
upload listed parts whose objects complete had deleted), nor `uploads` rows, nor the assembled
`audio/uploads/<id>` objects (the bucket's lifecycle rule covers only `upload-parts/`). Now an
ended upload's part rows go at its end, and the keeper deletes an ended upload (its file, then
its row) WORKER_UPLOAD_RETENTION_HOURS after it ended, never while a queued or running job
reads its file. One real worker (PostgreSQL, moto S3; no model needed), over HTTP."""

from __future__ import annotations

import os
import secrets
import time

import httpx
import psycopg
import pytest
from worker_helpers import AWS_ENV, metric, send_part
from worker_support import serving, worker_env

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
RETENTION_HOURS = 0.003  # 10.8 s


@pytest.fixture(scope="module")
def keeper(model_dir, postgres, s3, tmp_path_factory):
    """A worker whose uploads expire after 4 s and are kept 10.8 s once ended, its keeper
    ticking every 0.5 s; yields (client, database URL, S3 client, bucket)."""
    os.environ.update(AWS_ENV)
    suffix = secrets.token_hex(4)
    bucket = f"brk46-keep-{suffix}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    database_url = postgres.make_database(f"brk46k_{suffix}")
    env = worker_env(model_dir, WORKER_DATABASE_URL=database_url, WORKER_S3_ENDPOINT_URL=s3.endpoint_url,
                     WORKER_S3_BUCKET=bucket, WORKER_UPLOAD_EXPIRY_SECONDS="4", WORKER_JOB_LEASE_SECONDS="1.5",
                     WORKER_UPLOAD_RETENTION_HOURS=str(RETENTION_HOURS))
    with serving(env, tmp_path_factory.mktemp("brk46k") / "w.log", ready=False) as (_, url):  # uploads need no model
        with httpx.Client(base_url=url, timeout=60) as http:
            yield http, database_url, client, bucket


def _upload(http: httpx.Client, data: bytes) -> tuple[str, str]:
    """(upload id, part id) of a pending upload holding `data` in one part."""
    up = http.post("/v1/uploads", json={"filename": "a.wav", "bytes": len(data), "mime_type": "audio/wav",
                                        "purpose": "transcription"})
    assert up.status_code == 200, up.text
    part = send_part(http, up.json()["id"], data)
    assert part.status_code == 200, part.text
    return up.json()["id"], part.json()["id"]


def _completed(http: httpx.Client, data: bytes) -> str:
    upload_id, part_id = _upload(http, data)
    done = http.post(f"/v1/uploads/{upload_id}/complete", json={"part_ids": [part_id]})
    assert done.status_code == 200 and done.json()["status"] == "completed", done.text
    return upload_id


def _sql(database_url: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cur = conn.execute(query, args)
        return cur.fetchall() if cur.description else []


def _part_rows(database_url: str, upload_id: str) -> int:
    return _sql(database_url, "SELECT count(*) FROM upload_parts WHERE upload_id = %s", upload_id)[0][0]


def _objects(s3, bucket: str, upload_id: str) -> list[str]:
    keys = []
    for prefix in (f"audio/uploads/{upload_id}", f"audio/upload-parts/{upload_id}/"):
        keys += [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return keys


def _wait(what: str, done, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_an_ended_upload_keeps_no_part_rows_and_lists_no_parts(keeper):
    http, database_url, s3, bucket = keeper
    completed = _completed(http, b"\1" * MIB)
    seen = http.get(f"/v1/uploads/{completed}").json()
    assert seen["status"] == "completed" and seen["parts"] == [], seen  # their objects went at complete
    assert _part_rows(database_url, completed) == 0
    assert _objects(s3, bucket, completed) == [f"audio/uploads/{completed}"]  # the file alone

    cancelled, _ = _upload(http, b"\2" * MIB)
    assert http.post(f"/v1/uploads/{cancelled}/cancel").json()["status"] == "cancelled"
    assert _part_rows(database_url, cancelled) == 0 and _objects(s3, bucket, cancelled) == []

    expiring, _ = _upload(http, b"\3" * MIB)
    _wait("the upload never expired", lambda: _sql(
        database_url, "SELECT status FROM uploads WHERE id = %s", expiring) != [("pending",)])
    assert _part_rows(database_url, expiring) == 0 and _objects(s3, bucket, expiring) == []


def test_ended_uploads_are_deleted_after_their_retention_never_while_a_job_reads_the_file(keeper):
    http, database_url, s3, bucket = keeper
    read = _completed(http, b"\4" * MIB)  # a queued job reads its file: kept past the retention
    file_key = _sql(database_url, "SELECT coalesce(file_key, s3_key) FROM uploads WHERE id = %s", read)[0][0]
    job = _sql(database_url,
               "INSERT INTO jobs (id, api_key_id, status, audio_sha256, audio_key, audio_bytes, duration, options,"
               " options_key, owner, heartbeat_at) VALUES (gen_random_uuid(), 'anonymous', 'queued', %s, %s, %s, 1,"
               " '{}'::jsonb, 'test', 'test/holder', now() + interval '1 hour') RETURNING id",
               "0" * 64, file_key, MIB)[0][0]
    completed = _completed(http, b"\5" * MIB)
    cancelled, _ = _upload(http, b"\6" * MIB)
    assert http.post(f"/v1/uploads/{cancelled}/cancel").status_code == 200
    before = metric(http.get("/metrics").text, "worker_uploads_retired_total")

    _wait("a completed upload was never deleted past its retention",
          lambda: http.get(f"/v1/uploads/{completed}").status_code == 404)
    assert _objects(s3, bucket, completed) == []  # the assembled file too
    _wait("a cancelled upload was never deleted past its retention",
          lambda: http.get(f"/v1/uploads/{cancelled}").status_code == 404)
    assert _sql(database_url, "SELECT id FROM uploads WHERE id = ANY(%s)", [completed, cancelled]) == []
    assert metric(http.get("/metrics").text, "worker_uploads_retired_total") >= before + 2

    # completed before `completed`, so due before it: the pass that deleted that one left it
    kept = http.get(f"/v1/uploads/{read}")
    assert kept.status_code == 200 and kept.json()["status"] == "completed", kept.text
    assert _objects(s3, bucket, read) == [file_key]
    _sql(database_url, "UPDATE jobs SET status = 'failed', completed_at = now() WHERE id = %s", job)
    _wait("the upload was never deleted once no job read its file",
          lambda: http.get(f"/v1/uploads/{read}").status_code == 404)
    assert _objects(s3, bucket, read) == []
