"""Compare two runs endpoint by endpoint and flag regressions against thresholds.

Thresholds are relative for latency and throughput (a p95 25% slower) and absolute for the
error rate (2 percentage points more), which is how people read those numbers. The figures
compared are the ones each run stored (exact latencies of successful requests, throughput of
successful requests), the very ones its gates judged. Endpoints
with too few requests in either run are shown but never flagged: their percentiles are noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from opsctl.loadtest.slo import fmt
from opsctl.loadtest.summary import EndpointStats, RunSummary


@dataclass
class Thresholds:
    """What a regression is: latency_pct and rps_pct in percent of the base run, error_rate_pp
    in percentage points; endpoints with fewer than min_requests in either run are never flagged."""
    latency_pct: float = 20.0     # p50/p95/p99 may grow this many percent
    error_rate_pp: float = 1.0    # error rate may grow this many percentage points
    rps_pct: float = 20.0         # throughput may drop this many percent
    min_requests: int = 5


@dataclass
class Row:
    """One endpoint in both runs (None where it is missing), the changes per metric (percent,
    or percentage points for error_rate; None without a figure) and the regressions found."""
    endpoint: str
    base: EndpointStats | None
    head: EndpointStats | None
    changes: dict[str, float | None] = field(default_factory=dict)  # metric -> percent or pp change
    regressions: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """Base run id, head run id, the thresholds used and one Row per endpoint (base's order,
    then endpoints only the head has)."""
    base: str
    head: str
    thresholds: Thresholds
    rows: list[Row]

    @property
    def regressions(self) -> list[str]:
        """Every regression as 'endpoint: what changed'."""
        return [f"{r.endpoint}: {why}" for r in self.rows for why in r.regressions]


def _pct(before: float | None, after: float | None) -> float | None:
    """Percent change; None when either side has no figure (no successful request)."""
    return None if not before or after is None else round((after - before) / before * 100, 1)


def _row(key: str, a: EndpointStats | None, b: EndpointStats | None, t: Thresholds) -> Row:
    row = Row(key, a, b)
    if a is None or b is None:
        return row
    for metric in ("p50_ms", "p95_ms", "p99_ms"):
        row.changes[metric] = change = _pct(getattr(a, metric), getattr(b, metric))
        if change is not None and change > t.latency_pct:
            row.regressions.append(f"{metric[:-3]} {fmt(getattr(a, metric), 'ms')} -> {fmt(getattr(b, metric), 'ms')} "
                                   f"(+{change:.0f}% > {t.latency_pct:g}%)")
    row.changes["error_rate"] = delta = round(b.error_rate - a.error_rate, 3)
    if delta > t.error_rate_pp:
        row.regressions.append(f"error rate {fmt(a.error_rate, '%')} -> {fmt(b.error_rate, '%')} "
                               f"(+{delta:.2f} pp > {t.error_rate_pp:g} pp)")
    row.changes["rps"] = change = _pct(a.rps, b.rps)
    if change is not None and -change > t.rps_pct:
        row.regressions.append(f"rps {fmt(a.rps, '')} -> {fmt(b.rps, '')} ({change:.0f}% < -{t.rps_pct:g}%)")
    if min(a.requests, b.requests) < t.min_requests:
        row.regressions.clear()  # too few samples to call it
    return row


def compare(base: RunSummary, head: RunSummary, thresholds: Thresholds | None = None) -> Comparison:
    """Compare `head` with `base` endpoint by endpoint on the figures each run stored (the ones
    its gates judged); default Thresholds when none are given."""
    t = thresholds or Thresholds()
    a = {e.key: e for e in [*base.endpoints, *([base.judged] if base.judged else []), base.total]}
    b = {e.key: e for e in [*head.endpoints, *([head.judged] if head.judged else []), head.total]}
    keys = [k for k in a if k in b] + [k for k in a if k not in b] + [k for k in b if k not in a]
    return Comparison(base.id, head.id, t, [_row(k, a.get(k), b.get(k), t) for k in keys])


def compare_saved(project, base_ref: str, head_ref: str, thresholds: Thresholds | None = None) -> Comparison:
    """`compare` on two saved runs named by id, unique id prefix, 'latest' or 'previous'.
    Raises UsageError for an empty reference, one matching no run (or several), or a
    threshold that is negative, infinite or NaN."""
    from opsctl.errors import UsageError
    from opsctl.loadtest import history

    t = thresholds or Thresholds()
    for option, value in (("--max-latency-increase", t.latency_pct), ("--max-error-rate-increase", t.error_rate_pp),
                          ("--max-rps-decrease", t.rps_pct)):
        if not (0 <= value < math.inf):  # NaN fails this too
            raise UsageError(f"{option} must be a number, 0 or more (an allowed change; got {value})")
    return compare(history.find(project, base_ref), history.find(project, head_ref), t)
