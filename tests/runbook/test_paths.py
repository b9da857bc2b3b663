"""A parameter never chooses code or where a step writes (issue 19 §1b): arguments naming
code (loadtest's locustfile) take no template and a file in the ops root; files written
(health junit/history, loadtest html/csv/junit, dr-drill junit/metrics_file) stay inside
the ops root, symbolic links followed, out of runbooks/, loadtests/, stacks/…"""

from __future__ import annotations

import json
import os

import pytest

from opsctl.cli import app
from tests.runbook.runbook_support import run_refused
from opsctl.runbook.actions import ACTIONS


def _book(root, action: str, with_: dict, params: dict | None = None) -> None:
    doc = {"name": "paths", "version": 1, "parameters": params or {},
           "steps": [{"id": "first", "action": "wait", "with": {"seconds": 0}},
                     {"id": "step", "action": action, "with": with_}]}
    path = root / "runbooks" / "paths" / "v1.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture
def evil(tmp_path_factory):
    """A Python file outside the ops root that leaves a marker when executed."""
    folder = tmp_path_factory.mktemp("outside")
    marker = folder / "EXECUTED"
    code = folder / "evil.py"
    code.write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom locust import HttpUser\n"
                    "class Evil(HttpUser):\n    pass\n")
    return code, marker


def test_a_parameter_cannot_choose_the_locustfile(runner, ops_root, evil):
    code, marker = evil
    _book(ops_root, "loadtest", {"locustfile": "{{ params.lf }}"}, {"lf": {"type": "string", "default": "x.py"}})
    result = runner.invoke(app, ["runbook", "validate", "paths"])
    assert result.exit_code == 2 and "locustfile: names code" in result.output, result.output
    for extra in ([], ["--dry-run"]):
        run = run_refused(runner, "paths", "-p", f"lf={code}", *extra)
        assert "locustfile" in run, run
    assert not marker.exists()


@pytest.mark.parametrize("value", ["/tmp/evil.py", "../evil.py", "loadtests/../../evil.py", "~/evil.py"])
def test_a_constant_locustfile_outside_the_ops_root_is_refused_at_validate(runner, ops_root, value):
    _book(ops_root, "loadtest", {"locustfile": value})
    result = runner.invoke(app, ["runbook", "validate", "paths"])
    assert result.exit_code == 2 and "locustfile" in result.output and "ops root" in result.output, result.output


def test_a_locustfile_linked_out_of_the_ops_root_is_refused_before_any_step(runner, ops_root, evil):
    code, marker = evil
    (ops_root / "loadtests").mkdir()
    os.symlink(code, ops_root / "loadtests" / "linked.py")
    _book(ops_root, "loadtest", {"locustfile": "loadtests/linked.py"})
    result = runner.invoke(app, ["runbook", "run", "paths", "--json"])
    assert result.exit_code == 2 and "leads out of the ops root" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists() and not (ops_root / ".opsctl" / "runs").exists()  # no step ran, nothing journaled


@pytest.mark.parametrize("action, arg", [(a, arg) for a, fn in sorted(ACTIONS.items()) for arg in fn.out_paths])
@pytest.mark.parametrize("given", ["/tmp/opsctl-out-{arg}", "../out-{arg}", "runbooks/evil.yaml",
                                   "opsctl.yaml", ".opsctl/runs/x.jsonl", "loadtests/locustfile.py",
                                   ".opsctl/local/state.json", ".opsctl/backups/x", "./.opsctl/../stacks/x.py"])
def test_a_parameter_cannot_write_outside_the_ops_root_or_over_its_code(runner, ops_root, action, arg, given):
    given = given.format(arg=arg)
    _book(ops_root, action, {arg: "{{ params.out }}"}, {"out": {"type": "string", "default": "reports/out"}})
    assert runner.invoke(app, ["runbook", "validate", "paths"]).exit_code == 0
    before = (ops_root / "opsctl.yaml").read_text()
    for extra in (["--dry-run"], []):
        run = runner.invoke(app, ["runbook", "run", "paths", "-p", f"out={given}", *extra])
        assert run.exit_code == 2 and f"{arg}: " in run.output, run.output
        assert len(run.output.strip().splitlines()) == 1 and "Traceback" not in run.output
    assert not os.path.exists(given if given.startswith("/") else ops_root / given) or given == "opsctl.yaml"
    assert (ops_root / "opsctl.yaml").read_text() == before
    assert not (ops_root / ".opsctl" / "runs").exists()  # refused before any step ran


@pytest.mark.parametrize("action, arg", [(a, arg) for a, fn in sorted(ACTIONS.items()) for arg in fn.out_paths])
def test_a_constant_output_path_outside_the_ops_root_is_refused_at_validate(runner, ops_root, action, arg):
    _book(ops_root, action, {arg: "/etc/opsctl-out"})
    result = runner.invoke(app, ["runbook", "validate", "paths"])
    assert result.exit_code == 2 and f"{arg}: /etc/opsctl-out is not inside the ops root" in result.output


def test_an_output_folder_linked_out_of_the_ops_root_is_refused(runner, ops_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (ops_root / "reports").symlink_to(outside)
    _book(ops_root, "dr-drill", {"junit": "reports/drill.xml"})
    result = run_refused(runner, "paths", "--dry-run")
    assert "leads out of the ops root" in result, result
    assert list(outside.iterdir()) == []


def test_an_output_inside_the_ops_root_is_planned(runner, ops_root):
    _book(ops_root, "health", {"junit": "{{ params.out }}"}, {"out": {"type": "string", "default": "reports/h.xml"}})
    result = runner.invoke(app, ["runbook", "run", "paths", "--dry-run", "--json", "-p", "out=.opsctl/health.xml"])
    assert result.exit_code == 0, result.output
    assert ".opsctl/health.xml" in json.loads(result.stdout)["steps"][1]["detail"]


def test_every_path_argument_of_every_action_is_declared():
    """The kind, not the case: an argument whose name says it is a file is listed as code or
    output, so a new action cannot forget it."""
    import inspect

    pathlike = {"locustfile", "junit", "html", "csv", "history", "metrics_file", "file", "path", "output", "out"}
    for name, fn in ACTIONS.items():
        for arg in list(inspect.signature(fn).parameters)[1:]:
            if arg in pathlike or arg.endswith(("_file", "_path", "_dir")):
                assert arg in (*fn.code_paths, *fn.out_paths), (name, arg)


def test_an_output_may_not_land_in_the_environments_backup_folder(runner, ops_root):
    config = ops_root / "opsctl.yaml"
    config.write_text(config.read_text().replace("file://.opsctl/backups", "file://vault"))
    _book(ops_root, "health", {"junit": "{{ params.out }}"}, {"out": {"type": "string", "default": "reports/h.xml"}})
    run = run_refused(runner, "paths", "--dry-run", "-p", "out=vault/index.json")
    assert "would write into vault" in run, run
