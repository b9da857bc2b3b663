"""`opsctl render ci`: the workflow's jobs and that every runbook it calls exists."""

from __future__ import annotations

from pathlib import Path

import yaml

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_workflow_runs_the_shipped_runbooks_in_order(runner, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    out = tmp_path / "deploy.yml"
    result = runner.invoke(app, ["render", "ci", "--out", str(out)])
    assert result.exit_code == 0, result.output
    flow = yaml.safe_load(out.read_text())
    jobs = flow["jobs"]
    assert list(jobs) == ["test", "build-worker", "deploy-staging", "load-test-gate", "deploy-production"]
    assert jobs["build-worker"]["strategy"]["matrix"]["target"] == ["cpu", "cuda"]
    assert jobs["deploy-production"]["needs"] == ["load-test-gate"]
    assert jobs["deploy-production"]["environment"] == "production"  # its reviewers are the approval
    commands = [s["run"] for job in jobs.values() for s in job["steps"] if "runbook run" in s.get("run", "")]
    assert len(commands) == 3
    for command in commands:
        name = command.split("runbook run ")[1].split()[0]
        assert (REPO / "runbooks" / name).is_dir(), name
        assert "--yes" in command and "--junit" in command
    assert any("test" in s.get("run", "") for s in jobs["test"]["steps"])


def test_ci_refuses_a_local_environment(runner, monkeypatch):
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["render", "ci", "--staging", "local"])
    assert result.exit_code == 2
    assert "CI deploys kubernetes environments" in result.output
