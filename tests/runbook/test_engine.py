"""The runbook engine on small runbooks of shell steps: routing, retries, resume, dry run, lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsctl.cli import app
from tests.runbook.runbook_support import write_runbook as _write
from tests.runbook.runbook_support import run_runbook, run_refused


@pytest.fixture
def root(ops_root) -> Path:
    return ops_root


FLOW = """\
    name: flow
    version: 1
    description: counts what ran in files, so the test sees every side effect
    parameters:
      marker: {type: string, default: ran}
      fail_at: {type: string, default: none}
    steps:
      - id: first
        action: shell
        with: {command: 'echo "$MARKER" >> first.txt && echo one', env: {MARKER: "{{ params.marker }}"}}
      - id: second
        action: shell
        with: {command: 'echo x >> second.txt; test "$FAIL_AT" != second', env: {FAIL_AT: "{{ params.fail_at }}"}}
        on_failure: [undo]
      - id: third
        action: shell
        with: {command: 'echo "$FIRST" >> third.txt', env: {FIRST: "{{ steps.first.outputs.stdout }}"}}
      - id: undo
        action: shell
        with: {command: "echo undone >> undo.txt"}
    """


def test_success_runs_every_step_in_order_and_journals_it(runner, root):
    _write(root, "flow", 1, FLOW)
    doc = run_runbook(runner, "flow")
    assert doc["status"] == "succeeded"
    assert [s["id"] for s in doc["steps"]] == ["first", "second", "third"]  # the handler did not run
    assert (root / "third.txt").read_text() == "one\n"  # an earlier step's output reached a template
    assert not (root / "undo.txt").exists()
    records = [json.loads(l) for l in (root / ".opsctl" / "runs" / f"{doc['run_id']}.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["run", "step", "step", "step", "end"]
    assert records[0]["hash"].startswith("sha256:") and records[0]["params"] == {"marker": "ran", "fail_at": "none"}
    history = json.loads(runner.invoke(app, ["runbook", "history", "--json"]).stdout)
    assert history[0]["run_id"] == doc["run_id"] and history[0]["status"] == "succeeded"


def test_failing_step_runs_its_on_failure_steps_and_exits_1(runner, root):
    _write(root, "flow", 1, FLOW)
    doc = run_runbook(runner, "flow", "-p", "fail_at=second", exit_code=1)
    assert [(s["id"], s["status"]) for s in doc["steps"]] == [("first", "ok"), ("second", "failed"), ("undo", "ok")]
    assert (root / "undo.txt").read_text() == "undone\n" and not (root / "third.txt").exists()


def test_retry_that_succeeds_on_second_attempt_is_recorded(runner, root):
    _write(root, "retry", 1, """\
        name: retry
        version: 1
        steps:
          - id: flaky
            action: shell
            with: {command: "echo x >> tries.txt; test $(wc -l < tries.txt) -ge 2"}
            retries: {count: 3, backoff: 0.01}
        """)
    result = run_runbook(runner, "retry")
    step = result["steps"][0]
    assert step["status"] == "ok" and step["attempts"] == 2 and "attempt 2" in step["detail"]
    assert (root / "tries.txt").read_text().count("x") == 2


def test_timeout_fails_the_step(runner, root):
    _write(root, "slow", 1, """\
        name: slow
        version: 1
        steps:
          - id: sleepy
            action: wait
            with: {seconds: 5}
            timeout: 0.2
        """)
    result = run_runbook(runner, "slow", exit_code=1)
    assert "timed out after 0.2s" in result["steps"][0]["detail"]


def test_killed_run_resumes_at_the_failed_step_without_repeating(root):
    _write(root, "long", 1, """\
        name: long
        version: 1
        steps:
          - id: one
            action: shell
            with: {command: "echo x >> one.txt"}
          - id: two
            action: shell
            with: {command: "test -f go.txt || sleep 60; echo x >> two.txt"}
          - id: three
            action: shell
            with: {command: "echo x >> three.txt"}
        """)
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "runbook", "run", "long"], cwd=root,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = root / ".opsctl" / "runs"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (runs.is_dir() and any(
            '"id": "one"' in p.read_text() for p in runs.glob("*.jsonl"))):
        time.sleep(0.1)
    import psutil

    step_processes = psutil.Process(proc.pid).children(recursive=True)  # shell steps run in their own group
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its shell step, mid-way through step two
    for child in step_processes:
        child.kill()
    proc.wait()
    run_id = next(runs.glob("*.jsonl")).stem
    (root / "go.txt").write_text("")
    resumed = subprocess.run([sys.executable, "-m", "opsctl", "runbook", "run", "long", "--resume", run_id, "--json"],
                             cwd=root, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert [(s["id"], s["status"]) for s in doc["steps"]] == [("one", "done-before"), ("two", "ok"), ("three", "ok")]
    assert (root / "one.txt").read_text() == "x\n"  # not repeated
    assert (root / "two.txt").read_text() == "x\n" and (root / "three.txt").read_text() == "x\n"
    assert doc["run_id"] == run_id


def test_dry_run_resolves_templates_and_changes_nothing(runner, root):
    _write(root, "flow", 1, FLOW)
    before = sorted(p.name for p in root.rglob("*"))
    doc = run_runbook(runner, "flow", "-p", "marker=hello", "--dry-run")
    assert doc["status"] == "planned" and doc["run_id"] is None
    details = {s["id"]: s["detail"] for s in doc["steps"]}
    assert '"MARKER": "hello"' in details["first"]  # JSON, not a Python repr (breaker 37 G18)
    assert "<steps.first.outputs.stdout>" in details["third"]
    assert sorted(p.name for p in root.rglob("*")) == before  # no journal, no side effect


def test_a_dry_run_joins_and_counts_outputs_only_a_run_knows(runner, root):
    """Breaker 27 F5: `{{ steps.x.outputs.items | join(", ") }}` in a dry run iterated the
    placeholder forever (Python's iteration by __getitem__ 0, 1, ...) and took the host's memory;
    the shipped nightly-backup's report step does it. Each now renders as a placeholder."""
    _write(root, "joins", 1, """\
        name: joins
        version: 1
        steps:
          - id: first
            action: shell
            with: {command: "echo one"}
          - id: report
            action: notify
            with: {message: "{{ steps.first.outputs.lines | join(', ') }}; {{ steps.first.outputs.lines | length }}"}
        """)
    doc = run_runbook(runner, "joins", "--dry-run")
    report = next(s["detail"] for s in doc["steps"] if s["id"] == "report")
    assert "<steps.first.outputs.lines[*]>; <steps.first.outputs.lines | length>" in report, report


def test_approval_is_refused_in_ci_without_yes(runner, root, monkeypatch):
    monkeypatch.setenv("CI", "true")
    _write(root, "gated", 1, """\
        name: gated
        version: 1
        steps:
          - id: gate
            action: shell
            with: {command: "echo x > approved.txt"}
            approval: {message: "really?"}
        """)
    refused = run_refused(runner, "gated")
    assert "pass --yes" in refused, refused
    assert not (root / "approved.txt").exists()
    assert runner.invoke(app, ["runbook", "run", "gated", "--yes"]).exit_code == 0
    assert (root / "approved.txt").exists()


@pytest.mark.parametrize("body, line, reason", [
    ("steps:\n  - id: a\n    action: teleport\n", 5, "unknown action 'teleport'"),
    ("steps:\n  - id: a\n    action: shell\n    with: {command: \"echo {{ params.nope }}\"}\n", 6,
     "undeclared parameter 'nope'"),
    ("steps:\n  - id: a\n    action: shell\n    with: {command: \"echo {{ params.x \"}\n", 6, "bad template"),
    ("steps:\n  - id: a\n    action: promote\n    on_failure: [ghost]\n", 6, "unknown step 'ghost'"),
    ("steps:\n  - id: a\n    action: promote\n    on_failure: [b]\n  - id: b\n    action: promote\n"
     "    on_failure: [a]\n", 6, "on_failure cycle: a -> b -> a"),
    ("steps:\n  - id: a\n    action: promote\n    retries: {count: many}\n", 6, "'many' is not of type 'integer'"),
])
def test_malformed_runbook_fails_validate_with_file_line_reason(runner, root, body, line, reason):
    path = _write(root, "bad", 1, "name: bad\nversion: 1\n" + body)
    result = runner.invoke(app, ["runbook", "validate", "bad"])
    assert result.exit_code == 2
    assert f"{path}:{line}:" in result.output and reason in result.output, result.output
    run = run_refused(runner, "bad")
    assert reason in run, run


def test_missing_required_parameter(runner, root):
    _write(root, "needs", 1, "name: needs\nversion: 1\nparameters:\n  image: {required: true}\n"
                             "steps:\n  - id: a\n    action: shell\n    with: {command: 'echo \"$IMAGE\"', env: {IMAGE: '{{ params.image }}'}}\n")
    result = runner.invoke(app, ["runbook", "run", "needs"])
    assert result.exit_code == 2
    assert result.output.strip() == "opsctl: error: needs@1: parameter 'image' is required; pass -p image=VALUE"


def test_published_version_is_immutable(runner, root):
    path = _write(root, "flow", 1, FLOW)
    assert runner.invoke(app, ["runbook", "publish", "flow@1"]).exit_code == 0
    assert runner.invoke(app, ["runbook", "validate"]).exit_code == 0
    path.write_text(path.read_text().replace("counts what ran", "counts what ran (edited)"))
    result = runner.invoke(app, ["runbook", "validate"])
    assert result.exit_code == 2
    assert "flow@1 is published and was changed" in result.output and "publish the change as v2" in result.output
    _write(root, "flow", 2, FLOW.replace("version: 1", "version: 2"))
    diff = runner.invoke(app, ["runbook", "show", "flow", "--diff", "1..2"])
    assert "-version: 1" in diff.output and "+version: 2" in diff.output
    latest = runner.invoke(app, ["runbook", "show", "flow"])
    assert "runbooks/flow/v2.yaml" in latest.output


def test_a_step_that_refuses_its_input_mid_run_is_a_failed_step_and_continue_goes_on(runner, root, monkeypatch):
    """Breaker 28 F3: a step's UsageError (here an approval nobody can give; in the nightly, a
    prune with no retention rule) after earlier steps did their work ended the whole run as
    bad input: exit 2, no --json, no alert, the later steps never run. It is now a failed
    step routed by its on_failure; `[handler, continue]` runs the handler, then the rest."""
    monkeypatch.setenv("CI", "true")
    _write(root, "mid", 1, """\
        name: mid
        version: 1
        steps:
          - id: first
            action: shell
            with: {command: "echo x > first.txt"}
          - id: gate
            action: approve
            with: {message: "delete everything"}
            on_failure: [ask, note, continue]
          - id: after
            action: shell
            with: {command: "echo x > after.txt"}
          - id: ask
            action: approve
            with: {message: "and the handler asks too"}
          - id: note
            action: shell
            with: {command: "echo x > note.txt"}
        """)
    doc = run_runbook(runner, "mid", exit_code=1)
    assert doc["status"] == "failed", doc
    by_id = {s["id"]: s for s in doc["steps"]}
    assert by_id["gate"]["status"] == "failed" and "pass --yes" in by_id["gate"]["detail"], by_id
    assert by_id["ask"]["status"] == "failed", by_id  # a handler's refusal is its own failure (breaker 28 F12)
    assert all((root / f).exists() for f in ("first.txt", "note.txt", "after.txt"))


@pytest.mark.parametrize("on_failure, reason", [
    ("[continue, note]", "'continue' ends an on_failure list"),
    ("[ghost, continue]", "unknown step 'ghost'"),
])
def test_continue_ends_an_on_failure_list(runner, root, on_failure, reason):
    path = _write(root, "cont", 1, f"""\
        name: cont
        version: 1
        steps:
          - id: a
            action: shell
            with: {{command: "true"}}
            on_failure: {on_failure}
          - id: note
            action: shell
            with: {{command: "true"}}
        """)
    result = runner.invoke(app, ["runbook", "validate", "cont"])
    assert result.exit_code == 2 and str(path) in result.output and reason in result.output, result.output
