"""A notify step says where its message went (brk42 R12): "delivered to none of N sinks:
…" when every sink failed, and a `critical` one that reached nobody fails the step rather
than show `ok` with no detail."""

from __future__ import annotations

import json

import pytest
import yaml

from opsctl.cli import app
from tests.health.servers import Receiver
from tests.runbook.runbook_support import write_runbook


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def _setup(ops_root, receiver, level: str, failing: bool, monkeypatch) -> None:
    cfg = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    bad = "fail/" if failing else ""
    cfg["environments"]["local"].setdefault("health", {})["sinks"] = [
        {"type": "webhook", "name": "ops", "url": f"{receiver.url}/{bad}am"},
        {"type": "slack", "name": "chat", "url_env": "TEST_BRK43_SLACK"}]
    monkeypatch.setenv("TEST_BRK43_SLACK", f"{receiver.url}/{bad}slack")
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    write_runbook(ops_root, "tell", 1, f"""\
        name: tell
        version: 1
        steps:
          - id: tell
            action: notify
            with: {{message: "sweep found problems", level: {level}}}
        """)


def _run(runner):
    result = runner.invoke(app, ["runbook", "run", "tell", "--yes", "--json"])
    assert result.stdout.strip(), result.output
    return result, json.loads(result.stdout)["steps"][0]


def test_a_warning_that_reached_no_sink_says_so(runner, ops_root, receiver, monkeypatch):
    _setup(ops_root, receiver, "warning", failing=True, monkeypatch=monkeypatch)
    result, step = _run(runner)
    assert result.exit_code == 0 and step["status"] == "ok", result.output
    assert step["detail"].startswith("delivered to none of 2 sinks: "), step
    assert "ops: " in step["detail"] and "chat: " in step["detail"] and "500" in step["detail"], step


def test_a_critical_message_that_reached_no_sink_fails_the_step(runner, ops_root, receiver, monkeypatch):
    _setup(ops_root, receiver, "critical", failing=True, monkeypatch=monkeypatch)
    result, step = _run(runner)
    assert result.exit_code == 1 and step["status"] == "failed", result.output
    assert "delivered to none of 2 sinks" in step["detail"], step
    history = runner.invoke(app, ["runbook", "history", "--json"])
    assert '"failed"' in history.stdout, history.output


def test_a_delivered_message_names_its_sinks(runner, ops_root, receiver, monkeypatch):
    _setup(ops_root, receiver, "critical", failing=False, monkeypatch=monkeypatch)
    result, step = _run(runner)
    assert result.exit_code == 0 and step["status"] == "ok", result.output
    assert step["detail"] == "delivered to ops, chat", step
