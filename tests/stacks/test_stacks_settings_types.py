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
