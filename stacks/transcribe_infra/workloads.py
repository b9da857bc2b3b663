"""What the cluster needs before the worker can be deployed onto it, through pulumi-kubernetes.

The cluster's kubernetes provider (`provider`, for every in-cluster resource of the stack);
the worker namespace; the KEDA operator, which scales the worker Deployments on their real load
(queue depth, transcriptions in flight per pod; the ScaledObject itself must follow the active
color, so `opsctl deploy` applies it, see opsctl.deploy.manifests); and the worker's
service account bound by IRSA to an IAM role that may use the audio bucket and the key, and
nothing else: not the backups bucket (a compromised worker must not be able to delete or
overwrite the backups that would repair what it did; opsctl backs up with its own credentials).

The worker's Secret `transcription-worker` is made here too, with the keys the Deployment
reads (opsctl.deploy.manifests.SECRET_ENV): `database-url` and `redis-url` from the database's
and cache's outputs, and `api-key-hashes`, the SHA-256 of an API key generated here (for
opsctl's analysis and load tests; kept in the Secrets Manager secret `<namespace>/worker-api-key-…`,
the output `workerApiKeySecretArn`) plus the hashes listed in `transcribe:apiKeyHashes`. All
are Pulumi secrets: encrypted in the state, never in an output or a log in clear. Deploys
(opsctl deploy) then only ever create Deployments, Services and the ScaledObject.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hashlib
import re

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

KEDA_CHART = "keda"
KEDA_REPO = "https://kedacore.github.io/charts"
KEDA_NAMESPACE = "keda"
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
WORKER_SECRET = "transcription-worker"  # opsctl.deploy.manifests.SECRET, with its keys below
SECRET_KEYS = ("database-url", "redis-url", "api-key-hashes")


@dataclass
class WorkloadsArgs:
    """The cluster to reach, the worker's namespace and service account, IRSA's OIDC provider,
    what the worker may use, its Secret's values (Pulumi secrets) and extra API-key hashes
    (ValueError for anything but SHA-256 hex)."""

    kubeconfig: pulumi.Input[str]
    namespace: str
    service_account: str
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]  # https://oidc.eks.<region>.amazonaws.com/id/<id>
    audio_bucket_arn: pulumi.Input[str]  # the only bucket the worker may touch
    kms_key_arn: pulumi.Input[str]
    database_url: pulumi.Input[str]  # secret: Database.url
    redis_url: pulumi.Input[str]  # secret: Cache.url
    api_key_hashes: list[str] = field(default_factory=list)  # more accepted keys, SHA-256 hex each
    keda_version: str = "2.21.1"
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [h for h in self.api_key_hashes if not re.fullmatch(r"[0-9a-f]{64}", str(h))]
        if bad:
            raise ValueError(f"transcribe:apiKeyHashes: {len(bad)} value(s) are not SHA-256 hex digests "
                             "(printf %s \"$KEY\" | sha256sum); list hashes, never keys")

    @property
    def labels(self) -> dict[str, str]:
        """The labels of the in-cluster objects this component makes."""

        return {"app.kubernetes.io/part-of": "transcribe", "app.kubernetes.io/managed-by": "pulumi",
                "environment": self.tags.get("environment", "")}


def trust_policy(provider_arn: str, issuer: str, namespace: str, service_account: str) -> dict:
    """Only this one service account, in this one namespace, may assume the worker role."""
    host = issuer.removeprefix("https://")
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
        "Principal": {"Federated": provider_arn},
        "Condition": {"StringEquals": {
            f"{host}:sub": f"system:serviceaccount:{namespace}:{service_account}",
            f"{host}:aud": "sts.amazonaws.com"}},
    }]}


def key_hashes(key: str, extra: list[str]) -> str:
    """The worker's WORKER_API_KEY_HASHES: SHA-256 hex of `key`, then `extra`, comma-separated."""
    return ",".join([hashlib.sha256(key.encode()).hexdigest(), *extra])


