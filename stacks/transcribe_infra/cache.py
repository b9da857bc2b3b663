"""ElastiCache Redis: the cache and rate limits, encrypted at rest and in transit, with AUTH.

The AUTH token is made here, by a `random.RandomPassword` (64 letters and digits: ElastiCache
takes 16 to 128 printable characters without `@ " /`, and these need no escaping in a URL), so
no secret is ever passed to the program: not on a command line, not in a config file. Pulumi
keeps it encrypted in the state. A stack created before this kept its token in the stack config
(`transcribe:redisAuthToken`); that one is used as it is, since a new token would lock the
running workers out. The token is written to a Secrets Manager secret together with the
endpoint: the worker and opsctl read that secret through IAM, nobody copies a password. The
secret's name carries a generated suffix: a destroyed secret waits out its recovery window
under its name, and a re-created stack must not collide with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from urllib.parse import quote

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from transcribe_infra.network import REDIS_PORT
from transcribe_infra.settings import with_name


@dataclass
class CacheArgs:
    """The replication group's id, subnets, security group, key, node type, failover, snapshot
    days, and the AUTH token (None: generated, `token_length` letters and digits).
    """
    replication_group_id: str
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    node_type: str
    automatic_failover: bool  # production: a replica in another AZ takes over the primary's role
    engine_version: str = "7.1"
    snapshot_retention_days: int = 1
    auth_token: pulumi.Input[str] | None = None  # None: generated here (a stack's legacy config token otherwise)
    token_length: int = 64
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 16 <= self.token_length <= 128:
            raise ValueError("ElastiCache AUTH tokens are 16 to 128 characters long")

    @property
    def num_cache_clusters(self) -> int:
        """Failover needs somewhere to fail over to: a replica in a second AZ."""
        return 2 if self.automatic_failover else 1


class Cache(pulumi.ComponentResource):
    """The Redis replication group (TLS, AUTH) and the Secrets Manager secret of its token.
    Outputs: primary_endpoint, port, auth_secret_arn, replication_group_id, and `url`, the
    worker's `rediss://:<token>@host:port/0` (a Pulumi secret)."""

    primary_endpoint: pulumi.Output[str]
    port: pulumi.Output[int]
    auth_secret_arn: pulumi.Output[str]
    replication_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: CacheArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("transcribe:infra:Cache", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        token = args.auth_token
        if token is None:
            token = random.RandomPassword(f"{name}-auth-token", length=args.token_length, special=False,
                                          min_lower=1, min_upper=1, min_numeric=1, opts=child).result
        token = pulumi.Output.secret(token)
        subnets = aws.elasticache.SubnetGroup(f"{name}-subnets", name=args.replication_group_id,
                                              subnet_ids=args.subnet_ids, tags=args.tags, opts=child,
                                              description=f"{args.replication_group_id}: private subnets only")
        group = aws.elasticache.ReplicationGroup(
            f"{name}-redis",
            replication_group_id=args.replication_group_id,
            description=f"{args.replication_group_id}: transcription cache and rate limits",
            engine="redis",
            engine_version=args.engine_version,
            node_type=args.node_type,
            port=REDIS_PORT,
            num_cache_clusters=args.num_cache_clusters,
            automatic_failover_enabled=args.automatic_failover,
            multi_az_enabled=args.automatic_failover,
            subnet_group_name=subnets.name,
            security_group_ids=[args.security_group_id],
            at_rest_encryption_enabled=True,
            kms_key_id=args.kms_key_arn,
            transit_encryption_enabled=True,
            auth_token=token,
            snapshot_retention_limit=args.snapshot_retention_days,
            snapshot_window="01:00-02:00",
            maintenance_window="sun:04:30-sun:05:30",
            auto_minor_version_upgrade=True,
            apply_immediately=not args.automatic_failover,
            tags=with_name(args.tags, args.replication_group_id),
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["auth_token"]),
        )
        secret = aws.secretsmanager.Secret(
            f"{name}-auth", name_prefix=f"{args.replication_group_id}/redis-", kms_key_id=args.kms_key_arn,
            description=f"{args.replication_group_id}: Redis AUTH token and endpoint",
            recovery_window_in_days=7, tags=args.tags, opts=child)
        aws.secretsmanager.SecretVersion(
            f"{name}-auth", secret_id=secret.id, opts=child,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps({
                "host": group.primary_endpoint_address, "port": REDIS_PORT, "tls": True,
                "auth_token": token,
            })))
        self.primary_endpoint = group.primary_endpoint_address
        self.port = group.port
        self.auth_secret_arn = secret.arn
        # the worker's WORKER_REDIS_URL: TLS (transit encryption is on), AUTH token, database 0
        self.url = pulumi.Output.secret(pulumi.Output.concat(
            "rediss://:", token.apply(lambda t: quote(t, safe="")), "@", group.primary_endpoint_address, ":", str(REDIS_PORT), "/0"))
        self.replication_group_id = group.replication_group_id
        self.register_outputs({"primary_endpoint": group.primary_endpoint_address, "port": group.port,
                               "auth_secret_arn": secret.arn, "replication_group_id": group.replication_group_id})
