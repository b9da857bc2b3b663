"""Each rule fires on a planted violation, with a message naming the resource and the fix."""

import copy

import pulumi_aws as aws
import pytest
from stacks_support import run_component

from transcribe_infra import policy


def planted(run, typ, name=None, **changes):
    """A copy of the run whose resource `typ` (named `name`) has `changes` in its inputs."""
    run = copy.deepcopy(run)
    target = run.one(typ, name)
    for key, value in changes.items():
        if value is None:
            target.inputs.pop(key, None)
        else:
            target.inputs[key] = value
    return run


def messages(run, production=False):
    return [str(v) for v in policy.check(run, production=production)]


def test_a_public_database_declared_by_a_program_is_refused():
    def program():
        aws.rds.Instance("rogue", identifier="rogue", engine="postgres", instance_class="db.t4g.micro",
                         publicly_accessible=True, storage_encrypted=False,
                         tags={"project": "transcribe", "environment": "x", "managed-by": "pulumi"})
    found = messages(run_component(program))
    assert found == [
        "[no-public-database] aws:rds/instance:Instance 'rogue': publicly_accessible must be False",
        "[encryption] aws:rds/instance:Instance 'rogue': storage_encrypted must be True with the platform kms_key_id",
    ]


def test_database_port_open_to_the_internet(staging):
    run = planted(staging, policy.INGRESS, "transcribe-staging-database-from-worker",
                  cidrIpv4="0.0.0.0/0", referencedSecurityGroupId=None)
    assert messages(run) == [
        "[no-public-database] aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule "
        "'transcribe-staging-database-from-worker': admits the internet to PostgreSQL (5432); "
        "admit the worker security group instead"]


def test_public_bucket_access(staging):
    run = planted(staging, policy.BUCKET_PAB, "transcribe-staging-audio", restrictPublicBuckets=False)
    assert messages(run) == ["[no-public-database] aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock "
                             "'transcribe-staging-audio': restrictPublicBuckets must be True: buckets are never public"]


@pytest.mark.parametrize("typ, name, change, expected", [
    (policy.REDIS, None, {"transitEncryptionEnabled": False}, "transitEncryptionEnabled must be True"),
    (policy.EKS, None, {"encryptionConfig": None},
     "encryption_config must encrypt Kubernetes secrets with the platform key"),
    (policy.LAUNCH_TEMPLATE, "transcribe-staging-system",
     {"blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": 100}}]},
     "every EBS volume must be encrypted"),
    ("aws:kms/key:Key", None, {"enableKeyRotation": False}, "enable_key_rotation must be True"),
    ("aws:cloudwatch/logGroup:LogGroup", None, {"kmsKeyId": None}, "kms_key_id must be the platform key"),
])
def test_unencrypted_resources(staging, typ, name, change, expected):
    found = messages(planted(staging, typ, name, **change))
    assert len(found) == 1 and found[0].startswith("[encryption]") and found[0].endswith(expected), found


def test_bucket_without_sse_kms_or_tls_policy(staging):
    run = copy.deepcopy(staging)
    run.resources = [r for r in run.resources if not (
        r.type in (policy.BUCKET_SSE, policy.BUCKET_POLICY) and r.inputs["bucket"] == "transcribe-staging-backups")]
    assert messages(run) == [
        "[encryption] aws:s3/bucket:Bucket 'transcribe-staging-backups': needs a server-side encryption "
        "configuration with aws:kms (SSE-KMS)",
        "[encryption] aws:s3/bucket:Bucket 'transcribe-staging-backups': needs a bucket policy denying "
        "requests without TLS (aws:SecureTransport)"]


def test_deletion_protection_is_required_in_production_only(production):
    run = planted(production, policy.RDS, "transcribe-production-instance", deletionProtection=False)
    assert messages(run, production=True) == [
        "[deletion-protection] aws:rds/instance:Instance 'transcribe-production-instance': "
        "deletion_protection must be True in production"]
    assert messages(run, production=False) == []
    run = planted(production, policy.BUCKET, "transcribe-production-audio", forceDestroy=True)
    assert messages(run, production=True) == [
        "[deletion-protection] aws:s3/bucket:Bucket 'transcribe-production-audio': "
        "force_destroy must be False in production"]


