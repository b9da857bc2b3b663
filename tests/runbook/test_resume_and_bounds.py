"""Reviewer 39: a resume's preview ran the remaining steps for real (R1); `--resume ""` (an
unset $RUN_ID) started a fresh run that repeated every step (R2); a step's timeout or backoff
of .nan or .inf passed validate and failed the run oddly (R3); a prune step's `keep_last: 0`
kept only the newest backup of each kind (R4). Each is refused before any step, exit 2."""

from __future__ import annotations

import pytest

from opsctl.cli import app
from tests.runbook.runbook_support import run_refused, write_runbook

MARKED = """\
    name: marked
    version: 1
    steps:
      - id: first
        action: shell
        with: {command: "touch RAN"}
    """


@pytest.mark.parametrize("args, said", [
    (["--resume", "20261130T014500-a1b2c3", "--dry-run"], "does not combine with --resume"),
    (["--resume", ""], "'' is not a run id"),
    (["--from-step", "first"], "--from-step STEP goes with --resume RUN_ID"),
    (["--resume", "20261130T014500-a1b2c3", "--from-step", " "], "--from-step STEP goes with --resume RUN_ID")])
def test_resume_options_that_would_run_steps_unasked_are_refused(runner, ops_root, args, said):
    write_runbook(ops_root, "marked", 1, MARKED)
    line = run_refused(runner, "marked", "--yes", *args)
    assert said in line, line
    assert not (ops_root / "RAN").exists()


@pytest.mark.parametrize("field, value", [("timeout", ".nan"), ("timeout", ".inf"), ("timeout", "1.0e+12"),
                                          ("retries", "{count: 1, backoff: .nan}"),
                                          ("retries", "{count: 1, backoff: 1.0e+300}")])
def test_a_step_timeout_or_backoff_out_of_range_fails_validate(runner, ops_root, field, value):
    write_runbook(ops_root, "timed", 1, f"""\
        name: timed
        version: 1
        steps:
          - id: first
            action: shell
            with: {{command: "touch RAN"}}
            {field}: {value}
        """)
    result = runner.invoke(app, ["runbook", "validate", "timed"])
    assert result.exit_code == 2 and "must be a number of seconds up to" in result.output, result.output
    run_refused(runner, "timed", "--yes")
    assert not (ops_root / "RAN").exists()


@pytest.mark.parametrize("rules, said", [("keep_last: 0", "keep_last must be at least 1, not 0"),
                                         ("keep_daily: -3", "keep_daily must be at least 0, not -3")])
def test_a_prune_step_out_of_range_is_refused_before_any_step(runner, ops_root, rules, said):
    write_runbook(ops_root, "pruning", 1, f"""\
        name: pruning
        version: 1
        steps:
          - id: first
            action: shell
            with: {{command: "touch RAN"}}
          - id: prune
            action: prune
            with: {{{rules}}}
        """)
    for extra in ([], ["--dry-run"]):
        line = run_refused(runner, "pruning", "--yes", *extra)
        assert said in line, line
    assert not (ops_root / "RAN").exists()
