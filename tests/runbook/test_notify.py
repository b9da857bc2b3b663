"""The runbook `notify` action through real alert sinks: the sinks it names get the message in
their own format, one that fails is reported in the step's outputs (its secret URL
scrubbed) and does not fail the run."""

from __future__ import annotations

import json
from textwrap import dedent

import pytest
import yaml

from opsctl.cli import app
from tests.health.servers import Receiver

SECRET = "T000-n0tify-s3cret"

RUNBOOK = """\
    name: announce
    version: 1
    description: tells the on-call channel that maintenance starts
    parameters:
      window: {type: string, default: "02:00-03:00"}
    steps:
      - id: tell
        action: notify
        with:
          message: "maintenance {{ params.window }} starts now"
          level: warning
          sinks: "ops,broken"
    """


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def test_notify_reaches_the_named_sinks_and_reports_a_failing_one(runner, ops_root, receiver, monkeypatch):
    cfg = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    cfg["environments"]["local"].setdefault("health", {})["sinks"] = [
        {"type": "webhook", "name": "ops", "url": f"{receiver.url}/am"},
        {"type": "slack", "name": "chat", "url_env": "TEST_NOTIFY_SLACK"},
        {"type": "webhook", "name": "broken", "url_env": "TEST_NOTIFY_BROKEN"}]
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("TEST_NOTIFY_SLACK", f"{receiver.url}/slack")
    monkeypatch.setenv("TEST_NOTIFY_BROKEN", f"{receiver.url}/fail/{SECRET}")
    path = ops_root / "runbooks" / "announce" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(dedent(RUNBOOK))

    result = runner.invoke(app, ["runbook", "run", "announce", "-p", "window=01:00-01:30", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (step,) = doc["steps"]
    assert step["status"] == "ok"
    assert step["outputs"]["sent_to"] == ["ops"]
    assert list(step["outputs"]["failed"]) == ["broken"] and "HTTP 500" in step["outputs"]["failed"]["broken"]
    (sent,) = receiver.at("/am")
    alert = sent["alerts"][0]
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["check"] == "runbook"
    assert "maintenance 01:00-01:30 starts now" in json.dumps(sent)
    assert receiver.at("/slack") == []  # not named by the step
    assert SECRET not in result.output and SECRET not in result.stderr
