"""opsctl.yaml discovery and validation, through the CLI where a user would meet it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opsctl.cli import app
from opsctl.config import find_root, load_project, parse_config
from opsctl.errors import UsageError

REPO = Path(__file__).resolve().parent.parent


def test_repository_is_an_ops_root_with_three_environments():
    project = load_project(start=REPO / "stacks")
    assert project.root == REPO
    assert set(project.config.environments) == {"local", "staging", "production"}
    prod = project.env("production")
    assert prod.platform == "kubernetes" and prod.protected
    assert prod.pulumi.stack == "production"
    assert prod.backup.retention.keep_monthly == 12
    assert project.env("local").platform == "local"


def test_root_found_walking_up(ops_root):
    deep = ops_root / "a" / "b"
    deep.mkdir(parents=True)
    assert find_root(deep) == ops_root


def test_root_override_must_hold_a_config(tmp_path):
    with pytest.raises(UsageError, match="holds no opsctl.yaml"):
        find_root(override=tmp_path)


def test_local_is_always_present(tmp_path):
    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {}\n")
    assert parse_config(tmp_path / "opsctl.yaml").environments["local"].platform == "local"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("environments:\n  staging:\n    platform: k8s\n", "environments.staging.platform"),
        ("environments:\n  staging:\n    thresholds: {cpu_percnt: 50}\n",
         "environments.staging.thresholds.cpu_percnt: unknown key"),
        ("environments: [1, 2\n", "line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("environments:\n  local:\n    deploy: {ready_timeout: -1}\n", "ready_timeout"),
        ("environments:\n  local:\n    worker: {resources: {limit: {memory: 4Gi}}}\n", "worker.resources"),
        # values PyYAML parses but can't build (a bare ValueError, no position: breaker 30 F1)
        ("environments:\n  local:\n    label: 2026-02-30\n", "line 3: the value 2026-02-30 can't be read: day is"),
        ("environments:\n  local:\n    deploy: {ready_timeout: " + "9" * 5000 + "}\n",
         "line 3: the value 999999999999... (5000 characters) can't be read: an integer of more than 4300 digits"),
    ],
)
def test_broken_config_is_one_line_exit_2(runner, tmp_path, monkeypatch, text, expected):
    (tmp_path / "opsctl.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "opsctl.yaml" in lines[0] and expected in lines[0]
    assert "Traceback" not in result.output


def test_unknown_environment(runner, ops_root):
    result = runner.invoke(app, ["config", "show", "--env", "prodd"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"opsctl: error: unknown environment 'prodd' in {ops_root / 'opsctl.yaml'}; known: local"
    )


def test_config_show_json_prints_the_resolved_environment(runner, ops_root):
    result = runner.invoke(app, ["config", "show", "--env", "local", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["name"] == "local" and doc["platform"] == "local"
    assert doc["thresholds"]["cpu_percent"] == 80.0
    assert doc["backup"]["retention"]["keep_last"] == 7


def test_init_writes_a_valid_commented_starter(runner, tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "opsctl.yaml").read_text()
    assert text.startswith("# opsctl.yaml")
    assert parse_config(tmp_path / "opsctl.yaml").environments["local"].platform == "local"
    again = runner.invoke(app, ["init", str(tmp_path)])
    assert again.exit_code == 2 and "already exists; pass --force" in again.output
