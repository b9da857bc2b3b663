"""OpenAI-style uploads (issue 26, core): a recording in parts into an S3 multipart upload
(real moto server), a repeated part stored once, a dropped part resumed from GET, completion
into a file checked by MD5, a job from `file_id`, and the refusals."""

from __future__ import annotations

import hashlib
import io
import wave

import httpx
import numpy as np
import pytest
from worker_helpers import DATA, drop_mid_part, sample, send_part, wait_for_job, wer
from opsctl import httpclient

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def studio_wav() -> tuple[bytes, str]:
    """The passage and the weather report as 48 kHz stereo WAV (about 7 MB for 38 s): big
    enough for a 5 MiB part (S3's minimum for every part but the last) and another."""
    pieces, texts = [], []
    for name in ("passage", "weather"):
        with wave.open(str(DATA / f"{name}.wav")) as w:
            pieces.append(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16))
        texts.append(sample(name)[1])
    mono = np.repeat(np.concatenate(pieces), 3)  # 16 kHz -> 48 kHz
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(48000)
        w.writeframes(np.column_stack([mono, mono]).tobytes())
    return buf.getvalue(), " ".join(texts)


def multipart_uploads(worker, key: str) -> list:
    listing = worker.s3.list_multipart_uploads(Bucket=worker.bucket, Prefix=key)
    return listing.get("Uploads", [])


def part_objects(worker, key: str) -> list[int]:
    """The sizes of a pending upload's part objects (`audio/upload-parts/<upload id>/...`)."""
    listing = worker.s3.list_objects_v2(Bucket=worker.bucket, Prefix=key.replace("/uploads/", "/upload-parts/") + "/")
    return sorted(o["Size"] for o in listing.get("Contents", []))


