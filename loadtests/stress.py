"""The stress user: rapid requests with almost no think time, to find where the service
starts refusing (429 queue_full) or slowing down. Refusals count as failures on purpose:
a stress profile's SLOs say how much refusal is acceptable. Every answer is judged as the
other users judge it (common.judge_transcription, judge_probe): a 200 that is not the
service's answer is a failure too.
"""

from __future__ import annotations

from locust import FastHttpUser, between, task

from common import judge_probe, judge_transcription, request_headers, transcription_form


class StressUser(FastHttpUser):
    default_headers = request_headers()  # no-cache, and the API key when one is set
    wait_time = between(0, 0.1)
    weight = 1
    network_timeout = 120.0
    connection_timeout = 10.0

    @task(8)
    def healthz(self) -> None:
        with self.client.get("/healthz", name="/healthz", catch_response=True) as resp:
            judge_probe(resp, "/healthz")

    @task(2)
    def readyz(self) -> None:
        with self.client.get("/readyz", name="/readyz", catch_response=True) as resp:
            judge_probe(resp, "/readyz")

    @task(1)
    def transcribe_short(self) -> None:
        body, headers = transcription_form("short")
        with self.client.post("/v1/audio/transcriptions", data=body, headers=headers,
                              name="/v1/audio/transcriptions [short]", catch_response=True) as resp:
            judge_transcription(resp)
