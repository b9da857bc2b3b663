"""Breaker 46 F3: nothing of an upload is kept forever once it ended.

Before, `upload_parts` rows were never deleted (and `GET /v1/uploads/{id}` of a completed
upload listed parts whose objects complete had deleted), nor `uploads` rows, nor the assembled
`audio/uploads/<id>` objects (the bucket's lifecycle rule covers only `upload-parts/`). Now an
ended upload's part rows go at its end, and the keeper deletes an ended upload (its file, then
its row) WORKER_UPLOAD_RETENTION_HOURS after it ended, never while a queued or running job
reads its file. One real worker (PostgreSQL, moto S3; no model needed), over HTTP.

F4 (below): nor while a request is making a job of its file; a second worker, with the model
and S3 behind a forwarder that holds its download of the file."""

from __future__ import annotations

import os
import secrets
import threading
import time

import httpx
import psycopg
import pytest
from upload_s3hold import S3Hold
from worker_helpers import AWS_ENV, DATA, metric, send_part
from worker_support import serving, worker_env

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
RETENTION_HOURS = 0.003  # 10.8 s


def _store(s3, postgres, name: str):
    """(S3 client, a new bucket, a new database's URL) of a worker of the test's own."""
    os.environ.update(AWS_ENV)
    suffix = secrets.token_hex(4)
    client = s3.client()
    client.create_bucket(Bucket=f"brk46-{name}-{suffix}")
    return client, f"brk46-{name}-{suffix}", postgres.make_database(f"brk46{name[0]}_{suffix}")


@pytest.fixture(scope="module")
def keeper(model_dir, postgres, s3, tmp_path_factory):
    """A worker whose uploads expire after 4 s and are kept 10.8 s once ended, its keeper
    ticking every 0.5 s; yields (client, database URL, S3 client, bucket)."""
    client, bucket, database_url = _store(s3, postgres, "keep")
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


# --- breaker 47 F4: a file a job is being made from is never deleted under it ----------------
# The keeper marked and deleted an upload while POST /v1/jobs with its file_id was between
# `upload_by_file` (which found it, not purging) and `create_job` (the job row, made only after
# the download and decoding): no queued job read it yet, so `claim_retired` took it; the job
# was accepted (202) and failed with NoSuchKey. Each test below stops the request at that exact
# moment, by holding the worker's download of the file in a forwarder in front of S3
# (upload_s3hold.py), and does there what a keeper would, with the worker's own `Database`.

HELLO = (DATA / "hello.wav").read_bytes()  # 4.21 s of speech


@pytest.fixture(scope="module")
def reader(model_dir, postgres, s3, tmp_path_factory):
    """A worker with the model, reaching S3 through a forwarder that can hold a request, its
    own keeper never due (uploads kept an hour; the tests play the keeper); yields (client,
    forwarder, Database of the worker's database, S3 client, bucket)."""
    from transcription_worker.db import Database

    client, bucket, database_url = _store(s3, postgres, "read")
    forwarder = S3Hold(s3.port)
    env = worker_env(model_dir, WORKER_DATABASE_URL=database_url, WORKER_S3_ENDPOINT_URL=forwarder.url,
                     WORKER_S3_BUCKET=bucket, WORKER_JOB_LEASE_SECONDS="3", WORKER_UPLOAD_RETENTION_HOURS="1")
    db = Database(database_url, 4)
    try:
        with serving(env, tmp_path_factory.mktemp("brk46r") / "w.log") as (_, url):
            db.open()
            with httpx.Client(base_url=url, timeout=120) as http:
                yield http, forwarder, db, client, bucket
    finally:
        db.close()
        forwarder.close()


def _file(http: httpx.Client, db, data: bytes) -> tuple[str, str, str]:
    """(upload id, file id, S3 key of the file) of a completed upload of `data`."""
    upload_id = _completed(http, data)
    row = db.get_upload(upload_id, "anonymous")
    return upload_id, row["file_id"], row["file_key"] or row["s3_key"]


def _hold_download(forwarder, key: str):
    """Hold the worker's GET of `key` once S3 answered it: the file is read, no job row yet."""
    return forwarder.hold("GET", lambda kind, path: kind == "GET" and path.split("?")[0].endswith("/" + key),
                          answer=True)


def _post_job(http: httpx.Client, file_id: str) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def post():
        out["r"] = http.post("/v1/jobs", data={"file_id": file_id})

    thread = threading.Thread(target=post)
    thread.start()
    return thread, out


