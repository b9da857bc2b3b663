"""One `transcription-worker serve` process for the benchmarks (bench_worker, bench_long_audio,
bench_uploads): started with the settings given, waited for on /readyz, called over HTTP,
read through its own /metrics, stopped with SIGTERM.

Not a benchmark itself (`make bench` runs `bench_*.py` only).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from opsctl import httpclient

BIN = Path(sys.executable).parent / "transcription-worker"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    """The real worker on 127.0.0.1, one transcription at a time unless `concurrency` says
    otherwise; `settings` are more WORKER_* variables (names without the prefix, e.g.
    `batched_min_seconds="-1"`). Raises SystemExit (with the worker's stderr) when it exits
    or is not ready within `ready_timeout` seconds."""

    def __init__(self, model: Path, threads: int, concurrency: int = 1, ready_timeout: float = 180,
                 env: dict[str, str] | None = None, **settings: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        environ.update(env or {})
        environ.update(WORKER_MODEL_PATH=str(model), WORKER_CONCURRENCY=str(concurrency),
                       WORKER_CPU_THREADS=str(threads), WORKER_QUEUE_SIZE="8",
                       WORKER_LOG_LEVEL="warning")
        environ.update({f"WORKER_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc = subprocess.Popen([str(BIN), "serve", "--port", str(self.port)], env=environ,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                if httpclient.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited: {self.proc.stderr.read().decode()}")
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"worker not ready in {ready_timeout:.0f} s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def transcribe(self, audio: bytes, filename: str = "bench.wav", **form: str) -> str:
        """POST /v1/audio/transcriptions (form fields `form`, e.g. language="en"); the text."""
        r = httpclient.post(self.url + "/v1/audio/transcriptions", timeout=1800,
                       files={"file": (filename, audio, "audio/wav")}, data=form)
        r.raise_for_status()
        return r.json()["text"]

    def metrics(self) -> str:
        return httpclient.get(self.url + "/metrics", timeout=10).text

    def model_seconds(self) -> float:
        """Wall seconds the worker spent inside the model so far (its own metric)."""
        for line in self.metrics().splitlines():
            if line.startswith("worker_transcription_duration_seconds_sum "):
                return float(line.split()[1])
        return 0.0

    def pipelines(self) -> dict[str, float]:
        """worker_transcriptions_total by pipeline: which path the worker took, and how often."""
        out = {}
        for line in self.metrics().splitlines():
            if line.startswith("worker_transcriptions_total{"):
                out[line.split('pipeline="')[1].split('"')[0]] = float(line.split()[-1])
        return out

    def stop(self) -> None:
        """SIGTERM, then wait (the worker finishes what it holds); SIGKILL after 120 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spread(values: list[float]) -> float:
    """(max - min) / median of a series: how far apart the rounds were (0.1 = 10 %)."""
    import statistics

    return (max(values) - min(values)) / statistics.median(values)


def median_spread(values: list[float]) -> str:
    """`median (spread x%; min-max)` of a series, as the benchmarks print every figure."""
    import statistics

    return (f"{statistics.median(values):.2f} (spread {spread(values):.0%};"
            f" {min(values):.2f}-{max(values):.2f})")
