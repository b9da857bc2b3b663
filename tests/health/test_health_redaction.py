"""No password from a driver's error reaches any output of `opsctl health` (issue 18 §3):
libpq repeats a malformed URL, or just its password, word for word."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from opsctl.cli import app
from opsctl.config import load_project
from opsctl.health import monitor
from tests.health.servers import Receiver

PASSWORD = "Sup3r-s3cret-pw"
MALFORMED = {  # each makes libpq quote the password back
    "unclosed IPv6 bracket": f"postgresql://app:{PASSWORD}@[::1/transcribe",
    "space in the password": f"postgresql://app:{PASSWORD} x@db.internal/transcribe",
}


def _root(tmp_path, receiver_url: str | None = None):
    health = {"sinks": [{"type": "webhook", "url_env": "TEST_HOOK_URL"}], "alerts": {"failure_threshold": 1}} \
        if receiver_url else {}
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "database": {"url_env": "TEST_DATABASE_URL"}, "health": health}}}))
    return tmp_path


@pytest.mark.parametrize("url", list(MALFORMED.values()), ids=list(MALFORMED))
def test_json_table_and_junit_never_show_the_password(tmp_path, monkeypatch, url):
    monkeypatch.setenv("TEST_DATABASE_URL", url)
    root = _root(tmp_path)
    junit = tmp_path / "health.xml"
    runner = CliRunner()
    as_json = runner.invoke(app, ["--root", str(root), "health", "--env", "ci", "--check", "postgres",
                                  "--json", "--junit", str(junit)])
    table = runner.invoke(app, ["--root", str(root), "health", "--env", "ci", "--check", "postgres"],
                          env={"COLUMNS": "200"})
    assert as_json.exit_code == table.exit_code == 2
    (check,) = json.loads(as_json.stdout)["checks"]
    assert check["status"] == "CRITICAL" and check["message"].startswith("cannot query: ")
    assert "***" in check["message"]                      # the error is still there, masked
    for text in (as_json.stdout, as_json.stderr, table.stdout, table.stderr, junit.read_text()):
        assert PASSWORD not in text


def test_alert_messages_never_show_the_password(tmp_path, monkeypatch):
    receiver = Receiver()
    try:
        monkeypatch.setenv("TEST_DATABASE_URL", MALFORMED["unclosed IPv6 bracket"])
        monkeypatch.setenv("TEST_HOOK_URL", f"{receiver.url}/hook")
        project = load_project(_root(tmp_path, receiver.url))
        out = monitor.watch(project, project.env("ci"), interval=0.05, iterations=1, only=["postgres"],
                            history=tmp_path / "history.jsonl")
    finally:
        receiver.close()
    assert [a["event"] for a in out.alerts] == ["trigger"]
    (alert,) = receiver.at("/hook")
    assert "cannot query" in alert["alerts"][0]["annotations"]["description"]
    assert PASSWORD not in json.dumps(alert) and PASSWORD not in (tmp_path / "history.jsonl").read_text()
