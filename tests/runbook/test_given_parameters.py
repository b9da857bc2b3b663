"""What `-p` gives a run is refused before any step when the run could not use it (breaker 37
G6): a required parameter given empty, a parameter given twice, and a step argument made of
parameters that the step's own command would refuse (the deploy step's image), in a dry run
too. Nothing runs, no journal is written, exit 2 with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.runbook.runbook_support import run_refused, run_runbook
from tests.runbook.runbook_support import write_runbook as _write

REPO = Path(__file__).resolve().parents[2]

RELEASE = """\
    name: release
    version: 1
    parameters:
      image: {type: string, required: true}
      note: {type: string, default: ""}
      go: {type: boolean, default: true}
    steps:
      - id: first
        action: shell
        with: {command: "touch RAN"}
      - id: rollout
        action: deploy
        when: "{{ params.go }}"
        with: {image: "{{ params.image }}", wait: false}
    """


@pytest.fixture
def release(ops_root, monkeypatch) -> Path:
    """The `release` runbook in an ops root whose driver fails the test when it is built."""
    def driver_for(project, env):
        raise AssertionError("a deploy driver was built")

    monkeypatch.setattr("opsctl.deploy.drivers.driver_for", driver_for)
    _write(ops_root, "release", 1, RELEASE)
    return ops_root


def _nothing_ran(root: Path) -> None:
    assert not (root / "RAN").exists()
    assert not (root / ".opsctl" / "runs").exists()  # no journal


@pytest.mark.parametrize("value", ["", "   "])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_required_parameter_given_empty_is_refused_before_any_step(runner, release, value, dry_run):
    line = run_refused(runner, "release", "-p", f"image={value}", "--yes", *(["--dry-run"] if dry_run else []))
    assert "parameter 'image' is required and was given empty; pass -p image=VALUE" in line, line
    _nothing_ran(release)


def test_a_required_parameter_empty_in_its_variable_is_refused_too(runner, release, monkeypatch):
    monkeypatch.setenv("OPSCTL_PARAM_IMAGE", "")
    line = run_refused(runner, "release", "--yes")
    assert "parameter 'image' is required and was given empty" in line, line
    _nothing_ran(release)


def test_an_optional_string_parameter_may_be_empty(runner, release):
    doc = run_runbook(runner, "release", "-p", "image=worker:1.0", "-p", "note=", "-p", "go=false", "--yes")
    assert [(s["id"], s["status"]) for s in doc["steps"]] == [("first", "ok"), ("rollout", "skipped")]


@pytest.mark.parametrize("given", [["image=a:1", "image=b:1"], ["image=a:1", "image=a:1"], ["image=", "image=a:1"]])
def test_a_parameter_given_twice_is_refused_naming_it(runner, release, given):
    args = [a for g in given for a in ("-p", g)]
    line = run_refused(runner, "release", *args, "--yes")
    assert "parameter 'image' is given twice" in line and "give each parameter once" in line, line
    assert "a:1" not in line and "b:1" not in line  # values are not shown: one may be a secret
    _nothing_ran(release)


@pytest.mark.parametrize("image, expected", [
    ("worker", "step rollout: --image 'worker' has no tag"),
    ("worker:[/]", "step rollout: --image 'worker:[/]' is not an image reference"),
    ("worker:v2\x1b[7mX", r"step rollout: --image 'worker:v2\x1b[7mX' contains the control character"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_deploy_step_image_its_command_refuses_is_refused_before_any_step(runner, release, image, expected, dry_run):
    line = run_refused(runner, "release", "-p", f"image={image}", "--yes", *(["--dry-run"] if dry_run else []))
    assert expected in line, line
    _nothing_ran(release)


def test_a_step_that_will_not_run_is_not_checked(runner, release):
    doc = run_runbook(runner, "release", "-p", "image=worker", "-p", "go=false", "--yes")
    assert [(s["id"], s["status"]) for s in doc["steps"]] == [("first", "ok"), ("rollout", "skipped")]


@pytest.mark.parametrize("given, expected", [
    (["image="], "deploy-worker@1: parameter 'image' is required and was given empty"),
    (["image=worker:1.0", "image=worker:2.0"], "parameter 'image' is given twice"),
    (["image=worker"], "step rollout: --image 'worker' has no tag"),
])
def test_the_shipped_deploy_worker_refuses_in_its_dry_run(runner, ops_root, given, expected):
    shutil.copytree(REPO / "runbooks", ops_root / "runbooks")
    line = run_refused(runner, "deploy-worker", *[a for g in given for a in ("-p", g)], "--dry-run")
    assert expected in line, line
    planned = run_runbook(runner, "deploy-worker", "-p", "image=worker:1.0", "--dry-run")
    assert planned["status"] == "planned"
