"""The rules every stack must pass, checked on the resources the program declares.

They run on what the mocks capture (see `offline`), so they need no cloud and no Pulumi CLI:
`opsctl infra policy` runs them, `opsctl infra preview/up` runs them before touching anything,
and the tests plant violations to prove each rule fires. Each violation says which resource,
what is wrong and what to set instead.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from dataclasses import dataclass

from transcribe_infra.offline import Captured, OfflineRun, unsecret
from transcribe_infra.settings import REQUIRED_TAGS

RDS = "aws:rds/instance:Instance"
REDIS = "aws:elasticache/replicationGroup:ReplicationGroup"
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
BUCKET_PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
EKS = "aws:eks/cluster:Cluster"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ASG = "aws:autoscaling/group:Group"  # a self-managed node group
CA_ENABLED = "k8s.io/cluster-autoscaler/enabled"
CA_CLUSTER = "k8s.io/cluster-autoscaler/"  # + the cluster's name: auto-discovery wants both tags
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
NODECLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
# The worker's service account (opsctl.deploy.manifests.SERVICE_ACCOUNT, created by the stack).
WORKER_SERVICE_ACCOUNT = "transcription-worker"
PURPOSE_TAG = "opsctl:purpose"
PRIVATE_PORTS = {5432: "PostgreSQL", 6379: "Redis"}


@dataclass(frozen=True)
class Violation:
    """One rule broken by one resource; str() is the line `opsctl infra policy` prints."""

    rule: str
    type: str
    name: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.type} '{self.name}': {self.message}"


def check(run: OfflineRun, production: bool) -> list[Violation]:
    """Every violation of every rule; empty when the stack complies."""
    found: list[Violation] = []
    for rule in (no_public_database, private_api_endpoint, encryption_everywhere, least_privilege,
                 capacity_can_grow, gpu_nodes_are_usable, tags_on_everything, credentials_are_secrets):
        found += rule(run)
    if production:
        found += deletion_protection(run)
    return found


# (type token, input keys) whose values are credentials: each must be a Pulumi secret, so the
# state encrypts it and no preview, output or log shows it
CREDENTIAL_INPUTS = ((RDS, ("password",)), (REDIS, ("authToken",)),
                     ("aws:secretsmanager/secretVersion:SecretVersion", ("secretString",)),
                     ("kubernetes:core/v1:Secret", ("stringData", "data")))


def credentials_are_secrets(run: OfflineRun) -> list[Violation]:
    """A password, AUTH token, Secrets Manager value or Kubernetes Secret's data declared in
    clear (not a Pulumi secret, at the top or in every value of a map)."""
    out = []
    for typ, keys in CREDENTIAL_INPUTS:
        for r in run.of_type(typ):
            for key in keys:
                if key not in r.inputs:
                    continue
                whole, value = unsecret(r.inputs[key])
                values = value.values() if isinstance(value, dict) and not whole else [r.inputs[key]]
                if not all(unsecret(v)[0] for v in values):
                    out.append(_v("credentials-are-secrets", r, f"{key} is in clear: wrap it in "
                                  "pulumi.Output.secret (or make it with pulumi_random)"))
    return out


def _v(rule: str, res: Captured, message: str) -> Violation:
    return Violation(rule, res.type, res.name, message)


def no_public_database(run: OfflineRun) -> list[Violation]:
    """No RDS instance publicly accessible, no database or cache port open to the internet, and
    every bucket's public access blocked."""

    out = [_v("no-public-database", r, "publicly_accessible must be False")
           for r in run.of_type(RDS) if r.inputs.get("publiclyAccessible") is not False]
    for rule in run.of_type(INGRESS):
        low, high = rule.inputs.get("fromPort", 0), rule.inputs.get("toPort", 65535)
        open_world = rule.inputs.get("cidrIpv4") == "0.0.0.0/0" or rule.inputs.get("cidrIpv6") == "::/0"
        for port, what in PRIVATE_PORTS.items():
            if open_world and (rule.inputs.get("ipProtocol") == "-1" or low <= port <= high):
                out.append(_v("no-public-database", rule, f"admits the internet to {what} ({port}); "
                                                          "admit the worker security group instead"))
    for pab in run.of_type(BUCKET_PAB):
        for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
            if pab.inputs.get(flag) is not True:
                out.append(_v("no-public-database", pab, f"{flag} must be True: buckets are never public"))
    return out


