"""Issue 26's must-show: an hour-long compressed recording (over the 25 MB form limit) sent
in 8 MiB parts through the router (the local platform's Caddy) with a part sent twice and a
connection dropped mid-part and resumed from `GET /v1/uploads/{id}`, completed into one
file, and a job on it that returns the whole transcript, judged by word error rate.

The recording is cheap on 2 cores: a noise floor the VAD skips, with three spoken passages at
its start, middle and end, so the batched pipeline transcribes about a minute of speech out of
sixty (a transcript cut short at either end, or missing the middle, fails the word error rate).
"""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest
from worker_helpers import drop_mid_part, send_part, sparse_hour_mp3, wer

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
PART = 8 * MIB
PLACES = [(30, "passage"), (1800, "weather"), (3540, "passage")]  # seconds from the start, sample


def _wait_for_job(http: httpx.Client, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout}s"
        time.sleep(1)


def test_an_hour_in_8_mib_parts_through_the_router_resumed_and_transcribed(local_platform, tmp_path):
    local_platform.up()
    endpoints = local_platform.endpoints()
    path = tmp_path / "episode.mp3"
    text = sparse_hour_mp3(path, minutes=60, places=PLACES)
    size = path.stat().st_size
    assert size > 25 * MIB  # more than the single-form limit could take
    md5 = hashlib.md5(path.read_bytes()).hexdigest()

    def chunk(offset: int) -> bytes:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(PART)

    with httpx.Client(base_url=endpoints.router_url, timeout=300,
                      headers={"Cache-Control": "no-cache"}) as http:
        r = http.post("/v1/uploads", json={"filename": "episode.mp3", "bytes": size,
                                           "mime_type": "audio/mpeg", "purpose": "transcription"})
        assert r.status_code == 200, r.text
        assert r.headers.get("x-worker-color")  # answered through the router
        upload_id = r.json()["id"]
        part_ids: list[str] = []
        offset, dropped, repeated = 0, False, False
        while offset < size:
            data = chunk(offset)
            if len(part_ids) == 4 and not dropped:  # the link dies half-way through part 5
                drop_mid_part(endpoints.router_url, None, upload_id, data)
                dropped = True
                arrived = http.get(f"/v1/uploads/{upload_id}").json()["parts"]
                assert [p["id"] for p in arrived] == part_ids  # nothing of the broken part
                part_ids = [p["id"] for p in arrived]
                offset = sum(p["bytes"] for p in arrived)  # resume after the last part that arrived
                continue
            r = send_part(http, upload_id, data)
            assert r.status_code == 200, r.text
            part = r.json()
            if len(part_ids) == 2 and not repeated:  # a retry whose first answer was lost
                again = send_part(http, upload_id, data)
                assert again.status_code == 200 and again.json()["id"] == part["id"]
                repeated = True
            part_ids.append(part["id"])
            offset += len(data)
        assert dropped and repeated and len(part_ids) == -(-size // PART)
        assert len(http.get(f"/v1/uploads/{upload_id}").json()["parts"]) == len(part_ids)  # stored once

        done = http.post(f"/v1/uploads/{upload_id}/complete", json={"part_ids": part_ids, "md5": md5})
        assert done.status_code == 200, done.text
        file = done.json()["file"]
        assert done.json()["status"] == "completed" and file["bytes"] == size

        s3 = endpoints.s3_client()
        key = f"audio/uploads/{upload_id}"
        assert s3.head_object(Bucket=endpoints.audio_bucket, Key=key)["ContentLength"] == size
        open_uploads = s3.list_multipart_uploads(Bucket=endpoints.audio_bucket, Prefix=key)
        assert not open_uploads.get("Uploads")

        r = http.post("/v1/jobs", data={"file_id": file["id"], "language": "en"})
        assert r.status_code == 202, r.text
        job = _wait_for_job(http, r.json()["id"])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert abs(result["duration"] - 3600) < 1
    assert wer(text, result["text"]) < 0.15, result["text"]
