"""Continuous and scheduled modes against real local HTTP servers: the alert receiver gets
exactly what Gatus's rules promise (one alert after the threshold, one resolve, nothing for
a flap), in each sink's own format, and secrets in sink URLs never reach the output."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from opsctl import httpclient
from opsctl.cli import app
from opsctl.config import load_project
from opsctl.health import monitor
from tests.health.servers import Receiver, ScriptedServer

pytestmark = pytest.mark.integration

# 1-2 fail then pass, twice (a flap below the count), 4 failures (fires on the 3rd), recovery.
SCRIPT = [500, 500, 200, 500, 500, 200, 500, 500, 500, 500, 200, 200, 200]
SECRET = "T000-s3cr3t-webhook-token"


@pytest.fixture
def servers():
    target, receiver = ScriptedServer(SCRIPT), Receiver()
    yield target, receiver
    target.close()
    receiver.close()


def ops_root(tmp_path: Path, target_url: str, receiver_url: str, **alerts) -> Path:
    cfg = {"version": 1, "environments": {"ci": {"platform": "kubernetes", "health": {
        "http": [{"name": "target", "url": f"{target_url}/readyz",
                  "conditions": ["[STATUS] == 200", "[BODY].status == ready"]}],
        "alerts": alerts,
        "sinks": [
            {"type": "webhook", "name": "alertmanager", "url": f"{receiver_url}/am"},
            {"type": "slack", "url_env": "TEST_SLACK_URL"},
            {"type": "pagerduty", "routing_key_env": "TEST_PD_KEY", "url": f"{receiver_url}/pd"},
            {"type": "webhook", "name": "broken", "url_env": "TEST_BROKEN_URL"},
        ]}}}}
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


@pytest.fixture
def sink_env(monkeypatch, servers):
    _, receiver = servers
    monkeypatch.setenv("TEST_SLACK_URL", f"{receiver.url}/slack")
    monkeypatch.setenv("TEST_PD_KEY", "pd-routing-key-123")
    monkeypatch.setenv("TEST_BROKEN_URL", f"{receiver.url}/fail/{SECRET}")


def test_one_alert_after_threshold_one_resolve_none_for_a_flap(tmp_path, runner, servers, sink_env):
    target, receiver = servers
    root = ops_root(tmp_path, target.url, receiver.url)
    result = runner.invoke(app, ["--root", str(root), "health", "--env", "ci", "--mode", "continuous",
                                 "--interval", "0.05", "--iterations", str(len(SCRIPT)), "--check", "target",
                                 "--json"])
    sweeps = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(sweeps) == len(SCRIPT) == target.served
    assert result.exit_code == 0  # the last sweep was OK
    events = [(i + 1, a["event"]) for i, s in enumerate(sweeps) for a in s["alerts"]]
    assert events == [(9, "trigger"), (12, "resolve")]  # nothing at sweeps 1-6 (the flap)

    am = receiver.at("/am")
    assert [d["status"] for d in am] == ["firing", "resolved"]
    assert am[0]["alerts"][0]["labels"] == {"alertname": "OpsctlHealthCheck", "env": "ci", "check": "target",
                                            "kind": "http", "severity": "critical"}
    assert am[1]["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    pd = receiver.at("/pd")
    assert [d["event_action"] for d in pd] == ["trigger", "resolve"]
    assert pd[0]["dedup_key"] == pd[1]["dedup_key"] == "opsctl/ci/target"
    assert pd[0]["routing_key"] == "pd-routing-key-123" and pd[0]["payload"]["severity"] == "critical"
    slack = receiver.at("/slack")
    assert [d["text"].split("]")[0] for d in slack] == ["[FIRING", "[RESOLVED"]

    # the failing sink was tried for both, logged, and its secret URL never printed
    assert len([p for p, _ in receiver.posts if p.startswith("/fail/")]) == 2
    assert "not sent" in result.stderr and "HTTP 500" in result.stderr
    assert SECRET not in result.output and SECRET not in result.stderr


def test_reminders_repeat_while_down(tmp_path, servers, sink_env):
    target, receiver = servers
    target.statuses = [500]
    root = ops_root(tmp_path, target.url, receiver.url, failure_threshold=2, reminder_minutes=0.001)
    project = load_project(root)
    out = monitor.watch(project, project.env("ci"), interval=0.1, iterations=5, only=["target"])
    events = [a["event"] for a in out.alerts]
    # a sweep that overruns its slot brings the next one closer than the reminder period, so
    # on a loaded machine one of the three later sweeps may send none: at least two do
    assert events[0] == "trigger" and set(events[1:]) == {"reminder"} and len(events) >= 3, events
    assert [d["event_action"] for d in receiver.at("/pd")] == ["trigger"] * len(events)  # same dedup key: one incident
    assert all(d["ok"] for d in out.deliveries if d["sink"] != "broken")


@pytest.fixture
def every_second(monkeypatch):
    """A standard cron fires at most every minute: the loop's next firing time is brought to
    the next whole second (as croniter's 6-field '* * * * * *' once did here, a form --cron
    no longer takes: breaker 37 G12). Yields the crons the loop asked about."""
    import math

    from opsctl.health import schedule

    asked = []

    def next_second(cron, after):
        asked.append(cron)
        return math.floor(after) + 1.0

    monkeypatch.setattr(schedule, "_next_cron", next_second)
    return asked


def test_scheduled_mode_appends_history_and_serves_metrics(tmp_path, servers, sink_env, every_second):
    target, receiver = servers
    target.statuses = [200]
    root = ops_root(tmp_path, target.url, receiver.url)
    project = load_project(root)
    history = tmp_path / "history.jsonl"
    from opsctl.local.procs import free_port

    port = free_port()
    scraped = []

    def scrape(result, alerts, next_at):
        scraped.append(httpclient.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)

    out = monitor.watch(project, project.env("ci"), cron="* * * * *", iterations=2, only=["target"],
                        history=history, metrics_port=port, on_sweep=scrape)
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert out.sweeps == 2 and [d["status"] for d in lines] == ["OK", "OK"] and set(every_second) == {"* * * * *"}
    assert lines[0]["checks"][0]["name"] == "target" and lines[1]["started_at"] > lines[0]["started_at"]
    assert 'opsctl_check_status{check="target",env="ci",kind="http"} 0.0' in scraped[-1]
    assert receiver.posts == []


def test_scheduled_mode_through_the_cli_writes_the_default_history(tmp_path, runner, servers, sink_env,
                                                                    every_second):
    target, receiver = servers
    target.statuses = [503]
    root = ops_root(tmp_path, target.url, receiver.url)
    result = runner.invoke(app, ["--root", str(root), "health", "--env", "ci", "--mode", "scheduled",
                                 "--cron", "* * * * *", "--iterations", "1", "--check", "target"])
    assert result.exit_code == 2, result.output
    doc = json.loads((root / ".opsctl" / "health" / "history.jsonl").read_text())
    assert doc["checks"][0]["status"] == "CRITICAL" and "[STATUS] (503) == 200" in doc["checks"][0]["message"]


def test_a_restarted_monitor_neither_pages_again_nor_forgets_to_resolve(tmp_path, servers, sink_env, caplog):
    target, receiver = servers
    target.statuses = [500]
    root = ops_root(tmp_path, target.url, receiver.url)
    project = load_project(root)
    first = monitor.watch(project, project.env("ci"), interval=0.05, iterations=4, only=["target"])
    assert [a["event"] for a in first.alerts] == ["trigger"]
    state = json.loads((project.state_dir / "health" / "alerts-ci.json").read_text())
    assert state["tracks"]["target"]["firing"] is True and state["tracks"]["target"]["failures"] == 4

    target.statuses, target.served = [500, 200, 200], 0  # the monitor restarts; the check recovers
    again = monitor.watch(project, project.env("ci"), interval=0.05, iterations=3, only=["target"])
    assert [a["event"] for a in again.alerts] == ["resolve"]
    assert [d["event_action"] for d in receiver.at("/pd")] == ["trigger", "resolve"]

    (project.state_dir / "health" / "alerts-ci.json").write_text("{not json")
    target.statuses, target.served = [500], 0
    fresh = monitor.watch(project, project.env("ci"), interval=0.05, iterations=3, only=["target"])
    assert [a["event"] for a in fresh.alerts] == ["trigger"]  # unreadable state: starts over, loudly
    assert "alert state" in caplog.text and "unreadable" in caplog.text


def test_a_second_monitor_of_the_same_environment_is_refused(tmp_path, runner, servers, sink_env):
    """Two monitors of one environment on one machine would page twice and fight over the alert state."""
    target, receiver = servers
    target.statuses = [200]
    root = ops_root(tmp_path, target.url, receiver.url)
    project = load_project(root)
    stop, swept = threading.Event(), threading.Event()
    first = threading.Thread(target=monitor.watch, args=(project, project.env("ci")),
                             kwargs={"interval": 0.05, "only": ["target"], "stop": stop,
                                     "on_sweep": lambda *_: swept.set()})
    first.start()
    try:
        assert swept.wait(30)
        result = runner.invoke(app, ["--root", str(root), "health", "--env", "ci", "--mode", "continuous",
                                     "--iterations", "1", "--check", "target"])
        assert result.exit_code == 2 and "already watching 'ci'" in result.stderr, result.output
        assert result.stderr.count("\n") == 1
    finally:
        stop.set()
        first.join(30)
    again = runner.invoke(app, ["--root", str(root), "health", "--env", "ci", "--mode", "continuous",
                                "--interval", "0.05", "--iterations", "1", "--check", "target"])
    assert again.exit_code == 0, again.output  # the first one stopped: its lock went with it


def test_the_exporter_drops_a_value_no_longer_measured():
    """A stale figure (an archive lag measured once, then UNKNOWN; a color's CRITICAL status
    after the color is gone) must not keep an alert firing."""
    import datetime as dt

    from prometheus_client import generate_latest

    from opsctl.health.exporter import Exporter
    from opsctl.health.model import CheckResult, Status, SweepResult
    from opsctl.local import procs

    exporter = Exporter(procs.free_port())
    try:
        def sweep(value):
            return SweepResult("ci", dt.datetime.now(dt.timezone.utc), 1.0, [
                CheckResult("wal archive", "backup", Status.CRITICAL if value else Status.UNKNOWN, "m", value, "s")])
        exporter.update(sweep(4000.0))
        assert 'opsctl_check_value{check="wal archive",env="ci",kind="backup"} 4000.0' in generate_latest(
            exporter.registry).decode()
        exporter.update(sweep(None))
        text = generate_latest(exporter.registry).decode()
        assert 'opsctl_check_value{check="wal archive"' not in text
        assert 'opsctl_check_status{check="wal archive",env="ci",kind="backup"} 3.0' in text
        # a check no longer in the sweep (worker-green scaled away) leaves no series behind
        exporter.update(SweepResult("ci", dt.datetime.now(dt.timezone.utc), 1.0, [
            CheckResult("worker-green", "http", Status.CRITICAL, "down", 5.0, "ms")]))
        exporter.update(SweepResult("ci", dt.datetime.now(dt.timezone.utc), 1.0, [
            CheckResult("worker-blue", "http", Status.OK, "ready", 5.0, "ms")]))
        text = generate_latest(exporter.registry).decode()
        assert 'check="worker-green"' not in text and 'check="wal archive"' not in text
        assert 'opsctl_check_status{check="worker-blue",env="ci",kind="http"} 0.0' in text
    finally:
        exporter.close()


def test_the_core_run_writes_the_junit_of_every_sweep_and_settles_the_cadence(tmp_path, servers, sink_env):
    """`opsctl health` is one core call (issue 21): monitor.run checks the report path, settles
    the cadence and writes the JUnit after each sweep (the file holds the last sweep)."""
    from opsctl.errors import UsageError

    target, receiver = servers
    target.statuses = [500, 200]
    project = load_project(ops_root(tmp_path, target.url, receiver.url))
    junit = tmp_path / "reports" / "health.xml"
    (tmp_path / "reports").mkdir()
    seen = []
    out = monitor.run(project, project.env("ci"), "continuous", interval=0.05, iterations=2, only=["target"],
                      junit=junit, on_sweep=lambda res, alerts, next_at: seen.append(
                          (res.status.name, "<failure" in junit.read_text())))
    assert out.sweeps == 2 and seen == [("CRITICAL", True), ("OK", False)], seen
    with pytest.raises(UsageError, match="--cron goes with --mode scheduled"):
        monitor.run(project, project.env("ci"), "continuous", cron="* * * * *", only=["target"])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError, match="can't be made"):  # a file where the report's folder would be
        monitor.run(project, project.env("ci"), "once", only=["target"], junit=tmp_path / "a-file" / "h.xml")
    once = monitor.run(project, project.env("ci"), "once", only=["target"], junit=junit)
    assert once.sweeps == 1 and once.last.status.name == "OK" and "<failure" not in junit.read_text()
