"""Runbook outputs never land in opsctl's own state under .opsctl/ (brk43 S7, brk42 R9):
silences, heartbeats, health history, drill and restore records, or any other folder
there; only .opsctl/dr/ (the shipped dr-drill's reports) and .opsctl/reports/ take reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from opsctl.cli import app
from tests.runbook.runbook_support import run_refused, write_runbook

REPO = Path(__file__).resolve().parents[2]


def _book(root) -> None:
    doc = {"name": "paths", "version": 1,
           "parameters": {"out": {"type": "string", "default": "reports/h.xml"}},
           "steps": [{"id": "first", "action": "wait", "with": {"seconds": 0}},
                     {"id": "step", "action": "health",
                      "with": {"junit": "{{ params.out }}", "fail_on": "never"}}]}
    path = root / "runbooks" / "paths" / "v1.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("given", [".opsctl/health/silences-local.json", ".opsctl/health/history.jsonl",
                                   ".opsctl/health/heartbeats.json", ".opsctl/drill/local-1.json",
                                   ".opsctl/restores/r.xml", ".opsctl/newstate/x.json", ".opsctl/health",
                                   ".opsctl", "./.opsctl/reports/../drill/x.json"])
def test_a_parameter_cannot_write_into_opsctls_state(runner, ops_root, given):
    _book(ops_root)
    silences = ops_root / ".opsctl" / "health" / "silences-local.json"
    silences.parent.mkdir(parents=True)
    silences.write_text('{"keep": true}')
    for extra in (["--dry-run"], ["--yes"]):
        line = run_refused(runner, "paths", "-p", f"out={given}", *extra)
        assert "junit: " in line and ("opsctl's own state" in line or "holds code or records" in line), line
        assert ".opsctl/reports/" in line, line
    assert silences.read_text() == '{"keep": true}'
    assert not (ops_root / ".opsctl" / "runs").exists()


def test_a_report_folder_linked_into_the_state_is_refused(runner, ops_root):
    _book(ops_root)
    (ops_root / ".opsctl" / "health").mkdir(parents=True)
    (ops_root / ".opsctl" / "reports").symlink_to(ops_root / ".opsctl" / "health")
    line = run_refused(runner, "paths", "--dry-run", "-p", "out=.opsctl/reports/silences-local.json")
    assert "would write into .opsctl/health" in line, line


@pytest.mark.parametrize("given", [".opsctl/reports/h.xml", ".opsctl/dr/h.xml", ".opsctl/h.xml", "reports/h.xml"])
def test_report_places_are_still_planned(runner, ops_root, given):
    _book(ops_root)
    result = runner.invoke(app, ["runbook", "run", "paths", "--dry-run", "--json", "-p", f"out={given}"])
    assert result.exit_code == 0, result.output
    assert given in json.loads(result.stdout)["steps"][1]["detail"]


def test_the_shipped_dr_drill_still_validates(runner, ops_root):
    shutil.copytree(REPO / "runbooks", ops_root / "runbooks")
    result = runner.invoke(app, ["runbook", "validate", "dr-drill"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [
    ["runbook", "run", "state-probe", "--junit", "{path}"],
    ["health", "--env", "local", "--junit", "{path}"],
    ["health", "--env", "local", "--history", "{path}"],
])
def test_a_report_option_into_opsctl_state_is_refused_too(runner, ops_root, command):
    """Breaker 44 T1: the rule held for a runbook's step outputs, not for the command line's
    own report options: `runbook run --junit .opsctl/health/silences-staging.json` replaced the
    silences with JUnit XML. Every report path goes through files.report_path, which refuses it."""
    silences = ops_root / ".opsctl" / "health" / "silences-local.json"
    silences.parent.mkdir(parents=True)
    silences.write_text("{}")
    write_runbook(ops_root, "state-probe", 1, """\
        name: state-probe
        version: 1
        steps:
          - {id: a, action: wait, with: {seconds: 0}}
        """)
    for path in (".opsctl/health/silences-local.json", str(silences), ".opsctl/runs/x.xml"):
        r = runner.invoke(app, [part.format(path=path) for part in command])
        assert r.exit_code == 2, r.output
        assert "which holds opsctl's own state" in r.stderr, r.stderr
    assert silences.read_text() == "{}"
