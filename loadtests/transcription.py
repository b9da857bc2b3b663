"""The transcription user: what a client of the platform does.

It uploads short, medium and long speech through the OpenAI-compatible endpoint and
through asynchronous jobs, polling each job to completion. A job's whole life (submit to
`succeeded`) is reported as its own entry, `JOB <size> submit→done`, so an SLO can gate
the latency a caller of the async API actually sees, not just the 202; a job refused,
failed, timed out or unfinished when the run stops is a failed entry.
"""

from __future__ import annotations

import time

import gevent
from gevent import GreenletExit
from locust import FastHttpUser, between, task

from common import (JOB_TIMEOUT_S, POLL_INTERVAL_S, StillInFlight, body_text, json_answer, judge_transcription,
                    let_a_pending_stop_land, missing_samples, request_headers, transcript_problem,
                    transcription_form)


class TranscriptionUser(FastHttpUser):
    default_headers = request_headers()  # no-cache, and the API key when one is set
    preflight = staticmethod(missing_samples)  # checked by opsctl before a run
    wait_time = between(1, 3)
    weight = 3
    network_timeout = 180.0
    connection_timeout = 10.0

    def _sync(self, size: str) -> None:
        body, headers = transcription_form(size)
        with self.client.post("/v1/audio/transcriptions", data=body, headers=headers,
                              name=f"/v1/audio/transcriptions [{size}]", catch_response=True) as resp:
            judge_transcription(resp)

    def _job(self, size: str) -> None:
        """One job, submit to done, reported as one `JOB <size> submit→done` entry: failed when
        the submission is refused, polling fails, the job fails or times out, or the run
        stops before it is done (StillInFlight, counted as a failure like any request
        unanswered at the stop)."""
        let_a_pending_stop_land()  # a stop that killed this user as it woke: no job begun
        began = time.perf_counter()
        try:
            error = self._submit_and_wait(size, began)
        except GreenletExit:  # the run stopped (after its stop timeout) with this job unfinished
            self._report(size, began, StillInFlight(
                f"job not done when the run stopped ({time.perf_counter() - began:.1f} s)"))
            raise
        except Exception as exc:  # e.g. an answer that is not the JSON of a job
            error = exc
        self._report(size, began, error)

    def _report(self, size: str, began: float, error: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="JOB", name=f"{size} submit→done", response_time=(time.perf_counter() - began) * 1000,
            response_length=0, exception=error, context={})

    def _submit_and_wait(self, size: str, began: float) -> RuntimeError | None:
        body, headers = transcription_form(size)
        return submit_and_wait(self, body, headers, f"/v1/jobs [{size}]", began)

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


def submit_and_wait(user, body: bytes, headers: dict[str, str], name: str, began: float) -> RuntimeError | None:
    """POST a job form (`body`, its Content-Type in `headers`) to /v1/jobs as entry `name`,
    then poll it until it succeeds or fails; returns the error to report, None on success
    (a job not done within JOB_TIMEOUT_S seconds of `began` is an error)."""
    client = user.client
    with client.post("/v1/jobs", data=body, headers=headers, name=name, catch_response=True) as resp:
        if resp.status_code not in (200, 202):
            resp.failure(f"HTTP {resp.status_code}: {body_text(resp)}")
            return RuntimeError(f"job submission answered HTTP {resp.status_code}")
        job = json_answer(resp)
        if job is None or not isinstance(job.get("id"), str):
            if job is not None:
                resp.failure("a job without an id")
            return RuntimeError("job submission answered no job")
    status = job.get("status")
    while status not in ("succeeded", "failed"):
        if time.perf_counter() - began > JOB_TIMEOUT_S:
            return RuntimeError(f"job {job.get('id')} not done after {JOB_TIMEOUT_S:.0f} s (last status {status})")
        gevent.sleep(POLL_INTERVAL_S)
        with client.get(f"/v1/jobs/{job['id']}", name="/v1/jobs/{id}", catch_response=True) as poll:
            if poll.status_code != 200:
                poll.failure(f"HTTP {poll.status_code}")
                return RuntimeError(f"polling job {job['id']} answered HTTP {poll.status_code}")
            polled = json_answer(poll)
            if polled is None:
                return RuntimeError(f"polling job {job['id']} answered no job")
            job, status = polled, polled.get("status")
    if status == "failed":
        return RuntimeError(f"job {job.get('id')} failed: {job.get('error')}")
    if problem := transcript_problem(job.get("result")):  # "succeeded" with nothing transcribed is no success
        return RuntimeError(f"job {job.get('id')} succeeded with {problem}")
    return None
