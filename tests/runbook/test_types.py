"""Types come from the declaration, all the way (issue 19 §1d): numbers are finite, integers
ASCII, `when:` is an expression over typed values (a string is never re-read as a boolean),
and a default built from a template is type-checked before any step runs (at validate
when the defaults it uses are known)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opsctl.cli import app
from opsctl.runbook.actions import ACTIONS
from tests.runbook.runbook_support import write_runbook
from tests.runbook.runbook_support import run_runbook, run_refused


@pytest.fixture
def probe(monkeypatch) -> None:
    def probe(ctx, value: Any = None) -> dict:
        return {"value": value, "type": type(value).__name__}

    monkeypatch.setitem(ACTIONS, "probe", probe)


TYPED = """\
    name: typed
    version: 1
    parameters:
      r: {type: number, default: 1.5}
      n: {type: integer, default: 2}
      s: {type: string, default: "yes"}
    steps:
      - id: first
        action: probe
        with: {value: "{{ params.r }}"}
      - id: wait
        action: wait
        with: {seconds: "{{ params.r / 1000 }}"}
    """


@pytest.mark.parametrize("given", ["r=1e999", "r=-1e400", "r=1E309", "n=٣", "n=３", "r=٣.5", "n=1٣", "r=inf",
                                   "r=nan"])
def test_a_non_finite_number_or_a_non_ascii_digit_is_refused_before_any_step(runner, ops_root, probe, given):
    write_runbook(ops_root, "typed", 1, TYPED)
    result = runner.invoke(app, ["runbook", "run", "typed", "-p", given])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "is integer" in line or "is number" in line, line
    assert not (ops_root / ".opsctl" / "runs").exists()


def test_ascii_numbers_still_fit(runner, ops_root, probe):
    write_runbook(ops_root, "typed", 1, TYPED)
    result = run_runbook(runner, "typed", "-p", "r=2.5e-3", "-p", "n=-7")
    assert result["steps"][0]["outputs"] == {"value": 0.0025, "type": "float"}


@pytest.mark.parametrize("default, reason", [
    (".inf", "default of 'r' is the non-finite number inf"),
    ('"{{ params.big * 10 }}"', "default of 'r' is the non-finite number inf"),
])
def test_a_non_finite_default_is_refused_at_validate(runner, ops_root, default, reason):
    write_runbook(ops_root, "inf", 1, f"""\
        name: inf
        version: 1
        parameters:
          big: {{type: number, default: 1.0e+308}}
          r: {{type: number, default: {default}}}
        steps:
          - id: w
            action: wait
            with: {{seconds: "{{{{ params.r }}}}"}}
        """)
    result = runner.invoke(app, ["runbook", "validate", "inf"])
    assert result.exit_code == 2 and reason in result.output, result.output
    run = run_refused(runner, "inf")
    assert not (ops_root / ".opsctl" / "runs").exists(), run


def test_a_non_finite_constant_argument_is_refused_at_validate(runner, ops_root):
    write_runbook(ops_root, "waits", 1, """\
        name: waits
        version: 1
        steps:
          - id: w
            action: wait
            with: {seconds: .inf}
        """)
    result = runner.invoke(app, ["runbook", "validate", "waits"])
    assert result.exit_code == 2 and "finite" in result.output, result.output


WHEN = """\
    name: cond
    version: 1
    parameters:
      s: {type: string, default: "x"}
      flag: {type: boolean, default: false}
      n: {type: integer, default: 3}
    steps:
      - id: on-string
        action: probe
        when: "{{ params.s }}"
      - id: on-flag
        action: probe
        when: "{{ params.flag }}"
      - id: bare
        action: probe
        when: "params.n > 2 and not params.flag"
    """


@pytest.mark.parametrize("given, runs", [("null", True), ("False", True), ("off", True), ("0", True), ("no", True),
                                         ("none", True), ("", False)])
def test_when_on_a_string_is_its_truth_never_its_text_read_as_a_boolean(runner, ops_root, probe, given, runs):
    write_runbook(ops_root, "cond", 1, WHEN)
    result = run_runbook(runner, "cond", "-p", f"s={given}")
    statuses = [s["status"] for s in result["steps"]]
    assert statuses == ["ok" if runs else "skipped", "skipped", "ok"]


def test_when_follows_typed_values(runner, ops_root, probe):
    write_runbook(ops_root, "cond", 1, WHEN)
    result = run_runbook(runner, "cond", "-p", "flag=true", "-p", "n=5")
    assert [s["status"] for s in result["steps"]] == ["ok", "ok", "skipped"]


@pytest.mark.parametrize("when", ["{{ params.s }} and {{ params.flag }}", "not {{ params.flag }}", "params.n >"])
def test_a_when_that_is_not_one_expression_is_refused_at_validate(runner, ops_root, probe, when):
    write_runbook(ops_root, "cond", 1, WHEN.replace('"params.n > 2 and not params.flag"', json.dumps(when)))
    result = runner.invoke(app, ["runbook", "validate", "cond"])
    assert result.exit_code == 2 and "when:" in result.output, result.output


def test_a_template_default_of_the_wrong_type_is_refused_at_validate(runner, ops_root, probe):
    write_runbook(ops_root, "deflt", 1, """\
        name: deflt
        version: 1
        parameters:
          base: {type: string, default: "2"}
          jobs: {type: integer, default: "{{ params.base }}0"}
        steps:
          - id: a
            action: probe
            with: {value: "{{ params.jobs }}"}
        """)
    result = runner.invoke(app, ["runbook", "validate", "deflt"])
    assert result.exit_code == 2 and "default of 'jobs' is str, not integer" in result.output, result.output


def test_a_template_default_from_a_given_value_is_checked_before_any_step(runner, ops_root, probe):
    write_runbook(ops_root, "deflt", 1, """\
        name: deflt
        version: 1
        parameters:
          base: {type: number, required: true}
          jobs: {type: integer, default: "{{ (params.base * 2) | int }}"}
          ratio: {type: number, default: "{{ params.base / 1e-320 }}"}
        steps:
          - id: a
            action: probe
            with: {value: "{{ params.jobs }}"}
        """)
    assert runner.invoke(app, ["runbook", "validate", "deflt"]).exit_code == 0
    run_runbook(runner, "deflt", "-p", "base=1e-300")
    bad = runner.invoke(app, ["runbook", "run", "deflt", "-p", "base=1e300"])  # ratio overflows to inf
    assert bad.exit_code == 2 and "default of 'ratio'" in bad.output, bad.output


def test_a_dry_run_plans_a_when_that_compares_a_later_output(runner, ops_root, probe):
    write_runbook(ops_root, "later", 1, """\
        name: later
        version: 1
        steps:
          - id: count
            action: probe
            with: {value: 3}
          - id: more
            action: probe
            when: "steps.count.outputs.value > 2"
        """)
    result = run_runbook(runner, "later", "--dry-run")
    assert [s["status"] for s in result["steps"]] == ["planned", "planned"]
    ran = runner.invoke(app, ["runbook", "run", "later", "--json"])
    assert [s["status"] for s in json.loads(ran.stdout)["steps"]] == ["ok", "ok"]


def test_the_journal_stays_json_when_an_action_returns_inf(runner, ops_root, monkeypatch):
    monkeypatch.setitem(ACTIONS, "ratio", lambda ctx: {"ratio": float("inf"), "nothing": float("nan")})
    write_runbook(ops_root, "ratio", 1, """\
        name: ratio
        version: 1
        steps:
          - id: r
            action: ratio
        """)
    result = run_runbook(runner, "ratio")
    journal = (ops_root / ".opsctl" / "runs" / f"{result['run_id']}.jsonl").read_text()
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}")) for line in journal.splitlines()]
    assert records[1]["outputs"] == {"ratio": "inf", "nothing": "nan"}


BOUNDED = """\
    name: bounded
    version: 1
    parameters:
      keep: {type: integer, default: 2, minimum: 1, maximum: 30}
      ratio: {type: number, default: 0.5, minimum: 0, maximum: 1}
    steps:
      - id: w
        action: probe
        with: {value: "{{ params.keep }}"}
    """


@pytest.mark.parametrize("given, said", [
    (["-p", "keep=0"], "parameter 'keep' must be at least 1, got 0"),
    (["-p", "keep=-1"], "parameter 'keep' must be at least 1, got -1"),
    (["-p", "keep=31"], "parameter 'keep' must be at most 30, got 31"),
    (["-p", "ratio=1.5"], "parameter 'ratio' must be at most 1, got 1.5"),
])
def test_a_parameter_outside_its_declared_bounds_is_refused_before_any_step(runner, ops_root, probe, given, said):
    """Breaker 27 F11: `-p keep_full=0` was taken, planned by the dry run, and four steps of
    nightly-backup ran before the step that could not take it stopped the run with no alert.
    A parameter's `minimum`/`maximum` (JSON Schema's keywords) are checked with its type."""
    write_runbook(ops_root, "bounded", 1, BOUNDED)
    for extra in (["--dry-run"], []):
        refused = run_refused(runner, "bounded", *given, *extra)
        assert said in refused, refused
    assert not (ops_root / ".opsctl" / "runs").exists()
    doc = run_runbook(runner, "bounded", "-p", "keep=1")
    assert doc["steps"][0]["outputs"] == {"value": 1, "type": "int"}


def test_a_secret_number_outside_its_bounds_is_refused_without_showing_it(runner, ops_root, probe, monkeypatch):
    write_runbook(ops_root, "pin", 1, """\
        name: pin
        version: 1
        parameters:
          pin: {type: integer, secret: true, required: true, minimum: 1000}
        steps:
          - id: w
            action: probe
        """)
    monkeypatch.setenv("OPSCTL_PARAM_PIN", "737")
    refused = run_refused(runner, "pin")
    assert "parameter 'pin' must be at least 1000, got (secret); set OPSCTL_PARAM_PIN" in refused, refused
    assert "737" not in refused and "-p pin" not in refused, refused


@pytest.mark.parametrize("spec, said", [
    ("{type: string, default: x, minimum: 3}", "'string' is not one of ['integer', 'number']"),
    ("{default: x, maximum: 3}", "'type' is a required property"),
    ("{type: boolean, default: true, minimum: 0}", "'boolean' is not one of ['integer', 'number']"),
    ("{type: integer, default: 5, minimum: 10, maximum: 2}", "minimum 10 is above maximum 2; no value fits"),
    # breaker 30 F2-F4: whole numbers in the message, bounds no value meets, a default outside them
    ("{type: integer, default: 5, minimum: 1000001, maximum: 1000000}",
     "minimum 1000001 is above maximum 1000000; no value fits"),
    ("{type: integer, default: 5, minimum: 1.5, maximum: 1.9}", "no integer lies between minimum 1.5 and maximum 1.9"),
    ("{type: number, default: 5, minimum: .inf}", "minimum must be a finite number, not inf"),
    ("{type: number, default: 5, maximum: .nan}", "maximum must be a finite number, not nan"),
    ("{type: integer, default: 0, minimum: 1}", "default of 'p' must be at least 1, got 0: every run that keeps it"),
    ("{type: integer, minimum: " + "9" * 400 + ", default: 5}", "default of 'p' must be at least ~10^400, got 5"),
    ("{type: integer, minimum: " + "9" * 5000 + ", default: 5}",
     "not valid YAML: the value 999999999999... (5000 characters) can't be read: an integer of more than 4300 digits"),
])
def test_bounds_that_cannot_mean_anything_fail_validate(runner, ops_root, probe, spec, said):
    """Breaker 28 F9: `minimum` on a string parameter was taken and meant nothing (`-p s=ab`
    ran). Bounds go with a number type, and a minimum above the maximum admits no value: both
    are the runbook's fault, named by `validate` (file:line) and refused by a run."""
    path = write_runbook(ops_root, "odd", 1, f"""\
        name: odd
        version: 1
        parameters:
          p: {spec}
        steps:
          - id: w
            action: probe
        """)
    result = runner.invoke(app, ["runbook", "validate", "odd"])
    assert result.exit_code == 2 and f"{path}:" in result.output and said in result.output, result.output
    assert said in run_refused(runner, "odd")


