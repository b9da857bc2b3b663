"""Breaker 45 F7: a stack config value of the wrong type or out of bounds is one line, exit 2.

`opsctl infra policy` and `preview` ran the program on `dbInstanceClass: [a, b]` (Pulumi's
`Config.get` hands over the JSON text '["a","b"]', which became the RDS instance class),
`dbAllocatedStorage: 0` (turned into 50 by `or 50`), `kubernetesVersion: 1.30` (YAML's 1.3),
tag values that were numbers, and `environment: production` in the staging stack, and said
"every policy passes". Each case below now names the stack file and the key, says what is
wrong and what to write, exits 2, and pulumi never starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from opsctl.cli import app

REFUSED = "the Pulumi program refuses this stack's config ("


@pytest.fixture
def program_copy(no_pulumi, program_copy):
    """conftest's copy of the ops root, with a `pulumi` on PATH that must never be started."""
    fake = no_pulumi / "bin" / "pulumi"  # preview refuses before it would start the engine
    fake.write_text("#!/bin/sh\necho 'the pulumi CLI must not be started' >&2\nexit 97\n")
    fake.chmod(0o755)
    return program_copy


def set_value(stack_file: Path, key: str, yaml_value: str) -> None:
    """Write `transcribe:<key>: <yaml_value>` into the stack file: replace its line, or add one."""
    full = key if ":" in key else f"transcribe:{key}"
    lines = stack_file.read_text().splitlines()
    found = [i for i, line in enumerate(lines) if line.strip().startswith(f"{full}:")]
    new = f"  {full}: {yaml_value}"
    if found:
        lines[found[0]] = new
    else:
        lines.append(new)
    stack_file.write_text("\n".join(lines) + "\n")


def refusals(runner, root: Path) -> list[str]:
    """The one output line of `infra policy` and of `infra preview` on staging, each exit 2."""
    lines = []
    for args in (["policy", "--env", "staging"], ["preview", "--env", "staging"]):
        result = runner.invoke(app, ["--root", str(root), "infra", *args])
        out = result.output.strip()
        assert result.exit_code == 2 and len(out.splitlines()) == 1, (args, result.exit_code, result.output)
        assert "unexpected" not in out and "must not be started" not in out, out
        lines.append(out)
    return lines


# (key, YAML value, what the line says); every one passed every policy before.
PROGRAM_REFUSES = [
    # a list where a string goes: Config.get gave its JSON text
    ("dbInstanceClass", "[a, b]", 'transcribe:dbInstanceClass is a list ["a", "b"], not a string; '
                                  "write one value, e.g. transcribe:dbInstanceClass: db.t4g.medium"),
    ("cacheNodeType", "[cache.t4g.small]", 'transcribe:cacheNodeType is a list ["cache.t4g.small"], not a string'),
    ("clusterName", "[x]", 'transcribe:clusterName is a list ["x"], not a string; '
                           "write one value, e.g. transcribe:clusterName: transcribe-staging"),
    ("kubernetesVersion", "['1.33']", 'transcribe:kubernetesVersion is a list ["1.33"], not a string'),
    # a mapping or a number where a string goes
    ("clusterName", "{a: {b: c}}", 'transcribe:clusterName is a mapping {"a": {"b": "c"}}, not a string'),
    ("clusterName", "5", "transcribe:clusterName is the number 5, not a string"),
    ("vpcCidr", "true", "transcribe:vpcCidr is the boolean true, not a string"),
    ("cacheNodeType", "", "transcribe:cacheNodeType is empty (null), not a string"),
    ("clusterName", "' '", "transcribe:clusterName is empty; write a value, "
                           "e.g. transcribe:clusterName: transcribe-staging"),
    # lists of something else than names
    ("availabilityZones", "[1, 2]", "transcribe:availabilityZones holds the number 1: every entry must be a "
                                    "non-empty string; write e.g. transcribe:availabilityZones: [eu-west-1a,"),
    ("availabilityZones", "[null, null]", "transcribe:availabilityZones holds empty (null): every entry must be"),
    ("availabilityZones", "eu-west-1a", "transcribe:availabilityZones is 'eu-west-1a', not a list of strings"),
    ("gpuInstanceTypes", "[]", "transcribe:gpuInstanceTypes is an empty list: name at least 1"),
    # the Kubernetes version
    ("kubernetesVersion", "1.30", "transcribe:kubernetesVersion is the number 1.3 (YAML reads an unquoted 1.30 "
                                  "as the number 1.3), not a MAJOR.MINOR string; quote it"),
    ("kubernetesVersion", "latest", "transcribe:kubernetesVersion is 'latest', not a Kubernetes MAJOR.MINOR version"),
    # numbers out of AWS's bounds (an explicit 0 is not the default)
    ("dbAllocatedStorage", "0", "transcribe:dbAllocatedStorage is 0, outside 20 to 65536 GiB"),
    ("dbAllocatedStorage", "-5", "transcribe:dbAllocatedStorage is -5, outside 20 to 65536 GiB"),
    ("dbAllocatedStorage", str(10**40), "transcribe:dbAllocatedStorage is 10000000000000000000... (41 digits), "
                                        "outside 20 to 65536 GiB"),
    ("gpuMaxSize", str(10**30), "transcribe:gpuMaxSize is 10000000000000000000... (31 digits), outside 1 to "
                                "40000 GPUs"),
    ("dbBackupRetentionDays", "99999", "transcribe:dbBackupRetentionDays is 99999, outside 0 to 35 days"),
    # tags: a mapping of string to string
    ("tags", "{team: 5}", "transcribe:tags: tag 'team' is the number 5, not a string; quote it, "
                          "e.g. transcribe:tags: {team: '5'}"),
    ("tags", "{team: null}", "transcribe:tags: tag 'team' is empty (null), not a string; write text ('' for none)"),
    ("tags", "{team: true}", "transcribe:tags: tag 'team' is the boolean true, not a string"),
    ("tags", "[team]", 'transcribe:tags is a list ["team"], not a mapping of tag name to text'),
]

