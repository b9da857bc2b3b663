"""The stress user: rapid requests with almost no think time, to find where the service
starts refusing (429 queue_full) or slowing down. Refusals count as failures on purpose:
a stress profile's SLOs say how much refusal is acceptable.
"""

from __future__ import annotations

from locust import FastHttpUser, between, task

from common import request_headers, transcription_form


class StressUser(FastHttpUser):
    default_headers = request_headers()  # no-cache, and the API key when one is set
    wait_time = between(0, 0.1)
    weight = 1
    network_timeout = 120.0
    connection_timeout = 10.0

    @task(8)
    def healthz(self) -> None:
        self.client.get("/healthz", name="/healthz")

    @task(2)
    def readyz(self) -> None:
        self.client.get("/readyz", name="/readyz")

    @task(1)
    def transcribe_short(self) -> None:
        body, headers = transcription_form("short")
        self.client.post("/v1/audio/transcriptions", data=body, headers=headers,
                         name="/v1/audio/transcriptions [short]")
