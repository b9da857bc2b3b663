"""The admin user: what dashboards, probes and operators poll while clients transcribe.

Cheap requests (health, readiness, version, metrics) at a steady pace; under load they show
whether the service stays observable, which is what on-call depends on.
"""

from __future__ import annotations

import re

from locust import FastHttpUser, between, task

from common import judge_probe, json_answer, request_headers


# the worker's /metrics declares its request counter in the Prometheus text format; a page
# that merely mentions the name (an HTML error page quoting it) is not an exposition
EXPOSITION = re.compile(rb"^# TYPE worker_requests_total counter$", re.MULTILINE)


class AdminUser(FastHttpUser):
    default_headers = request_headers()  # no-cache, and the API key when one is set
    wait_time = between(0.5, 1.5)
    weight = 1

    @task(3)
    def healthz(self) -> None:
        with self.client.get("/healthz", name="/healthz", catch_response=True) as resp:
            judge_probe(resp, "/healthz")

    @task(3)
    def readyz(self) -> None:
        with self.client.get("/readyz", name="/readyz", catch_response=True) as resp:
            judge_probe(resp, "/readyz")

    @task(1)
    def version(self) -> None:
        with self.client.get("/version", name="/version", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif (answer := json_answer(resp)) is not None and not (
                    isinstance(answer.get("version"), str) and answer["version"].strip()):
                resp.failure(f"no version in /version: {answer.get('version')!r}")

    @task(2)
    def metrics(self) -> None:
        with self.client.get("/metrics", name="/metrics", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif not EXPOSITION.search(resp.content or b""):  # the family declared, not just named
                resp.failure("worker_requests_total missing from /metrics")
