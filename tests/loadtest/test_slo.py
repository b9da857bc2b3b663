"""SLO gates: parsing (every malformed term named) and judging on Locust's own stats."""

from __future__ import annotations

import pytest

from opsctl.errors import UsageError
from opsctl.loadtest import slo
from opsctl.loadtest.runner import import_locust


def stats_with(latencies_ms: list[int], failures: int = 0):
    """A real Locust RequestStats fed like Locust's request event listener feeds it."""
    import_locust()
    from locust.stats import RequestStats

    stats = RequestStats()
    for ms in latencies_ms:
        stats.log_request("GET", "/healthz", ms, 10)
    for _ in range(failures):
        stats.log_request("GET", "/healthz", 5, 0)
        stats.log_error("GET", "/healthz", "HTTP 503")
    return stats


def test_parse_typed_gates():
    gates = slo.parse("p95<2000ms, error_rate<5%,rps>=10,max<=3s,p99.9<10000,failures<=0")
    assert [(g.metric, g.op, g.threshold, g.unit) for g in gates] == [
        ("p95", "<", 2000.0, "ms"), ("error_rate", "<", 5.0, "%"), ("rps", ">=", 10.0, ""),
        ("max", "<=", 3000.0, "ms"), ("p99.9", "<", 10000.0, "ms"), ("failures", "<=", 0.0, "")]


@pytest.mark.parametrize("text, named", [
    ("p95<<2000", "'p95<<2000'"), ("p95<2000kb", "'p95<2000kb'"), ("latency<3", "unknown metric 'latency'"),
    ("error_rate<5", "error_rate is a percentage"), ("p95<2000ms,", "stray comma"),
    ("rps>=10%", "'rps>=10%'"), ("p95<2000ms,p0<3", "'p0<3'"), ("", "empty"),
])
def test_malformed_terms_are_named(text, named):
    with pytest.raises(UsageError) as err:
        slo.parse(text)
    assert named in str(err.value)
    assert "\n" not in str(err.value)


def test_gates_judged_on_locust_stats():
    stats = stats_with([100] * 90 + [3000] * 10, failures=5)
    results = {r.gate: r for r in slo.evaluate(slo.parse("p50<200ms,p95<2000ms,error_rate<10%,failures<3"), stats.total)}
    assert results["p50<200ms"].passed and results["p50<200ms"].observed == 100
    assert not results["p95<2000ms"].passed and results["p95<2000ms"].observed == 3000
    assert results["error_rate<10%"].passed and round(results["error_rate<10%"].observed, 2) == round(5 / 105 * 100, 2)
    assert not results["failures<3"].passed and results["failures<3"].observed == 5


def test_no_requests_breaches_latency_gates():
    stats = stats_with([])
    (result,) = slo.evaluate(slo.parse("p95<2000ms"), stats.total)
    assert not result.passed and result.observed is None and "no requests" in result.describe()


def test_lost_waits_for_evidence_and_leaves_lower_bounds_to_the_end():
    gates = slo.parse("rps>=1000,p95<50ms")
    assert slo.lost(gates, stats_with([100] * 5).total) is None           # too few requests to judge
    lost = slo.lost(gates, stats_with([100] * 30).total)
    assert lost is not None and lost.gate == "p95<50ms"                   # not rps: judged at the end only
    assert slo.lost(slo.parse("rps>=1000"), stats_with([10] * 30).total) is None
