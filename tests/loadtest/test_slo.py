"""SLO gates: parsing (every malformed term named) and judging on the run's exact figures."""

from __future__ import annotations

import pytest

from opsctl.errors import UsageError
from opsctl.loadtest import slo
from opsctl.loadtest.latencies import Latencies, Recorder
from opsctl.loadtest.runner import import_locust


SYNC = "/v1/audio/transcriptions [short]"


def run_with(latencies_ms: list[float], failures: int = 0, seconds: float = 10.0) -> slo.Observed:
    """A run of transcriptions fed the way Locust's request event feeds them."""
    rec = Recorder()
    for ms in latencies_ms:
        rec.on_request("POST", SYNC, ms, exception=None)
    for _ in range(failures):
        rec.on_request("POST", SYNC, 5, exception=RuntimeError("HTTP 503"))
    return slo.Observed(len(latencies_ms) + failures, failures, rec.judged(), seconds)


def test_latency_gates_judge_transcriptions_not_the_polls_beside_them():
    """Fast health polls beside slow (or failed) transcriptions: the p95 and rps are the
    transcriptions' (sync uploads and whole jobs, not a job's 202 or its status polls)."""
    from opsctl.loadtest.latencies import StillInFlight, is_transcription

    assert is_transcription("JOB", "short submit→done") and is_transcription("POST", "/v1/audio/translations")
    assert not any(is_transcription(m, n) for m, n in [("GET", "/healthz"), ("GET", "/metrics"),
                                                          ("POST", "/v1/jobs [short]"), ("GET", "/v1/jobs/{id}")])
    rec = Recorder()
    for _ in range(50):
        rec.on_request("GET", "/healthz", 2, exception=None)
    for _ in range(5):
        rec.on_request("POST", SYNC, 4000, exception=None)
        rec.on_request("JOB", "short submit→done", 6000, exception=None)
    rec.on_request("POST", SYNC, 180000, exception=StillInFlight("no answer when the run stopped"))
    total = rec.total()
    run = slo.Observed(total.requests, total.failures, rec.judged(), 10.0, total.in_flight)
    results = {r.gate: r for r in slo.evaluate(slo.parse("p95<2000ms,rps>=5,error_rate<1%"), run)}
    assert results["p95<2000ms"].observed == 6000 and not results["p95<2000ms"].passed
    assert results["p95<2000ms"].basis == "10 successful transcription requests"
    assert results["rps>=5"].observed == 1.0 and not results["rps>=5"].passed
    # the transcriptions' 1 of 11, never diluted by the 50 polls into 1 of 61 (breaker 41 Q5)
    assert results["error_rate<1%"].observed == round(1 / 11 * 100, 3) and not results["error_rate<1%"].passed
    assert results["error_rate<1%"].basis == ("1 of 11 transcription requests failed, 1 of them still in flight "
                                              "at the end (of all 61 requests 1.64%)")
    assert rec.judged().in_flight == 1 and total.failures == 1


def test_only_polls_is_no_transcription_to_judge():
    rec = Recorder()
    for _ in range(30):
        rec.on_request("GET", "/readyz", 2, exception=None)
    run = slo.Observed(30, 0, rec.judged(), 10.0)
    (p95,) = slo.evaluate(slo.parse("p95<2000ms"), run)
    assert not p95.passed and p95.observed is None
    assert p95.basis == "no transcription requests among the 30 requests"


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


def test_gates_judged_on_successful_requests():
    run = run_with([100] * 90 + [3000] * 10, failures=5)
    results = {r.gate: r for r in slo.evaluate(slo.parse("p50<200ms,p95<2000ms,error_rate<10%,failures<3,rps>=10"), run)}
    assert results["p50<200ms"].passed and results["p50<200ms"].observed == 100
    assert not results["p95<2000ms"].passed and results["p95<2000ms"].observed == 3000
    assert results["p95<2000ms"].basis == "100 successful transcription requests"
    assert results["error_rate<10%"].passed and results["error_rate<10%"].observed == round(5 / 105 * 100, 3)
    assert not results["failures<3"].passed and results["failures<3"].observed == 5
    assert results["rps>=10"].passed and results["rps>=10"].observed == 10.0   # 100 successes in 10 s


def test_failures_are_never_timed():
    # 10 fast successes and 90 fast failures: the p95 is a success's time, not a failure's
    run = run_with([1500] * 10, failures=90)
    (p95,) = slo.evaluate(slo.parse("p95<1000ms"), run)
    assert p95.observed == 1500 and not p95.passed


