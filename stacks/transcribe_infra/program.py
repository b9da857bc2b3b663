"""The whole stack: the components wired together, and the outputs opsctl reads.

The exported names are a contract with opsctl (opsctl.infra.OUTPUTS lists them and a test
checks every one is exported): other commands find the database, cache, buckets and cluster
of an environment from these outputs instead of hand-copied settings.
"""

from __future__ import annotations

import pulumi

from transcribe_infra.cache import Cache, CacheArgs
from transcribe_infra.cluster import Cluster, ClusterArgs
from transcribe_infra.database import Database, DatabaseArgs
from transcribe_infra.encryption import Encryption, EncryptionArgs
from transcribe_infra.gpu import GpuCapacity, GpuCapacityArgs
from transcribe_infra.network import Network, NetworkArgs
from transcribe_infra.settings import PROJECT, StackSettings
from transcribe_infra.storage import Storage, StorageArgs
from transcribe_infra.workloads import Workloads, WorkloadsArgs


def build(s: StackSettings, redis_auth_token: pulumi.Input[str] | None = None) -> dict[str, pulumi.Output]:
    """Create every resource of one environment; returns the outputs to export.

    `redis_auth_token`: None (the cache generates its own), or a stack's legacy config token.
    """
    name = f"{PROJECT}-{s.environment}"
    tags = s.tags
    key = Encryption(name, EncryptionArgs(region=s.region, deletion_window_days=30 if s.production else 7,
                                          tags=tags))
    net = Network(name, NetworkArgs(cidr=s.vpc_cidr, availability_zones=s.availability_zones,
                                    nat_per_az=s.nat_per_az, kms_key_arn=key.key_arn,
                                    cluster_name=s.cluster_name, tags=tags))
    db = Database(name, DatabaseArgs(
        identifier=s.db_identifier, subnet_ids=net.private_subnet_ids, security_group_id=net.database_sg_id,
        kms_key_arn=key.key_arn, instance_class=s.db_instance_class, allocated_storage=s.db_allocated_storage,
        multi_az=s.multi_az, deletion_protection=s.deletion_protection,
        backup_retention_days=s.db_backup_retention_days, read_replica=s.read_replica, tags=tags))
    cache = Cache(name, CacheArgs(
        replication_group_id=s.cache_replication_group_id, subnet_ids=net.private_subnet_ids,
        security_group_id=net.cache_sg_id, kms_key_arn=key.key_arn, auth_token=redis_auth_token,
        node_type=s.cache_node_type, automatic_failover=s.production,
        snapshot_retention_days=7 if s.production else 1, tags=tags))
    storage = Storage(name, StorageArgs(
        audio_bucket=s.audio_bucket, backups_bucket=s.backups_bucket, kms_key_arn=key.key_arn,
        force_destroy=not s.production, backup_noncurrent_expire_days=365 if s.production else 30, tags=tags))
    cluster = Cluster(name, ClusterArgs(
        name=s.cluster_name, region=s.region, subnet_ids=net.private_subnet_ids,
        kms_key_arn=key.key_arn, version=s.kubernetes_version, deletion_protection=s.deletion_protection,
        public_access_cidrs=s.api_allowed_cidrs, tags=tags))
    work = Workloads(name, WorkloadsArgs(
        kubeconfig=cluster.kubeconfig, namespace=s.namespace, service_account=s.service_account,
        oidc_provider_arn=cluster.oidc_provider_arn, oidc_issuer=cluster.oidc_issuer,
        audio_bucket_arn=storage.bucket_arns["audio"], kms_key_arn=key.key_arn, database_url=db.url,
        redis_url=cache.url, api_key_hashes=list(s.api_key_hashes), tags=tags))
    gpu = GpuCapacity(name, GpuCapacityArgs(
        cluster_name=cluster.name, region=s.region, provider=work.provider,
        oidc_provider_arn=cluster.oidc_provider_arn, oidc_issuer=cluster.oidc_issuer,
        subnet_ids=net.private_subnet_ids, security_group_ids=[cluster.security_group_id, net.worker_sg_id],
        kms_key_arn=key.key_arn, instance_types=s.gpu_instance_types, spot=s.gpu_capacity_type == "SPOT",
        max_gpus=s.gpu_max_size, tags=tags))
    replica = {"databaseReplicaId": db.replica_id} if db.replica_id is not None else {}
    return {
        **replica,
        "region": pulumi.Output.from_input(s.region),
        "vpcId": net.vpc_id,
        "databaseEndpoint": db.endpoint,
        "databaseAddress": db.address,
        "databasePort": db.port,
        "databaseSecretArn": db.secret_arn,
        "databaseInstanceId": db.instance_id,
        "redisEndpoint": cache.primary_endpoint,
        "redisPort": cache.port,
        "redisAuthSecretArn": cache.auth_secret_arn,
        "redisReplicationGroupId": cache.replication_group_id,
        "audioBucket": storage.bucket_names["audio"],
        "backupsBucket": storage.bucket_names["backups"],
        "clusterName": cluster.name,
        "kubeconfig": cluster.kubeconfig,
        "workerNamespace": work.namespace,
        "workerServiceAccount": work.service_account,
        "workerRoleArn": work.worker_role_arn,
        "workerApiKeySecretArn": work.api_key_secret_arn,
        "kmsKeyArn": key.key_arn,
        "gpuNodePool": gpu.nodepool,
        "gpuInterruptionQueue": gpu.interruption_queue,
    }


def main() -> None:
    """The Pulumi entry point (stacks/__main__.py): the stack's settings, then build and export."""

    settings = StackSettings.from_config()
    # stacks made before the program generated the token keep theirs (a new one locks workers out)
    token = pulumi.Config(PROJECT).get_secret("redisAuthToken")
    for output_name, value in build(settings, token).items():
        pulumi.export(output_name, value)
