"""Environment names become Kubernetes label values, Secret and CronJob names, CI job ids and
shell arguments: opsctl.yaml refuses any that is not a DNS-1123 label (issue 23, BREAKER23 #3)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _root(tmp_path, monkeypatch, name: str) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {
        "staging": {"platform": "kubernetes"}, "production": {"platform": "kubernetes", "protected": True},
        name: {"platform": "kubernetes"}}}))
    template = (REPO / "runbooks" / "redis-snapshot" / "v1.yaml").read_text()
    (tmp_path / "runbooks" / "nightly").mkdir(parents=True)
    text = re.sub(r"(?m)^name: .*$", "name: nightly", template)
    (tmp_path / "runbooks" / "nightly" / "v1.yaml").write_text(re.sub(r"(?m)^schedule: .*$", 'schedule: "0 2 * * *"', text))
    return tmp_path


@pytest.mark.parametrize("name", ["eu.prod", "prod eu", "Prod_EU", "prod-", "-prod", "x" * 64, "prod$(id)", "prod'eu"])
def test_an_environment_name_that_is_not_a_dns_label_is_refused_in_one_line(runner, tmp_path, monkeypatch, name):
    _root(tmp_path, monkeypatch, name)
    for args in (["render", "ci", "--staging", name, "--production", "production", "--out", "wf.yml"],
                 ["render", "schedules", "--env", name], ["render", "--env", "staging"], ["status", "--env", "staging"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        line = result.stderr.strip()
        assert line.count("\n") == 0 and f"environment name {name!r} is not a DNS-1123 label" in line, line
    assert not (tmp_path / "wf.yml").exists()


def test_a_dns_label_environment_name_gives_a_workflow_actionlint_accepts(runner, tmp_path, monkeypatch):
    name = "eu-prod-2"
    _root(tmp_path, monkeypatch, name)
    out = tmp_path / "wf.yml"
    result = runner.invoke(app, ["render", "ci", "--staging", name, "--production", "production", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lint = subprocess.run([str(BIN / "actionlint"), "-no-color", str(out)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    runs = [s.get("run", "") for job in yaml.safe_load(out.read_text())["jobs"].values() for s in job["steps"]]
    assert any(f"--env '{name}' --yes" in r for r in runs)  # quoted where it reaches a shell line
    assert not any(f"--env {name} " in r for r in runs)
    sched = runner.invoke(app, ["render", "schedules", "--env", name])
    assert sched.exit_code == 0, sched.output