def private_api_endpoint(run: OfflineRun) -> list[Violation]:
    """The EKS API is private, or public only to named ranges (AWS's default is 0.0.0.0/0)."""
    rule = "private-api-endpoint"
    out = []
    for r in run.of_type(EKS):
        vpc = r.inputs.get("vpcConfig") or {}
        if vpc.get("endpointPrivateAccess") is not True:
            out.append(_v(rule, r, "endpoint_private_access must be True: nodes and operators reach the API "
                                   "from inside the VPC"))
        if vpc.get("endpointPublicAccess", True) is False:  # AWS turns the public endpoint on when unset
            continue
        cidrs = vpc.get("publicAccessCidrs") or ["0.0.0.0/0"]  # AWS's default when unset
        from transcribe_infra.cluster import internet_wide

        opened = internet_wide(cidrs)  # also a split /0 (0.0.0.0/1 + 128.0.0.0/1)
        if opened:
            out.append(_v(rule, r, f"the public API endpoint admits {', '.join(opened)}; set endpoint_public_access "
                                   "False, or list the allowed ranges in kubernetes.api_allowed_cidrs "
                                   "(transcribe:apiAllowedCidrs)"))
    return out


def encryption_everywhere(run: OfflineRun) -> list[Violation]:
    """Storage, caches, buckets, logs, secrets, cluster secrets and node disks encrypted with the platform key."""

    rule = "encryption"
    out = []
    for r in run.of_type(RDS):
        if r.inputs.get("storageEncrypted") is not True or not r.inputs.get("kmsKeyId"):
            out.append(_v(rule, r, "storage_encrypted must be True with the platform kms_key_id"))
    for r in run.of_type(REDIS):
        for flag in ("atRestEncryptionEnabled", "transitEncryptionEnabled"):
            if r.inputs.get(flag) is not True:
                out.append(_v(rule, r, f"{flag} must be True"))
    sse = {r.inputs.get("bucket"): r for r in run.of_type(BUCKET_SSE)}
    tls = {r.inputs.get("bucket") for r in run.of_type(BUCKET_POLICY)
           if "aws:SecureTransport" in r.inputs.get("policy", "")}
    for b in run.of_type(BUCKET):
        config = sse.get(b.inputs.get("bucket"))
        algorithms = [rl.get("applyServerSideEncryptionByDefault", {}).get("sseAlgorithm")
                      for rl in (config.inputs.get("rules", []) if config else [])]
        if "aws:kms" not in algorithms:
            out.append(_v(rule, b, "needs a server-side encryption configuration with aws:kms (SSE-KMS)"))
        if b.inputs.get("bucket") not in tls:
            out.append(_v(rule, b, "needs a bucket policy denying requests without TLS (aws:SecureTransport)"))
    for r in run.of_type(EKS):
        if "secrets" not in (r.inputs.get("encryptionConfig") or {}).get("resources", []):
            out.append(_v(rule, r, "encryption_config must encrypt Kubernetes secrets with the platform key"))
    for r in run.of_type(LAUNCH_TEMPLATE):
        for bdm in r.inputs.get("blockDeviceMappings", []) or [{}]:
            if str((bdm.get("ebs") or {}).get("encrypted")).lower() != "true":
                out.append(_v(rule, r, "every EBS volume must be encrypted"))
    for r in run.of_type(NODECLASS):
        for bdm in (r.inputs.get("spec") or {}).get("blockDeviceMappings") or [{}]:
            if (bdm.get("ebs") or {}).get("encrypted") is not True:
                out.append(_v(rule, r, "every EBS volume of the node class must be encrypted"))
    for typ in ("aws:cloudwatch/logGroup:LogGroup", "aws:secretsmanager/secret:Secret"):
        out += [_v(rule, r, "kms_key_id must be the platform key") for r in run.of_type(typ)
                if not r.inputs.get("kmsKeyId")]
    out += [_v(rule, r, "enable_key_rotation must be True") for r in run.of_type("aws:kms/key:Key")
            if r.inputs.get("enableKeyRotation") is not True]
    return out


