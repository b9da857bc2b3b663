"""The run's own response times, kept exactly to the millisecond: what the SLO gates judge.

Locust's stats round every response time before counting it (to 10 ms above 100 ms, to
100 ms above 1 s: a 1,234 ms answer is counted as 1,200 ms), so its percentile table cannot
judge `p95<1250ms` honestly. opsctl therefore listens to Locust's `request` event itself
and counts each successful request's response time in a bucket per whole millisecond.

Why a per-millisecond count and not every sample or a sketch (DDSketch, t-digest,
HdrHistogram): it is exact at millisecond precision by construction, its memory is bounded
by the range of response times and not by the number of requests (a run whose answers all
lie below the users' 180 s network timeout has at most 180,000 buckets, a few MB at worst,
a few KB in practice), and two of them merge by adding counts, which is how the workers of
a distributed run (`--workers N`) send theirs to the master: every Locust stats report
(`report_to_master` on the worker, `worker_report` on the master) carries the counts since
the previous report, so the master judges the same values a single process would.

Percentiles use the nearest-rank method: pN is the smallest recorded time that at least
N % of the successful requests did not exceed. Failed requests are counted, never timed:
a latency gate judges the requests that succeeded (the p95 of 500s says nothing).

What the latency and throughput gates judge is the transcription class (`is_transcription`):
synchronous uploads (`/v1/audio/...`) and whole jobs (`JOB` entries, submit to done), the
work an SLO is about, never the health and admin polls a profile mixes in (a /healthz in
2 ms says nothing about transcribing) nor a job's 202 or status polls. A request still in
flight when the run stops (after its stop timeout) is counted as a failed request
(`StillInFlight`), so a target that never answers cannot pass on the few requests it did.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

REPORT_KEY = "opsctl_latencies"  # the key of the workers' additions to Locust's stats reports
JUDGED = "Transcriptions"  # the name of the judged class's row in tables, --json and compare
IN_FLIGHT = "StillInFlight"  # the exception class name a request given up on at the stop fails with


class StillInFlight(Exception):
    """A request (or job) still unanswered when the run stopped: recorded as a failure (a
    timeout). Locustfiles that cannot import opsctl raise their own class of this name."""


def is_transcription(method: str, name: str) -> bool:
    """True for the requests the latency and throughput gates judge: a whole job (request
    type JOB, submit to done) or a synchronous upload to `/v1/audio/...` (transcriptions,
    translations). Health and admin polls, a job's submission (202) and its status polls
    are not transcriptions."""
    return (method or "").upper() == "JOB" or (name or "").startswith("/v1/audio/")


@dataclass
class Latencies:
    """Successful requests' response times of one endpoint, per whole millisecond.

    `counts` maps a response time in ms (rounded to the nearest ms) to how many successful
    requests took it; `sum_ms` is the exact sum (for the mean); `failures` counts failed
    requests, which are never timed; `in_flight` how many of those failures were requests
    still unanswered when the run stopped.
    """

    counts: Counter = field(default_factory=Counter)
    sum_ms: float = 0.0
    failures: int = 0
    in_flight: int = 0

    @property
    def requests(self) -> int:
        """All requests counted: successful and failed."""
        return self.ok + self.failures

    @property
    def ok(self) -> int:
        """How many requests succeeded (and were timed)."""
        return sum(self.counts.values())

    def add(self, response_ms: float | None, failed: bool, in_flight: bool = False) -> None:
        """Count one request: a failure is counted, never timed (`in_flight`: it was still
        unanswered when the run stopped); a success's `response_ms` (ms) is rounded to the
        nearest millisecond."""
        if failed:
            self.failures += 1
            self.in_flight += bool(in_flight)
            return
        ms = max(0.0, float(response_ms or 0.0))
        self.counts[int(round(ms))] += 1
        self.sum_ms += ms

    def merge(self, other: "Latencies") -> None:
        """Add `other`'s counts, sum and failures to these (a worker's report into the master's)."""
        self.counts.update(other.counts)
        self.sum_ms += other.sum_ms
        self.failures += other.failures
        self.in_flight += other.in_flight

    def percentile(self, q: float) -> float | None:
        """The nearest-rank q-quantile (0 < q < 1) in ms; None without a successful request."""
        n = self.ok
        if not n:
            return None
        rank = max(1, math.ceil(q * n - 1e-9))
        seen = 0
        for ms in sorted(self.counts):
            seen += self.counts[ms]
            if seen >= rank:
                return float(ms)
        return float(max(self.counts))  # unreachable: the counts add up to n

    def mean(self) -> float | None:
        """The mean response time of the successful requests in ms (0.1 ms), or None."""
        return round(self.sum_ms / self.ok, 1) if self.ok else None

    def lowest(self) -> float | None:
        """The fastest successful request in ms, or None."""
        return float(min(self.counts)) if self.counts else None

    def highest(self) -> float | None:
        """The slowest successful request in ms, or None."""
        return float(max(self.counts)) if self.counts else None

    def to_doc(self) -> dict[str, Any]:
        """A msgpack/JSON-safe form (string keys) for Locust's reports."""
        return {"counts": {str(k): v for k, v in self.counts.items()}, "sum_ms": self.sum_ms,
                "failures": self.failures, "in_flight": self.in_flight}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Latencies":
        """The inverse of `to_doc`."""
        return cls(Counter({int(k): int(v) for k, v in doc.get("counts", {}).items()}),
                   float(doc.get("sum_ms", 0.0)), int(doc.get("failures", 0)), int(doc.get("in_flight", 0)))


