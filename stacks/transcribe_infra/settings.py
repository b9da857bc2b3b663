"""The stack's settings, read once from Pulumi config into one typed object.

Everything that differs between production and the other environments is decided here, from
the single `transcribe:production` flag, so a component never asks "is this production?"
itself: it receives explicit arguments (nat_per_az, multi_az, ...) that tests can set.

Every value is read by type (the readers below): a string setting must be a non-empty string,
a list a list of non-empty strings, a number a whole number within the bounds AWS documents,
`kubernetesVersion` a "MAJOR.MINOR" string of a version EKS offers, `tags` a mapping of string
to string. Then by what AWS takes, each rule with its source where it is defined: a name is one
AWS (or Kubernetes) accepts for that resource (NAME_RULES), every Availability Zone one of
`aws:region`'s, by name, once; a tag is of AWS's characters, without its reserved `aws:` prefix,
not one the program sets with another value, and the tags fit AWS's 50 per resource with those
the program and Karpenter add. A value that is not is a ValueError naming its key, what is wrong
and what to write instead (opsctl turns it into one line naming the stack file, exit 2:
opsctl.infra.target.refused_config). A key that is absent takes its default; a key that is
present is never silently replaced by one (breaker 45 F7: `dbAllocatedStorage: 0` became 50,
`dbInstanceClass: [a, b]` became the class '["a","b"]').

How Pulumi hands values over: a stack file's list or mapping is a structured value whose
`Config.get` is its JSON text; a scalar (a number, a boolean) is its text. So the program sees
`clusterName: 5` as "5": check_yaml_types checks those scalars on the stack file's own values
(the offline run, transcribe_infra.offline.run_stack, calls it before the program runs).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

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
# EKS offers only Kubernetes 1.x, each minor for 14 months of standard and 12 of extended support
# ("Understand the Kubernetes version lifecycle on EKS",
# https://docs.aws.amazon.com/eks/latest/userguide/kubernetes-versions.html); 1.28 was the oldest it
# still offered in 2025 (release calendar there; https://endoflife.date/amazon-eks). A floor, not a
# list of versions: below it is refused here, a minor EKS has not released yet is left to EKS.
EKS_MIN_VERSION = (1, 28)


class NameRule(NamedTuple):
    """What AWS (or Kubernetes) takes as one name setting: `pattern` (whole value), `low` to
    `high` characters, `what` for the message, `source` where the rule is documented."""

    pattern: re.Pattern[str]
    low: int
    high: int
    what: str
    source: str


# RDS and ElastiCache: a letter first, then letters, digits and single hyphens, no hyphen last.
# Both store the identifier lowercased, so an upper-case letter would silently name another
# resource than the stack file: lowercase only.
_AWS_IDENTIFIER = re.compile(r"[a-z](?:-?[a-z0-9])*")
_AWS_IDENTIFIER_WHAT = "lowercase letters, digits and single hyphens, starting with a letter, not ending with a hyphen"
_BUCKET_WHAT = "lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
NAME_RULES = {
    # CreateCluster `name`: 1-100, ^[0-9A-Za-z][A-Za-z0-9\-_]*
    # (https://docs.aws.amazon.com/eks/latest/APIReference/API_CreateCluster.html); at most 56 here,
    # so that the system node group, "<name>-system" (cluster.py), fits a node group name's 63
    # characters (pulumi_aws eks.NodeGroup `node_group_name`: "can't be longer than 63 characters").
    "transcribe:clusterName": NameRule(
        re.compile(r"[0-9A-Za-z][A-Za-z0-9_-]*"), 1, 56,
        "letters, digits, hyphens and underscores, starting with a letter or digit",
        "EKS CreateCluster name; 56 so that the node group <name>-system fits EKS's 63"),
    # CreateDBInstance `DBInstanceIdentifier`: 1-63 letters, digits or hyphens, a letter first, no
    # hyphen last and no two in a row, "stored as a lowercase string"
    # (https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBInstance.html); at most
    # 55 here, so that the read replica, "<identifier>-replica" (database.py), fits the 63.
    "transcribe:dbIdentifier": NameRule(
        _AWS_IDENTIFIER, 1, 55, _AWS_IDENTIFIER_WHAT,
        "RDS CreateDBInstance DBInstanceIdentifier; 55 so that <identifier>-replica fits RDS's 63"),
    # CreateReplicationGroup `ReplicationGroupId`: 1-40, the same rules, stored lowercased
    # (https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_CreateReplicationGroup.html).
    "transcribe:cacheReplicationGroupId": NameRule(
        _AWS_IDENTIFIER, 1, 40, _AWS_IDENTIFIER_WHAT, "ElastiCache CreateReplicationGroup ReplicationGroupId"),
    # General purpose bucket naming rules (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
    # bucketnamingrules.html): 3-63 characters; the rest of that page in BUCKET_RESERVED below.
    "transcribe:audioBucket": NameRule(
        re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]"), 3, 63, _BUCKET_WHAT, "S3 general purpose bucket naming rules"),
    "transcribe:backupsBucket": NameRule(
        re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]"), 3, 63, _BUCKET_WHAT, "S3 general purpose bucket naming rules"),
    # A Namespace's name is an RFC 1123 label: at most 63 characters, [a-z0-9]([-a-z0-9]*[a-z0-9])?
    # (https://kubernetes.io/docs/concepts/overview/working-with-objects/names/#dns-label-names).
    "transcribe:namespace": NameRule(
        re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"), 1, 63,
        "lowercase letters, digits and hyphens, starting and ending with a letter or digit",
        "Kubernetes namespace: an RFC 1123 label"),
}
# The bucket naming rules' reserved forms (same page): no two adjacent dots, not an IP address,
# none of these prefixes or suffixes.
BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# An Availability Zone's name is its Region's code followed by a letter, e.g. eu-west-1a
# ("AWS Availability Zones", https://docs.aws.amazon.com/global-infrastructure/latest/regions/
# aws-availability-zones.html). An AZ ID (euw1-az1, same page) is refused: network.py gives each
# subnet its zone as `availability_zone`, which takes a name (an ID goes in availability_zone_id).
AZ_ID = re.compile(r"[a-z]{3,}[0-9]+-az[0-9]+")

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
# AWS's tag rules across services (each service's Tag type and tag restrictions, e.g.
# https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-properties-ecs-service-tag.html,
# https://docs.aws.amazon.com/batch/latest/userguide/tag-restrictions.html): at most 50
# user tags per resource; keys and values of letters, digits and spaces representable in UTF-8
# and _ . : / = + - @ (the Tag pattern ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$); "aws:" in any case is
# reserved for AWS as a prefix of keys and values.
MAX_TAGS = 50
TAG_SYMBOLS = "_.:/=+-@"
TAG_CHARS_WHAT = "letters, digits, spaces and _ . : / = + - @"
AWS_TAG_PREFIX = "aws:"
# Karpenter's own tags on every instance it launches (the GPU nodes), which its EC2NodeClass
# refuses in spec.tags, where gpu.py puts the stack's tags: Name, karpenter.sh/nodepool,
# karpenter.sh/nodeclaim, karpenter.k8s.aws/ec2nodeclass, eks:eks-cluster-name and
# kubernetes.io/cluster/<cluster> (karpenter-provider-aws pkg/apis/v1/labels.go, NameTagKey and
# RestrictedTagPatterns; https://karpenter.sh/docs/concepts/nodeclasses/#spectags).
KARPENTER_TAGS = ("Name", "karpenter.sh/nodepool", "karpenter.sh/nodeclaim", "karpenter.k8s.aws/ec2nodeclass",
                  "eks:eks-cluster-name", "kubernetes.io/cluster/")
# Keys the stack's tags may not set: what the program sets per resource (Name: with_name; opsctl:
# the replica's role and primary, a bucket's purpose, which failover and the policy checks go by;
# kubernetes.io/: the subnets' load balancer and cluster tags) and Karpenter's. A stack tag goes
# to every resource, so it would be refused (EC2NodeClass) or change what those tags mean.
OWN_TAG_KEYS = ("Name",)
OWN_TAG_PREFIXES = ("opsctl:", "kubernetes.io/", "karpenter.sh/", "karpenter.k8s.aws/", "eks:")
# The most tags one resource carries besides the stack's: REQUIRED_TAGS plus Karpenter's on a GPU
# instance (3 + 6); every other resource gets fewer (a private subnet: Name and 2 kubernetes.io/
# tags; the replica: Name and 2 opsctl: tags; a bucket: Name and opsctl:purpose).
ADDED_TAGS = len(REQUIRED_TAGS) + len(KARPENTER_TAGS)


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


def name_value(key: str, value: str) -> str:
    """`value` of the name setting `key` if it is one AWS or Kubernetes takes (NAME_RULES, with
    the S3 bucket rules' reserved forms); ValueError naming the key, the rule and its source."""
    rule = NAME_RULES.get(key)
    if rule is None:
        return value
    why = ""
    if not rule.low <= len(value) <= rule.high:
        why = f"{len(value)} characters; it must be {rule.low} to {rule.high}"
    elif not rule.pattern.fullmatch(value):
        why = f"it must be {rule.what}"
    elif key in ("transcribe:audioBucket", "transcribe:backupsBucket"):
        why = ("two dots in a row" if ".." in value else
               "an IP address" if re.fullmatch(r"[0-9]+(\.[0-9]+){3}", value) else
               next((f"the reserved prefix {p}" for p in BUCKET_PREFIXES if value.startswith(p)), "") or
               next((f"the reserved suffix {x}" for x in BUCKET_SUFFIXES if value.endswith(x)), ""))
    if why:
        raise ValueError(f"{key} is {_shown(value)}: {why} ({rule.source}); "
                         f"write e.g. {key}: {TEXT_SETTINGS.get(key, 'a-name')}")
    return value


def _text(cfg: pulumi.Config, key: str, default: str | None = None) -> str:
    """The string setting `key` (text_value's rules, and name_value's for a name); absent:
    `default`, or with none Pulumi's ConfigMissingError."""
    raw = cfg.get(key)
    if raw is None:
        if default is None:
            _missing(cfg, key)
        return default
    full = cfg.full_key(key)
    return name_value(full, text_value(full, _decoded(raw)))


# Regions outside the `aws` partition (GovCloud, China, the isolated regions): their ARNs begin
# arn:aws-us-gov: / arn:aws-cn: / arn:aws-iso...: and China's service principals end in
# .amazonaws.com.cn ("Identify AWS resources with Amazon Resource Names", partition;
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference-arns.html). The program writes
# `arn:aws:` ARNs and `.amazonaws.com` principals (cluster.py, gpu.py, encryption.py), so such a
# region is refused, not deployed with policies that grant nothing (breaker 48 F5).
OTHER_PARTITIONS = {"us-gov-": "aws-us-gov", "cn-": "aws-cn", "us-iso-": "aws-iso", "us-isob-": "aws-iso-b",
                    "us-isof-": "aws-iso-f", "eu-isoe-": "aws-iso-e", "eusc-": "aws-eusc"}