class Workloads(pulumi.ComponentResource):
    """The cluster provider, the worker namespace, its IRSA service account and role, its
    Secret, and the KEDA operator. Outputs: namespace, service_account, worker_role_arn,
    api_key_secret_arn (where the generated API key is kept)."""

    provider: k8s.Provider
    namespace: pulumi.Output[str]
    service_account: pulumi.Output[str]
    worker_role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: WorkloadsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("transcribe:infra:Workloads", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        provider = k8s.Provider(f"{name}-k8s", kubeconfig=args.kubeconfig, enable_server_side_apply=True, opts=child)
        in_cluster = pulumi.ResourceOptions(parent=self, provider=provider)

        ns = k8s.core.v1.Namespace(f"{name}-namespace", opts=in_cluster, metadata={
            "name": args.namespace,
            "labels": {**args.labels, "pod-security.kubernetes.io/enforce": "baseline"}})

        role = aws.iam.Role(f"{name}-worker", tags=args.tags, opts=child, assume_role_policy=pulumi.Output.all(
            args.oidc_provider_arn, args.oidc_issuer).apply(lambda a: pulumi.Output.json_dumps(
                trust_policy(a[0], a[1], args.namespace, args.service_account))))
        objects = pulumi.Output.concat(args.audio_bucket_arn, "/*")
        aws.iam.RolePolicy(f"{name}-worker-buckets", role=role.name, opts=child, policy=pulumi.Output.json_dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": args.audio_bucket_arn},
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                               "s3:AbortMultipartUpload"], "Resource": objects},
                {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": args.kms_key_arn},
            ]}))
        sa = k8s.core.v1.ServiceAccount(f"{name}-worker", opts=pulumi.ResourceOptions(
            parent=self, provider=provider, depends_on=[ns]), metadata={
            "name": args.service_account, "namespace": args.namespace, "labels": args.labels,
            "annotations": {ROLE_ANNOTATION: role.arn}})

        api_key = random.RandomPassword(f"{name}-worker-api-key", length=48, special=False, opts=child)
        key_secret = aws.secretsmanager.Secret(
            f"{name}-worker-api-key", name_prefix=f"{args.namespace}/worker-api-key-", kms_key_id=args.kms_key_arn,
            description="an API key the worker accepts (for opsctl: deploy analysis, load tests)",
            recovery_window_in_days=7, tags=args.tags, opts=child)
        aws.secretsmanager.SecretVersion(
            f"{name}-worker-api-key", secret_id=key_secret.id, opts=child,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps({"api_key": api_key.result})))
        hashes = api_key.result.apply(lambda key: key_hashes(key, list(args.api_key_hashes)))
        k8s.core.v1.Secret(
            f"{name}-worker-secret", type="Opaque",
            metadata={"name": WORKER_SECRET, "namespace": args.namespace, "labels": args.labels},
            string_data=dict(zip(SECRET_KEYS, (pulumi.Output.secret(args.database_url),
                                               pulumi.Output.secret(args.redis_url), pulumi.Output.secret(hashes)))),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[ns],
                                        additional_secret_outputs=["stringData", "data"]))

        # the operator only: the worker's ScaledObject belongs to the deploy (it follows the color)
        k8s.helm.v3.Release(
            f"{name}-keda", opts=in_cluster, name=KEDA_CHART, chart=KEDA_CHART, version=args.keda_version,
            repository_opts={"repo": KEDA_REPO}, namespace=KEDA_NAMESPACE, create_namespace=True, atomic=True,
            values={"nodeSelector": {"role": "system"},
                    "podSecurityContext": {"operator": {"runAsNonRoot": True},
                                           "metricServer": {"runAsNonRoot": True}}})

        self.provider = provider
        self.namespace = ns.metadata.name
        self.service_account = sa.metadata.name
        self.worker_role_arn = role.arn
        self.api_key_secret_arn = key_secret.arn
        self.register_outputs({"namespace": self.namespace, "service_account": self.service_account,
                               "worker_role_arn": role.arn, "api_key_secret_arn": key_secret.arn})