SIXTY_TAGS = "{" + ", ".join(f"t{i}: x" for i in range(60)) + "}"
# Breaker 47: values of the right type that passed every policy, but AWS or EKS refuse them, or
# they silently change meaning (a tag the program overrides, a backup floor that named no key).
AWS_REFUSES = [
    # tags: AWS's reserved prefix, its characters, 50 per resource with the program's and Karpenter's
    ("tags", "{'aws:team': speech}", "transcribe:tags: tag 'aws:team': its name starts with 'aws:', a prefix AWS "
                                     "keeps for its own tags; write e.g. transcribe:tags: {team: speech}"),
    ("tags", "{team: 'AWS:speech'}", "transcribe:tags: tag 'team': its value starts with 'AWS:', a prefix AWS keeps"),
    ("tags", SIXTY_TAGS, "transcribe:tags has 60 tags: with the 9 the program and Karpenter add (project, "
                         "environment, managed-by; Karpenter's 6 on a GPU node) a resource would carry 69, and AWS "
                         "takes 50; keep at most 41"),
    ("tags", "{'team name#1!': 'x*y'}", "transcribe:tags: tag 'team name#1!': its name holds '#'; AWS takes only "
                                        "letters, digits, spaces and _ . : / = + - @ in tags"),
    ("tags", "{team: 'x*y'}", "transcribe:tags: tag 'team': its value holds '*'; AWS takes only letters"),
    # a required tag the program would silently override, and keys the program or Karpenter set
    ("tags", "{environment: production}", "transcribe:tags: tag 'environment' is 'production', but the program tags "
                                          "every resource environment='staging'; remove it from transcribe:tags"),
    ("tags", "{project: other}", "transcribe:tags: tag 'project' is 'other', but the program tags every resource "
                                 "project='transcribe'"),
    ("tags", "{Name: web}", "transcribe:tags: tag 'Name' is one the program or Karpenter sets itself"),
    ("tags", "{'opsctl:role': read-replica}", "transcribe:tags: tag 'opsctl:role' is one the program or Karpenter"),
    ("tags", "{'kubernetes.io/cluster/x': owned}", "transcribe:tags: tag 'kubernetes.io/cluster/x' is one the"),
    # Availability Zones: of aws:region (eu-west-1 here), by name, each once
    ("availabilityZones", "[us-east-1a, us-east-1b]",
     "transcribe:availabilityZones holds 'us-east-1a', not an Availability Zone of aws:region eu-west-1 (its name "
     "is the region's code and a letter); write e.g. transcribe:availabilityZones: [eu-west-1a, eu-west-1b, "
     "eu-west-1c]"),
    ("availabilityZones", "[eu-west-1a, eu-west-1a]", "transcribe:availabilityZones names 'eu-west-1a' 2 times"),
    ("availabilityZones", "[euw1-az1, euw1-az2]", "transcribe:availabilityZones holds 'euw1-az1', an AZ ID"),
    ("availabilityZones", "[eu-west-1-lax-1a]", "transcribe:availabilityZones holds 'eu-west-1-lax-1a', not an"),
    # a MAJOR.MINOR EKS does not offer
    ("kubernetesVersion", "'1.3'", "transcribe:kubernetesVersion is '1.3', not a version EKS offers (1.x, 1.28 or "
                                   "later: EKS's Kubernetes version lifecycle); write one, quoted, e.g. "
                                   "transcribe:kubernetesVersion: '1.33'"),
    ("kubernetesVersion", "'1.27'", "transcribe:kubernetesVersion is '1.27', not a version EKS offers"),
    ("kubernetesVersion", "'2.30'", "transcribe:kubernetesVersion is '2.30', not a version EKS offers"),
    # the EKS cluster's name (the other names opsctl.yaml also names: tests/stacks/test_stacks_settings_types.py)
    ("clusterName", "'Transcribe Staging!'", "transcribe:clusterName is 'Transcribe Staging!': it must be letters, "
                                             "digits, hyphens and underscores, starting with a letter or digit (EKS "
                                             "CreateCluster name; 56 so that the node group <name>-system fits "
                                             "EKS's 63); write e.g. transcribe:clusterName: transcribe-staging"),
    ("clusterName", "-transcribe", "transcribe:clusterName is '-transcribe': it must be letters, digits"),
    ("clusterName", "a" * 57, "transcribe:clusterName is 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa': "
                              "57 characters; it must be 1 to 56"),
    # inside AWS's 0-35 days, under the program's 7: the line names the key
    ("dbBackupRetentionDays", "3", "transcribe:dbBackupRetentionDays is 3: keep at least 7 days of database backups "
                                   "(point-in-time recovery); write e.g. transcribe:dbBackupRetentionDays: 7"),
]