def test_a_rendered_default_outside_the_bounds_fails_validate(runner, ops_root, probe):
    path = write_runbook(ops_root, "rendered", 1, """\
        name: rendered
        version: 1
        parameters:
          base: {type: integer, default: 1}
          keep: {type: integer, default: "{{ params.base - 1 }}", minimum: 1}
        steps:
          - id: w
            action: probe
        """)
    result = runner.invoke(app, ["runbook", "validate", "rendered"])
    said = "default of 'keep' must be at least 1, got 0 (rendered from the defaults)"
    assert result.exit_code == 2 and f"{path}:" in result.output and said in result.output, result.output


@pytest.mark.parametrize("given, said", [
    ("9" * 400, None),  # within: a number Python holds whole runs (breaker 30 F1: `:g` overflowed)
    ("-" + "9" * 400, "parameter 'keep' must be at least 1, got -~10^400; pass -p keep=N"),
    ("9" * 5000, "parameter 'keep' is integer, got '999999999999999999999999...' (5000 characters)"),
])
def test_a_huge_integer_is_taken_or_refused_in_one_line(runner, ops_root, probe, given, said):
    write_runbook(ops_root, "huge", 1, """\
        name: huge
        version: 1
        parameters:
          keep: {type: integer, default: 2, minimum: 1}
        steps:
          - id: w
            action: probe
        """)
    if said is None:
        doc = run_runbook(runner, "huge", "-p", f"keep={given}", "--dry-run")
        assert doc["status"] == "planned", doc
    else:
        assert said in run_refused(runner, "huge", "-p", f"keep={given}")