@pytest.mark.parametrize("gate", ["p95<2000ms", "avg<2000ms", "max<5s", "median<2000", "rps>=0", "rps<1000"])
def test_latency_and_throughput_gates_fail_when_every_request_failed(gate):
    (result,) = slo.evaluate(slo.parse(gate), run_with([], failures=57))
    assert not result.passed and result.observed is None
    assert "no successful transcription requests: all 57 failed" in result.describe()


def test_no_requests_breaches_every_rate_and_latency_gate():
    results = slo.evaluate(slo.parse("p95<2000ms,error_rate<5%"), run_with([]))
    assert [r.passed for r in results] == [False, False]
    assert all("no requests" in r.describe() for r in results)


def test_percentiles_exact_to_the_millisecond_where_locust_rounds():
    """Locust counts 1,234 ms as 1,200 ms and 2,049 ms as 2,000: a p95<2000ms gate on
    Locust's table would pass a run whose true p95 is 2,049 ms."""
    import_locust()
    from locust.stats import RequestStats

    times = [1234.4] * 90 + [2049.0] * 10
    stats = RequestStats()
    for ms in times:
        stats.log_request("GET", "/x", ms, 10)
    assert stats.total.get_response_time_percentile(0.95) == 2000   # Locust's rounded bucket
    results = {r.gate: r for r in slo.evaluate(slo.parse("p95<2000ms,p50<=1234ms,p90<1235ms"), run_with(times))}
    assert results["p95<2000ms"].observed == 2049 and not results["p95<2000ms"].passed
    assert results["p50<=1234ms"].observed == 1234 and results["p50<=1234ms"].passed
    assert results["p90<1235ms"].observed == 1234 and results["p90<1235ms"].passed


def test_nearest_rank_percentiles_and_merge():
    a, b = Latencies(), Latencies()
    for ms in range(1, 51):
        a.add(ms, False)
    for ms in range(51, 101):
        b.add(ms, False)
    b.add(9, True)
    a.merge(Latencies.from_doc(b.to_doc()))           # what a worker's report does on the master
    assert (a.ok, a.failures) == (100, 1)
    assert [a.percentile(q) for q in (0.5, 0.95, 0.99, 0.999)] == [50, 95, 99, 100]
    assert a.mean() == 50.5 and a.lowest() == 1 and a.highest() == 100


def test_memory_is_bounded_by_the_range_not_the_count():
    lat = Latencies()
    for i in range(200_000):
        lat.add(100 + i % 50 + 0.3, False)
    assert lat.ok == 200_000 and len(lat.counts) == 50


def test_lost_waits_for_evidence_and_leaves_lower_bounds_to_the_end():
    gates = slo.parse("rps>=1000,p95<50ms")
    assert slo.lost(gates, run_with([100] * 5)) is None           # too few requests to judge
    lost = slo.lost(gates, run_with([100] * 30))
    assert lost is not None and lost.gate == "p95<50ms"           # not rps: judged at the end only
    assert slo.lost(slo.parse("rps>=1000"), run_with([10] * 30)) is None


def test_error_rate_is_never_diluted_by_polls_beside_failed_transcriptions():
    """Breaker 41 Q5: 51 of 51 transcriptions failed with 503 among 584 requests; the error rate
    over every class was 8.9 % and the stress profile's error_rate<20% passed. Polls failing
    beside good transcriptions still count: the higher of the two rates is judged."""
    rec = Recorder()
    for _ in range(533):
        rec.on_request("GET", "/healthz", 2, exception=None)
    for _ in range(51):
        rec.on_request("POST", SYNC, 5, exception=RuntimeError("HTTP 503"))
    total = rec.total()
    (gate,) = slo.evaluate(slo.parse("error_rate<20%"), slo.Observed(total.requests, total.failures, rec.judged(), 10.0))
    assert gate.observed == 100.0 and not gate.passed, gate
    assert gate.basis == "51 of 51 transcription requests failed (of all 584 requests 8.73%)"

    polls = Recorder()
    for _ in range(90):
        polls.on_request("POST", SYNC, 100, exception=None)
    for _ in range(10):
        polls.on_request("GET", "/healthz", 2, exception=RuntimeError("HTTP 500"))
    total = polls.total()
    (gate,) = slo.evaluate(slo.parse("error_rate<5%"), slo.Observed(total.requests, total.failures, polls.judged(), 10.0))
    assert gate.observed == 10.0 and not gate.passed and gate.basis == "100 requests"
