"""The chunked-upload user: a client sending a long recording through the Uploads API.

Each task creates an upload (`POST /v1/uploads`), sends the file in parts
(`POST /v1/uploads/{id}/parts`, form field `data`), completes it
(`POST /v1/uploads/{id}/complete` with the part ids in order and the file's MD5), then
submits a job on the completed file (`POST /v1/jobs` with `file_id`) and polls it to done.
The whole flow is reported as one `JOB chunked upload create→done` entry (a transcription,
so the latency gates judge it, failed when any step fails), beside each request's own entry.
An upload left unfinished by a failure is cancelled, so a load test leaves no part object
in S3 behind.

The file is a speech recording padded with silence to span LOADTEST_UPLOAD_PARTS parts
(default 2) of LOADTEST_UPLOAD_PART_MB MiB (default 5: S3's minimum for every part but the
last), with random silent frames so no two uploads are the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import time

from gevent import GreenletExit
from locust import FastHttpUser, between, task
from urllib3 import encode_multipart_formdata

from common import (StillInFlight, body_text, json_answer, let_a_pending_stop_land, missing_samples, padded_wav,
                    request_headers)
from transcription import submit_and_wait

PARTS = max(1, int(os.environ.get("LOADTEST_UPLOAD_PARTS", "2")))
PART_BYTES = int(float(os.environ.get("LOADTEST_UPLOAD_PART_MB", "5")) * 1024 * 1024)
FLOW = "chunked upload create→done"


class ChunkedUploadUser(FastHttpUser):
    default_headers = request_headers()  # no-cache, and the API key when one is set
    preflight = staticmethod(missing_samples)  # checked by opsctl before a run
    wait_time = between(2, 5)
    weight = 1
    network_timeout = 180.0
    connection_timeout = 10.0

    @task
    def chunked_upload(self) -> None:
        let_a_pending_stop_land()  # a stop that killed this user as it woke: no flow begun
        began = time.perf_counter()
        try:
            error = self._upload_and_transcribe(began)
        except GreenletExit:  # the run stopped (after its stop timeout) with this flow unfinished
            self._report(began, StillInFlight(
                f"chunked upload not done when the run stopped ({time.perf_counter() - began:.1f} s)"))
            raise
        except Exception as exc:  # e.g. an answer that is not the JSON expected
            error = exc
        self._report(began, error)

    def _report(self, began: float, error: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="JOB", name=FLOW, response_time=(time.perf_counter() - began) * 1000,
            response_length=0, exception=error, context={})

    def _upload_and_transcribe(self, began: float) -> Exception | None:
        data = padded_wav("short", (PARTS - 1) * PART_BYTES + 1)
        upload_id = self._call("/v1/uploads", "/v1/uploads", json={
            "filename": "loadtest.wav", "bytes": len(data), "mime_type": "audio/wav",
            "purpose": "transcription"})["id"]
        try:
            part_ids = []
            for start in range(0, len(data), PART_BYTES):
                body, content_type = encode_multipart_formdata(
                    {"data": ("part", data[start:start + PART_BYTES], "application/octet-stream")})
                part_ids.append(self._call(f"/v1/uploads/{upload_id}/parts", "/v1/uploads/{id}/parts",
                                           data=body, headers={"Content-Type": content_type})["id"])
            done = self._call(f"/v1/uploads/{upload_id}/complete", "/v1/uploads/{id}/complete",
                              json={"part_ids": part_ids, "md5": hashlib.md5(data).hexdigest()})
        except BaseException:
            self._cancel(upload_id)
            raise
        body, content_type = encode_multipart_formdata(
            {"file_id": done["file"]["id"], "model": "whisper-1", "response_format": "json"})
        return submit_and_wait(self, body, {"Content-Type": content_type}, "/v1/jobs [file_id]", began)

    def _call(self, path: str, name: str, **kwargs) -> dict:
        """POST and return the JSON answer; any other status than 200/201, or an answer that is
        not a JSON object, fails the entry and raises."""
        with self.client.post(path, name=name, catch_response=True, **kwargs) as resp:
            if resp.status_code not in (200, 201):
                resp.failure(f"HTTP {resp.status_code}: {body_text(resp)}")
                raise RuntimeError(f"{name} answered HTTP {resp.status_code}")
            answer = json_answer(resp)
        if answer is None:
            raise RuntimeError(f"{name} answered no JSON object")
        return answer

    def _cancel(self, upload_id: str) -> None:
        try:
            with self.client.post(f"/v1/uploads/{upload_id}/cancel", name="/v1/uploads/{id}/cancel",
                                  catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"HTTP {resp.status_code}")
        except Exception:  # the flow already failed; its own error is the one reported
            pass
