"""Operation notifications (issue 23): `operation_window` sends start and end events through
the environment's sinks (a webhook gets CloudEvents, PagerDuty a change event, never an
alert), and holds the checks the operation disturbs, so a real continuous monitor does not
page for them during the window but still pages for the others."""

from __future__ import annotations

import datetime as dt
import html
import threading

import pytest
import yaml

from opsctl import httpclient
from opsctl.config import load_project
from opsctl.health import monitor, silences
from opsctl.health.notify import DEFAULT_CHECKS, operation_window
from opsctl.local import procs
from tests.health.servers import HungServer, Receiver, ScriptedServer

SECRET = "s3cr3t-routing-key-0123456789"


def _project(tmp_path, *, sinks=(), http=(), monitoring=None, platform="kubernetes"):
    env = {"platform": platform, "health": {
        "http": list(http), "sinks": list(sinks), "alerts": {"failure_threshold": 2, "reminder_minutes": None}}}
    if monitoring:
        env["monitoring"] = monitoring
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": env}}))
    return load_project(tmp_path)


def _sinks(receiver, monkeypatch):
    monkeypatch.setenv("TEST_HOOK_URL", f"{receiver.url}/hook")
    monkeypatch.setenv("TEST_SLACK_URL", f"{receiver.url}/slack")
    monkeypatch.setenv("TEST_PD_KEY", SECRET)
    return [{"type": "webhook", "url_env": "TEST_HOOK_URL"},
            {"type": "slack", "url_env": "TEST_SLACK_URL"},
            {"type": "pagerduty", "routing_key_env": "TEST_PD_KEY", "url": f"{receiver.url}/pd/v2/enqueue"}]


def test_a_deploy_window_announces_itself_and_the_monitor_holds_only_the_colors(tmp_path, monkeypatch):
    green, api, receiver = ScriptedServer([503] * 50), ScriptedServer([503] * 50), Receiver()
    try:
        project = _project(tmp_path, sinks=_sinks(receiver, monkeypatch),
                           http=[{"name": "worker-green", "url": f"{green.url}/readyz"},
                                 {"name": "api", "url": f"{api.url}/readyz"}])
        env = project.env("ci")
        with operation_window(project, "ci", "deploy", "worker:1.2.3", checks=["worker-*", "metrics-*"]) as window:
            assert sorted(s.check for s in silences.active(project, "ci")) == ["metrics-*", "worker-*"]
            during = monitor.watch(project, env, interval=0.01, iterations=4, only=["worker-green", "api"])
            window.outcome = "succeeded"
        assert silences.active(project, "ci") == []
        after = monitor.watch(project, env, interval=0.01, iterations=2, only=["worker-green", "api"])
    finally:
        green.close(), api.close(), receiver.close()

    # during the window: 4 failures of each, a page for api only
    assert [(a["event"], a["check"]) for a in during.alerts] == [("trigger", "api")]
    assert during.last.silenced.keys() == {"worker-green"}
    # once it closed, the color pages again (counting started afresh)
    assert [(a["event"], a["check"]) for a in after.alerts] == [("trigger", "worker-green")]

    hook = receiver.at("/hook")
    events = [b for b in hook if b.get("specversion") == "1.0"]
    alerts = [b for b in hook if b.get("version") == "4"]
    assert [e["type"] for e in events] == ["io.opsctl.operation.started", "io.opsctl.operation.finished"]
    assert events[0]["source"] == "opsctl/ci" and events[0]["subject"] == "deploy worker:1.2.3"
    assert events[0]["data"]["checks_held"] == ["worker-*", "metrics-*"]
    assert events[1]["data"]["outcome"] == "succeeded" and events[1]["data"]["error"] is None
    assert sorted(a["commonLabels"]["check"] for a in alerts) == ["api", "worker-green"]  # the latter after
    # PagerDuty: two change events on /v2/change/enqueue; only the monitor's pages hit /v2/enqueue
    changes = receiver.at("/pd/v2/change/enqueue")
    assert [c["payload"]["summary"].split("]")[0] for c in changes] == ["[STARTED", "[SUCCEEDED"]
    assert all(c["routing_key"] == SECRET and "event_action" not in c for c in changes)
    assert sorted(p["payload"]["component"] for p in receiver.at("/pd/v2/enqueue")) == ["api", "worker-green"]
    slack = receiver.at("/slack")
    assert any(m["text"].startswith("[STARTED] ci: deploy worker:1.2.3") for m in slack)
    assert any(m["text"].startswith("[SUCCEEDED] ci: deploy worker:1.2.3") for m in slack)
    assert all(d["ok"] for d in window.deliveries) and len(window.deliveries) == 6