def test_upload_in_parts_with_a_repeat_and_a_drop_then_a_job(http, worker, api_key):
    audio, text = studio_wav()
    r = http.post("/v1/uploads", json={"filename": "../../etc/show.wav", "bytes": len(audio),
                                       "mime_type": "audio/wav", "purpose": "transcription"})
    assert r.status_code == 200, r.text
    upload = r.json()
    assert upload["object"] == "upload" and upload["status"] == "pending" and upload["file"] is None
    first, second = audio[: 5 * MIB], audio[5 * MIB:]
    p1 = send_part(http, upload["id"], first).json()
    assert p1["object"] == "upload.part" and p1["upload_id"] == upload["id"]
    again = send_part(http, upload["id"], first).json()  # a retry of the same part
    assert again["id"] == p1["id"]
    drop_mid_part(worker.url, api_key, upload["id"], second)
    resumed = http.get(f"/v1/uploads/{upload['id']}").json()
    assert [p["id"] for p in resumed["parts"]] == [p1["id"]]  # the client resumes from here
    assert resumed["parts"][0]["bytes"] == len(first)
    p2 = send_part(http, upload["id"], second).json()
    done = http.post(f"/v1/uploads/{upload['id']}/complete",
                     json={"part_ids": [p1["id"], p2["id"]], "md5": hashlib.md5(audio).hexdigest()})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "completed" and body["file"]["id"].startswith("file-")
    assert body["file"]["bytes"] == len(audio)
    keys = [o["Key"] for o in worker.s3.list_objects_v2(Bucket=worker.bucket, Prefix="audio/uploads/")["Contents"]]
    key = f"audio/uploads/{upload['id']}"
    assert key in keys and not [k for k in keys if "etc" in k or ".." in k]
    assert worker.s3.get_object(Bucket=worker.bucket, Key=key)["Body"].read() == audio  # each part once
    assert multipart_uploads(worker, key) == []

    r = http.post("/v1/jobs", data={"file_id": body["file"]["id"], "language": "en"})
    assert r.status_code == 202, r.text
    assert r.json()["audio_sha256"] == hashlib.sha256(audio).hexdigest()
    job = wait_for_job(http, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert wer(text, job["result"]["text"]) < 0.3, job["result"]["text"]


def test_upload_refusals_leave_nothing_behind(http, worker):
    def create(**over):
        spec = {"filename": "a.mp3", "bytes": 6 * MIB, "mime_type": "audio/mpeg", "purpose": "transcription"}
        return http.post("/v1/uploads", json={**spec, **over})

    r = create(bytes=3 * 1024 * MIB)
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    for bad in ({"mime_type": "text/plain"}, {"bytes": -1}, {"filename": ""}, {"purpose": ""}):
        r = create(**bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(bad)), r.text
    upload = create().json()
    key = f"audio/uploads/{upload['id']}"
    r = http.post(f"/v1/uploads/{upload['id']}/parts", content=b"\1" * 100)  # not a form
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_data", r.text
    p1 = send_part(http, upload["id"], b"\1" * (5 * MIB)).json()
    p2 = send_part(http, upload["id"], b"\2" * MIB).json()
    for part_ids, param in ([[p2["id"], p1["id"]], "part_ids"], [[p1["id"]], "part_ids"],
                            [["part_nope"], "part_ids"]):
        r = http.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": part_ids})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = http.post(f"/v1/uploads/{upload['id']}/complete",
                  json={"part_ids": [p1["id"], p2["id"]], "md5": "0" * 32})
    assert r.status_code == 400 and r.json()["error"]["code"] == "checksum_mismatch"
    assert "Contents" not in worker.s3.list_objects_v2(Bucket=worker.bucket, Prefix=key)

    other = create().json()
    send_part(http, other["id"], b"\3" * MIB)
    assert part_objects(worker, f"audio/uploads/{other['id']}") == [MIB]
    cancelled = http.post(f"/v1/uploads/{other['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert multipart_uploads(worker, f"audio/uploads/{other['id']}") == []
    assert part_objects(worker, f"audio/uploads/{other['id']}") == []
    assert http.get(f"/v1/uploads/{other['id']}").json()["parts"] == []  # nothing it had is kept
    r = send_part(http, other["id"], b"\4" * MIB)
    assert r.status_code == 400 and r.json()["error"]["code"] == "upload_not_pending"

    stranger = worker.keys.pop()
    r = httpclient.get(f"{worker.url}/v1/uploads/{other['id']}", headers={"Authorization": f"Bearer {stranger}"})
    assert r.status_code == 404
    r = http.post("/v1/jobs", data={"file_id": "file-nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"


def test_parts_under_5_mib_but_the_last_are_refused(http, worker):
    upload = http.post("/v1/uploads", json={"filename": "a.ogg", "bytes": 2 * MIB, "mime_type": "audio/ogg",
                                            "purpose": "transcription"}).json()
    parts = [send_part(http, upload["id"], bytes([i]) * MIB).json()["id"] for i in (1, 2)]
    r = http.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": parts})
    assert r.status_code == 400 and r.json()["error"]["code"] == "part_too_small", r.text
    assert http.get(f"/v1/uploads/{upload['id']}").json()["status"] == "pending"  # may still be cancelled


def test_parts_past_the_declared_size_are_refused(http, worker):
    """An upload never holds more in S3 than twice the `bytes` it was created for (each byte
    may be re-sent once; capped by WORKER_MAX_UPLOAD_TOTAL_MB), and a part larger than the
    upload could never be used: either is 413 and stored nowhere."""
    upload = http.post("/v1/uploads", json={"filename": "a.mp3", "bytes": 6 * MIB, "mime_type": "audio/mpeg",
                                            "purpose": "transcription"}).json()
    r = send_part(http, upload["id"], b"\9" * (6 * MIB + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large", r.text
    held = [send_part(http, upload["id"], bytes([i]) * (5 * MIB)).json()["id"] for i in (1, 2)]
    r = send_part(http, upload["id"], b"\3" * (2 * MIB + 1))  # 12 MiB + 1 byte held
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large", r.text
    assert [p["id"] for p in http.get(f"/v1/uploads/{upload['id']}").json()["parts"]] == held
    key = f"audio/uploads/{upload['id']}"
    assert part_objects(worker, key) == [5 * MIB, 5 * MIB]
    last = send_part(http, upload["id"], b"\2" * MIB)  # what fits still does
    assert last.status_code == 200
    r = http.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [held[0], last.json()["id"]],
                                                                "md5": "not-hex"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "md5"
    done = http.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [held[0], last.json()["id"]]})
    assert done.status_code == 200 and done.json()["status"] == "completed"  # no md5: nothing read back
    # the first job on the file computes its SHA-256 (here: refused, the bytes are no audio)
    r = http.post("/v1/jobs", data={"file_id": done.json()["file"]["id"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_audio"
    import psycopg

    with psycopg.connect(worker.database_url) as conn:
        (sha,) = conn.execute("SELECT sha256 FROM uploads WHERE id = %s", (upload["id"],)).fetchone()
    assert sha == hashlib.sha256(b"\1" * (5 * MIB) + b"\2" * MIB).hexdigest()


def test_a_job_on_an_uploaded_file_keeps_the_duration_and_daily_audio_limits(http, worker):
    """A completed upload is audio like any other: longer than WORKER_MAX_AUDIO_SECONDS is
    413 `audio_too_long`, more than the key's audio seconds today is 429, and neither
    creates a job or charges the key."""
    from worker_helpers import LIMITS, silence_flac

    def uploaded(seconds: float) -> str:
        audio = silence_flac(seconds)
        upload = http.post("/v1/uploads", json={"filename": "s.flac", "bytes": len(audio),
                                                "mime_type": "audio/flac", "purpose": "transcription"}).json()
        part = send_part(http, upload["id"], audio).json()
        done = http.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [part["id"]]}).json()
        return done["file"]["id"]

    def jobs() -> int:
        import psycopg

        with psycopg.connect(worker.database_url) as conn:
            return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]

    before = jobs()
    r = http.post("/v1/jobs", data={"file_id": uploaded(LIMITS["max_audio_seconds"] + 30)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long", r.text
    r = http.post("/v1/jobs", data={"file_id": uploaded(LIMITS["daily_audio_seconds"] + 10)})
    assert r.status_code == 429 and r.json()["error"]["code"] == "daily_audio_limit_exceeded", r.text
    assert int(r.headers["retry-after"]) >= 1
    assert jobs() == before


def test_errors_of_a_job_on_an_uploaded_file_name_file_id(http):
    """A job made with `file_id` has no `file` field: an uploaded file that is no audio (400
    `invalid_audio`) or too long (413 `audio_too_long`) is an error of `param: "file_id"`."""
    from worker_helpers import LIMITS, silence_flac

    def uploaded(data: bytes) -> str:
        upload = http.post("/v1/uploads", json={"filename": "u.flac", "bytes": len(data),
                                                "mime_type": "audio/flac", "purpose": "transcription"}).json()
        part = send_part(http, upload["id"], data).json()
        return http.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [part["id"]]}).json()["file"]["id"]

    for data, status, code in ((b"these are notes, not audio\n" * 50, 400, "invalid_audio"),
                               (silence_flac(LIMITS["max_audio_seconds"] + 30), 413, "audio_too_long")):
        r = http.post("/v1/jobs", data={"file_id": uploaded(data)})
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert (err["code"], err["param"]) == (code, "file_id"), err


def test_a_key_whose_day_is_used_up_is_refused_before_its_file_is_fetched_and_decoded(http, worker):
    """Breaker 21 F3: a key at its daily audio limit made the worker download and decode each
    file it sent a job for (1,500 s of audio decoded for three refusals) before refusing it."""
    from worker_helpers import LIMITS, silence_flac, wait_for_job

    def uploaded(seconds: float) -> str:
        audio = silence_flac(seconds)
        upload = http.post("/v1/uploads", json={"filename": "s.flac", "bytes": len(audio),
                                                "mime_type": "audio/flac", "purpose": "transcription"}).json()
        part = send_part(http, upload["id"], audio).json()
        return http.post(f"/v1/uploads/{upload['id']}/complete", json={"part_ids": [part["id"]]}).json()["file"]["id"]

    def decoded() -> float:
        line = next(ln for ln in worker.metrics().splitlines() if ln.startswith("worker_audio_decoded_seconds_total "))
        return float(line.split()[1])

    whole_day, more = uploaded(LIMITS["daily_audio_seconds"]), uploaded(30)
    job = http.post("/v1/jobs", data={"file_id": whole_day})
    assert job.status_code == 202, job.text  # the day is used up
    wait_for_job(http, job.json()["id"])  # its own decoding done: the figure below moves for nothing else
    before = decoded()
    r = http.post("/v1/jobs", data={"file_id": more})
    assert r.status_code == 429 and r.json()["error"]["code"] == "daily_audio_limit_exceeded", r.text
    assert int(r.headers["retry-after"]) >= 1
    assert decoded() == before, "the refused file was decoded"


def test_openai_sdk_uploads_client(worker, api_key):
    import openai

    client = openai.OpenAI(api_key=api_key, base_url=worker.url + "/v1", max_retries=0, timeout=120)
    audio = sample("hello")[0]
    upload = client.uploads.create(bytes=len(audio), filename="hello.wav", mime_type="audio/wav",
                                   purpose="batch")
    part = client.uploads.parts.create(upload.id, data=audio)
    again = client.uploads.parts.create(upload.id, data=audio)  # a resend: the same part
    assert again.id == part.id
    seen = client.get(f"/uploads/{upload.id}", cast_to=object)  # what README says a resuming client reads
    assert [p["id"] for p in seen["parts"]] == [part.id]
    done = client.uploads.complete(upload.id, part_ids=[part.id], md5=hashlib.md5(audio).hexdigest())
    assert done.status == "completed" and done.file.id.startswith("file-") and done.file.bytes == len(audio)


def test_an_abandoned_upload_is_aborted_after_its_age(model_dir, postgres, s3, redis_server, tmp_path):
    """A worker whose uploads expire after 4 s (keeper ticking every 0.5 s), one open upload
    per key: while an upload is left pending it shows in `worker_uploads_incomplete` and the
    oldest-age gauge and holds the key's lease; after its age it is marked expired, its part
    object deleted and counted, the gauges fall to 0 and its lease has run out on
    its own (the key may start another)."""
    import os
    import secrets
    import subprocess
    import time

    from worker_helpers import AWS_ENV, BIN, metric
    from worker_support import start_worker, stop_worker, wait_until, worker_env

    os.environ.update(AWS_ENV)
    suffix = secrets.token_hex(4)
    bucket = f"expiry-{suffix}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    env = worker_env(model_dir, WORKER_DATABASE_URL=postgres.make_database(f"expiry_{suffix}"),
                     WORKER_S3_ENDPOINT_URL=s3.endpoint_url, WORKER_S3_BUCKET=bucket,
                     WORKER_REDIS_URL=redis_server.url, WORKER_RATE_LIMIT_OPEN_UPLOADS="1",
                     WORKER_UPLOAD_EXPIRY_SECONDS="4", WORKER_JOB_LEASE_SECONDS="1.5")
    assert subprocess.run([str(BIN), "migrate"], env=env, capture_output=True).returncode == 0
    proc, url = start_worker(env, tmp_path / "w.log")

    def create() -> httpx.Response:
        return httpclient.post(url + "/v1/uploads", json={"filename": "x.wav", "bytes": 6 * MIB,
                                                     "mime_type": "audio/wav", "purpose": "t"})

    def gauges() -> tuple[float, float]:
        text = httpclient.get(url + "/metrics").text
        return (metric(text, "worker_uploads_incomplete"),
                metric(text, "worker_uploads_oldest_incomplete_age_seconds"))

    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)  # uploads need no model
        upload = create().json()
        assert httpclient.post(f"{url}/v1/uploads/{upload['id']}/parts",
                          files={"data": ("p", b"\1" * MIB)}).status_code == 200
        r = create()
        assert r.status_code == 429 and r.json()["error"]["code"] == "concurrent_uploads_exceeded"
        assert client.list_objects_v2(Bucket=bucket).get("Contents")  # the part's object
        deadline = time.monotonic() + 120
        seen = set()
        while client.list_objects_v2(Bucket=bucket).get("Contents"):
            assert time.monotonic() < deadline, "the abandoned upload was never aborted"
            count, age = gauges()
            if count == 1 and age > 0:
                seen.add("pending")
            time.sleep(0.1)
        assert seen == {"pending"}, "the incomplete upload never showed in the gauges"
        expired = httpclient.get(f"{url}/v1/uploads/{upload['id']}").json()
        assert expired["status"] == "expired" and expired["parts"] == [], expired  # its part was deleted
        r = httpclient.post(f"{url}/v1/uploads/{upload['id']}/parts", files={"data": ("p", b"\2" * MIB)})
        assert r.status_code == 400 and r.json()["error"]["code"] == "upload_not_pending"
        assert metric(httpclient.get(url + "/metrics").text, "worker_uploads_expired_total") == 1
        while gauges() != (0, 0):
            assert time.monotonic() < deadline, f"gauges still {gauges()} after the abort"
            time.sleep(0.1)
        assert create().status_code == 200  # the expired upload's lease ran out with it
    finally:
        stop_worker(proc)


def test_per_key_upload_limits(model_dir, postgres, s3, redis_server, tmp_path):
    """One unfinished upload per key (a lease, freed by complete and by a completion that
    fails its checksum), three parts per minute, 10 MB of uploads per day: each refusal is a
    429 in OpenAI's shape with Retry-After and leaves nothing in S3."""
    import os
    import secrets
    import subprocess

    from worker_helpers import AWS_ENV, BIN
    from worker_support import start_worker, stop_worker, wait_until, worker_env

    os.environ.update(AWS_ENV)
    suffix = secrets.token_hex(4)
    bucket = f"limits-{suffix}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    key = f"sk-test-{secrets.token_hex(16)}"
    env = worker_env(model_dir, WORKER_DATABASE_URL=postgres.make_database(f"limits_{suffix}"),
                     WORKER_S3_ENDPOINT_URL=s3.endpoint_url, WORKER_S3_BUCKET=bucket,
                     WORKER_REDIS_URL=redis_server.url,
                     WORKER_API_KEY_HASHES=hashlib.sha256(key.encode()).hexdigest(),
                     WORKER_RATE_LIMIT_OPEN_UPLOADS="1", WORKER_RATE_LIMIT_PARTS_PER_MINUTE="3",
                     WORKER_RATE_LIMIT_DAILY_UPLOAD_MB="10")
    assert subprocess.run([str(BIN), "migrate"], env=env, capture_output=True).returncode == 0
    proc, url = start_worker(env, tmp_path / "w.log")

    def refused(r: httpx.Response, code: str) -> None:
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == code and int(r.headers["retry-after"]) >= 1

    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
            def create(size: int) -> httpx.Response:
                return http.post("/v1/uploads", json={"filename": "a.wav", "bytes": size,
                                                      "mime_type": "audio/wav", "purpose": "t"})

            first = create(6 * MIB).json()
            refused(create(MIB), "concurrent_uploads_exceeded")
            assert "Contents" not in client.list_objects_v2(Bucket=bucket)  # S3 holds parts only
            parts = [send_part(http, first["id"], bytes([i]) * size).json()["id"]
                     for i, size in ((1, 5 * MIB), (2, MIB))]
            done = http.post(f"/v1/uploads/{first['id']}/complete", json={"part_ids": parts})
            assert done.json()["status"] == "completed"  # frees the key's one open upload
            bad = create(MIB).json()  # 7 MB today
            part = send_part(http, bad["id"], b"\3" * MIB).json()["id"]  # the minute's third part
            refused(send_part(http, bad["id"], b"\4" * MIB), "rate_limit_exceeded")
            assert len(http.get(f"/v1/uploads/{bad['id']}").json()["parts"]) == 1
            r = http.post(f"/v1/uploads/{bad['id']}/complete", json={"part_ids": [part], "md5": "0" * 32})
            assert r.status_code == 400 and r.json()["error"]["code"] == "checksum_mismatch"
            # the failed completion freed its lease: the next refusal is the day's bytes
            refused(create(5 * MIB), "daily_upload_limit_exceeded")  # 7 + 5 MB > 10 MB today
            assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
            assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [
                f"audio/uploads/{first['id']}"]  # the completed file alone
            assert create(3 * MIB).status_code == 200  # 7 + 3 MB fits
    finally:
        stop_worker(proc)


def test_presigned_upload_straight_to_s3(http, worker):
    """`presign: true`: the client PUTs its parts to S3 at presigned URLs; the worker learns
    them from S3 (GET shows them, to resume) and completes the upload the same way."""
    audio, _ = studio_wav()
    r = http.post("/v1/uploads", json={"filename": "show.wav", "bytes": len(audio), "mime_type": "audio/wav",
                                       "purpose": "transcription", "presign": True, "part_size": 5 * MIB})
    assert r.status_code == 200, r.text
    upload = r.json()
    urls = upload["part_urls"]
    assert [u["part_number"] for u in urls] == [1, 2] and sum(u["bytes"] for u in urls) == len(audio)
    first = httpclient.put(urls[0]["url"], content=audio[: 5 * MIB], timeout=60)
    assert first.status_code == 200, first.text
    parts = http.get(f"/v1/uploads/{upload['id']}").json()["parts"]
    assert [p["bytes"] for p in parts] == [5 * MIB]  # resume: part 2 is missing
    # never hashed by the worker: no SHA-256 is claimed, S3's ETag is given (breaker 19 F6)
    assert parts[0]["sha256"] is None and parts[0]["etag"] == first.headers["etag"], parts
    assert httpclient.put(urls[1]["url"], content=audio[5 * MIB:], timeout=60).status_code == 200
    r = send_part(http, upload["id"], b"\1" * MIB)  # presigned uploads take no parts through the worker
    assert r.status_code == 400 and r.json()["error"]["code"] == "upload_presigned"
    parts = http.get(f"/v1/uploads/{upload['id']}").json()["parts"]
    done = http.post(f"/v1/uploads/{upload['id']}/complete",
                     json={"part_ids": [p["id"] for p in parts], "md5": hashlib.md5(audio).hexdigest()})
    assert done.status_code == 200 and done.json()["status"] == "completed", done.text
    key = f"audio/uploads/{upload['id']}"
    assert worker.s3.get_object(Bucket=worker.bucket, Key=key)["Body"].read() == audio