def tags_of(res: Captured) -> dict:
    """A resource's AWS tags as a mapping: most take `tags` as one; an Auto Scaling group takes a
    list of {key, value, propagateAtLaunch}."""
    tags = res.inputs.get("tags") or {}
    if isinstance(tags, list):
        return {t.get("key"): t.get("value") for t in tags if isinstance(t, dict)}
    return tags if isinstance(tags, dict) else {}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def least_privilege(run: OfflineRun) -> list[Violation]:
    """Inline role policies name their actions; the worker's role never reaches the backups.

    A worker that can write or delete the backups can destroy what would repair the damage
    it did; opsctl backs up with the operator's or CI's own credentials.
    """
    rule = "least-privilege"
    out = []
    for r in run.of_type(ROLE_POLICY):
        try:
            statements = json.loads(r.inputs.get("policy") or "{}").get("Statement", [])
        except ValueError:
            continue
        for s in _as_list(statements):
            wild = [a for a in _as_list(s.get("Action", [])) if a == "*" or a.endswith(":*")]
            if s.get("Effect") == "Allow" and wild:
                out.append(_v(rule, r, f"allows {', '.join(wild)}; name the actions the role needs"))
    backups = [b.inputs.get("bucket") for b in run.of_type(BUCKET)
               if tags_of(b).get(PURPOSE_TAG) == "backups"]
    worker_roles = {str((sa.inputs.get("metadata") or {}).get("annotations", {}).get("eks.amazonaws.com/role-arn", ""))
                    .rsplit("/", 1)[-1] for sa in run.of_type(SERVICE_ACCOUNT)
                    if (sa.inputs.get("metadata") or {}).get("name") == WORKER_SERVICE_ACCOUNT}
    for r in run.of_type(ROLE_POLICY):
        if r.inputs.get("role") in worker_roles:
            named = [b for b in backups if b and f":::{b}" in str(r.inputs.get("policy", ""))]
            if named:
                out.append(_v(rule, r, f"gives the worker's role the backups bucket {', '.join(named)}; "
                                       "the worker may use the audio bucket only"))
    return out


def _releases(run: OfflineRun, chart: str) -> list[Captured]:
    """Helm releases of `chart` (by name or as the last part of an OCI reference)."""
    return [r for r in run.of_type(HELM_RELEASE) if str(r.inputs.get("chart", "")).rsplit("/", 1)[-1] == chart]


def capacity_can_grow(run: OfflineRun) -> list[Violation]:
    """Capacity that starts at zero needs something that adds nodes when pods are Pending.

    A node group with min_size 0, managed (eks.NodeGroup) or self-managed (an Auto Scaling
    group), grows only through a cluster-autoscaler that discovers it: its chart's
    autoDiscovery.clusterName is the group's cluster and the group carries both discovery tags,
    k8s.io/cluster-autoscaler/enabled=true and k8s.io/cluster-autoscaler/<cluster> (the
    autoscaler's --node-group-auto-discovery filter asks for both); Karpenter launches nodes for its NodePools and never resizes a node
    group. A NodePool needs the Karpenter controller and the EC2NodeClass it names, and, when
    it allows spot, the interruption queue that lets Karpenter drain a node before EC2 takes it.
    """
    rule = "autoscaler"
    out = []
    # the clusters cluster-autoscaler discovers groups of (autoDiscovery.clusterName of its chart)
    discovered = {str(((r.inputs.get("values") or {}).get("autoDiscovery") or {}).get("clusterName") or "")
                  for r in _releases(run, "cluster-autoscaler")} - {""}
    groups = [(g, (g.inputs.get("scalingConfig") or {}).get("minSize", 1), g.inputs.get("clusterName"))
              for g in run.of_type(NODE_GROUP)]
    groups += [(g, g.inputs.get("minSize", 1), None) for g in run.of_type(ASG)]
    for group, low, cluster in groups:
        if low != 0:
            continue
        tags = tags_of(group)
        named = {k[len(CA_CLUSTER):] for k in tags if k.startswith(CA_CLUSTER) and k != CA_ENABLED}
        # a managed group names its cluster; a self-managed one only through its tags
        clusters = ({str(cluster)} if cluster is not None else named) & named
        if str(tags.get(CA_ENABLED)).lower() != "true" or not clusters & discovered:
            where = f"cluster '{cluster}'" if cluster is not None else "its cluster"
            seen = f" (it discovers {', '.join(sorted(discovered))})" if discovered else ""
            out.append(_v(rule, group, f"scales from zero (min_size 0) but no autoscaler adds its nodes: install "
                                       f"cluster-autoscaler with autoDiscovery.clusterName {where}{seen} and tag the "
                                       f"group {CA_ENABLED}=true and {CA_CLUSTER}<cluster>, or launch these nodes "
                                       "from a Karpenter NodePool"))
    karpenter = _releases(run, "karpenter")
    classes = {(r.inputs.get("metadata") or {}).get("name") for r in run.of_type(NODECLASS)}
    queue = any(((r.inputs.get("values") or {}).get("settings") or {}).get("interruptionQueue") for r in karpenter)
    for pool in run.of_type(NODEPOOL):
        spec = ((pool.inputs.get("spec") or {}).get("template") or {}).get("spec") or {}
        if not karpenter:
            out.append(_v(rule, pool, "no Karpenter controller is installed: nothing launches this pool's nodes"))
        if (spec.get("nodeClassRef") or {}).get("name") not in classes:
            out.append(_v(rule, pool, f"names EC2NodeClass '{(spec.get('nodeClassRef') or {}).get('name')}', "
                                      "which the stack does not declare"))
        capacity = [v for req in spec.get("requirements", []) if req.get("key") == "karpenter.sh/capacity-type"
                    for v in req.get("values", [])]
        if karpenter and "spot" in capacity and not queue:
            out.append(_v(rule, pool, "allows spot but Karpenter has no interruption queue "
                                      "(settings.interruptionQueue): spot nodes would vanish without a drain"))
    return out