def test_a_failed_operation_sends_failed_with_the_error_redacted_and_still_raises(tmp_path, monkeypatch):
    receiver = Receiver()
    try:
        project = _project(tmp_path, sinks=_sinks(receiver, monkeypatch), platform="local")
        with pytest.raises(RuntimeError, match="pg_restore"):
            with operation_window(project, "ci", "restore", "backup 20261130T0200Z") as window:
                assert sorted(s.check for s in silences.active(project, "ci")) == ["postgres", "wal archive"]
                raise RuntimeError("pg_restore: could not connect to postgresql://opsctl:hunter2pass@db:5432/app")
    finally:
        receiver.close()
    assert window.outcome == "failed" and "hunter2pass" not in window.error and "pg_restore" in window.error
    assert silences.active(project, "ci") == []
    (end,) = [e for e in receiver.at("/hook") if e["type"].endswith("finished")]
    assert end["data"]["outcome"] == "failed" and "pg_restore" in end["data"]["error"]
    every = str(receiver.posts)
    assert "hunter2pass" not in every


def test_failing_sinks_never_fail_the_operation(tmp_path, monkeypatch):
    hung, receiver = HungServer(), Receiver()
    monkeypatch.setenv("TEST_FAIL_URL", f"{receiver.url}/fail")
    monkeypatch.setenv("TEST_HUNG_URL", f"{hung.url}/hook?token=abcdefsecret")
    monkeypatch.delenv("TEST_MISSING_KEY", raising=False)
    try:
        project = _project(tmp_path, sinks=[
            {"type": "webhook", "name": "answers-500", "url_env": "TEST_FAIL_URL"},
            {"type": "webhook", "name": "hangs", "url_env": "TEST_HUNG_URL", "timeout": 0.3},
            {"type": "pagerduty", "name": "no-key", "routing_key_env": "TEST_MISSING_KEY",
             "url": f"http://127.0.0.1:{procs.free_port()}/v2/enqueue"}])
        ran = []
        with operation_window(project, "ci", "rollback", "green -> blue") as window:
            ran.append(True)
    finally:
        hung.close(), receiver.close()
    assert ran == [True] and window.outcome == "succeeded"
    by_sink = {(d["sink"], d["event"]): d for d in window.deliveries}
    assert not by_sink[("answers-500", "start")]["ok"] and "HTTP 500" in by_sink[("answers-500", "end")]["error"]
    assert not by_sink[("hangs", "start")]["ok"] and "abcdefsecret" not in str(window.deliveries)
    assert "TEST_MISSING_KEY" in by_sink[("no-key", "start")]["error"]
    assert silences.active(project, "ci") == []


def test_default_checks_per_operation_and_explicit_ones(tmp_path):
    project = _project(tmp_path, platform="local")
    seen = {}
    for operation in DEFAULT_CHECKS:
        with operation_window(project, "ci", operation, "x"):
            seen[operation] = sorted(s.check for s in silences.active(project, "ci"))
    assert seen["deploy"] == seen["rollback"] == seen["promote"] == seen["abort"] == ["metrics-*", "worker-*"]
    assert seen["restore"] == ["postgres", "wal archive"]
    assert seen["failover"] == ["metrics-*", "postgres", "wal archive", "worker-*"]
    assert seen["drill"] == [] and "router" not in str(seen)
    with operation_window(project, "ci", "deploy", "x", checks=["worker-green", "metrics-green"], max_seconds=120):
        held = silences.active(project, "ci")
    assert sorted(s.check for s in held) == ["metrics-green", "worker-green"]
    assert all(s.ends - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(seconds=121) for s in held)
    with pytest.raises(ValueError, match="no default checks for operation 'resize'"):
        with operation_window(project, "ci", "resize", "x"):
            pass


def test_the_window_silences_in_alertmanager_where_configured(tmp_path, alertmanager):
    project = _project(tmp_path, monitoring={"alertmanager_url": alertmanager}, platform="local")
    with operation_window(project, "ci", "restore", "2026-11-30T04:00:00Z") as window:
        ids = [s.alertmanager_id for s in window.silences]
        states = [httpclient.get(f"{alertmanager}/api/v2/silence/{i}", timeout=10).json() for i in ids]
    assert len(ids) == 2 and all(s["status"]["state"] == "active" for s in states)
    assert sorted(m["value"] for s in states for m in s["matchers"] if m["name"] == "check") == ["postgres", "wal archive"]
    assert all(httpclient.get(f"{alertmanager}/api/v2/silence/{i}", timeout=10).json()["status"]["state"] == "expired"
               for i in ids)


def test_an_unreachable_alertmanager_still_holds_the_monitor(tmp_path):
    project = _project(tmp_path, monitoring={"alertmanager_url": f"http://127.0.0.1:{procs.free_port()}"}, platform="local")
    with operation_window(project, "ci", "deploy", "worker:2") as window:
        held = sorted(s.check for s in silences.active(project, "ci"))
    assert held == ["metrics-*", "worker-*"]
    assert all(s.alertmanager_id is None for s in window.silences)
    assert silences.active(project, "ci") == []


