"""The stack's settings, read once from Pulumi config into one typed object.

Everything that differs between production and the other environments is decided here, from
the single `transcribe:production` flag, so a component never asks "is this production?"
itself: it receives explicit arguments (nat_per_az, multi_az, ...) that tests can set.

Every value is read by type (the readers below): a string setting must be a non-empty string,
a list a list of non-empty strings, a number a whole number within the bounds AWS documents,
`kubernetesVersion` a "MAJOR.MINOR" string, `tags` a mapping of string to string. A value that
is not is a ValueError naming its key, what is wrong and what to write instead (opsctl turns it
into one line naming the stack file: opsctl.infra.target.refused_config). A key that is absent
takes its default; a key that is present is never silently replaced by one (breaker 45 F7:
`dbAllocatedStorage: 0` became 50, `dbInstanceClass: [a, b]` became the class '["a","b"]').

How Pulumi hands values over: a stack file's list or mapping is a structured value whose
`Config.get` is its JSON text; a scalar (a number, a boolean) is its text. So the program sees
`clusterName: 5` as "5": check_yaml_types checks those scalars on the stack file's own values
(the offline run, transcribe_infra.offline.run_stack, calls it before the program runs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import pulumi

from transcribe_infra.defaults import GPU_INSTANCE_TYPES, GPU_MAX_SIZE, GPUS_PER_INSTANCE_TYPE

PROJECT = "transcribe"
# Tags every taggable resource carries; the policy checks look for exactly these keys.
REQUIRED_TAGS = ("project", "environment", "managed-by")

# The string settings, each with a right value for the messages (full config keys).
TEXT_SETTINGS = {
    "aws:region": "eu-west-1",
    "transcribe:environment": "staging",
    "transcribe:vpcCidr": "10.0.0.0/16",
    "transcribe:dbIdentifier": "transcribe-staging",
    "transcribe:dbInstanceClass": "db.t4g.medium",
    "transcribe:cacheReplicationGroupId": "transcribe-staging",
    "transcribe:cacheNodeType": "cache.t4g.small",
    "transcribe:audioBucket": "transcribe-staging-audio",
    "transcribe:backupsBucket": "transcribe-staging-backups",
    "transcribe:clusterName": "transcribe-staging",
    "transcribe:namespace": "transcribe",
    "transcribe:gpuCapacityType": "SPOT",
    "transcribe:kubernetesVersion": "'1.33'",
}
VERSION_KEY = "transcribe:kubernetesVersion"
VERSION = re.compile(r"[1-9][0-9]*\.(0|[1-9][0-9]*)")  # MAJOR.MINOR, as EKS's CreateCluster `version`

# RDS for PostgreSQL on General Purpose SSD (gp3, database.py's storage_type): "Must be an integer
# from 20 to 65536" GiB (CreateDBInstance, AllocatedStorage:
# https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBInstance.html).
DB_STORAGE_GIB = (20, 65536)
DB_STORAGE_RULE = "RDS for PostgreSQL on gp3: AWS CreateDBInstance, AllocatedStorage"
# Automated backups are kept "a value from 0 to 35" days (CreateDBInstance, BackupRetentionPeriod,
# same page; 0 turns them off, which database.py refuses: it keeps at least 7).
DB_BACKUP_RETENTION_DAYS = (0, 35)
DB_BACKUP_RETENTION_RULE = "AWS CreateDBInstance, BackupRetentionPeriod"
# The NodePool's GPU limit: at least one GPU (the worker needs one), at most what one cluster can
# hold: Kubernetes supports "no more than 5,000 nodes" per cluster
# (https://kubernetes.io/docs/setup/best-practices/cluster-large/) of at most the largest GPU
# count of an instance type the program knows (defaults.py, from AWS's instance type docs).
MAX_NODES = 5000
GPU_LIMIT = (1, MAX_NODES * max(GPUS_PER_INSTANCE_TYPE.values()))
GPU_LIMIT_RULE = (f"{MAX_NODES:,} nodes per Kubernetes cluster x {max(GPUS_PER_INSTANCE_TYPE.values())} GPUs "
                  "per instance at most")
# User-defined AWS tags: keys 1 to 128 characters, values 0 to 256 (the Tag data type of the AWS
# APIs, e.g. https://docs.aws.amazon.com/kms/latest/APIReference/API_Tag.html).
TAG_KEY_CHARS, TAG_VALUE_CHARS = 128, 256


def _shown(value: Any) -> str:
    """A value as the message names it: its YAML kind and (shortened) text."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list | dict):
        text = json.dumps(value)
        return f"{'a list' if isinstance(value, list) else 'a mapping'} {text[:60]}{'...' if len(text) > 60 else ''}"
    text = repr(value)
    return text[:62] + ("...'" if len(text) > 62 else "")


