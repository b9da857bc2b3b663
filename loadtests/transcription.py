"""The transcription user: what a client of the platform does.

It uploads short, medium and long speech through the OpenAI-compatible endpoint and
through asynchronous jobs, polling each job to completion. A job's whole life (submit to
`succeeded`) is reported as its own entry, `JOB <size> submit→done`, so an SLO can gate
the latency a caller of the async API actually sees, not just the 202.
"""

from __future__ import annotations

import time

import gevent
from locust import FastHttpUser, between, task

from common import JOB_TIMEOUT_S, POLL_INTERVAL_S, request_headers, transcription_form


class TranscriptionUser(FastHttpUser):
    default_headers = request_headers()  # no-cache, and the API key when one is set
    wait_time = between(1, 3)
    weight = 3
    network_timeout = 180.0
    connection_timeout = 10.0

    def _sync(self, size: str) -> None:
        body, headers = transcription_form(size)
        with self.client.post("/v1/audio/transcriptions", data=body, headers=headers,
                              name=f"/v1/audio/transcriptions [{size}]", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200] if resp.text else ''}")
            elif not (resp.json() or {}).get("text", "").strip():
                resp.failure("empty transcript")

    def _job(self, size: str) -> None:
        body, headers = transcription_form(size)
        began = time.perf_counter()
        with self.client.post("/v1/jobs", data=body, headers=headers, name=f"/v1/jobs [{size}]",
                              catch_response=True) as resp:
            if resp.status_code not in (200, 202):
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200] if resp.text else ''}")
                return
            job = resp.json()
        status, error = job.get("status"), None
        while status not in ("succeeded", "failed"):
            if time.perf_counter() - began > JOB_TIMEOUT_S:
                error = f"job {job.get('id')} not done after {JOB_TIMEOUT_S:.0f} s (last status {status})"
                break
            gevent.sleep(POLL_INTERVAL_S)
            with self.client.get(f"/v1/jobs/{job['id']}", name="/v1/jobs/{id}", catch_response=True) as poll:
                if poll.status_code != 200:
                    poll.failure(f"HTTP {poll.status_code}")
                    error = f"polling job {job['id']} answered HTTP {poll.status_code}"
                    break
                job = poll.json()
                status = job.get("status")
        if status == "failed" and error is None:
            error = f"job {job.get('id')} failed: {job.get('error')}"
        self.environment.events.request.fire(
            request_type="JOB", name=f"{size} submit→done", response_time=(time.perf_counter() - began) * 1000,
            response_length=0, exception=RuntimeError(error) if error else None, context={})

    @task(6)
    def sync_short(self) -> None:
        self._sync("short")

    @task(2)
    def sync_medium(self) -> None:
        self._sync("medium")

    @task(1)
    def sync_long(self) -> None:
        self._sync("long")

    @task(3)
    def job_short(self) -> None:
        self._job("short")

    @task(1)
    def job_medium(self) -> None:
        self._job("medium")
