"""`opsctl health` warns when incomplete uploads pile up (issue 26): the `uploads` check
reads the worker's `worker_uploads_incomplete` and `worker_uploads_oldest_incomplete_age_seconds`
gauges from `/metrics` (here a real HTTP server serving the worker's text format) and judges
them against `health.uploads` in opsctl.yaml."""

from __future__ import annotations

import pytest

from opsctl.health.settings import HealthSettings
from opsctl.health.checks.uploads import incomplete_uploads
from opsctl.health.model import Status
from opsctl.local import procs
from tests.health.servers import MetricsServer


def gauges(count: float, oldest: float) -> str:
    return ("# HELP worker_uploads_incomplete Uploads started and not yet completed\n"
            "# TYPE worker_uploads_incomplete gauge\n"
            f"worker_uploads_incomplete {count}\n"
            "# HELP worker_uploads_oldest_incomplete_age_seconds Age in seconds of the oldest incomplete upload\n"
            "# TYPE worker_uploads_oldest_incomplete_age_seconds gauge\n"
            f"worker_uploads_oldest_incomplete_age_seconds {oldest}\n"
            "# TYPE worker_queue_depth gauge\nworker_queue_depth 0.0\n")


@pytest.fixture
def worker():
    server = MetricsServer(gauges(0, 0))
    yield server
    server.close()


def limits(**kw):
    return HealthSettings.model_validate({"uploads": kw}).uploads


@pytest.mark.parametrize("count, oldest, status, says", [
    (0, 0, Status.OK, "0 incomplete upload(s)"),
    (12, 900, Status.OK, "12 incomplete upload(s), oldest 900 s"),
    (31, 900, Status.WARNING, "incomplete uploads 31 above 30"),
    (2, 4000, Status.WARNING, "oldest incomplete upload 4000 s above 3600 s"),
    (31, 4000, Status.WARNING, "incomplete uploads 31 above 30; oldest incomplete upload 4000 s above 3600 s"),
])
def test_uploads_warn_when_they_pile_up(worker, count, oldest, status, says):
    worker.text = gauges(count, oldest)
    result = incomplete_uploads([worker.url], 5, limits(incomplete=30, oldest_incomplete_seconds=3600))
    assert (result.status, result.value, result.unit) == (status, count, "uploads")
    assert result.message.startswith(says), result.message
    assert result.details["oldest_incomplete_age_seconds"] == oldest


def test_the_default_thresholds_and_the_api_key(worker):
    worker.text = gauges(101, 60)
    result = incomplete_uploads([worker.url], 5, limits(), api_key="k-123")
    assert result.status == Status.WARNING and "above 100" in result.message
    assert worker.auth == ["Bearer k-123"]


def test_a_worker_without_the_gauges_or_unreachable_is_unknown_and_the_next_one_is_read(worker):
    old = MetricsServer("# TYPE worker_queue_depth gauge\nworker_queue_depth 0.0\n")
    gone = f"http://127.0.0.1:{procs.free_port()}"
    try:
        worker.text = gauges(50, 10)
        result = incomplete_uploads([gone, old.url, worker.url], 5, limits(incomplete=10))
        assert result.status == Status.WARNING and result.details["worker"] == worker.url
        unknown = incomplete_uploads([gone, old.url], 5, limits())
    finally:
        old.close()
    assert unknown.status == Status.UNKNOWN
    assert "ConnectError" in unknown.message and "no worker_uploads_incomplete" in unknown.message


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="oldest_incomplete_seconds"):
        limits(oldest_incomplete_seconds=0)


def test_the_largest_figures_across_workers_are_judged(worker):
    """A worker whose keeper lags reports older, smaller figures: the largest count and age
    read from any worker are judged, not the first worker's."""
    lagging = MetricsServer(gauges(2, 10))
    try:
        worker.text = gauges(40, 7200)
        result = incomplete_uploads([lagging.url, worker.url], 5, limits(incomplete=30, oldest_incomplete_seconds=3600))
    finally:
        lagging.close()
    assert result.status == Status.WARNING and result.value == 40
    assert result.details["oldest_incomplete_age_seconds"] == 7200 and result.details["workers_read"] == 2


def test_a_worker_that_wants_an_api_key_says_which_variable_to_set(tmp_path):
    """Breaker 19 F5: a key-protected worker answered /metrics 401 and the checks said only
    "HTTPStatusError": the uploads check stayed UNKNOWN with nothing telling why."""
    from tests.health.servers import ScriptedServer

    from opsctl.health.checks.metrics import worker_metrics

    locked = ScriptedServer([401])
    try:
        unknown = incomplete_uploads([locked.url], 5, limits(), key_env="OPS_KEY")
        assert unknown.status == Status.UNKNOWN, unknown
        assert "HTTP 401: the worker requires an API key; set $OPS_KEY" in unknown.message, unknown.message
        refused = incomplete_uploads([locked.url], 5, limits(), api_key="wrong", key_env="OPS_KEY")
        assert "HTTP 401: the worker refused the API key in $OPS_KEY" in refused.message, refused.message
        metrics = worker_metrics(locked.url, 5, None, tmp_path, key_env="OPS_KEY")
        assert metrics.status == Status.CRITICAL and "set $OPS_KEY" in metrics.message, metrics.message
    finally:
        locked.close()