def _decoded(raw: str) -> Any:
    """A config value as the stack file holds it: a list or mapping (Pulumi gives its JSON
    text) decoded, anything else the text itself."""
    if raw.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(value, list | dict):
            return value
    return raw


def _missing(cfg: pulumi.Config, key: str) -> None:
    cfg.require(key)  # Pulumi's ConfigMissingError ("Missing required configuration variable ...")


def text_value(key: str, value: Any) -> str:
    """`value` of the string setting `key` (full key, e.g. transcribe:clusterName): a non-empty
    string; ValueError naming the key and a right value otherwise (a list, mapping, number,
    boolean or null, or only blanks). A number for kubernetesVersion gets the hint to quote it."""
    example = TEXT_SETTINGS.get(key, "a-name")
    if key == VERSION_KEY and isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"{key} is {_shown(value)} (YAML reads an unquoted 1.30 as the number 1.3), not a "
                         f"MAJOR.MINOR string; quote it, e.g. {key}: {example}")
    if not isinstance(value, str):
        raise ValueError(f"{key} is {_shown(value)}, not a string; write one value, e.g. {key}: {example}")
    if not value.strip():
        raise ValueError(f"{key} is empty; write a value, e.g. {key}: {example}")
    return value


def _text(cfg: pulumi.Config, key: str, default: str | None = None) -> str:
    """The string setting `key` (text_value's rules); absent: `default`, or with none Pulumi's
    ConfigMissingError."""
    raw = cfg.get(key)
    if raw is None:
        if default is None:
            _missing(cfg, key)
        return default
    return text_value(cfg.full_key(key), _decoded(raw))


def _texts(cfg: pulumi.Config, key: str, default: list[str] | tuple[str, ...] | None, example: str,
           least: int = 0) -> list[str]:
    """The list setting `key`: a list of at least `least` non-empty strings; absent: `default`
    (None: required, Pulumi's ConfigMissingError). ValueError naming the key otherwise."""
    full, raw = cfg.full_key(key), cfg.get(key)
    if raw is None:
        if default is None:
            _missing(cfg, key)
        return list(default)
    value = _decoded(raw)
    if not isinstance(value, list):
        raise ValueError(f"{full} is {_shown(value)}, not a list of strings; write a YAML list, e.g. {full}: {example}")
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f"{full} holds {_shown(bad[0])}: every entry must be a non-empty string; "
                         f"write e.g. {full}: {example}")
    if len(value) < least:
        raise ValueError(f"{full} is an empty list: name at least {least}, e.g. {full}: {example}")
    return value


def _count(cfg: pulumi.Config, key: str, default: int, bounds: tuple[int, int], unit: str, rule: str) -> int:
    """The whole-number setting `key` within `bounds` (inclusive) of `unit`; absent: `default`.
    Not a whole number: Pulumi's ConfigTypeError; out of bounds (an explicit 0 too, when the
    bounds exclude it): ValueError naming the key, the bounds and where they come from (`rule`)."""
    value = cfg.get_int(key)
    if value is None:
        return default
    low, high = bounds
    if not low <= value <= high:
        full = cfg.full_key(key)
        shown = f"{value}" if len(str(value)) <= 24 else f"{str(value)[:20]}... ({len(str(value))} digits)"
        raise ValueError(f"{full} is {shown}, outside {low} to {high} {unit} ({rule}); "
                         f"write a whole number in that range, e.g. {full}: {default}")
    return value