def _tolerates(tolerations: list[dict], taint: dict) -> bool:
    """Kubernetes' rule: same key (or none with Exists), same effect (or none), Exists or equal value."""
    for t in tolerations:
        key_ok = t.get("key") == taint.get("key") or (not t.get("key") and t.get("operator") == "Exists")
        effect_ok = not t.get("effect") or t.get("effect") == taint.get("effect")
        value_ok = t.get("operator") == "Exists" or t.get("value") == taint.get("value")
        if key_ok and effect_ok and value_ok:
            return True
    return False


def gpu_nodes_are_usable(run: OfflineRun) -> list[Violation]:
    """GPU nodes need the NVIDIA device plugin on them, or no pod can ask for `nvidia.com/gpu`."""
    rule = "gpu-device-plugin"
    out = []
    plugins = _releases(run, "nvidia-device-plugin")
    for pool in run.of_type(NODEPOOL):
        template = (pool.inputs.get("spec") or {}).get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if labels.get("nvidia.com/gpu.present") != "true":
            continue
        taints = (template.get("spec") or {}).get("taints") or []
        fits = [p for p in plugins
                if all(labels.get(k) == v for k, v in ((p.inputs.get("values") or {}).get("nodeSelector") or {}).items())
                and all(_tolerates((p.inputs.get("values") or {}).get("tolerations") or [], t) for t in taints)]
        if not fits:
            out.append(_v(rule, pool, "no NVIDIA device plugin runs on these GPU nodes (its nodeSelector must "
                                      "match the pool's labels and its tolerations its taints)"))
    return out


def deletion_protection(run: OfflineRun) -> list[Violation]:
    """Production only: what holds data cannot be deleted by one mistaken command."""
    rule = "deletion-protection"
    out = [_v(rule, r, "deletion_protection must be True in production")
           for r in run.of_type(RDS) + run.of_type(EKS) if r.inputs.get("deletionProtection") is not True]
    # a read replica has no final snapshot (RDS refuses one); its data is the primary's
    out += [_v(rule, r, "skip_final_snapshot must be False in production")
            for r in run.of_type(RDS) if r.inputs.get("skipFinalSnapshot") is not False
            and not r.inputs.get("replicateSourceDb")]
    out += [_v(rule, r, "force_destroy must be False in production")
            for r in run.of_type(BUCKET) if r.inputs.get("forceDestroy")]
    return out


@functools.lru_cache(maxsize=None)
def taggable(type_token: str) -> bool:
    """Whether the provider's resource accepts `tags`, read from the installed SDK itself."""
    package, rest = type_token.split(":", 1)
    if package != "aws":
        return False
    module, _, cls_name = rest.partition(":")
    try:
        cls = getattr(importlib.import_module(f"pulumi_aws.{module.split('/')[0]}"), cls_name)
    except (ImportError, AttributeError):
        return False
    return "tags" in inspect.signature(cls._internal_init).parameters


def tags_on_everything(run: OfflineRun) -> list[Violation]:
    """Every taggable AWS resource carries REQUIRED_TAGS; every Kubernetes object the
    app.kubernetes.io/managed-by label."""

    rule = "tags"
    out = []
    for r in run.resources:
        if r.custom and taggable(r.type):
            missing = [k for k in REQUIRED_TAGS if not tags_of(r).get(k)]
            if missing:
                out.append(_v(rule, r, f"missing tags {', '.join(missing)}"))
        elif r.type.startswith("kubernetes:") and r.custom and "metadata" in r.inputs:
            labels = r.inputs["metadata"].get("labels") or {}
            if "app.kubernetes.io/managed-by" not in labels:
                out.append(_v(rule, r, "missing label app.kubernetes.io/managed-by"))
    return out
