"""The stack's settings, read once from Pulumi config into one typed object.

Everything that differs between production and the other environments is decided here, from
the single `transcribe:production` flag, so a component never asks "is this production?"
itself: it receives explicit arguments (nat_per_az, multi_az, ...) that tests can set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from transcribe_infra.defaults import GPU_INSTANCE_TYPES, GPU_MAX_SIZE

PROJECT = "transcribe"
# Tags every taggable resource carries; the policy checks look for exactly these keys.
REQUIRED_TAGS = ("project", "environment", "managed-by")


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
        """The settings of the stack being run (pulumi.Config), defaults filled in."""

        cfg = pulumi.Config(PROJECT)
        production = cfg.get_bool("production") or False
        return cls(
            environment=cfg.require("environment"),
            production=production,
            region=pulumi.Config("aws").require("region"),
            availability_zones=cfg.require_object("availabilityZones"),
            vpc_cidr=cfg.get("vpcCidr") or "10.0.0.0/16",
            db_identifier=cfg.require("dbIdentifier"),
            db_instance_class=cfg.get("dbInstanceClass") or "db.t4g.medium",
            db_allocated_storage=cfg.get_int("dbAllocatedStorage") or 50,
            db_backup_retention_days=cfg.get_int("dbBackupRetentionDays") or (14 if production else 7),
            cache_replication_group_id=cfg.require("cacheReplicationGroupId"),
            cache_node_type=cfg.get("cacheNodeType") or "cache.t4g.small",
            audio_bucket=cfg.require("audioBucket"),
            backups_bucket=cfg.require("backupsBucket"),
            cluster_name=cfg.require("clusterName"),
            namespace=cfg.get("namespace") or "transcribe",
            gpu_instance_types=cfg.get_object("gpuInstanceTypes") or list(GPU_INSTANCE_TYPES),
            gpu_capacity_type=cfg.get("gpuCapacityType") or ("ON_DEMAND" if production else "SPOT"),
            gpu_max_size=cfg.get_int("gpuMaxSize") or GPU_MAX_SIZE,
            kubernetes_version=cfg.get("kubernetesVersion") or "1.33",
            api_allowed_cidrs=cfg.get_object("apiAllowedCidrs") or [],
            api_key_hashes=cfg.get_object("apiKeyHashes") or [],
            extra_tags=cfg.get_object("tags") or {},
        )


def with_name(tags: dict[str, str], name: str) -> dict[str, str]:
    """The common tags plus the `Name` tag the AWS console shows."""
    return {**tags, "Name": name}
