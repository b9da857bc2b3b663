"""`opsctl infra` from the command line, on this repository's ops root, without the pulumi CLI."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]
NOT_INSTALLED = ("opsctl: error: the pulumi CLI is not installed (opsctl infra runs it through Pulumi's "
                 "Automation API); install it from https://www.pulumi.com/docs/install/, then rerun")


def invoke(runner, root, *args, input=None):
    return runner.invoke(app, ["--root", str(root), "infra", *args], input=input)


@pytest.mark.parametrize("args", [
    ["preview", "--env", "staging"],
    ["up", "--env", "staging", "--yes"],
    ["refresh", "--env", "staging"],
    ["outputs", "--env", "production", "--json"],
    ["destroy", "--env", "staging", "--yes"],
])
def test_without_the_pulumi_cli_one_line_says_how_to_install_it(runner, no_pulumi, args):
    result = invoke(runner, REPO, *args)
    assert result.exit_code == 2
    assert result.output.strip() == NOT_INSTALLED
    assert result.stdout == ""  # nothing on stdout, not even with --json


def test_local_environment_is_refused_in_one_line(runner, no_pulumi):
    result = invoke(runner, REPO, "preview", "--env", "local")
    assert result.exit_code == 2
    assert result.output.strip() == ("opsctl: error: 'local' is a local environment: opsctl infra is for kubernetes "
                                     "environments (the embedded platform comes up with 'opsctl local up')")


def test_up_in_ci_needs_yes(runner, no_pulumi):
    result = invoke(runner, REPO, "up", "--env", "staging")
    assert result.exit_code == 2
    assert result.output.strip() == ("opsctl: error: update 'staging' (stack staging) needs approval: "
                                     "no terminal to ask on, pass --yes")


def test_destroying_a_protected_environment_in_ci_needs_its_name(runner, no_pulumi):
    result = invoke(runner, REPO, "destroy", "--env", "production", "--yes")
    assert result.exit_code == 2
    assert "'production' is protected: destroying it without a terminal needs --yes --confirm-env production" \
        in result.output
    result = invoke(runner, REPO, "destroy", "--env", "production", "--yes", "--confirm-env", "staging")
    assert result.exit_code == 2
    assert "--confirm-env 'staging' is not 'production'; nothing was destroyed" in result.output
    # approved: it gets as far as needing the CLI
    result = invoke(runner, REPO, "destroy", "--env", "production", "--yes", "--confirm-env", "production")
    assert result.exit_code == 2 and result.output.strip() == NOT_INSTALLED


def test_destroy_at_a_terminal_asks_for_the_name_typed(runner, no_pulumi, monkeypatch):
    from opsctl import approval

    monkeypatch.setattr(approval, "is_interactive", lambda: True)
    result = invoke(runner, REPO, "destroy", "--env", "production", input="prod\n")
    assert result.exit_code == 2
    assert "Type its name to destroy it" in result.output
    assert "typed 'prod', not 'production'; nothing was destroyed" in result.output
    result = invoke(runner, REPO, "destroy", "--env", "production", input="production\n")
    assert result.output.strip().endswith(NOT_INSTALLED)  # approved; then the missing CLI stops it


def test_policy_checks_run_offline(runner, no_pulumi):
    result = invoke(runner, REPO, "policy", "--env", "production", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["violations"] == [] and doc["stack"] == "production"
    assert doc["resources"] > 60


def test_a_planted_violation_fails_policy_and_stops_preview(runner, no_pulumi, program_copy):
    database = program_copy / "stacks" / "transcribe_infra" / "database.py"
    text = database.read_text()
    assert "publicly_accessible=False," in text
    database.write_text(text.replace("publicly_accessible=False,", "publicly_accessible=True,"))
    violation = ("[no-public-database] aws:rds/instance:Instance 'transcribe-staging-instance': "
                 "publicly_accessible must be False")

    result = invoke(runner, program_copy, "policy", "--env", "staging")
    assert result.exit_code == 1
    assert result.stdout.strip() == violation

    # preview checks the policies before it would start the engine (this stand-in CLI never runs)
    fake = no_pulumi / "bin" / "pulumi"
    fake.write_text("#!/bin/sh\necho 'the pulumi CLI must not be started' >&2\nexit 97\n")
    fake.chmod(0o755)
    result = invoke(runner, program_copy, "preview", "--env", "staging")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"opsctl: error: 1 policy violation(s), nothing was changed; first: {violation} "
        "(all: 'opsctl infra policy --env staging')")


def test_stack_config_and_opsctl_yaml_must_agree(runner, no_pulumi, program_copy):
    config = yaml.safe_load((program_copy / "opsctl.yaml").read_text())
    config["environments"]["staging"]["buckets"]["audio"] = "somewhere-else"
    (program_copy / "opsctl.yaml").write_text(yaml.safe_dump(config))
    result = invoke(runner, program_copy, "preview", "--env", "staging")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "opsctl: error: Pulumi.staging.yaml sets transcribe:audioBucket='transcribe-staging-audio' but opsctl.yaml "
        "has environments.staging.buckets.audio='somewhere-else'; make them the same")


@pytest.mark.parametrize("line, said", [
    ("  transcribe:region: [us-east-1\n", "expected ',' or ']'"),  # syntax
    ("  transcribe:since: 2026-02-30\n", "the value 2026-02-30 can't be read: day is out of range"),  # not buildable
])
def test_an_unreadable_stack_file_is_one_line(runner, no_pulumi, program_copy, line, said):
    stack_file = program_copy / "stacks" / "Pulumi.staging.yaml"
    stack_file.write_text(stack_file.read_text() + line)
    result = invoke(runner, program_copy, "preview", "--env", "staging")
    out = result.output.strip()
    assert result.exit_code == 2 and len(out.splitlines()) == 1, result.output
    assert "Pulumi.staging.yaml: not valid YAML (line" in out and said in out, out


@pytest.mark.parametrize("old, new, said", [
    # Pulumi's ConfigTypeError (get_int of a boolean): breaker 44 T10, "unexpected ConfigTypeError"
    ("transcribe:dbAllocatedStorage: 50", "transcribe:dbAllocatedStorage: yes",
     "Configuration 'transcribe:dbAllocatedStorage' value 'true' is not a valid 'int'"),
    # Pulumi's ConfigMissingError (a required key unset)
    ("  transcribe:clusterName: transcribe-staging\n", "",
     "Missing required configuration variable 'transcribe:clusterName'"),
    # the program's own ValueError for a value it cannot build from
    ("transcribe:gpuCapacityType: SPOT", "transcribe:gpuCapacityType: CHEAP",
     "transcribe:gpuCapacityType must be SPOT or ON_DEMAND"),
    ("transcribe:dbAllocatedStorage: 50", "transcribe:dbAllocatedStorage: 50\n  transcribe:dbBackupRetentionDays: 3",
     "keep at least 7 days of database backups"),
    # breaker 45 F6: a number where a list goes (TypeError), a mapping where a tag value goes (was the
    # SDK's multi-line AssertionError, "Unexpected type"; breaker 45 F7: the program's tag reader names it)
    ("transcribe:gpuInstanceTypes: [g5.xlarge, g6.xlarge]", "transcribe:gpuInstanceTypes: 7",
     "transcribe:gpuInstanceTypes is 7, not a list of instance types"),
    ("transcribe:gpuMaxSize: 6", "transcribe:gpuMaxSize: 6\n  transcribe:tags: {a: {b: [1, {c: d}]}}",
     "transcribe:tags: tag 'a' is a mapping"),
])
def test_a_value_the_program_refuses_is_one_line_naming_the_stack_file(runner, no_pulumi, program_copy,
                                                                        old, new, said):
    stack_file = program_copy / "stacks" / "Pulumi.staging.yaml"
    text = stack_file.read_text()
    assert old in text
    stack_file.write_text(text.replace(old, new))
    fake = no_pulumi / "bin" / "pulumi"  # preview refuses before it would start the engine
    fake.write_text("#!/bin/sh\necho 'the pulumi CLI must not be started' >&2\nexit 97\n")
    fake.chmod(0o755)
    for args in (["policy", "--env", "staging"], ["preview", "--env", "staging"]):
        result = invoke(runner, program_copy, *args)
        out = result.output.strip()
        assert result.exit_code == 2 and len(out.splitlines()) == 1, (args, result.output)
        assert out.startswith(f"opsctl: error: {stack_file}: the Pulumi program refuses this stack's config ("), out
        assert said in out and out.endswith("; fix the value it names"), out
        assert "unexpected" not in out and "must not be started" not in out


@pytest.mark.parametrize("text", ["config: [1, 2]\n", "config: hello\n", "- 1\n- 2\n"])
def test_a_stack_file_that_is_no_mapping_is_one_line(runner, no_pulumi, program_copy, text):
    stack_file = program_copy / "stacks" / "Pulumi.staging.yaml"
    stack_file.write_text(text)
    result = invoke(runner, program_copy, "policy", "--env", "staging")
    out = result.output.strip()
    assert result.exit_code == 2 and len(out.splitlines()) == 1, result.output
    assert out.startswith(f"opsctl: error: {stack_file}: ") and "mapping" in out and "unexpected" not in out, out


def test_a_missing_program_is_named(runner, no_pulumi, program_copy):
    shutil.rmtree(program_copy / "stacks")
    result = invoke(runner, program_copy, "preview", "--env", "staging")
    assert result.exit_code == 2
    assert "holds no Pulumi.yaml; point environments.staging.pulumi.program" in result.output


def test_a_pulumi_cli_that_does_not_run_is_reported(runner, no_pulumi):
    broken = no_pulumi / "bin" / "pulumi"
    broken.write_text("#!/bin/sh\nexit 97\n")
    broken.chmod(0o755)
    result = invoke(runner, REPO, "outputs", "--env", "staging")
    assert result.exit_code == 2
    assert result.output.startswith(f"opsctl: error: the pulumi CLI at {broken} does not run or is too old")
    assert result.output.strip().endswith("install a current one from https://www.pulumi.com/docs/install/")


def test_opsctl_help_does_not_import_pulumi():
    import subprocess

    code = "import sys; from opsctl.cli import app; print(sorted(m for m in sys.modules if m.startswith('pulumi')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


RECORDING_CLI = """#!{python}
import json, os, sys
with open({record!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = [a for a in sys.argv[1:] if a != "--non-interactive"]
if args[:1] == ["version"]:
    print("v{version}")  # the SDK's own: what the Automation API accepts
elif args[:1] == ["config"] and "set" not in args and "set-all" not in args:
    print("{{}}")
elif args[:1] in (["up"], ["preview"], ["destroy"], ["refresh"]):
    sys.exit("error: this stand-in CLI runs no operation")
"""
SECRET_LIKE = re.compile(r"[0-9a-fA-F]{32,}|[A-Za-z0-9+/=_-]{32,}")


@pytest.mark.parametrize("args", [["up", "--env", "staging", "--yes"], ["preview", "--env", "production"],
                                  ["refresh", "--env", "staging"], ["destroy", "--env", "staging", "--yes"]])
def test_no_secret_reaches_the_command_line_of_any_pulumi_process(runner, no_pulumi, args):
    """What the Automation API runs, recorded by a stand-in `pulumi`: every argv of every child."""
    record = no_pulumi / "argv.jsonl"
    cli = no_pulumi / "bin" / "pulumi"
    from importlib.metadata import version

    cli.write_text(RECORDING_CLI.format(python=sys.executable, record=str(record), version=version("pulumi")))
    cli.chmod(0o755)
    result = invoke(runner, REPO, *args)
    assert result.exit_code == 1 and "this stand-in CLI runs no operation" in result.output, result.output
    children = [json.loads(line) for line in record.read_text().splitlines()]
    assert [a for a in children if args[0] in a], children  # the operation itself was asked for
    for argv in children:
        assert not ("config" in argv and ("set" in argv or "set-all" in argv)), argv
        assert not any("--secret" in a or "AuthToken" in a for a in argv), argv
        assert not [a for a in argv if SECRET_LIKE.fullmatch(a)], argv


def test_an_api_open_to_the_internet_in_opsctl_yaml_is_refused_in_one_line(runner, no_pulumi, program_copy):
    config = yaml.safe_load((program_copy / "opsctl.yaml").read_text())
    config["environments"]["staging"]["kubernetes"]["api_allowed_cidrs"] = ["0.0.0.0/0"]
    (program_copy / "opsctl.yaml").write_text(yaml.safe_dump(config))
    result = invoke(runner, program_copy, "policy", "--env", "staging")
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"opsctl: error: {program_copy / 'opsctl.yaml'}: environments.staging.kubernetes.api_allowed_cidrs: "
        "Value error, 0.0.0.0/0 opens the cluster API to the whole internet; list your office, VPN or CI egress "
        "ranges, or none (private)")


def test_allowed_api_ranges_must_agree_with_the_stack_config(runner, no_pulumi, program_copy):
    config = yaml.safe_load((program_copy / "opsctl.yaml").read_text())
    config["environments"]["staging"]["kubernetes"]["api_allowed_cidrs"] = ["203.0.113.0/24"]
    (program_copy / "opsctl.yaml").write_text(yaml.safe_dump(config))
    result = invoke(runner, program_copy, "policy", "--env", "staging")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "opsctl: error: Pulumi.staging.yaml sets transcribe:apiAllowedCidrs=[] but opsctl.yaml has "
        "environments.staging.kubernetes.api_allowed_cidrs=['203.0.113.0/24']; make them the same")
    stack_file = program_copy / "stacks" / "Pulumi.staging.yaml"
    stack_file.write_text(stack_file.read_text() + "  transcribe:apiAllowedCidrs: [203.0.113.0/24]\n")
    result = invoke(runner, program_copy, "policy", "--env", "staging", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True