@pytest.mark.parametrize("key, value, said", AWS_REFUSES, ids=[f"{k}={v}"[:40] for k, v, _ in AWS_REFUSES])
def test_a_value_aws_refuses_or_that_changes_meaning_is_one_line(runner, program_copy, key, value, said):
    stack_file = program_copy / "stacks" / "Pulumi.staging.yaml"
    set_value(stack_file, key, value)
    for out in refusals(runner, program_copy):
        assert out.startswith(f"opsctl: error: {stack_file}: {REFUSED}{said}"), out
        assert out.endswith("; fix the value it names"), out


@pytest.mark.parametrize("key, value, said", PROGRAM_REFUSES,
                         ids=[f"{k}={v or 'null'}"[:40] for k, v, _ in PROGRAM_REFUSES])
def test_a_value_of_the_wrong_type_or_out_of_bounds_is_one_line(runner, program_copy, key, value, said):
    stack_file = program_copy / "stacks" / "Pulumi.staging.yaml"
    set_value(stack_file, key, value)
    for out in refusals(runner, program_copy):
        assert out.startswith(f"opsctl: error: {stack_file}: {REFUSED}{said}"), out
        assert out.endswith("; fix the value it names"), out


@pytest.mark.parametrize("value, shown", [("production", "'production'"), ("[staging]", "['staging']"),
                                          ("prod", "'prod'")])
def test_the_stacks_environment_must_be_the_environments_name(runner, program_copy, value, shown):
    stack_file = program_copy / "stacks" / "Pulumi.staging.yaml"
    set_value(stack_file, "environment", value)
    for out in refusals(runner, program_copy):
        assert out == (f"opsctl: error: Pulumi.staging.yaml sets transcribe:environment={shown} but opsctl.yaml "
                       "names this environment 'staging' (environments.staging); make them the same"), out


FORTY_ONE_TAGS = "{" + ", ".join(f"t{i}: x" for i in range(41)) + ", environment: staging}"


@pytest.mark.parametrize("key, value", [
    ("dbAllocatedStorage", "20"), ("dbAllocatedStorage", "65536"), ("dbBackupRetentionDays", "35"),
    ("kubernetesVersion", "'1.30'"), ("tags", "{team: speech, cost-center: ''}"), ("gpuMaxSize", "40000"),
    ("dbBackupRetentionDays", "7"), ("kubernetesVersion", "'1.28'"), ("kubernetesVersion", "'1.40'"),
    ("tags", FORTY_ONE_TAGS), ("tags", "{'équipe vocale': 'a-z_0.9:/=+@ ü'}"),
    ("tags", "{project: transcribe, managed-by: pulumi}"),
    ("availabilityZones", "[eu-west-1b, eu-west-1a]"), ("clusterName", "Transcribe_Staging-2"),
    ("clusterName", "a" * 56),
])
def test_right_values_at_the_bounds_pass(runner, program_copy, key, value):
    stack_file = program_copy / "stacks" / "Pulumi.staging.yaml"
    set_value(stack_file, key, value)
    result = runner.invoke(app, ["--root", str(program_copy), "infra", "policy", "--env", "staging"])
    assert result.exit_code == 0, result.output
    assert "every policy passes" in result.output, result.output
