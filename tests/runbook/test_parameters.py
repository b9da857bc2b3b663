"""Runbook parameters are data (issue 19 §1, issue 25 §5, issue 21): never shell code,
never another type than declared, never shown when secret; steps are checked against
their action's signature; a timed-out shell step leaves nothing running."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest

from opsctl.cli import app
from tests.runbook.runbook_support import write_runbook as _write
from tests.runbook.runbook_support import run_runbook, run_refused
from opsctl.runbook.actions import ACTIONS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def probe(monkeypatch) -> None:
    """An action that reports what it was given, with its Python type."""

    def probe(ctx, value: Any = None) -> dict:
        return {"value": value, "type": type(value).__name__}

    monkeypatch.setitem(ACTIONS, "probe", probe)


def _json(result) -> dict:
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout)


# --- shell injection ---------------------------------------------------------------------

HOSTILE = "x; id; touch INJECTED"


def test_validate_refuses_a_parameter_pasted_into_shell_text(runner, ops_root):
    path = _write(ops_root, "greet", 1, """\
        name: greet
        version: 1
        parameters:
          name: {type: string, default: world}
        steps:
          - id: hello
            action: shell
            with: {command: "echo hello {{ params.name }}"}
        """)
    result = runner.invoke(app, ["runbook", "validate", "greet"])
    assert result.exit_code == 2
    assert f"{path}:8:" in result.output and "shell injection" in result.output
    assert 'env: {NAME: "{{ params.name }}"}' in result.output and '"$NAME"' in result.output
    run = runner.invoke(app, ["runbook", "run", "greet", "-p", f"name={HOSTILE}"])
    assert run.exit_code == 2 and "shell injection" in run.output
    assert not (ops_root / "INJECTED").exists()


@pytest.mark.parametrize("command, env", [
    ('printf "%s" "$NAME"', {"NAME": "{{ params.name }}"}),  # GitHub's practice for run: steps
    ('printf "%s" "$OUT"', {"OUT": "{{ steps.first.outputs.stdout }}"}),  # step outputs are data too
])
def test_a_hostile_parameter_reaches_the_shell_as_data(runner, ops_root, command, env):
    step = {"id": "hello", "action": "shell", "with": {"command": command, **({"env": env} if env else {})}}
    doc = {"name": "greet", "version": 1, "parameters": {"name": {"type": "string", "default": "world"}},
           "steps": [{"id": "first", "action": "shell",
                      "with": {"command": 'printf "%s" "$NAME"', "env": {"NAME": "{{ params.name }}"}}}, step]}
    path = ops_root / "runbooks" / "greet" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    result = run_runbook(runner, "greet", "-p", f"name={HOSTILE}")
    assert result["steps"][1]["outputs"]["stdout"] == HOSTILE
    assert not (ops_root / "INJECTED").exists()


QUOTE_ESCAPES = "$(id>QUOTED);x"


@pytest.mark.parametrize("command", [
    'echo "hello {{ params.name | quote }}"',  # inside double quotes the single quotes are literal
    "echo 'name: {{ params.name | quote }}'",  # inside single quotes: closes them
    "eval echo {{ params.name | quote }}",  # eval parses the word again
    'sh -c "echo {{ params.name|quote }}"',  # so does sh -c
    "echo {{ params.name | quote | replace('x', 'y') }}",  # any filter chain
    "echo {% if params.name %}{{ params.name | quote }}{% endif %}",  # statements too
    "echo {{ 'constant' }} {{ params.name | e }}",
])
def test_validate_refuses_every_template_in_shell_text_quote_included(runner, ops_root, command):
    doc = {"name": "greet", "version": 1, "parameters": {"name": {"type": "string", "default": "world"}},
           "steps": [{"id": "hello", "action": "shell", "with": {"command": command}}]}
    path = ops_root / "runbooks" / "greet" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    result = runner.invoke(app, ["runbook", "validate", "greet"])
    assert result.exit_code == 2 and "shell injection" in result.output and "env:" in result.output, result.output
    run = run_refused(runner, "greet", "-p", f"name={QUOTE_ESCAPES}")
    assert "shell injection" in run, run
    assert not (ops_root / "QUOTED").exists()


def test_literal_shell_text_and_raw_blocks_stay_allowed(runner, ops_root):
    _write(ops_root, "lit", 1, """\
        name: lit
        version: 1
        steps:
          - id: a
            action: shell
            with: {command: "echo {% raw %}{{.Id}}{% endraw %} plain"}
        """)
    result = run_runbook(runner, "lit")
    assert result["steps"][0]["outputs"]["stdout"] == "{{.Id}} plain"


@pytest.mark.parametrize("name", ["LD_PRELOAD", "BASH_ENV", "PATH", "PYTHONPATH", "NODE_OPTIONS"])
def test_a_parameter_may_not_set_an_environment_variable_that_is_code(runner, ops_root, name):
    _write(ops_root, "envcode", 1, f"""\
        name: envcode
        version: 1
        parameters:
          lib: {{type: string, default: x}}
        steps:
          - id: a
            action: shell
            with: {{command: "true", env: {{{name}: "{{{{ params.lib }}}}"}}}}
        """)
    result = runner.invoke(app, ["runbook", "validate", "envcode"])
    assert result.exit_code == 2 and f"env.{name}" in result.output and "code" in result.output, result.output


def test_a_published_version_refused_by_the_new_rule_is_retired_not_edited(runner, ops_root):
    raw = """\
        name: fresh
        version: {v}
        parameters:
          hours: {{type: integer, default: 26}}
        steps:
          - id: check
            action: shell
            with: {{command: {command}}}
        """
    v1 = _write(ops_root, "fresh", 1, raw.format(v=1, command='"test 1 -le {{ params.hours }}"'))
    from opsctl.runbook.catalog import digest

    (ops_root / "runbooks" / "lock.json").write_text(json.dumps({"fresh@1": digest(v1)}))  # published before the rule
    latest = runner.invoke(app, ["runbook", "validate"])
    assert latest.exit_code == 2 and "fresh@1 is published: fix it as v2" in latest.output

    _write(ops_root, "fresh", 2, raw.format(v=2, command="'test 1 -le \"$HOURS\"', env: {HOURS: \"{{ params.hours }}\"}"))
    result = runner.invoke(app, ["runbook", "validate", "--json"])
    assert result.exit_code == 0, result.output
    doc = _json(result)
    assert doc["problems"] == [] and len(doc["retired"]) == 1 and "run fresh@2" in doc["retired"][0]
    refused = run_refused(runner, "fresh@1")
    assert "fresh@1 is retired" in refused and "run fresh@2" in refused, refused
    assert runner.invoke(app, ["runbook", "run", "fresh"]).exit_code == 0
    assert digest(v1) == json.loads((ops_root / "runbooks" / "lock.json").read_text())["fresh@1"]  # untouched


def test_shipped_runbooks_pass_the_shell_rule_with_restore_drill_v1_retired(runner, ops_root):
    import shutil

    shutil.copytree(REPO / "runbooks", ops_root / "runbooks")
    result = runner.invoke(app, ["runbook", "validate", "--json"])
    assert result.exit_code == 0, result.output
    doc = _json(result)
    assert [Path(r.split(":")[0]).relative_to(ops_root).as_posix() for r in doc["retired"]] == [
        "runbooks/restore-drill/v1.yaml"]
    refused = run_refused(runner, "restore-drill@1", "--dry-run")
    assert "run restore-drill@3" in refused, refused


# --- declared types ----------------------------------------------------------------------

TYPED = """\
    name: typed
    version: 1
    parameters:
      name: {type: string, default: a}
      count: {type: integer, default: 2}
      ratio: {type: number, default: 0.5}
      flag: {type: boolean, default: false}
    steps:
      - id: name
        action: probe
        with: {value: "{{ params.name }}"}
      - id: count
        action: probe
        with: {value: "{{ params.count }}"}
      - id: ratio
        action: probe
        with: {value: "{{ params.ratio }}"}
      - id: flag
        action: probe
        with: {value: "{{ params.flag }}"}
      - id: echoed
        action: probe
        with: {value: "{{ steps.name.outputs.value }}"}
    """


@pytest.mark.parametrize("given", ["null", "[a, b]", "{x: 1}", "12", "true", "~", ""])
def test_a_string_parameter_stays_the_string_given(runner, ops_root, probe, given):
    _write(ops_root, "typed", 1, TYPED)
    result = run_runbook(runner, "typed", "-p", f"name={given}")
    steps = {s["id"]: s["outputs"] for s in result["steps"]}
    assert steps["name"] == {"value": given, "type": "str"}
    assert steps["echoed"] == {"value": given, "type": "str"}  # a step output is not re-read either


def test_typed_parameters_keep_their_types(runner, ops_root, probe):
    _write(ops_root, "typed", 1, TYPED)
    result = run_runbook(runner, "typed", "-p", "count=7", "-p", "ratio=1e3", "-p", "flag=yes")
    steps = {s["id"]: s["outputs"] for s in result["steps"]}
    assert steps["count"] == {"value": 7, "type": "int"}
    assert steps["ratio"] == {"value": 1000.0, "type": "float"}
    assert steps["flag"] == {"value": True, "type": "bool"}


@pytest.mark.parametrize("given", ["count=null", "count=[a, b]", "count={x: 1}", "count=2.5", "ratio=null",
                                   "flag=null", "flag=[a, b]", "ratio={x: 1}"])
def test_a_value_that_does_not_fit_its_type_is_refused_before_any_step(runner, ops_root, probe, given):
    _write(ops_root, "typed", 1, TYPED)
    result = runner.invoke(app, ["runbook", "run", "typed", "-p", given])
    assert result.exit_code == 2
    name, _, value = given.partition("=")
    assert result.output.count("\n") == 1 and f"parameter '{name}'" in result.output and value in result.output
    assert "Traceback" not in result.output
    assert not (ops_root / ".opsctl" / "runs").exists()  # no step ran, no journal


def test_restore_drill_keeps_scratch_db_a_string(runner, ops_root):
    """-p scratch_db=null once became target_db None: a restore over the live database."""
    import shutil

    shutil.copytree(REPO / "runbooks", ops_root / "runbooks")
    for given in ("null", "[a, b]", "{x: 1}"):
        result = run_runbook(runner, "restore-drill", "-p", f"scratch_db={given}", "--dry-run")
        details = {s["id"]: s["detail"] for s in result["steps"]}
        shown = json.dumps(given)  # a string, never None, a list or a dict
        assert f'"target_db": {shown}' in details["restore"] and f'"name": {shown}' in details["drop-scratch"]
    bad = run_refused(runner, "restore-drill", "-p", "jobs=null", "--dry-run")
    assert "parameter 'jobs' is integer" in bad, bad


def test_a_default_may_use_parameters_declared_before_it(runner, ops_root, probe):
    _write(ops_root, "named", 1, """\
        name: named
        version: 1
        parameters:
          service: {type: string, default: transcribe}
          label: {type: string, default: "{{ params.service }}-nightly"}
          copies: {type: integer, default: 2}
          more: {type: integer, default: "{{ params.copies * 2 }}"}
        steps:
          - id: label
            action: probe
            with: {value: "{{ params.label }}"}
          - id: more
            action: probe
            with: {value: "{{ params.more }}"}
        """)
    doc = run_runbook(runner, "named")
    assert doc["steps"][0]["outputs"]["value"] == "transcribe-nightly"
    assert doc["steps"][1]["outputs"] == {"value": 4, "type": "int"}
    doc = run_runbook(runner, "named", "-p", "service=api")
    assert doc["steps"][0]["outputs"]["value"] == "api-nightly"


def test_a_default_using_a_later_parameter_is_refused_at_validate(runner, ops_root, probe):
    _write(ops_root, "later", 1, """\
        name: later
        version: 1
        parameters:
          label: {type: string, default: "{{ params.service }}-nightly"}
          service: {type: string, default: transcribe}
        steps:
          - id: label
            action: probe
            with: {value: "{{ params.label }}"}
        """)
    result = runner.invoke(app, ["runbook", "validate", "later"])
    assert result.exit_code == 2 and "refers to 'service', which is not declared before it" in result.output


# --- the action's signature --------------------------------------------------------------

@pytest.mark.parametrize("with_, reason", [
    ('{imagee: "worker:1.0"}', "action 'deploy' takes no argument 'imagee'"),
    ('{image: "worker:1.0", load_gates: "p95<1s"}', "action 'deploy' takes no argument 'load_gates'"),
    ('{image: "worker:1.0", backup: "yes"}', "backup: action 'deploy' takes bool"),
    ('{imagee: "worker:1.0"}', "action 'deploy' needs argument 'image'"),
    ('{image: "worker:1.0", wait: "{{ params.name }}"}', "wait: action 'deploy' takes bool"),
    ('{image: "worker:1.0", auto_promote: "no"}', "auto_promote: action 'deploy' takes bool"),
])
def test_validate_checks_with_against_the_action_signature(runner, ops_root, with_, reason):
    path = _write(ops_root, "ship", 1, f"""\
        name: ship
        version: 1
        parameters:
          name: {{type: string, default: x}}
        steps:
          - id: rollout
            action: deploy
            with: {with_}
        """)
    result = runner.invoke(app, ["runbook", "validate", "ship"])
    assert result.exit_code == 2 and reason in result.output and f"{path}:" in result.output, result.output
    planned = runner.invoke(app, ["runbook", "run", "ship", "--dry-run", "--json"])
    assert planned.exit_code == 2 and not planned.stdout.strip()  # never planned


# --- secrets -----------------------------------------------------------------------------

SECRET = "s3cr3t/T0ken+x"


def _forms(secret: str) -> list[str]:
    return [secret, quote(secret), quote(secret, safe=""), base64.b64encode(secret.encode()).decode()]


def test_secret_parameter_is_masked_on_every_output_path(runner, ops_root, tmp_path, monkeypatch):
    from tests.health.servers import ScriptedServer

    server = ScriptedServer([404])
    _write(ops_root, "hook", 1, """\
        name: hook
        version: 1
        parameters:
          token: {type: string, secret: true, required: true}
          base: {type: string, required: true}
        steps:
          - id: announce
            action: notify
            with: {message: "calling with {{ params.token }}"}
          - id: echo
            action: shell
            with:
              command: 'echo "token is $TOKEN"; printf %s "$TOKEN" | base64; echo "$LOUD";
                printf %s "$TOKEN" | od -An -tx1 -v | tr -d " \\n"; echo; printf %s "$TOKEN" | tr A-Z a-z'
              env: {TOKEN: "{{ params.token }}", LOUD: "{{ params.token | upper }}"}
          - id: call
            action: http
            with: {url: "{{ params.base }}/hook/{{ params.token | urlencode }}"}
        """)
    monkeypatch.setenv("OPSCTL_PARAM_TOKEN", SECRET)  # not -p: a command line is readable by every local user
    args = ["runbook", "run", "hook", "-p", f"base={server.url}"]
    try:
        outputs = [runner.invoke(app, args + ["--dry-run"]), runner.invoke(app, args + ["--dry-run", "--json"])]
        junit = tmp_path / "report.xml"
        run = runner.invoke(app, args + ["--json", "--junit", str(junit)])
    finally:
        server.close()
    assert run.exit_code == 1 and server.served == 1  # the http step really called with the token
    doc = _json(run)
    call = doc["steps"][2]
    assert call["status"] == "failed" and "GET *** answered 404" in call["detail"]  # the URL built from the token
    # derived values too; its hex and its lower case (breaker 42 R19, 44 T9) as any other form
    assert doc["steps"][1]["outputs"]["stdout"] == "token is ***\n***\n***\n***\n***"
    journal = ops_root / ".opsctl" / "runs" / f"{doc['run_id']}.jsonl"
    texts = {"dry-run table": outputs[0].output, "dry-run json": outputs[1].output, "run json and logs": run.output,
             "junit": junit.read_text(), "journal": journal.read_text()}
    assert outputs[0].exit_code == 0 and outputs[1].exit_code == 0
    for where, text in texts.items():
        for form in _forms(SECRET) + [SECRET.upper(), SECRET.lower(), SECRET.encode().hex()]:
            assert form not in text, (where, form)
    assert "***" in texts["junit"] and "***" in texts["journal"]
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o700


# --- timeouts ----------------------------------------------------------------------------

def test_a_timed_out_shell_step_leaves_nothing_running_and_retries_do_not_overlap(runner, ops_root):
    token = f"marker-{uuid.uuid4().hex[:8]}"
    _write(ops_root, "slow", 1, f"""\
        name: slow
        version: 1
        steps:
          - id: sleepy
            action: shell
            with:
              command: >-
                for p in $(cat pids.txt 2>/dev/null); do kill -0 $p 2>/dev/null && echo $p >> overlap.txt; done;
                echo $$ >> pids.txt; sleep 6; touch {token}
            timeout: 1
            retries: {{count: 2, backoff: 0}}
        """)
    result = run_runbook(runner, "slow", exit_code=1)
    step = result["steps"][0]
    assert step["status"] == "failed" and step["attempts"] == 3 and "timed out after 1s" in step["detail"]
    pids = [int(p) for p in (ops_root / "pids.txt").read_text().split()]
    assert len(pids) == 3
    assert not (ops_root / "overlap.txt").exists()  # each attempt began after the one before had gone
    alive = [p for p in psutil.process_iter(["cmdline", "status"])
             if token in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert alive == [] and not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                   for p in pids)
    assert not (ops_root / token).exists()


# --- one approval module -----------------------------------------------------------------

def test_every_way_of_asking_refuses_with_the_same_words(runner, ops_root, monkeypatch):
    from opsctl import approval
    from opsctl.cli import common
    from opsctl.config import load_project
    from opsctl.errors import UsageError
    from opsctl.infra.operations import approve as infra_approve

    monkeypatch.setenv("CI", "true")
    question = "delete everything"
    env = load_project(ops_root).env("local")
    said = []
    for ask in (lambda: common.confirm(question, False),
                lambda: approval.confirm(question, False),
                lambda: approval.at_terminal(question, env, False),
                lambda: infra_approve("up", env, yes=False, confirm_env=None, question=question,
                                      **approval.terminal())):
        with pytest.raises(UsageError) as refused:
            ask()
        said.append(str(refused.value))
    assert set(said) == {f"{question} needs approval: no terminal to ask on, pass --yes"}
    _write(ops_root, "gated", 1, """\
        name: gated
        version: 1
        steps:
          - id: gate
            action: approve
            with: {message: "delete everything"}
        """)
    result = run_refused(runner, "gated")
    assert said[0] in result, result


def test_logs_written_during_a_run_mask_the_secrets(capfd):
    import logging

    from opsctl.output import setup_logging
    from opsctl.runbook.secrets import Masker, masking_logs

    setup_logging("json")
    try:
        with masking_logs(Masker([SECRET])):
            logging.getLogger("opsctl.runbook.test").warning("calling /hook/%s", quote(SECRET))
        logging.getLogger("opsctl.runbook.test").warning("after the run: %s", "plain")
    finally:
        setup_logging("text")
    err = capfd.readouterr().err
    assert "/hook/***" in err and quote(SECRET) not in err and "after the run: plain" in err


def test_a_cancelled_run_stops_its_shell_step_processes(ops_root):
    """CI cancels a job with SIGTERM: the running shell step's process group goes with it."""
    import signal
    import subprocess
    import sys
    import time

    token = f"marker-{uuid.uuid4().hex[:8]}"
    _write(ops_root, "long", 1, f"""\
        name: long
        version: 1
        steps:
          - id: sleepy
            action: shell
            with: {{command: "echo $$ > pid.txt; sleep 30; touch {token}"}}
        """)
    said = ops_root / "stderr.txt"
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "runbook", "run", "long"], cwd=ops_root,
                            stdout=subprocess.DEVNULL, stderr=said.open("w"))
    pid_file = ops_root / "pid.txt"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (pid_file.exists() and pid_file.read_text().strip()):
        time.sleep(0.05)
    shell_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    try:  # once in the full suite it had not ended after 30 s: what it said is kept for that case
        assert proc.wait(timeout=30) != 0
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the run did not end on SIGTERM; it said: {said.read_text()[-2000:]!r}") from None
    alive = [p for p in psutil.process_iter(["cmdline", "status"])
             if token in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert alive == [] and not (psutil.pid_exists(shell_pid)
                                and psutil.Process(shell_pid).status() != psutil.STATUS_ZOMBIE)
    assert not (ops_root / token).exists()


def test_a_secret_on_the_command_line_is_warned_about_and_masked(runner, ops_root):
    _write(ops_root, "tok", 1, """\
        name: tok
        version: 1
        parameters:
          token: {type: string, secret: true, required: true}
        steps:
          - id: say
            action: shell
            with: {command: 'echo "$T"', env: {T: "{{ params.token }}"}}
        """)
    missing = run_refused(runner, "tok")
    assert "set OPSCTL_PARAM_TOKEN" in missing, missing
    result = runner.invoke(app, ["runbook", "run", "tok", "-p", f"token={SECRET}", "--json"])
    assert result.exit_code == 0, result.output
    assert "set OPSCTL_PARAM_TOKEN instead of -p" in result.stderr
    assert _json(result)["steps"][0]["outputs"]["stdout"] == "***" and SECRET not in result.output