def _keeper_pass(db, s3, bucket: str) -> list[str]:
    """What a keeper's pass does to every upload past its retention (retention 0: every ended
    upload is due): marks them (`claim_retired`), deletes their files, then their rows. Returns
    the ids it deleted."""
    deleted = []
    for row in db.claim_retired(0, 100):
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=row["s3_key"]).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
        if db.delete_upload(row["id"]):
            deleted.append(row["id"])
    return deleted


def test_a_file_being_read_for_a_job_is_not_deleted_under_it(reader):
    """The tester's race: the keeper's pass runs while the request holds the file it read and
    has made no job yet. The upload is not taken; the job is made and reads its file."""
    http, forwarder, db, s3, bucket = reader
    upload_id, file_id, key = _file(http, db, HELLO)
    held = _hold_download(forwarder, key)
    thread, out = _post_job(http, file_id)
    try:
        assert held.arrived.wait(60), "the worker never downloaded the file"
        deleted = _keeper_pass(db, s3, bucket)
    finally:
        held.release.set()
        thread.join(120)
    assert upload_id not in deleted, "the keeper deleted a file a job was being made from"
    r = out["r"]
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    job_id = r.json()["id"]
    # the job row now says who reads the file: a pass finds it (queued or running) and keeps it
    assert upload_id not in _keeper_pass(db, s3, bucket)
    _wait("the job never finished", lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed"))
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    assert _objects(s3, bucket, upload_id) == [key]


def test_a_file_the_keeper_took_before_the_job_row_is_not_found(reader):
    """When the keeper marked the upload after all (its reader's mark lapsed: here it is marked
    outright) before the job row exists, the request is answered as for an unknown file id:
    404 file_not_found, never 202, and no job is made."""
    http, forwarder, db, s3, bucket = reader
    upload_id, file_id, key = _file(http, db, HELLO)
    held = _hold_download(forwarder, key)
    thread, out = _post_job(http, file_id)
    try:
        assert held.arrived.wait(60), "the worker never downloaded the file"
        _sql(db.url, "UPDATE uploads SET purging = true WHERE id = %s", upload_id)
    finally:
        held.release.set()
        thread.join(120)
    r = out["r"]
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "file_not_found" and r.json()["error"]["param"] == "file_id", r.text
    assert _sql(db.url, "SELECT count(*) FROM jobs WHERE audio_key = %s", key) == [(0,)]
    assert http.post("/v1/jobs", data={"file_id": file_id}).status_code == 404  # as it is from now on


def test_the_reader_mark_and_the_job_insert_against_the_keeper(reader):
    """The same rules on the database alone: a file found for a job is marked read, and no
    keeper pass takes it while the mark lasts (renewable, not past a keeper's mark); the job
    insert fails (FileGone) once the keeper marked the upload, and keeps it from the keeper
    once made, also after the reader's mark lapsed."""
    from transcription_worker.db import FileGone

    http, _, db, s3, bucket = reader
    job_args = dict(api_key_id="anonymous", idempotency_key=None, sha256="0" * 64, audio_bytes=len(HELLO),
                    duration=4.21, options={}, options_key="test", done=False, worker="test", owner="test/holder")

    kept, file_id, key = _file(http, db, HELLO)
    assert db.upload_by_file(file_id, "anonymous", 600)["id"] == kept
    assert kept not in _keeper_pass(db, s3, bucket)
    assert db.hold_upload_file(kept, 600)
    job, created = db.create_job(audio_key=key, upload_id=kept, hold=600, **job_args)
    assert created and job["status"] == "queued"
    _sql(db.url, "UPDATE uploads SET read_until = now() - interval '1 second' WHERE id = %s", kept)  # lapsed
    assert kept not in _keeper_pass(db, s3, bucket)  # the queued job reads it
    _sql(db.url, "UPDATE jobs SET status = 'failed', completed_at = now() WHERE id = %s", job["id"])
    assert kept in _keeper_pass(db, s3, bucket)  # no reader left: deleted as before

    gone, file_id, key = _file(http, db, HELLO)
    assert db.upload_by_file(file_id, "anonymous", 600)["id"] == gone
    _sql(db.url, "UPDATE uploads SET read_until = now() - interval '1 second' WHERE id = %s", gone)  # lapsed
    assert gone in [row["id"] for row in db.claim_retired(0, 100)]  # marked; not deleted yet
    assert not db.hold_upload_file(gone, 600)  # a mark is not renewed past the keeper's
    assert db.upload_by_file(file_id, "anonymous", 600) is None
    with pytest.raises(FileGone):
        db.create_job(audio_key=key, upload_id=gone, hold=600, **job_args)
    assert _sql(db.url, "SELECT count(*) FROM jobs WHERE audio_key = %s", key) == [(0,)]
