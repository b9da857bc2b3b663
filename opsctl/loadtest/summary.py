"""A run's summary: what `list`, `compare`, the JUnit file and `--json` all read.

Built once from Locust's own stats (the master's aggregate in distributed mode), so every
figure opsctl prints is the one Locust's HTML and CSV reports show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opsctl.loadtest.slo import GateResult


@dataclass
class EndpointStats:
    method: str
    name: str
    requests: int
    failures: int
    error_rate: float  # percent
    rps: float
    avg_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def key(self) -> str:
        return f"{self.method} {self.name}".strip()


@dataclass
class WorkerCount:
    id: str
    requests_sent: int      # counted by the worker process itself, request by request
    requests_received: int  # what the master received from it in Locust's stats reports


@dataclass
class RunSummary:
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

    @property
    def breached(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "RunSummary":
        doc = dict(doc)
        doc["gates"] = [GateResult(**g) for g in doc.get("gates", [])]
        doc["total"] = EndpointStats(**doc["total"])
        doc["endpoints"] = [EndpointStats(**e) for e in doc.get("endpoints", [])]
        doc["worker_counts"] = [WorkerCount(**w) for w in doc.get("worker_counts", [])]
        return cls(**doc)


def endpoint(entry: Any) -> EndpointStats:
    """One Locust StatsEntry as plain numbers (percentiles from Locust's own histogram)."""
    pct = entry.get_response_time_percentile if entry.num_requests else (lambda q: 0.0)
    return EndpointStats(
        method=entry.method or "", name=entry.name, requests=entry.num_requests, failures=entry.num_failures,
        error_rate=round(entry.fail_ratio * 100, 3), rps=round(entry.total_rps, 3),
        avg_ms=round(entry.avg_response_time, 1), min_ms=round(entry.min_response_time or 0, 1),
        max_ms=round(entry.max_response_time, 1), p50_ms=float(pct(0.5)), p95_ms=float(pct(0.95)),
        p99_ms=float(pct(0.99)))


def endpoints(stats: Any) -> tuple[EndpointStats, list[EndpointStats]]:
    rows = [endpoint(e) for _, e in sorted(stats.entries.items(), key=lambda kv: (kv[0][1] or "", kv[0][0]))]
    return endpoint(stats.total), rows
