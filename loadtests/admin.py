"""The admin user: what dashboards, probes and operators poll while clients transcribe.

Cheap requests (health, readiness, version, metrics) at a steady pace; under load they show
whether the service stays observable, which is what on-call depends on.
"""

from __future__ import annotations

from locust import FastHttpUser, between, task

from common import judge_probe, json_answer, request_headers


class AdminUser(FastHttpUser):
    default_headers = request_headers()  # no-cache, and the API key when one is set
    wait_time = between(0.5, 1.5)
    weight = 1

    @task(3)
    def healthz(self) -> None:
        with self.client.get("/healthz", name="/healthz", catch_response=True) as resp:
            judge_probe(resp)

    @task(3)
    def readyz(self) -> None:
        with self.client.get("/readyz", name="/readyz", catch_response=True) as resp:
            judge_probe(resp)

    @task(1)
    def version(self) -> None:
        with self.client.get("/version", name="/version", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif (answer := json_answer(resp)) is not None and "version" not in answer:
                resp.failure("no version in /version")

    @task(2)
    def metrics(self) -> None:
        with self.client.get("/metrics", name="/metrics", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif b"worker_requests_total" not in (resp.content or b""):
                resp.failure("worker_requests_total missing from /metrics")