# a Region's code: its area, its part of it and a number, in lower case (us-east-1, ap-southeast-5,
# eusc-de-east-1; "AWS Regions", https://docs.aws.amazon.com/global-infrastructure/latest/regions/)
REGION_CODE = re.compile(r"[a-z]{2,4}(?:-[a-z]+)+-[0-9]+")


def region_value(region: str) -> str:
    """`region` when it is a Region's code (REGION_CODE) in the `aws` partition, the one the
    program's ARNs and service principals are written for; ValueError naming aws:region and
    what is wrong otherwise (breaker 48 F5, 49 F7: the European Sovereign Cloud, and a code in
    upper case or with blanks, which passed the partition check)."""
    if not REGION_CODE.fullmatch(region):
        raise ValueError(f"aws:region is {region!r}, not an AWS Region's code (lower case, e.g. eu-west-1); "
                         "write e.g. aws:region: eu-west-1")
    for prefix, partition in OTHER_PARTITIONS.items():
        if region.startswith(prefix):
            raise ValueError(f"aws:region is {region}, in the {partition} partition; this program writes the ARNs "
                             "(arn:aws:...) and service principals of the aws partition, which grant nothing there: "
                             "choose a region of the aws partition, or adapt the program first")
    return region


def _zones(cfg: pulumi.Config, key: str, region: str) -> list[str]:
    """The Availability Zones (required, at least one): each a zone of `region` by name (the
    region's code and one letter, e.g. eu-west-1a; AZ_ID), each once. ValueError naming the key."""
    full, example = cfg.full_key(key), f"[{region}a, {region}b, {region}c]"
    zones = _texts(cfg, key, None, example, 1)
    for zone in zones:
        if AZ_ID.fullmatch(zone):
            raise ValueError(f"{full} holds {zone!r}, an AZ ID: the subnets take the zone's name (the region's "
                             f"code and a letter); write e.g. {full}: {example}")
        if not re.fullmatch(re.escape(region) + "[a-z]", zone):
            raise ValueError(f"{full} holds {zone!r}, not an Availability Zone of aws:region {region} (its name "
                             f"is the region's code and a letter); write e.g. {full}: {example}")
        if zones.count(zone) > 1:
            raise ValueError(f"{full} names {zone!r} {zones.count(zone)} times: each zone gets its own subnets, "
                             f"name it once; write e.g. {full}: {example}")
    return zones


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
    major, minor = (int(part) for part in value.split("."))
    if major != EKS_MIN_VERSION[0] or minor < EKS_MIN_VERSION[1]:
        floor = ".".join(map(str, EKS_MIN_VERSION))
        raise ValueError(f"{full} is {_shown(value)}, not a version EKS offers (1.x, {floor} or later: EKS's "
                         f"Kubernetes version lifecycle); write one, quoted, e.g. {full}: '{default}'")
    return value


