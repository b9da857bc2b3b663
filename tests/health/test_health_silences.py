"""Silences (issue 23): `opsctl health silence --check NAME --for 30m` holds a check's
alerts; `health` shows what is silenced and until when; a running monitor picks up a
silence set from elsewhere before its next sweep, and pages again once it ends."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import time
from contextlib import ExitStack

import yaml
from typer.testing import CliRunner

from opsctl import httpclient
from opsctl.cli import app
from opsctl.config import load_project
from opsctl.health import monitor, silences
from opsctl.local import procs
from tests.health.servers import Receiver, ScriptedServer


def _root(tmp_path, target_url: str, hook: str | None = None):
    health = {"http": [{"name": "target", "url": f"{target_url}/readyz"}],
              "alerts": {"failure_threshold": 2, "reminder_minutes": None}}
    if hook:
        health["sinks"] = [{"type": "webhook", "url_env": "TEST_HOOK_URL"}]
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "health": health}}}))
    return tmp_path


def opsctl(root, *args):
    return CliRunner().invoke(app, ["--root", str(root), *args], env={"COLUMNS": "100"})


def test_silence_is_shown_with_its_end_in_the_table_and_json(tmp_path):
    target = ScriptedServer([503] * 4)
    try:
        root = _root(tmp_path, target.url)
        before = dt.datetime.now(dt.timezone.utc)
        made = opsctl(root, "health", "silence", "--env", "ci", "--check", "target", "--for", "30m",
                      "--reason", "replacing the load balancer", "--json")
        assert made.exit_code == 0, made.output
        until = dt.datetime.fromisoformat(json.loads(made.stdout)["until"])
        assert dt.timedelta(minutes=29) < until - before <= dt.timedelta(minutes=30, seconds=5)
        table = opsctl(root, "health", "--env", "ci", "--check", "target")
        as_json = opsctl(root, "health", "--env", "ci", "--check", "target", "--json")
    finally:
        target.close()
    assert table.exit_code == 2  # the sweep still judges the check
    assert f"silenced: target until {until:%Y-%m-%d %H:%M:%S} UTC" in table.stdout
    (check,) = json.loads(as_json.stdout)["checks"]
    assert check["status"] == "CRITICAL" and check["silenced_until"] == until.isoformat()
    file = silences.path(load_project(root), "ci")
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600


def test_health_lists_every_silence_in_force_with_its_reason_and_what_it_holds(tmp_path):
    target = ScriptedServer([503] * 4)
    try:
        root = _root(tmp_path, target.url)
        project = load_project(root)
        wide = silences.add(project, "ci", "targ*", 900, "deploy worker:1.2.3")
        idle = silences.add(project, "ci", "metrics-*", 600, "deploy worker:1.2.3")
        table = opsctl(root, "health", "--env", "ci", "--check", "target")
        as_json = opsctl(root, "health", "--env", "ci", "--check", "target", "--json")
    finally:
        target.close()
    assert (f"silenced: targ* until {wide.ends:%Y-%m-%d %H:%M:%S} UTC (deploy worker:1.2.3): holds target"
            in table.stdout)
    assert (f"silenced: metrics-* until {idle.ends:%Y-%m-%d %H:%M:%S} UTC (deploy worker:1.2.3): "
            "holds no check of this sweep" in table.stdout)
    doc = json.loads(as_json.stdout)
    assert [(s["check"], s["until"], s["reason"]) for s in doc["silences"]] == [
        ("metrics-*", idle.until, "deploy worker:1.2.3"), ("targ*", wide.until, "deploy worker:1.2.3")]
    assert doc["checks"][0]["silenced_until"] == wide.until


def test_a_running_monitor_holds_a_silenced_check_and_pages_once_it_ends(tmp_path, monkeypatch):
    target, receiver = ScriptedServer([503] * 20), Receiver()
    monkeypatch.setenv("TEST_HOOK_URL", f"{receiver.url}/hook")
    try:
        project = load_project(_root(tmp_path, target.url, hook="yes"))
        env = project.env("ci")

        def silence_after_first_sweep(result, alerts, next_at):
            if not silences.active(project, "ci"):   # set "from another terminal" mid-run
                silences.add(project, "ci", "targ*", 1800, "maintenance")

        held = monitor.watch(project, env, interval=0.02, iterations=5, only=["target"],
                             on_sweep=silence_after_first_sweep)
        assert held.alerts == [] and receiver.at("/hook") == []      # 5 failures, no page

        assert opsctl(project.root, "health", "unsilence", "--env", "ci", "--check", "targ*").exit_code == 0
        paged = monitor.watch(project, env, interval=0.02, iterations=2, only=["target"])
    finally:
        target.close()
        receiver.close()
    assert [a["event"] for a in paged.alerts] == ["trigger"]
    assert len(receiver.at("/hook")) == 1


def test_a_maintenance_window_ends_with_its_operation(tmp_path):
    project = load_project(_root(tmp_path, "http://127.0.0.1:9"))
    with silences.maintenance(project, "ci", ["worker-green", "metrics-green"], 600, "deploy 1.2.3") as opened:
        assert [s.check for s in silences.active(project, "ci")] == ["worker-green", "metrics-green"]
        assert all(s.reason == "deploy 1.2.3" for s in opened)
    assert silences.active(project, "ci") == []


def test_a_maintenance_window_ends_when_its_operation_is_killed(tmp_path):
    """Breaker 18 F7: a restore killed with kill -9 never ran its `finally`, and its window held
    `postgres` and `wal archive` for its whole bound (98 min, past the RPO): an archiver that
    died meanwhile did not page. An operation's window now ends with its process; a silence
    set by hand stays for its time."""
    import signal
    import subprocess
    import sys

    root = _root(tmp_path, "http://127.0.0.1:9")
    project = load_project(root)
    silences.add(project, "ci", "target", 600, "by hand")
    code = ("import sys, time; from opsctl.config import load_project; from opsctl.health import silences\n"
            "with silences.maintenance(load_project(sys.argv[1]), 'ci', ['postgres'], 6000, 'restore'):\n"
            "    print('open', flush=True); time.sleep(600)")
    operation = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert operation.stdout.readline().strip() == "open"
        assert sorted(s.check for s in silences.active(project, "ci")) == ["postgres", "target"]
    finally:
        operation.send_signal(signal.SIGKILL)
        operation.wait(10)
    assert [s.check for s in silences.active(project, "ci")] == ["target"]
    silences.add(project, "ci", "other", 60)  # the next write drops the dead window from the file
    assert "postgres" not in silences.path(project, "ci").read_text()


def test_an_expired_silence_holds_nothing(tmp_path):
    project = load_project(_root(tmp_path, "http://127.0.0.1:9"))
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    silences.add(project, "ci", "target", 60, now=past)
    assert silences.active(project, "ci") == []


def test_bad_silences_are_one_line_exit_2(tmp_path):
    root = _root(tmp_path, "http://127.0.0.1:9")
    for args, says in ((["--check", "target", "--for", "soon"], "--for: 'soon' is not a duration"),
                       (["--check", "target", "--for", "0s"], "more than 0 seconds"),
                       (["--check", " ", "--for", "5m"], "--check: give a check name")):
        out = opsctl(root, "health", "silence", "--env", "ci", *args)
        assert out.exit_code == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.output
    out = opsctl(root, "health", "unsilence", "--env", "ci", "--check", "nothing")
    assert out.exit_code == 2 and "no silence of 'nothing'" in out.stderr


def test_a_silence_is_created_in_alertmanager_where_one_is_configured(tmp_path, alertmanager):
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "monitoring": {"alertmanager_url": alertmanager}}}}))
    made = opsctl(tmp_path, "health", "silence", "--env", "ci", "--check", "worker-*", "--for", "30m",
                  "--reason", "deploy 1.2.3", "--json")
    assert made.exit_code == 0, made.output
    doc = json.loads(made.stdout)
    # an alert of the health exporter's rules (labels env and check) is now silenced by it
    now = dt.datetime.now(dt.timezone.utc)
    alert = {"labels": {"alertname": "HealthCheckCritical", "env": "ci", "check": "worker-green"},
             "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(minutes=10)).isoformat()}
    other = {"labels": {"alertname": "HealthCheckCritical", "env": "ci", "check": "postgres"},
             "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(minutes=10)).isoformat()}
    httpclient.post(f"{alertmanager}/api/v2/alerts", json=[alert, other], timeout=10).raise_for_status()
    by_check = {}
    for _ in range(50):
        by_check = {a["labels"]["check"]: a["status"] for a in httpclient.get(
            f"{alertmanager}/api/v2/alerts", timeout=10).json()}
        if by_check.get("worker-green", {}).get("state") == "suppressed":
            break
        time.sleep(0.1)
    assert by_check["worker-green"]["silencedBy"] == [doc["alertmanager_id"]]
    assert by_check["postgres"]["silencedBy"] == []
    silence = httpclient.get(f"{alertmanager}/api/v2/silence/{doc['alertmanager_id']}", timeout=10).json()
    assert silence["status"]["state"] == "active" and silence["comment"] == "deploy 1.2.3"
    assert dt.datetime.fromisoformat(silence["endsAt"].replace("Z", "+00:00")) == dt.datetime.fromisoformat(doc["until"])

    ended = opsctl(tmp_path, "health", "unsilence", "--env", "ci", "--check", "worker-*")
    assert ended.exit_code == 0, ended.output
    silence = httpclient.get(f"{alertmanager}/api/v2/silence/{doc['alertmanager_id']}", timeout=10).json()
    assert silence["status"]["state"] == "expired"


def test_an_unreachable_alertmanager_silences_nothing(tmp_path):
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "monitoring": {"alertmanager_url": f"http://127.0.0.1:{procs.free_port()}"}}}}))
    out = opsctl(tmp_path, "health", "silence", "--env", "ci", "--check", "router", "--for", "5m")
    assert out.exit_code == 1 and "did not take the silence" in out.stderr and "nothing was silenced" in out.stderr
    assert silences.active(load_project(tmp_path), "ci") == []


def test_an_alertmanager_answering_something_else_than_a_silence_silences_nothing(tmp_path):
    """A 200 whose JSON is not an object (a list, from a proxy or another API) raised TypeError
    out of the silence: "unexpected", where any other wrong answer is one line."""
    receiver = Receiver(answer=b"[]")
    try:
        (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
            "platform": "kubernetes", "monitoring": {"alertmanager_url": receiver.url}}}}))
        out = opsctl(tmp_path, "health", "silence", "--env", "ci", "--check", "router", "--for", "5m")
    finally:
        receiver.close()
    assert out.exit_code == 1 and "did not take the silence" in out.stderr and "unexpected" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert silences.active(load_project(tmp_path), "ci") == []


def test_a_failure_observed_inside_a_window_stays_held_when_the_window_closes_before_it_is_judged(
        tmp_path, monkeypatch):
    """The race of a deploy on a loaded machine, made deterministic: a sweep probes the replaced
    color while the deploy's window holds it, the deploy ends (its window closes) before the
    sweep is judged. The failure happened inside the window, so it is held (a maintenance
    window covers the events that occur in it, as PagerDuty's and Datadog's do); a failure
    observed by a sweep begun after the window closed pages."""
    from opsctl.health import notify, sweep as sweep_mod

    target = ScriptedServer([503])  # the replaced color, stopped on purpose: it never answers ready again
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "health": {"http": [{"name": "worker-blue", "url": f"{target.url}/readyz"}],
                                             "alerts": {"failure_threshold": 1, "reminder_minutes": None}}}}}))
    project = load_project(tmp_path)
    env = project.env("ci")
    real_run, deploy = sweep_mod.run, ExitStack()

    def observe_then_end_the_deploy(env_name, checks):
        observed = real_run(env_name, checks)  # probed while the window is open ...
        deploy.close()  # ... and the deploy's window closes before the sweep is judged
        return observed

    try:
        window = deploy.enter_context(notify.operation_window(project, "ci", "deploy", "worker:2",
                                                              checks=["worker-*"]))
        assert [s.check for s in window.silences] == ["worker-*"]
        monkeypatch.setattr(sweep_mod, "run", observe_then_end_the_deploy)
        held = monitor.watch(project, env, interval=0.01, iterations=1, only=["worker-*"])
        assert silences.active(project, "ci") == []  # the window did close mid-sweep
        monkeypatch.setattr(sweep_mod, "run", real_run)
        after = monitor.watch(project, env, interval=0.01, iterations=1, only=["worker-*"])
    finally:
        deploy.close()
        target.close()
    (sweep,) = [held.last]
    assert [r.status.name for r in sweep.results] == ["CRITICAL"] and "worker-blue" in sweep.silenced
    assert held.alerts == []
    # the window no longer holds a failure observed after it ended
    assert after.last.silenced == {} and [a["event"] for a in after.alerts] == ["trigger"]
