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
The master password is made here by a `random.RandomPassword` (40 letters and digits, safe in a
URL), like the Redis AUTH token: it lives encrypted in the stack's state (a Pulumi secret), in
the Secrets Manager secret `<identifier>/database-…` (username, password, host, port, dbname;
its ARN is the output `databaseSecretArn`) and in the worker's Kubernetes Secret (`url`, see
workloads.py). It is not RDS-managed any more: RDS rotates a managed password every 7 days,
and the worker, which reads its URL once at start, would lose the database at the first
rotation. opsctl never sees it; no output holds it in clear.
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
    """The instance's identifier, subnets, security group, key, class, storage (GiB), Multi-AZ,
    deletion protection and backup days (at least 7: ValueError otherwise).
    """
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
        if self.backup_retention_days < 7:  # it is the stack's transcribe:dbBackupRetentionDays (program.py)
            raise ValueError(f"transcribe:dbBackupRetentionDays is {self.backup_retention_days}: keep at least 7 days "
                             "of database backups (point-in-time recovery); write e.g. "
                             "transcribe:dbBackupRetentionDays: 7")

    @property
    def parameter_family(self) -> str:
        """The RDS parameter group family of the engine version, e.g. postgres17."""
        return f"postgres{self.engine_version.split('.')[0]}"


class Database(pulumi.ComponentResource):
    """The primary (and, with `read_replica`, its replica). Outputs: endpoint (host:port),
    address, port, secret_arn (the credentials' Secrets Manager secret), instance_id,
    replica_id, and `url`, the worker's `postgresql://…?sslmode=require` (a Pulumi secret)."""

    endpoint: pulumi.Output[str]
    address: pulumi.Output[str]
    port: pulumi.Output[int]
    secret_arn: pulumi.Output[str]
    url: pulumi.Output[str]  # secret
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
        # letters and digits: no URL escaping, and none of the characters RDS refuses (/ @ " space)
        password = random.RandomPassword(f"{name}-password", length=40, special=False, opts=child)
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
            password=password.result,
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
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["password"]),
        )
        secret = aws.secretsmanager.Secret(
            f"{name}-credentials", name_prefix=f"{args.identifier}/database-", kms_key_id=args.kms_key_arn,
            description=f"{args.identifier}: PostgreSQL master user, password and endpoint",
            recovery_window_in_days=7, tags=args.tags, opts=child)
        aws.secretsmanager.SecretVersion(
            f"{name}-credentials", secret_id=secret.id, opts=child,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps({
                "engine": "postgres", "username": args.username, "password": password.result,
                "host": db.address, "port": db.port, "dbname": args.db_name})))
        self.url = pulumi.Output.secret(pulumi.Output.concat(
            "postgresql://", args.username, ":", password.result, "@", db.address, ":",
            db.port.apply(str), "/", args.db_name, "?sslmode=require"))
        self.replica_id = self._replica(name, args, db, params).identifier if args.read_replica else None
        self.endpoint, self.address, self.port = db.endpoint, db.address, db.port
        self.secret_arn = secret.arn
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