def test_missing_tags(staging):
    subnet = staging.one("aws:ec2/subnet:Subnet", "transcribe-staging-private-eu-west-1b")
    tags = {k: v for k, v in subnet.inputs["tags"].items() if k != "environment"}
    run = planted(staging, "aws:ec2/subnet:Subnet", "transcribe-staging-private-eu-west-1b", tags=tags)
    assert messages(run) == [
        "[tags] aws:ec2/subnet:Subnet 'transcribe-staging-private-eu-west-1b': missing tags environment"]
    run = planted(staging, "aws:kms/key:Key", tags=None)
    assert messages(run) == [
        "[tags] aws:kms/key:Key 'transcribe-staging-key': missing tags project, environment, managed-by"]


def test_taggability_comes_from_the_provider_sdk():
    assert policy.taggable("aws:ec2/vpc:Vpc") is True
    assert policy.taggable("aws:s3/bucketPolicy:BucketPolicy") is False  # has no tags argument
    assert policy.taggable("kubernetes:core/v1:Namespace") is False


@pytest.mark.parametrize("vpc, opened", [
    ({"endpointPrivateAccess": True, "endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]}, "0.0.0.0/0"),
    ({"endpointPrivateAccess": True, "endpointPublicAccess": True,
      "publicAccessCidrs": ["203.0.113.0/24", "::/0"]}, "::/0"),
    ({"endpointPrivateAccess": True}, "0.0.0.0/0"),  # AWS's defaults: public, to everyone
])
def test_an_api_endpoint_open_to_the_internet(staging, vpc, opened):
    vpc = {"subnetIds": ["subnet-a"], **vpc}
    assert messages(planted(staging, policy.EKS, vpcConfig=vpc)) == [
        "[private-api-endpoint] aws:eks/cluster:Cluster 'transcribe-staging-eks': the public API endpoint admits "
        f"{opened}; set endpoint_public_access False, or list the allowed ranges in kubernetes.api_allowed_cidrs "
        "(transcribe:apiAllowedCidrs)"]


def test_an_api_endpoint_public_to_named_ranges_or_private_passes(staging):
    for vpc in ({"endpointPrivateAccess": True, "endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]},
                {"endpointPrivateAccess": True, "endpointPublicAccess": False}):
        assert messages(planted(staging, policy.EKS, vpcConfig=vpc)) == []
    found = messages(planted(staging, policy.EKS, vpcConfig={"endpointPrivateAccess": False,
                                                            "endpointPublicAccess": False}))
    assert len(found) == 1 and "endpoint_private_access must be True" in found[0]


TAGS = {"project": "transcribe", "environment": "x", "managed-by": "pulumi"}


def test_a_node_group_that_scales_from_zero_without_an_autoscaler_is_refused():
    def program(tags):
        aws.eks.NodeGroup("gpu", cluster_name="c", node_role_arn="arn:aws:iam::1:role/n", subnet_ids=["s"],
                          scaling_config={"min_size": 0, "max_size": 4, "desired_size": 0}, tags=tags)
    found = messages(run_component(lambda: program(TAGS)))
    assert found == [
        "[autoscaler] aws:eks/nodeGroup:NodeGroup 'gpu': scales from zero (min_size 0) but no autoscaler adds its "
        "nodes: install cluster-autoscaler with autoDiscovery.clusterName cluster 'c' and tag the group "
        "k8s.io/cluster-autoscaler/enabled=true and k8s.io/cluster-autoscaler/<cluster>, or launch "
        "these nodes from a Karpenter NodePool"]

    def with_cluster_autoscaler():
        import pulumi_kubernetes as k8s

        program({**TAGS, "k8s.io/cluster-autoscaler/enabled": "true", "k8s.io/cluster-autoscaler/c": "owned"})
        k8s.helm.v3.Release("ca", chart="cluster-autoscaler", namespace="kube-system",
                            repository_opts={"repo": "https://kubernetes.github.io/autoscaler"},
                            values={"autoDiscovery": {"clusterName": "c"}})
    assert messages(run_component(with_cluster_autoscaler)) == []


def without(run, typ, chart=None):
    run = copy.deepcopy(run)
    run.resources = [r for r in run.resources
                     if not (r.type == typ and (chart is None or r.inputs.get("chart", "").endswith(chart)))]
    return run


def test_a_nodepool_without_karpenter_its_node_class_or_interruption_queue_is_refused(staging):
    pool = "[autoscaler] kubernetes:karpenter.sh/v1:NodePool 'transcribe-staging-gpu-nodepool': "
    assert messages(without(staging, policy.HELM_RELEASE, "/karpenter")) == [
        pool + "no Karpenter controller is installed: nothing launches this pool's nodes"]
    assert messages(without(staging, policy.NODECLASS)) == [
        pool + "names EC2NodeClass 'gpu', which the stack does not declare"]
    run = copy.deepcopy(staging)
    [karpenter] = [r for r in run.of_type(policy.HELM_RELEASE) if r.inputs["chart"].endswith("/karpenter")]
    del karpenter.inputs["values"]["settings"]["interruptionQueue"]
    assert messages(run) == [pool + "allows spot but Karpenter has no interruption queue "
                                    "(settings.interruptionQueue): spot nodes would vanish without a drain"]


def test_gpu_nodes_without_a_device_plugin_that_fits_them(staging):
    expected = ["[gpu-device-plugin] kubernetes:karpenter.sh/v1:NodePool 'transcribe-staging-gpu-nodepool': no NVIDIA "
                "device plugin runs on these GPU nodes (its nodeSelector must match the pool's labels and its "
                "tolerations its taints)"]
    assert messages(without(staging, policy.HELM_RELEASE, "nvidia-device-plugin")) == expected
    run = copy.deepcopy(staging)
    [plugin] = [r for r in run.of_type(policy.HELM_RELEASE) if r.inputs["chart"] == "nvidia-device-plugin"]
    plugin.inputs["values"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "false",
                                               "effect": "NoSchedule"}]
    assert messages(run) == expected


def test_an_unencrypted_node_class(staging):
    run = copy.deepcopy(staging)
    run.one(policy.NODECLASS).inputs["spec"]["blockDeviceMappings"][0]["ebs"]["encrypted"] = False
    assert messages(run) == ["[encryption] kubernetes:karpenter.k8s.aws/v1:EC2NodeClass "
                             "'transcribe-staging-gpu-nodeclass': every EBS volume of the node class must be encrypted"]


def test_a_primary_without_a_final_snapshot_in_production_but_never_a_replica(production):
    run = planted(production, policy.RDS, "transcribe-production-instance", skipFinalSnapshot=True)
    assert messages(run, production=True) == [
        "[deletion-protection] aws:rds/instance:Instance 'transcribe-production-instance': "
        "skip_final_snapshot must be False in production"]
    replica = production.one(policy.RDS, "transcribe-production-replica").inputs
    assert replica["skipFinalSnapshot"] is True and replica["replicateSourceDb"] == "transcribe-production"
    assert messages(production, production=True) == []


def test_the_worker_role_given_the_backups_bucket_or_a_wildcard(staging):
    import json

    run = copy.deepcopy(staging)
    worker = run.one(policy.ROLE_POLICY, "transcribe-staging-worker-buckets")
    doc = json.loads(worker.inputs["policy"])
    doc["Statement"][1]["Resource"] = ["arn:aws:s3:::transcribe-staging-audio/*",
                                       "arn:aws:s3:::transcribe-staging-backups/*"]
    worker.inputs["policy"] = json.dumps(doc)
    assert messages(run) == [
        "[least-privilege] aws:iam/rolePolicy:RolePolicy 'transcribe-staging-worker-buckets': gives the worker's "
        "role the backups bucket transcribe-staging-backups; the worker may use the audio bucket only"]
    doc = json.loads(staging.one(policy.ROLE_POLICY, "transcribe-staging-worker-buckets").inputs["policy"])
    doc["Statement"][1]["Action"] = "s3:*"
    worker.inputs["policy"] = json.dumps(doc)
    assert messages(run) == [
        "[least-privilege] aws:iam/rolePolicy:RolePolicy 'transcribe-staging-worker-buckets': allows s3:*; "
        "name the actions the role needs"]


@pytest.mark.parametrize("typ, key, clear", [
    ("aws:rds/instance:Instance", "password", "hunter2hunter2"),
    ("kubernetes:core/v1:Secret", "stringData", {"database-url": "postgresql://u:p@h/db", "redis-url": "rediss://:t@h/0"}),
])
def test_a_credential_in_clear_is_refused(staging, typ, key, clear):
    assert not [m for m in messages(staging) if "credentials-are-secrets" in m]  # the stack as it is passes
    name = "transcribe-staging-instance" if typ.startswith("aws:rds") else None
    found = [m for m in messages(planted(staging, typ, name, **{key: clear})) if "credentials-are-secrets" in m]
    assert len(found) == 1 and f"{key} is in clear" in found[0]
