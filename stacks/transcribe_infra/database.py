"""RDS PostgreSQL: the jobs and transcripts, the one store that must never be lost.

Private subnets only and never publicly accessible; encrypted with the platform key; at least
seven days of point-in-time recovery; a final snapshot on deletion in every environment,
named `<identifier>-final-<8 hex>`: the suffix is a `random.RandomId` made with the instance and
replaced with it (its keepers are the arguments that replace an RDS instance), so a stack that
is destroyed, re-created and destroyed again never asks for a snapshot name that already
exists (RDS refuses that with DBSnapshotAlreadyExists and the destroy stops half-way).

Protected environments also get a read replica (`read_replica`), `<identifier>-replica`, that
`opsctl failover` promotes when the primary is lost. It carries the tags `opsctl:role=read-replica`
and `opsctl:replica-of=<identifier>`, by which failover finds it (`rds:DescribeDBInstances` and
the instance's tags), and is encrypted, private and protected like the primary. RDS takes no
final snapshot of a replica (it refuses one), so it skips it: its data is the primary's.
The master password is managed by RDS in Secrets Manager (`manage_master_user_password`), so
it never passes through Pulumi state or opsctl: opsctl exports only the secret's ARN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from transcribe_infra.settings import with_name

ROLE_TAG = "opsctl:role"  # read-replica on the replica
REPLICA_OF_TAG = "opsctl:replica-of"  # the primary's identifier, on the replica


@dataclass
class DatabaseArgs:
    identifier: str
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    instance_class: str
    allocated_storage: int
    multi_az: bool  # production: a standby in another AZ, failover in a minute or two
    deletion_protection: bool  # production: `destroy` cannot take the database by mistake
    backup_retention_days: int = 7
    engine_version: str = "17"
    db_name: str = "transcribe"
    username: str = "transcribe"
    read_replica: bool = False  # protected environments: a replica `opsctl failover` can promote
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backup_retention_days < 7:
            raise ValueError("keep at least 7 days of database backups (point-in-time recovery)")

    @property
    def parameter_family(self) -> str:
        return f"postgres{self.engine_version.split('.')[0]}"


class Database(pulumi.ComponentResource):
    endpoint: pulumi.Output[str]
    address: pulumi.Output[str]
    port: pulumi.Output[int]
    secret_arn: pulumi.Output[str]
    instance_id: pulumi.Output[str]
    replica_id: pulumi.Output[str] | None  # None without a read replica

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("transcribe:infra:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        subnets = aws.rds.SubnetGroup(f"{name}-subnets", subnet_ids=args.subnet_ids,
                                      description=f"{args.identifier}: private subnets only",
                                      tags=with_name(args.tags, args.identifier), opts=child)
        params = aws.rds.ParameterGroup(
            f"{name}-params", family=args.parameter_family, description=f"{args.identifier} parameters",
            parameters=[
                # clients must use TLS: the database is reachable only from the VPC, but not in clear
                {"name": "rds.force_ssl", "value": "1"},
                # slow queries show up in the logs the ops team already reads
                {"name": "log_min_duration_statement", "value": "1000"},
                {"name": "shared_preload_libraries", "value": "pg_stat_statements", "apply_method": "pending-reboot"},
            ],
            tags=args.tags, opts=child)
        # new with every instance (the keepers are what forces an RDS replacement), so each
        # deletion's final snapshot has a name of its own
        suffix = random.RandomId(f"{name}-final-snapshot", byte_length=4, opts=child, keepers={
            "identifier": args.identifier, "engine": "postgres", "db_name": args.db_name,
            "username": args.username, "kms_key_id": args.kms_key_arn})
        db = aws.rds.Instance(
            f"{name}-instance",
            identifier=args.identifier,
            engine="postgres",
            engine_version=args.engine_version,
            instance_class=args.instance_class,
            allocated_storage=args.allocated_storage,
            max_allocated_storage=args.allocated_storage * 4,  # storage autoscaling, bounded
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=args.kms_key_arn,
            db_name=args.db_name,
            username=args.username,
            manage_master_user_password=True,
            master_user_secret_kms_key_id=args.kms_key_arn,
            db_subnet_group_name=subnets.name,
            parameter_group_name=params.name,
            vpc_security_group_ids=[args.security_group_id],
            publicly_accessible=False,
            multi_az=args.multi_az,
            deletion_protection=args.deletion_protection,
            backup_retention_period=args.backup_retention_days,
            backup_window="02:00-03:00",
            maintenance_window="sun:03:30-sun:04:30",
            copy_tags_to_snapshot=True,
            skip_final_snapshot=False,
            final_snapshot_identifier=pulumi.Output.concat(args.identifier, "-final-", suffix.hex),
            performance_insights_enabled=True,
            performance_insights_kms_key_id=args.kms_key_arn,
            performance_insights_retention_period=7,
            enabled_cloudwatch_logs_exports=["postgresql", "upgrade"],
            iam_database_authentication_enabled=True,
            auto_minor_version_upgrade=True,
            apply_immediately=not args.deletion_protection,  # production changes wait for the window
            tags=with_name(args.tags, args.identifier),
            opts=child,
        )
        self.replica_id = self._replica(name, args, db, params).identifier if args.read_replica else None
        self.endpoint, self.address, self.port = db.endpoint, db.address, db.port
        self.secret_arn = db.master_user_secrets.apply(lambda s: s[0].secret_arn if s else "")
        self.instance_id = db.identifier
        self.register_outputs({"endpoint": db.endpoint, "address": db.address, "port": db.port,
                               "secret_arn": self.secret_arn, "instance_id": db.identifier,
                               "replica_id": self.replica_id})

    def _replica(self, name: str, args: DatabaseArgs, primary: aws.rds.Instance,
                 params: aws.rds.ParameterGroup) -> aws.rds.Instance:
        """A same-region read replica: engine, user, storage and subnets come from the primary."""
        identifier = f"{args.identifier}-replica"
        return aws.rds.Instance(
            f"{name}-replica",
            identifier=identifier,
            replicate_source_db=primary.identifier,
            instance_class=args.instance_class,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=args.kms_key_arn,
            parameter_group_name=params.name,
            vpc_security_group_ids=[args.security_group_id],
            publicly_accessible=False,
            multi_az=False,  # the primary is Multi-AZ; the replica is the second line
            deletion_protection=args.deletion_protection,
            backup_retention_period=args.backup_retention_days,  # a promoted replica keeps PITR at once
            backup_window="02:00-03:00",
            maintenance_window="sun:05:30-sun:06:30",  # never together with the primary's
            copy_tags_to_snapshot=True,
            skip_final_snapshot=True,  # RDS refuses a final snapshot of a read replica
            performance_insights_enabled=True,
            performance_insights_kms_key_id=args.kms_key_arn,
            performance_insights_retention_period=7,
            enabled_cloudwatch_logs_exports=["postgresql", "upgrade"],
            iam_database_authentication_enabled=True,
            auto_minor_version_upgrade=True,
            apply_immediately=not args.deletion_protection,
            tags={**with_name(args.tags, identifier), ROLE_TAG: "read-replica", REPLICA_OF_TAG: args.identifier},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[primary]),
        )
