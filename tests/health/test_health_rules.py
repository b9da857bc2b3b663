"""The rules a sweep and an alert follow, without servers: Gatus conditions, flap protection
and reminders, the histogram quantile, redaction, JUnit, heartbeats."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from opsctl.health import junit
from opsctl.health.alerting import Alerter
from opsctl.health.checks import heartbeat
from opsctl.health.checks.metrics import increase, quantile
from opsctl.health.conditions import parse
from opsctl.health.model import CheckResult, Status, SweepResult
from opsctl.redact import redact


@pytest.mark.parametrize("text, status, ms, body, passed", [
    ("[STATUS] == 200", 200, 5.0, None, True),
    ("[STATUS] == 200", 503, 5.0, None, False),
    ("[STATUS] == any(200, 204)", 204, 5.0, None, True),
    ("[RESPONSE_TIME] < 300", 200, 450.0, None, False),
    ("[BODY].status == ready", 200, 1.0, {"status": "ready"}, True),
    ("[BODY].checks.postgres == ok", 200, 1.0, {"checks": {"postgres": "failing"}}, False),
    ("[BODY].items[1].n >= 2", 200, 1.0, {"items": [{"n": 0}, {"n": 3}]}, True),
    ("len([BODY].items) > 1", 200, 1.0, {"items": [1]}, False),
    ("[BODY].missing == x", 200, 1.0, {}, False),
    # breaker 53 F3: pat() was compared as the text "pat(*failing*)"
    ("[BODY].status != pat(*failing*)", 200, 1.0, {"status": "failing: database down"}, False),
    ("[BODY].status != pat(*failing*)", 200, 1.0, {"status": "ok"}, True),
    ("[BODY].status == pat(ok*)", 200, 1.0, {"status": "ok, 3 ms"}, True),
    ("[BODY].status == pat(ok*)", 200, 1.0, {"status": "not ok"}, False),
    ("[BODY].version == pat(1.?.*)", 200, 1.0, {"version": "1.4.0"}, True),
    ("[BODY].path == pat(*tmp*)", 200, 1.0, {"path": "/var/tmp/x"}, True),  # '/' removed both sides, as Gatus
    ("[STATUS] == any(pat(2*), 301)", 204, 1.0, None, True),
    ("[BODY].status == pat(*)", 200, 1.0, {"status": ""}, True),
    # breaker 54 F1: `!=` is the negation of `==`, for any(...) too
    ("[STATUS] != any(500, 503)", 503, 1.0, None, False),
    ("[STATUS] != any(500, 503)", 200, 1.0, None, True),
    ("[BODY].status != any(failing, degraded)", 503, 1.0, {"status": "failing"}, False),
    ("[BODY].status != any(pat(*fail*), pat(*degr*))", 503, 1.0, {"status": "failing"}, False),
    # F1b: Go's filepath.Match, not Python's fnmatch
    ("[BODY].status == pat([^f]*)", 200, 1.0, {"status": "failing"}, False),
    ("[BODY].status == pat([^f]*)", 200, 1.0, {"status": "ok"}, True),
    ("[BODY].status == pat([!f]*)", 200, 1.0, {"status": "failing"}, True),  # '!' is a character in Go
    ("[BODY].status == pat([!f]*)", 200, 1.0, {"status": "ok"}, False),
    ("[BODY].status == pat(ready\\*)", 200, 1.0, {"status": "ready*"}, True),
    ("[BODY].status == pat(ready\\*)", 200, 1.0, {"status": "ready now"}, False),
    ("[BODY].v == pat(1.[0-4].*)", 200, 1.0, {"v": "1.3.9"}, True),
    ("[BODY].v == pat(1.[0-4].*)", 200, 1.0, {"v": "1.5.0"}, False),
    # F1c: `==` compares text, as Gatus does
    ("[BODY].version == 1.10", 200, 1.0, {"version": "1.1"}, False),
    ("[BODY].id == 007", 200, 1.0, {"id": "7"}, False),
    ("[BODY].count == 1e3", 200, 1.0, {"count": "1000"}, False),
    ("[BODY].count == 3", 200, 1.0, {"count": 3}, True),
    ("[BODY].ok == true", 200, 1.0, {"ok": True}, True),
    ("[CONNECTED] == true", 200, 1.0, None, True),
    ("[BODY].count >= 2.5", 200, 1.0, {"count": "3"}, True),
    ("[BODY].count > 2", 200, 1.0, {"count": "many"}, False),
    ("[RESPONSE_TIME] == 108", 200, 108.4, None, True),
])
def test_gatus_conditions(text, status, ms, body, passed):
    assert parse(text).evaluate(status, ms, body, True)[0] is passed


def test_failed_condition_shows_what_it_saw():
    assert parse("[STATUS] == 200").evaluate(503, 1.0, None, True)[1] == "[STATUS] (503) == 200"


@pytest.mark.parametrize("bad", ["STATUS == 200", "[STATUS] = 200", "[STATUS].x == 1", "[BODY].a < ready",
                                 "[BODY].a < pat(1*)", "[BODY].a == has(x)", "[BODY].a == len(x)",
                                 "has([BODY].a) == true", "[BODY].a == pat([a-)", "[BODY].a == pat(x\\)",
                                 "[BODY].a == pat([])", "[BODY].a == pat([-a])"])
def test_bad_conditions_are_refused(bad):
    with pytest.raises(ValueError):
        parse(bad)


def sweep_of(*statuses: Status) -> list[SweepResult]:
    now = dt.datetime.now(dt.timezone.utc)
    return [SweepResult("prod", now, 1.0, [CheckResult("api", "http", s, s.name)]) for s in statuses]


def events(alerter: Alerter, statuses: list[Status]) -> list[tuple[int, str]]:
    return [(i + 1, a.event) for i, sw in enumerate(sweep_of(*statuses)) for a in alerter.observe(sw)]


C, O, W, U = Status.CRITICAL, Status.OK, Status.WARNING, Status.UNKNOWN


def test_fires_at_the_third_failure_resolves_at_the_second_success():
    assert events(Alerter(), [C, C, C, C, O, O, O]) == [(3, "trigger"), (6, "resolve")]


def test_a_flap_below_the_count_never_fires():
    assert events(Alerter(), [C, C, O, C, C, O, C, O, C, C]) == []


def test_unknown_neither_starts_nor_resolves_and_warning_counts_only_when_asked():
    assert events(Alerter(), [C, C, U, C, O, U, O]) == [(4, "trigger"), (7, "resolve")]
    assert events(Alerter(), [W, W, W]) == []
    assert events(Alerter(fail_on=Status.WARNING), [W, W, W]) == [(3, "trigger")]


def test_reminders_while_down_and_no_resolve_when_not_wanted():
    now = [0.0]
    alerter = Alerter(reminder_minutes=10, send_resolved=False, clock=lambda: now[0])
    seen = []
    for minute, status in [(0, C), (1, C), (2, C), (8, C), (12, C), (13, C), (23, C), (24, O), (25, O)]:
        now[0] = minute * 60
        seen += [(minute, a.event) for a in alerter.observe(sweep_of(status)[0])]
    assert seen == [(2, "trigger"), (12, "reminder"), (23, "reminder")]


def test_histogram_quantile_and_counter_resets():
    buckets = {"0.5": 50.0, "1.0": 90.0, "2.5": 100.0, "+Inf": 100.0}
    assert quantile(0.95, buckets) == pytest.approx(1.75)
    assert quantile(0.5, buckets) == pytest.approx(0.5)
    assert quantile(0.95, {"1.0": 0.0, "+Inf": 0.0}) is None
    fell = {"version": 2, "start": None, "requests": {"POST /v1/audio/transcriptions 200": 7.0}, "buckets": {}, "t": 2}
    prev = {"version": 2, "start": None, "requests": {"POST /v1/audio/transcriptions 200": 100.0}, "buckets": {},
            "t": 1}
    assert increase(fell, prev)["requests"] == 7.0


def test_redaction_keeps_the_host_and_hides_the_rest():
    assert redact("https://hooks.slack.com/services/T0/B0/secret") == "https://hooks.slack.com/***"
    assert redact("https://user:pw@example.com") == "https://example.com/***"
    assert redact("http://127.0.0.1:8080/readyz?token=x", keep_path=True) == "http://127.0.0.1:8080/readyz?***"
    assert redact("not a url") == "***"


def test_junit_failures_errors_and_warnings():
    now = dt.datetime.now(dt.timezone.utc)
    result = SweepResult("ci", now, 12.0, [CheckResult("a", "http", O, "fine"), CheckResult("b", "redis", C, "down"),
                                           CheckResult("c", "backup", U, "?"), CheckResult("d", "host", W, "hot")])
    suite = ET.fromstring(junit.render(result)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["b"].find("failure").get("message") == "down" and cases["c"].find("error") is not None
    assert cases["d"].find("failure") is None and "WARNING: hot" in cases["d"].find("system-out").text


def test_heartbeat_due_grace_and_missed():
    now = dt.datetime(2026, 3, 10, 4, 0, tzinfo=dt.timezone.utc)
    cron = "0 2 * * *"  # nightly at 02:00, one hour of grace
    tonight = dt.datetime(2026, 3, 10, 2, 20, tzinfo=dt.timezone.utc)
    assert heartbeat.judge("nightly", cron, 60, tonight, now).status == Status.OK
    yesterday = tonight - dt.timedelta(days=1)
    assert heartbeat.judge("nightly", cron, 60, yesterday, now).status == Status.CRITICAL
    # at 02:30 tonight's run is still within its grace: yesterday's beat is enough
    early = dt.datetime(2026, 3, 10, 2, 30, tzinfo=dt.timezone.utc)
    assert heartbeat.judge("nightly", cron, 60, yesterday, early).status == Status.OK
    assert "no beat ever" in heartbeat.judge("nightly", cron, 60, None, now).message


def test_a_check_that_disappears_resolves_its_alert():
    """worker-green fires, then green is scaled down after a deploy: its alert resolves."""
    now = dt.datetime.now(dt.timezone.utc)
    alerter = Alerter()
    both = [CheckResult("worker-green", "http", Status.CRITICAL, "down"), CheckResult("router", "http", Status.OK, "ok")]
    fired = [a.event for _ in range(3) for a in alerter.observe(SweepResult("prod", now, 1.0, both))]
    assert fired == ["trigger"]
    after = alerter.observe(SweepResult("prod", now, 1.0, [CheckResult("router", "http", Status.OK, "ok")]))
    assert [(a.event, a.check, a.kind) for a in after] == [("resolve", "worker-green", "http")]
    assert alerter.observe(SweepResult("prod", now, 1.0, [CheckResult("router", "http", Status.OK, "ok")])) == []
