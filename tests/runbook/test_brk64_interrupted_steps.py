"""Breaker 64 F19 (as a kind): a Ctrl-C or SIGTERM during a runbook step reaches the step's own
core, the step is journaled `interrupted` and the run stops there; a step's timeout stops an
action that does not poll its cancel event the same way. Steps ran in a worker thread, where
no signal arrives: the interrupt stopped the run without a record of the step (a drill then
went on to its end and reported success), and a timed-out action went on running beside the
run (not retried: "did not stop within 10s")."""

from __future__ import annotations

import json
import signal
import uuid

import pytest

from opsctl.cli import app
from tests.health.servers import HungServer
from tests.runbook.runbook_support import run_runbook
from tests.runbook.runbook_support import write_runbook as _write


@pytest.fixture
def ctrl_c():
    """Python's own Ctrl-C handler, whatever this process inherited (a suite started in the
    background, an xdist worker, has SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_an_interrupted_step_is_journaled_interrupted_and_the_run_stops_there(runner, ops_root, ctrl_c, sig):
    token = f"marker-{uuid.uuid4().hex[:8]}"
    _write(ops_root, "long", 1, f"""\
        name: long
        version: 1
        steps:
          - id: first
            action: shell
            with: {{command: "echo one"}}
          - id: long
            action: shell
            with: {{command: "test -f go.txt && exit 0; kill -{sig} $PPID; sleep 30; touch {token}"}}
          - id: after
            action: shell
            with: {{command: "touch after.txt"}}
        """)
    result = runner.invoke(app, ["runbook", "run", "long", "--json"])  # the shell's parent: this process
    assert result.exit_code == 130, result.output
    runs = json.loads(runner.invoke(app, ["runbook", "history", "--json"]).stdout)
    assert len(runs) == 1 and runs[0]["status"] == "interrupted", runs
    assert runs[0]["steps"] == {"first": "ok", "long": "interrupted"}, runs
    # breaker 66 G6: the last line names the run, its step and the command that goes on
    said = " ".join(result.stderr.split())
    assert f"interrupted at step 'long' (run {runs[0]['run_id']})" in said, said
    assert f"'opsctl runbook run long --resume {runs[0]['run_id']}' goes on from there" in said, said
    records = json.loads(runner.invoke(app, ["runbook", "history", "--run", runs[0]["run_id"], "--json"]).stdout)
    step = records[-1]
    assert step["type"] == "step" and step["id"] == "long" and step["status"] == "interrupted", records
    assert "interrupted" in step["detail"] and step["attempts"] == 1, step
    assert not (ops_root / token).exists() and not (ops_root / "after.txt").exists()
    (ops_root / "go.txt").write_text("")  # --resume runs the interrupted step again
    doc = run_runbook(runner, "long", "--resume", runs[0]["run_id"])
    assert [(s["id"], s["status"]) for s in doc["steps"]] == [("first", "done-before"), ("long", "ok"), ("after", "ok")]


def test_a_timed_out_step_whose_action_does_not_poll_cancel_is_stopped_and_retried(runner, ops_root):
    """The http action waits in a socket read that never ends (30 s): the step's timeout stops
    it as SIGTERM does, and the retry starts once it has stopped."""
    hung = HungServer()
    try:
        _write(ops_root, "hung", 1, f"""\
            name: hung
            version: 1
            steps:
              - id: call
                action: http
                with: {{url: "{hung.url}/", timeout: 30}}
                timeout: 1
                retries: {{count: 1, backoff: 0}}
            """)
        doc = run_runbook(runner, "hung", exit_code=1)
    finally:
        hung.close()
    step = doc["steps"][0]
    assert step["status"] == "failed" and step["attempts"] == 2, step
    assert step["detail"] == "timed out after 1s", step
    assert len(hung.accepted) == 2  # the second attempt ran, after the first had stopped


def test_ctrl_c_at_an_approve_actions_prompt_interrupts_the_run(runner, ops_root, monkeypatch):
    """Breaker 66 G1: click turns a Ctrl-C at the prompt into Abort; the approve action's step
    failed with "Abort", ran its on_failure handler (a page) and exited 1. It is an interrupt,
    as at a step's own `approval:` prompt: the step journaled interrupted, no handler, exit 130."""
    import click

    from opsctl import approval

    def ctrl_c_at_the_prompt(question, yes):
        raise click.exceptions.Abort()  # what click.confirm raises on KeyboardInterrupt

    monkeypatch.setattr(approval, "confirm", ctrl_c_at_the_prompt)
    _write(ops_root, "ask", 1, """\
        name: ask
        version: 1
        steps:
          - id: ask
            action: approve
            with: {message: "go on?"}
            on_failure: [page]
          - id: page
            action: shell
            with: {command: "touch paged.txt"}
        """)
    result = runner.invoke(app, ["runbook", "run", "ask", "--json"])
    assert result.exit_code == 130, result.output
    runs = json.loads(runner.invoke(app, ["runbook", "history", "--json"]).stdout)
    assert runs[0]["status"] == "interrupted" and runs[0]["steps"] == {"ask": "interrupted"}, runs
    assert not (ops_root / "paged.txt").exists()


_RACE = """\
    name: race
    version: 1
    steps:
      - id: stubborn
        action: shell
        with: {{command: "{command}"}}
        timeout: 1
        retries: {{count: 2, backoff: 0}}
        on_failure: [page]
      - id: page
        action: shell
        with: {{command: "touch paged.txt"}}
    """


@pytest.mark.parametrize("command", [
    # a CI cancel as the attempt starts; the stop it begins (2 s of grace: TERM is trapped) runs
    # past the step's 1 s timeout
    "trap '' TERM; kill -TERM $PPID; sleep 30",
    # the timeout stops the attempt; a Ctrl-C comes while it is being stopped (the shell, given
    # SIGTERM by the stop, sends it to opsctl, its parent)
    "trap 'kill -INT $PPID' TERM; sleep 30",
], ids=["cancel-before-timeout", "ctrl-c-while-timed-out-attempt-stops"])
def test_an_interrupt_near_a_steps_timeout_stays_an_interrupt(runner, ops_root, ctrl_c, command):
    """Breaker 66 G5: an interrupt from outside that came just before a step's timeout, or while
    a timed-out attempt was being stopped, was taken for the timeout: the step was retried, its
    on_failure handler paged and the run exited 1; the second interrupt cut the stop short
    before its SIGKILL and the step's shell outlived the run. Now: interrupted, one attempt, no
    handler, exit 130, and nothing of the step left running."""
    import psutil

    _write(ops_root, "race", 1, _RACE.format(command=command))
    result = runner.invoke(app, ["runbook", "run", "race", "--json"])
    assert result.exit_code == 130, result.output
    runs = json.loads(runner.invoke(app, ["runbook", "history", "--json"]).stdout)
    assert runs[0]["steps"] == {"stubborn": "interrupted"}, runs
    records = json.loads(runner.invoke(app, ["runbook", "history", "--run", runs[0]["run_id"], "--json"]).stdout)
    assert records[-1]["attempts"] == 1, records[-1]
    assert not (ops_root / "paged.txt").exists()
    left = [p for p in psutil.Process().children(recursive=True) if "sleep 30" in " ".join(p.cmdline())]
    assert left == [], left