class Recorder:
    """Every endpoint's Latencies plus the run's total, fed by Locust's `request` event.

    Keyed like Locust's stats: (method, name). `attach(events)` listens in this process;
    `take()` hands over (and forgets) what was counted since the last call, for a worker's
    report to the master; `absorb(doc)` adds such a report on the master.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], Latencies] = {}

    def attach(self, events: Any) -> "Recorder":
        """Listen to `events.request` (a Locust Events) in this process; returns self."""
        events.request.add_listener(self.on_request)
        return self

    def on_request(self, request_type: str = "", name: str = "", response_time: float | None = None,
                   exception: BaseException | None = None, **_kw: Any) -> None:
        """Locust's `request` event listener: one request of `request_type` to `name`,
        `response_time` in ms, failed when `exception` is set (still in flight at the stop
        when it is a StillInFlight, matched by class name across locustfiles)."""
        self.entries.setdefault((request_type or "", name or ""), Latencies()).add(
            response_time, exception is not None, type(exception).__name__ == IN_FLIGHT)

    def entry(self, method: str, name: str) -> Latencies:
        """The Latencies of one endpoint (empty when it had no request)."""
        return self.entries.get((method or "", name or ""), Latencies())

    def total(self) -> Latencies:
        """Every endpoint's Latencies merged: the run's total."""
        out = Latencies()
        for lat in self.entries.values():
            out.merge(lat)
        return out

    def judged(self) -> Latencies:
        """The transcription class merged (`is_transcription`): what latency and throughput
        gates judge."""
        out = Latencies()
        for (method, name), lat in self.entries.items():
            if is_transcription(method, name):
                out.merge(lat)
        return out

    def take(self) -> list[list[Any]]:
        """What was counted since the last call, as [[method, name, doc], ...] for a worker's
        report to the master; the recorder starts again from zero."""
        taken = [[method, name, lat.to_doc()] for (method, name), lat in self.entries.items()]
        self.entries = {}
        return taken

    def absorb(self, report: list[list[Any]]) -> None:
        """Add a report made by `take()` (on the master, from a worker)."""
        for method, name, doc in report:
            self.entries.setdefault((method, name), Latencies()).merge(Latencies.from_doc(doc))
