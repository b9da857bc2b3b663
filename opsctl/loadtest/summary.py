"""A run's summary: what `list`, `compare`, the JUnit file and `--json` all read.

Built once at the end of a run. Request and failure counts are Locust's own (the master's
aggregate in distributed mode), as its HTML and CSV reports show them. Latencies and
throughput are opsctl's exact figures (opsctl.loadtest.latencies): successful requests
only, to the millisecond, so they can differ from Locust's rounded, all-requests table.
The latency and throughput gates judge the transcription class, whose row is `judged`
("Transcriptions"); error_rate is the total's. The SLO gates judge these very numbers, so
a gate's figure is the table's figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opsctl.loadtest.latencies import JUDGED, Latencies, Recorder
from opsctl.loadtest.slo import GateResult


@dataclass
class EndpointStats:
    """One endpoint (or the total, named 'Aggregated'): requests and failures (all), error_rate
    (% of all), rps and latencies (ms) of the successful requests only, `ok` their count."""
    method: str
    name: str
    requests: int
    failures: int
    error_rate: float  # percent of all requests
    rps: float         # successful requests per second of the run
    avg_ms: float | None  # latencies: successful requests only, ms; None when none succeeded
    min_ms: float | None
    max_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ok: int | None = None  # successful requests (None in runs saved before it was recorded)

    @property
    def key(self) -> str:
        """'METHOD name', as `compare` matches endpoints."""
        return f"{self.method} {self.name}".strip()


@dataclass
class WorkerCount:
    """What one Locust worker process counted itself and what the master received from it."""
    id: str
    requests_sent: int      # counted by the worker process itself, request by request
    requests_received: int  # what the master received from it in Locust's stats reports


@dataclass
class FailureCount:
    """One kind of failure, as Locust's error report groups them: the request (method and
    name), the error's text (secrets masked) and how often it occurred."""
    method: str
    name: str
    error: str
    occurrences: int


@dataclass
class RunSummary:
    """Everything kept of a run (history, --json, JUnit): its settings, UTC start and end (ISO
    8601), run_seconds, the gates' verdicts with the figures they judged, the totals and each
    endpoint, the workers' counts and the report files written."""
    id: str
    env: str
    host: str
    profile: str
    users: int
    spawn_rate: float
    duration_s: float
    workers: int
    started_at: str
    finished_at: str
    run_seconds: float
    slo: str
    passed: bool
    aborted_by: str | None
    gates: list[GateResult]
    total: EndpointStats
    endpoints: list[EndpointStats]
    worker_counts: list[WorkerCount] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)
    judged: EndpointStats | None = None  # the transcription class, what latency/rps gates judge
    in_flight: int = 0  # requests still unanswered at the end (after the stop timeout): failures
    stop_timeout_s: float | None = None  # how long requests in flight at the end were given
    failures: list[FailureCount] = field(default_factory=list)  # most frequent first

    @property
    def gated(self) -> EndpointStats:
        """The row latency and throughput gates judged (the transcription class; the total
        for runs saved before it was recorded)."""
        return self.judged or self.total

    @property
    def breached(self) -> list[GateResult]:
        """The gates that did not hold."""
        return [g for g in self.gates if not g.passed]

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "RunSummary":
        """A summary from its saved JSON (runs saved before newer fields existed get their defaults)."""
        doc = dict(doc)
        doc["gates"] = [GateResult(**g) for g in doc.get("gates", [])]
        doc["total"] = EndpointStats(**doc["total"])
        doc["endpoints"] = [EndpointStats(**e) for e in doc.get("endpoints", [])]
        doc["worker_counts"] = [WorkerCount(**w) for w in doc.get("worker_counts", [])]
        doc["failures"] = [FailureCount(**f) for f in doc.get("failures", [])]
        if doc.get("judged"):
            doc["judged"] = EndpointStats(**doc["judged"])
        return cls(**doc)


def endpoint(entry: Any, lat: Latencies, seconds: float) -> EndpointStats:
    """One Locust StatsEntry's counts with the exact latencies of its successful requests.

    `seconds` is the run's length: throughput is successful requests per second of it.
    """
    return EndpointStats(
        method=entry.method or "", name=entry.name, requests=entry.num_requests, failures=entry.num_failures,
        error_rate=round(entry.fail_ratio * 100, 3), rps=round(lat.ok / seconds, 3) if seconds > 0 else 0.0,
        avg_ms=lat.mean(), min_ms=lat.lowest(), max_ms=lat.highest(), p50_ms=lat.percentile(0.5),
        p95_ms=lat.percentile(0.95), p99_ms=lat.percentile(0.99), ok=lat.ok)


def endpoints(stats: Any, recorder: Recorder, seconds: float) -> tuple[EndpointStats, list[EndpointStats]]:
    """(the run's total, one row per endpoint sorted by method then name)."""
    rows = [endpoint(e, recorder.entry(method, name), seconds)
            for (name, method), e in sorted(stats.entries.items(), key=lambda kv: (kv[0][1] or "", kv[0][0]))]
    return endpoint(stats.total, recorder.total(), seconds), rows


def failures(stats: Any) -> list[FailureCount]:
    """Locust's error report (`stats.errors`), most frequent first, each error's text as
    Locust's own report shows it (a CatchResponseError unwrapped) with secrets masked
    (opsctl.redact) and its whitespace folded onto one line: why a gate on error_rate was lost."""
    from opsctl.redact import credentials

    rows = []
    for e in stats.errors.values():
        text = e.to_name().removeprefix(f"{e.method} {e.name}: ")
        rows.append(FailureCount(e.method or "", e.name, " ".join(credentials(text).split()), e.occurrences))
    return sorted(rows, key=lambda f: (-f.occurrences, f.method, f.name, f.error))


def judged(recorder: Recorder, seconds: float) -> EndpointStats:
    """The transcription class as one row named "Transcriptions": its requests (successful
    and failed, in-flight ones included), error rate, throughput and exact latencies."""
    lat = recorder.judged()
    n = lat.requests
    return EndpointStats(
        method="", name=JUDGED, requests=n, failures=lat.failures,
        error_rate=round(lat.failures / n * 100, 3) if n else 0.0,
        rps=round(lat.ok / seconds, 3) if seconds > 0 else 0.0, avg_ms=lat.mean(), min_ms=lat.lowest(),
        max_ms=lat.highest(), p50_ms=lat.percentile(0.5), p95_ms=lat.percentile(0.95),
        p99_ms=lat.percentile(0.99), ok=lat.ok)