def test_a_monitor_running_in_another_thread_holds_during_an_operation(tmp_path, monkeypatch):
    """The monitor runs before the window opens (as in production) and picks the silence up
    at its next sweep; it pages again only after the window closed."""
    green, receiver = ScriptedServer([503] * 1000), Receiver()
    monkeypatch.setenv("TEST_HOOK_URL", f"{receiver.url}/hook")
    first, opened, inside, stop = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    held_sweeps: list = []
    out: list = []
    try:
        project = _project(tmp_path, sinks=[{"type": "webhook", "url_env": "TEST_HOOK_URL"}],
                           http=[{"name": "worker-green", "url": f"{green.url}/readyz"}])
        env = project.env("ci")

        def on_sweep(result, alerts, next_at):
            if not first.is_set():         # one failure counted (threshold 2), then wait for the window
                first.set()
                opened.wait(60)
            elif result.silenced:
                held_sweeps.append(result)
                if len(held_sweeps) >= 3:
                    inside.set()

        runner = threading.Thread(target=lambda: out.append(monitor.watch(
            project, env, interval=0.01, only=["worker-green"], on_sweep=on_sweep, stop=stop)))
        runner.start()
        assert first.wait(60)
        with operation_window(project, "ci", "deploy", "worker:3", checks=["worker-*", "metrics-*"]):
            opened.set()
            assert inside.wait(60)
        while not any(e.get("version") == "4" for e in receiver.at("/hook")) and runner.is_alive():
            stop.wait(0.05)                 # it pages once the window closed
        stop.set()
        runner.join(60)
    finally:
        stop.set(), opened.set()
        green.close(), receiver.close()
    (result,) = out
    # 4+ consecutive failures (1 before, 3+ inside the window): nothing paged while it was open
    last_held = max(r.started_at for r in held_sweeps)
    assert result.alerts and all(dt.datetime.fromisoformat(a["at"]) > last_held for a in result.alerts)
    assert [a["event"] for a in result.alerts] == ["trigger"]
    assert [e["type"] for e in receiver.at("/hook") if "specversion" in e] == [
        "io.opsctl.operation.started", "io.opsctl.operation.finished"]


def test_a_sink_with_operations_false_gets_alerts_but_no_operation_events(tmp_path, monkeypatch):
    target, receiver = ScriptedServer([503] * 10), Receiver()
    monkeypatch.setenv("TEST_HOOK_URL", f"{receiver.url}/hook")
    try:
        project = _project(tmp_path, sinks=[{"type": "webhook", "url_env": "TEST_HOOK_URL", "operations": False}],
                           http=[{"name": "api", "url": f"{target.url}/readyz"}])
        with operation_window(project, "ci", "deploy", "worker:4", checks=["worker-*", "metrics-*"]) as window:
            paged = monitor.watch(project, project.env("ci"), interval=0.01, iterations=2, only=["api"])
    finally:
        target.close(), receiver.close()
    assert window.deliveries == [] and [a["event"] for a in paged.alerts] == ["trigger"]
    assert [b.get("version") for b in receiver.at("/hook")] == ["4"]   # the alert only


@pytest.mark.parametrize("operation, outcome, verdict, color", [
    ("deploy", "promoted", "success", "good"),
    ("deploy", "awaiting-promotion", "success", "good"),
    ("deploy", "rolled-back", "failure", "danger"),
    ("deploy", "failed", "failure", "danger"),
    ("rollback", "promoted", "success", "good"),
    ("abort", "aborted", "success", "good"),
    ("failover", "succeeded (resumed)", "success", "good"),
    ("drill", "targets missed: RPO 400 s > 300 s", "failure", "danger"),
])
def test_every_sink_judges_the_outcome_a_caller_sets(tmp_path, monkeypatch, operation, outcome, verdict, color):
    """#21 D4: a promoted deploy posted red to Slack (only the word "succeeded" was green).
    The deploy core sets the record's Outcome enum; every sink carries its verdict."""
    from opsctl.deploy.model import Outcome

    receiver = Receiver()
    try:
        project = _project(tmp_path, sinks=_sinks(receiver, monkeypatch), platform="local")
        with operation_window(project, "ci", operation, "worker:1.2.3") as window:
            window.outcome = Outcome(outcome) if operation in ("deploy", "rollback", "abort") else outcome
    finally:
        receiver.close()
    (slack_end,) = [m for m in receiver.at("/slack") if not m["text"].startswith("[STARTED")]
    assert slack_end["attachments"][0]["color"] == color
    assert html.unescape(slack_end["text"]).startswith(f"[{outcome.upper()}]")  # Slack shows &gt; as >
    (hook_end,) = [e for e in receiver.at("/hook") if e["type"].endswith("finished")]
    assert hook_end["data"]["outcome"] == outcome and hook_end["data"]["verdict"] == verdict
    (pd_end,) = [c for c in receiver.at("/pd/v2/change/enqueue") if not c["payload"]["summary"].startswith("[STARTED")]
    assert pd_end["payload"]["custom_details"]["verdict"] == verdict