def _version(cfg: pulumi.Config, key: str, default: str) -> str:
    """The Kubernetes version: a "MAJOR.MINOR" string such as '1.33'; absent: `default`."""
    raw = cfg.get(key)
    if raw is None:
        return default
    full = cfg.full_key(key)
    value = text_value(full, _decoded(raw))
    if not VERSION.fullmatch(value):
        raise ValueError(f"{full} is {_shown(value)}, not a Kubernetes MAJOR.MINOR version; "
                         f"write one EKS supports, quoted, e.g. {full}: '{default}'")
    return value


def _tags(cfg: pulumi.Config, key: str) -> dict[str, str]:
    """Extra tags: a mapping of tag key (1-128 characters) to string value (0-256; '' allowed, as
    AWS allows); absent: none. ValueError naming the key and the tag otherwise."""
    full, raw = cfg.full_key(key), cfg.get(key)
    if raw is None:
        return {}
    value = _decoded(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{full} is {_shown(value)}, not a mapping of tag name to text; "
                         f"write e.g. {full}: {{team: speech}}")
    for name, text in value.items():
        if not 1 <= len(name) <= TAG_KEY_CHARS:
            raise ValueError(f"{full} has a tag name of {len(name)} characters; AWS takes 1 to {TAG_KEY_CHARS}")
        if not isinstance(text, str):
            fix = (f"quote it, e.g. {full}: {{{name}: '{json.dumps(text)}'}}" if isinstance(text, int | float)
                   else f"write text ('' for none), e.g. {full}: {{{name}: speech}}")
            raise ValueError(f"{full}: tag {name!r} is {_shown(text)}, not a string; {fix}")
        if len(text) > TAG_VALUE_CHARS:
            raise ValueError(f"{full}: tag {name!r} is {len(text)} characters; AWS takes at most {TAG_VALUE_CHARS}")
    return value


def check_yaml_types(config: Mapping[str, Any]) -> None:
    """The stack file's string settings (TEXT_SETTINGS) as YAML read them (`config`: full key ->
    value, as transcribe_infra.offline.stack_config gives it): ValueError naming the first key
    whose value is a number, boolean, null, list or mapping (text_value's message). Pulumi hands
    the program a scalar's text, so from_config alone would take `clusterName: 5` as "5" and
    `kubernetesVersion: 1.30` as "1.3"."""
    for key in TEXT_SETTINGS:
        if key in config:
            text_value(key, config[key])


