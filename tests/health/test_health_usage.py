"""Bad usage and configuration: one line, exit 2, nothing run, nothing written. And the
heartbeat push that a nightly job ends with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from opsctl.cli import app


def root_with(tmp_path: Path, health: dict) -> Path:
    cfg = {"version": 1, "environments": {"ci": {"platform": "kubernetes", "health": health}}}
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def invoke(runner, root: Path, *args: str):
    return runner.invoke(app, ["--root", str(root), "health", "--env", "ci", *args])


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opsctl: error:"), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("args, words", [
    (["--mode", "sometimes"], ["--mode", "once"]),
    (["--mode", "continuous", "--interval", "0"], ["--interval must be", "seconds, not 0"]),
    (["--mode", "continuous", "--interval", "1e-9"], ["--interval must be", "not 1e-09"]),  # spun for ever (H4)
    (["--mode", "scheduled"], ["--cron"]),
    (["--mode", "scheduled", "--cron", "every night"], ["cron expression"]),
    (["--mode", "scheduled", "--cron", "0 0 31 2 *"], ["never fires"]),  # issue 23 (B23b): no such date
    (["--mode", "scheduled", "--cron", "0 2 31 4,6,9,11 *"], ["never fires"]),
    # croniter's seconds (6th field) and years (7th): a sweep every second (breaker 37 G12)
    (["--mode", "scheduled", "--cron", "* * * * * * *"], ["--cron", "5-field cron expression"]),
    (["--mode", "scheduled", "--cron", "*/10 * * * * *"], ["--cron", "5-field cron expression"]),
    (["--mode", "scheduled", "--cron", "@daily"], ["--cron", "5-field cron expression"]),
    (["--mode", "scheduled", "--cron", "0 2 L * *"], ["--cron", "day of month"]),
    # a port no socket has: "unexpected OverflowError" exit 1 after planning (breaker 37 G10)
    (["--mode", "continuous", "--metrics-port", "99999"], ["--metrics-port must be 1-65535", "99999"]),
    (["--mode", "scheduled", "--cron", "0 2 * * *", "--metrics-port", "0"], ["--metrics-port must be 1-65535"]),
    (["--mode", "continuous", "--metrics-port", "-1"], ["--metrics-port must be 1-65535"]),
    (["--interval", "5"], ["--interval", "continuous"]),
    (["--mode", "continuous", "--iterations", "0"], ["--iterations"]),
    (["--check", "nosuch"], ["'nosuch'", "matches no check", "'router'"]),
    (["--junit", "/dev/null/health.xml"], ["--junit", "can't be made"]),  # a file where its folder would be
    (["--junit", "/tmp"], ["--junit", "is a folder"]),
    (["--history", "/tmp"], ["--history", "is a folder"]),  # failed after the first sweep
    (["--mode", "continuous", "--history", "/dev/null/h.jsonl"], ["--history", "can't be made"]),
    (["--beat", "nightly"], ["no push heartbeat 'nightly'"]),
])
def test_bad_usage_is_one_line_and_exit_2(tmp_path, runner, args, words):
    one_line_error(invoke(runner, root_with(tmp_path, {}), *args), *words)
    assert not (tmp_path / ".opsctl").exists()


@pytest.mark.parametrize("health, words", [
    ({"http": [{"name": "x", "url": "http://127.0.0.1:1/", "conditions": ["STATUS == 200"]}]}, ["conditions", "[STATUS]"]),
    ({"sinks": [{"type": "pagerduty"}]}, ["routing_key_env"]),
    ({"heartbeats": [{"name": "n", "cron": "nightly"}]}, ["cron"]),
    ({"heartbeats": [{"name": "n", "cron": "0 0 30 2 *"}]}, ["cron", "never fires"]),  # issue 23 (B23b)
    ({"cron": "0 0 31 2 *"}, ["cron", "never fires"]),
    ({"cron": "* * * * * *"}, ["health.cron", "5-field cron expression"]),  # breaker 37 G12
    ({"heartbeats": [{"name": "n", "cron": "0 2 * * * 2030"}]}, ["cron", "5-field cron expression"]),
    ({"alerts": {"failure_threshold": 0}}, ["failure_threshold"]),
    ({"timout": 3}, ["timout", "unknown key"]),
])
def test_bad_health_settings_name_the_key(tmp_path, runner, health, words):
    one_line_error(invoke(runner, root_with(tmp_path, health)), "opsctl.yaml", *words)


def test_a_sink_whose_secret_is_not_exported_stops_the_monitor_before_it_starts(tmp_path, runner, monkeypatch):
    monkeypatch.delenv("NOT_EXPORTED_SLACK_URL", raising=False)
    root = root_with(tmp_path, {"sinks": [{"type": "slack", "url_env": "NOT_EXPORTED_SLACK_URL"}]})
    one_line_error(invoke(runner, root, "--mode", "continuous", "--iterations", "1"), "$NOT_EXPORTED_SLACK_URL")


def test_beat_then_the_heartbeat_check_is_ok(tmp_path, runner):
    root = root_with(tmp_path, {"heartbeats": [{"name": "nightly", "cron": "0 2 * * *", "grace_minutes": 60}]})
    before = invoke(runner, root, "--check", "heartbeat*", "--json")
    assert before.exit_code == 2 and json.loads(before.stdout)["checks"][0]["status"] == "CRITICAL"
    beat = invoke(runner, root, "--beat", "nightly", "--json")
    assert beat.exit_code == 0 and json.loads(beat.stdout)["heartbeat"] == "nightly"
    after = invoke(runner, root, "--check", "heartbeat*", "--json")
    check = json.loads(after.stdout)["checks"][0]
    assert after.exit_code == 0 and check["name"] == "heartbeat nightly" and check["status"] == "OK"


def test_unconfigured_endpoints_are_unknown_not_silently_left_out(tmp_path, runner, monkeypatch):
    monkeypatch.delenv("OPSCTL_DATABASE_URL", raising=False)
    result = invoke(runner, root_with(tmp_path, {}), "--check", "postgres", "--check", "router", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.exit_code == 3
    assert checks["postgres"]["message"] == "not configured: $OPSCTL_DATABASE_URL"
    assert checks["router"]["status"] == "UNKNOWN"


@pytest.mark.parametrize("args, said", [
    (["--skip", "*"], "--skip '*' leave no check of 'ci' to run"),
    (["--check", "api", "--skip", "api"], "--check 'api' --skip 'api' leave no check"),
    (["--check", "api", "--check", "docs", "--skip", "docs", "--skip", "api"], "leave no check of 'ci' to run"),
])
def test_filters_that_leave_no_check_are_refused_never_ok(runner, tmp_path, args, said):
    """Breaker 41 Q4: `health --skip '*'` checked nothing and said "OK (0 checks)", exit 0."""
    root = root_with(tmp_path, {"http": [{"name": "api", "url": "http://127.0.0.1:9/readyz"},
                                         {"name": "docs", "url": "http://127.0.0.1:9/docs"}]})
    one_line_error(invoke(runner, root, *args), said)


def test_health_skip_in_opsctl_yaml_leaving_no_check_is_refused(runner, tmp_path):
    root = root_with(tmp_path, {"http": [{"name": "api", "url": "http://127.0.0.1:9/readyz"}], "skip": ["*"]})
    one_line_error(invoke(runner, root), "health.skip in opsctl.yaml leaves no check of 'ci' to run")
