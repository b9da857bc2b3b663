"""StackSettings.from_config under Pulumi's mocks, with config as `pulumi up` hands it over:
every value a string, a list or mapping as its JSON text (breaker 45 F7). The stack-file
checks opsctl runs first are in tests/infra/test_brk45_stack_types.py."""

from __future__ import annotations

import re

import pytest
from stacks_support import STACKS, offline

from transcribe_infra.settings import StackSettings, check_yaml_types

RDS = "aws:rds/instance:Instance"


def as_pulumi_gives(config: dict) -> dict[str, str]:
    """The stack file's values as the engine passes them: scalars as text, lists/maps as JSON."""
    import json

    return {k: v if isinstance(v, str) else (json.dumps(v) if isinstance(v, list | dict) else
                                             str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in config.items()}


def settings_of(**changes) -> StackSettings:
    """The staging stack's settings with `changes` (full key -> value; None: the key left out)."""
    config, _ = offline.stack_config(STACKS, "staging")
    config = as_pulumi_gives({k: v for k, v in {**config, **changes}.items() if v is not None})
    found: list[StackSettings] = []
    offline.run(lambda: found.append(StackSettings.from_config()), config, "staging")
    return found[0]


def test_absent_keys_take_their_defaults():
    s = settings_of(**{"transcribe:dbAllocatedStorage": None, "transcribe:gpuMaxSize": None,
                       "transcribe:gpuInstanceTypes": None, "transcribe:cacheNodeType": None})
    assert (s.db_allocated_storage, s.db_backup_retention_days, s.gpu_max_size) == (50, 7, 2)
    assert (s.gpu_instance_types, s.cache_node_type, s.kubernetes_version) == (["g5.xlarge", "g6.xlarge"],
                                                                               "cache.t4g.small", "1.33")
    assert (s.extra_tags, s.api_allowed_cidrs, s.api_key_hashes) == ({}, [], [])


def test_right_values_are_read_as_written():
    s = settings_of(**{"transcribe:kubernetesVersion": "1.30", "transcribe:dbAllocatedStorage": 65536,
                       "transcribe:tags": {"team": "speech"}, "transcribe:dbBackupRetentionDays": 35})
    assert (s.kubernetes_version, s.db_allocated_storage, s.db_backup_retention_days) == ("1.30", 65536, 35)
    assert s.tags["team"] == "speech" and s.tags["environment"] == "staging"


@pytest.mark.parametrize("key, value, said", [
    ("transcribe:dbInstanceClass", ["a", "b"], 'transcribe:dbInstanceClass is a list ["a", "b"], not a string'),
    ("transcribe:clusterName", {"a": {"b": "c"}}, "transcribe:clusterName is a mapping"),
    ("aws:region", ["eu-west-1"], 'aws:region is a list ["eu-west-1"], not a string'),
    ("transcribe:availabilityZones", [1, 2], "transcribe:availabilityZones holds the number 1"),
    ("transcribe:apiKeyHashes", "abc", "transcribe:apiKeyHashes is 'abc', not a list of strings"),
    ("transcribe:kubernetesVersion", "latest",
     "transcribe:kubernetesVersion is 'latest', not a Kubernetes MAJOR.MINOR version"),
    ("transcribe:dbAllocatedStorage", 0, "transcribe:dbAllocatedStorage is 0, outside 20 to 65536 GiB"),
    ("transcribe:dbBackupRetentionDays", 36, "transcribe:dbBackupRetentionDays is 36, outside 0 to 35 days"),
    ("transcribe:gpuMaxSize", 0, "transcribe:gpuMaxSize is 0, outside 1 to 40000 GPUs"),
    ("transcribe:tags", {"team": 5}, "transcribe:tags: tag 'team' is the number 5, not a string"),
    ("transcribe:tags", {"": "x"}, "transcribe:tags has a tag name of 0 characters; AWS takes 1 to 128"),
])
def test_the_program_refuses_what_pulumi_hands_it_by_key(key, value, said):
    with pytest.raises(ValueError) as caught:
        settings_of(**{key: value})
    assert str(caught.value).startswith(said), str(caught.value)


@pytest.mark.parametrize("key, value, said", [
    # names AWS or Kubernetes refuse (opsctl also compares these with opsctl.yaml, so the CLI test
    # changes clusterName only): RDS, ElastiCache, S3, the namespace
    ("transcribe:dbIdentifier", "transcribe--staging", "transcribe:dbIdentifier is 'transcribe--staging': it must be "
     "lowercase letters, digits and single hyphens, starting with a letter, not ending with a hyphen (RDS "
     "CreateDBInstance DBInstanceIdentifier; 55 so that <identifier>-replica fits RDS's 63); write e.g. "
     "transcribe:dbIdentifier: transcribe-staging"),
    ("transcribe:dbIdentifier", "1transcribe", "transcribe:dbIdentifier is '1transcribe': it must be lowercase"),
    ("transcribe:dbIdentifier", "transcribe-", "transcribe:dbIdentifier is 'transcribe-': it must be lowercase"),
    ("transcribe:dbIdentifier", "Transcribe-Staging", "transcribe:dbIdentifier is 'Transcribe-Staging': it must be"),
    ("transcribe:dbIdentifier", "t" * 56, "transcribe:dbIdentifier is 'tttt"),
    ("transcribe:cacheReplicationGroupId", "c" * 41, "transcribe:cacheReplicationGroupId is 'cccc"),
    ("transcribe:cacheReplicationGroupId", "cache_1", "transcribe:cacheReplicationGroupId is 'cache_1': it must be"),
    ("transcribe:audioBucket", "Transcribe_Audio", "transcribe:audioBucket is 'Transcribe_Audio': it must be lowercase "
     "letters, digits, dots and hyphens, starting and ending with a letter or digit (S3 general purpose bucket "
     "naming rules); write e.g. transcribe:audioBucket: transcribe-staging-audio"),
    ("transcribe:audioBucket", "ab", "transcribe:audioBucket is 'ab': 2 characters; it must be 3 to 63"),
    ("transcribe:backupsBucket", "b" * 64, "transcribe:backupsBucket is 'bbbb"),
    ("transcribe:backupsBucket", "backups..staging", "transcribe:backupsBucket is 'backups..staging': two dots"),
    ("transcribe:backupsBucket", "192.168.5.4", "transcribe:backupsBucket is '192.168.5.4': an IP address"),
    ("transcribe:backupsBucket", "xn--backups", "transcribe:backupsBucket is 'xn--backups': the reserved prefix xn--"),
    ("transcribe:backupsBucket", "backups-s3alias", "transcribe:backupsBucket is 'backups-s3alias': the reserved"),
    ("transcribe:backupsBucket", "transcribe-staging-audio", "transcribe:backupsBucket is 'transcribe-staging-audio', "
     "the audio bucket's name too"),
    ("transcribe:namespace", "Transcribe", "transcribe:namespace is 'Transcribe': it must be lowercase letters, "
     "digits and hyphens, starting and ending with a letter or digit (Kubernetes namespace: an RFC 1123 label)"),
    ("transcribe:namespace", "n" * 64, "transcribe:namespace is 'nnnn"),
    # what the CLI test covers too, as the program reads it
    ("transcribe:clusterName", "Transcribe Staging!", "transcribe:clusterName is 'Transcribe Staging!': it must be"),
    ("transcribe:availabilityZones", ["us-east-1a", "us-east-1b"],
     "transcribe:availabilityZones holds 'us-east-1a', not an Availability Zone of aws:region eu-west-1"),
    ("transcribe:availabilityZones", ["eu-west-1a", "eu-west-1b", "eu-west-1a"],
     "transcribe:availabilityZones names 'eu-west-1a' 2 times"),
    ("transcribe:kubernetesVersion", "1.3", "transcribe:kubernetesVersion is '1.3', not a version EKS offers"),
    ("transcribe:tags", {"aws:team": "speech"}, "transcribe:tags: tag 'aws:team': its name starts with 'aws:'"),
    ("transcribe:tags", {f"t{i}": "x" for i in range(42)}, "transcribe:tags has 42 tags: with the 9 the program"),
    ("transcribe:tags", {"team\tname": "x"}, "transcribe:tags: tag 'team\\tname': its name holds '\\t'"),
    ("transcribe:tags", {"managed-by": "terraform"}, "transcribe:tags: tag 'managed-by' is 'terraform', but the "
     "program tags every resource managed-by='pulumi'"),
    ("transcribe:tags", {"karpenter.sh/nodepool": "gpu"}, "transcribe:tags: tag 'karpenter.sh/nodepool' is one"),
    ("transcribe:tags", {"eks:eks-cluster-name": "x"}, "transcribe:tags: tag 'eks:eks-cluster-name' is one"),
])
def test_the_program_refuses_what_aws_refuses_by_key(key, value, said):
    with pytest.raises(ValueError) as caught:
        settings_of(**{key: value})
    assert str(caught.value).startswith(said), str(caught.value)


@pytest.mark.parametrize("region, partition", [("us-gov-west-1", "aws-us-gov"), ("cn-north-1", "aws-cn"),
                                               ("cn-northwest-1", "aws-cn"), ("us-iso-east-1", "aws-iso"),
                                               ("eusc-de-east-1", "aws-eusc")])
def test_a_region_outside_the_aws_partition_is_refused(region, partition):
    """Breaker 48 F5: us-gov-west-1 passed, and the program wrote arn:aws: ARNs and
    .amazonaws.com principals that grant nothing in the aws-us-gov or aws-cn partition."""
    zones = [f"{region}a", f"{region}b"]
    with pytest.raises(ValueError) as caught:
        settings_of(**{"aws:region": region, "transcribe:availabilityZones": zones})
    assert str(caught.value).startswith(f"aws:region is {region}, in the {partition} partition"), str(caught.value)


@pytest.mark.parametrize("region", ["ap-southeast-5", "mx-central-1", "il-central-1", "us-east-1"])
def test_regions_of_the_aws_partition_are_read(region):
    s = settings_of(**{"aws:region": region, "transcribe:availabilityZones": [f"{region}a", f"{region}b"]})
    assert s.region == region


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_the_shipped_stacks_and_names_at_aws_limits_are_read(stack):
    """The shipped stack files pass every rule; so do names at AWS's limits, required tags with
    the program's own values and 41 tags of AWS's characters (9 left for the program and Karpenter)."""
    config, _ = offline.stack_config(STACKS, stack)
    found: list[StackSettings] = []
    offline.run(lambda: found.append(StackSettings.from_config()), as_pulumi_gives(config), stack)
    assert found[0].environment == stack and found[0].availability_zones == config["transcribe:availabilityZones"]
    tags = {**{f"t{i}": "x" for i in range(40)}, "équipe vocale": "a-z_0.9:/=+@ ü", "environment": "staging"}
    s = settings_of(**{"transcribe:clusterName": "C" * 56, "transcribe:dbIdentifier": "d-" * 27 + "d",
                       "transcribe:cacheReplicationGroupId": "c" * 40, "transcribe:audioBucket": "a.b",
                       "transcribe:backupsBucket": "b" * 63, "transcribe:namespace": "n" * 63,
                       "transcribe:kubernetesVersion": "1.28", "transcribe:tags": tags,
                       "transcribe:availabilityZones": ["eu-west-1c"]})
    assert (len(s.cluster_name), len(s.db_identifier), s.kubernetes_version) == (56, 55, "1.28")
    assert s.tags == {**tags, "project": "transcribe", "managed-by": "pulumi"}


@pytest.mark.parametrize("key, value, said", [
    ("transcribe:clusterName", 5, "transcribe:clusterName is the number 5, not a string"),
    ("transcribe:kubernetesVersion", 1.3, "transcribe:kubernetesVersion is the number 1.3 (YAML reads an unquoted"),
    ("transcribe:environment", None, "transcribe:environment is empty (null), not a string"),
])
def test_a_stack_file_scalar_of_the_wrong_type_is_refused_before_the_program(key, value, said):
    """What the program cannot see (Pulumi gives it "5", "1.3"): checked on the file's YAML values."""
    config, _ = offline.stack_config(STACKS, "staging")
    check_yaml_types(config)  # the shipped stack passes
    with pytest.raises(ValueError, match="^" + re.escape(said)):
        check_yaml_types({**config, key: value})


@pytest.mark.parametrize("region", ["CN-NORTH-1", " cn-north-1", "eu-west", "eu_west_1"])
def test_a_region_that_is_no_regions_code_is_refused(region):
    """Breaker 49 F7: upper case or blanks passed the partition check."""
    with pytest.raises(ValueError) as caught:
        settings_of(**{"aws:region": region, "transcribe:availabilityZones": ["eu-west-1a"]})
    assert str(caught.value).startswith(f"aws:region is {region!r}, not an AWS Region's code"), str(caught.value)