def required_tags(environment: str) -> dict[str, str]:
    """The REQUIRED_TAGS the program puts on every resource, with their values."""
    return {"project": PROJECT, "environment": environment, "managed-by": "pulumi"}


def _tag_problem(text: str) -> str:
    """Why AWS would refuse `text` as a tag key or value ('' when it would not): the reserved
    aws: prefix, or a character outside TAG_CHARS_WHAT (the Tag pattern's \\p{L}, \\p{Z} and
    \\p{N} are Unicode's letter, separator and number categories: L*, Z*, N*)."""
    if text.lower().startswith(AWS_TAG_PREFIX):
        return f"starts with {text[:4]!r}, a prefix AWS keeps for its own tags"
    bad = next((c for c in text if unicodedata.category(c)[0] not in "LNZ" and c not in TAG_SYMBOLS), None)
    return "" if bad is None else f"holds {bad!r}; AWS takes only {TAG_CHARS_WHAT} in tags"


def _tags(cfg: pulumi.Config, key: str, required: Mapping[str, str]) -> dict[str, str]:
    """Extra tags: a mapping of tag key (1-128 characters) to string value (0-256; '' allowed, as
    AWS allows), each of AWS's characters and without its aws: prefix (_tag_problem); no key the
    program or Karpenter sets (OWN_TAG_KEYS, OWN_TAG_PREFIXES), a `required` key only with the
    program's value; at most MAX_TAGS - ADDED_TAGS others. Absent: none. ValueError naming the
    key and the tag otherwise."""
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
        for part, problem in (("name", _tag_problem(name)), ("value", _tag_problem(text))):
            if problem:
                raise ValueError(f"{full}: tag {name!r}: its {part} {problem}; write e.g. {full}: {{team: speech}}")
        if name in OWN_TAG_KEYS or name.startswith(OWN_TAG_PREFIXES):
            raise ValueError(f"{full}: tag {name!r} is one the program or Karpenter sets itself (Name, opsctl:, "
                             "kubernetes.io/, karpenter.sh/, karpenter.k8s.aws/, eks:); remove it or use another name")
        if name in required and text != required[name]:
            raise ValueError(f"{full}: tag {name!r} is {text!r}, but the program tags every resource "
                             f"{name}={required[name]!r}; remove it from {full}")
    own = [name for name in value if name not in required]
    if len(own) + ADDED_TAGS > MAX_TAGS:
        raise ValueError(f"{full} has {len(own)} tags: with the {ADDED_TAGS} the program and Karpenter add "
                         f"({', '.join(REQUIRED_TAGS)}; Karpenter's {len(KARPENTER_TAGS)} on a GPU node) a resource "
                         f"would carry {len(own) + ADDED_TAGS}, and AWS takes {MAX_TAGS}; "
                         f"keep at most {MAX_TAGS - ADDED_TAGS}")
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
        return {**self.extra_tags, **required_tags(self.environment)}

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
        values 0-256) and tag rules (_tags); names by NAME_RULES, the two buckets distinct;
        availabilityZones by _zones; kubernetesVersion 1.28 or later (EKS_MIN_VERSION). Raises
        ValueError naming the key for a value of the wrong type, out of bounds or not one AWS
        takes, and Pulumi's ConfigMissingError (a required key unset) or ConfigTypeError (a
        number or flag that is not one)."""

        cfg = pulumi.Config(PROJECT)
        production = cfg.get_bool("production") or False
        environment, region = _text(cfg, "environment"), region_value(_text(pulumi.Config("aws"), "region"))
        audio_bucket, backups_bucket = _text(cfg, "audioBucket"), _text(cfg, "backupsBucket")
        if audio_bucket == backups_bucket:
            raise ValueError(f"transcribe:backupsBucket is {backups_bucket!r}, the audio bucket's name too (an S3 "
                             "bucket name is unique); give it its own, e.g. transcribe:backupsBucket: "
                             f"{TEXT_SETTINGS['transcribe:backupsBucket']}")
        return cls(
            environment=environment,
            production=production,
            region=region,
            availability_zones=_zones(cfg, "availabilityZones", region),
            vpc_cidr=_text(cfg, "vpcCidr", "10.0.0.0/16"),
            db_identifier=_text(cfg, "dbIdentifier"),
            db_instance_class=_text(cfg, "dbInstanceClass", "db.t4g.medium"),
            db_allocated_storage=_count(cfg, "dbAllocatedStorage", 50, DB_STORAGE_GIB, "GiB", DB_STORAGE_RULE),
            db_backup_retention_days=_count(cfg, "dbBackupRetentionDays", 14 if production else 7,
                                            DB_BACKUP_RETENTION_DAYS, "days", DB_BACKUP_RETENTION_RULE),
            cache_replication_group_id=_text(cfg, "cacheReplicationGroupId"),
            cache_node_type=_text(cfg, "cacheNodeType", "cache.t4g.small"),
            audio_bucket=audio_bucket,
            backups_bucket=backups_bucket,
            cluster_name=_text(cfg, "clusterName"),
            namespace=_text(cfg, "namespace", "transcribe"),
            gpu_instance_types=_texts(cfg, "gpuInstanceTypes", GPU_INSTANCE_TYPES, "[g5.xlarge, g6.xlarge]", 1),
            gpu_capacity_type=_text(cfg, "gpuCapacityType", "ON_DEMAND" if production else "SPOT"),
            gpu_max_size=_count(cfg, "gpuMaxSize", GPU_MAX_SIZE, GPU_LIMIT, "GPUs", GPU_LIMIT_RULE),
            kubernetes_version=_version(cfg, "kubernetesVersion", "1.33"),
            api_allowed_cidrs=_texts(cfg, "apiAllowedCidrs", [], "[203.0.113.0/24]"),
            api_key_hashes=_texts(cfg, "apiKeyHashes", [], "['<64 hex digits>']"),
            extra_tags=_tags(cfg, "tags", required_tags(environment)),
        )


def with_name(tags: dict[str, str], name: str) -> dict[str, str]:
    """The common tags plus the `Name` tag the AWS console shows."""
    return {**tags, "Name": name}