@dataclass(frozen=True)
class StackSettings:
    """One stack's settings, from its `transcribe:` config (from_config) with the defaults
    below; ValueError for a production stack with fewer than 3 AZs or a bad gpuCapacityType."""

    environment: str
    production: bool
    region: str
    availability_zones: list[str]
    vpc_cidr: str
    db_identifier: str
    db_instance_class: str
    db_allocated_storage: int
    db_backup_retention_days: int
    cache_replication_group_id: str
    cache_node_type: str
    audio_bucket: str
    backups_bucket: str
    cluster_name: str
    namespace: str
    gpu_instance_types: list[str]
    gpu_capacity_type: str
    gpu_max_size: int
    kubernetes_version: str = "1.33"
    api_allowed_cidrs: list[str] = field(default_factory=list)  # empty: the cluster API is private
    service_account: str = "transcription-worker"
    api_key_hashes: list[str] = field(default_factory=list)  # transcribe:apiKeyHashes, SHA-256 hex
    extra_tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.availability_zones) < 3 and self.production:
            raise ValueError("production needs three availability zones (transcribe:availabilityZones)")
        if self.gpu_capacity_type not in ("SPOT", "ON_DEMAND"):
            raise ValueError("transcribe:gpuCapacityType must be SPOT or ON_DEMAND")

    @property
    def tags(self) -> dict[str, str]:
        """The tags of every resource: who owns it and which environment it belongs to."""
        return {**self.extra_tags, "project": PROJECT, "environment": self.environment,
                "managed-by": "pulumi"}

    # What production keeps and the other environments save money on.
    @property
    def nat_per_az(self) -> bool:
        """One NAT gateway per AZ (production) or one shared."""

        return self.production

    @property
    def deletion_protection(self) -> bool:
        """Whether destroy is refused for the database and cluster (production)."""

        return self.production

    @property
    def multi_az(self) -> bool:
        """A standby database in another AZ (production)."""

        return self.production

    @property
    def read_replica(self) -> bool:
        """A database replica `opsctl failover` can promote."""
        return self.production

    @classmethod
    def from_config(cls) -> "StackSettings":
        """The settings of the stack being run (pulumi.Config), each read by type (module
        docstring), defaults filled in for absent keys. Bounds: dbAllocatedStorage 20-65536 GiB
        (RDS for PostgreSQL on gp3) and dbBackupRetentionDays 0-35 days, both from AWS's
        CreateDBInstance API reference; gpuMaxSize 1-40,000 GPUs (GPU_LIMIT: Kubernetes' 5,000
        nodes per cluster x 8 GPUs per instance); tags as AWS's Tag type (keys 1-128 characters,
        values 0-256). Raises ValueError naming the key for a value of the wrong type or out of
        bounds, and Pulumi's ConfigMissingError (a required key unset) or ConfigTypeError (a
        number or flag that is not one)."""

        cfg = pulumi.Config(PROJECT)
        production = cfg.get_bool("production") or False
        return cls(
            environment=_text(cfg, "environment"),
            production=production,
            region=_text(pulumi.Config("aws"), "region"),
            availability_zones=_texts(cfg, "availabilityZones", None, "[eu-west-1a, eu-west-1b, eu-west-1c]", 1),
            vpc_cidr=_text(cfg, "vpcCidr", "10.0.0.0/16"),
            db_identifier=_text(cfg, "dbIdentifier"),
            db_instance_class=_text(cfg, "dbInstanceClass", "db.t4g.medium"),
            db_allocated_storage=_count(cfg, "dbAllocatedStorage", 50, DB_STORAGE_GIB, "GiB", DB_STORAGE_RULE),
            db_backup_retention_days=_count(cfg, "dbBackupRetentionDays", 14 if production else 7,
                                            DB_BACKUP_RETENTION_DAYS, "days", DB_BACKUP_RETENTION_RULE),
            cache_replication_group_id=_text(cfg, "cacheReplicationGroupId"),
            cache_node_type=_text(cfg, "cacheNodeType", "cache.t4g.small"),
            audio_bucket=_text(cfg, "audioBucket"),
            backups_bucket=_text(cfg, "backupsBucket"),
            cluster_name=_text(cfg, "clusterName"),
            namespace=_text(cfg, "namespace", "transcribe"),
            gpu_instance_types=_texts(cfg, "gpuInstanceTypes", GPU_INSTANCE_TYPES, "[g5.xlarge, g6.xlarge]", 1),
            gpu_capacity_type=_text(cfg, "gpuCapacityType", "ON_DEMAND" if production else "SPOT"),
            gpu_max_size=_count(cfg, "gpuMaxSize", GPU_MAX_SIZE, GPU_LIMIT, "GPUs", GPU_LIMIT_RULE),
            kubernetes_version=_version(cfg, "kubernetesVersion", "1.33"),
            api_allowed_cidrs=_texts(cfg, "apiAllowedCidrs", [], "[203.0.113.0/24]"),
            api_key_hashes=_texts(cfg, "apiKeyHashes", [], "['<64 hex digits>']"),
            extra_tags=_tags(cfg, "tags"),
        )


def with_name(tags: dict[str, str], name: str) -> dict[str, str]:
    """The common tags plus the `Name` tag the AWS console shows."""
    return {**tags, "Name": name}
