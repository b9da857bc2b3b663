"""GPU capacity from zero: Karpenter, its GPU NodePool and EC2NodeClass, interruption handling, device plugin."""

import json

import pulumi_kubernetes as k8s
import pytest
from stacks_support import KEY_ARN, TAGS, run_component

from transcribe_infra.gpu import GpuCapacity, GpuCapacityArgs

ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC"
OIDC_ARN = "arn:aws:iam::123456789012:oidc-provider/x"
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
NODECLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
RELEASE = "kubernetes:helm.sh/v3:Release"
QUEUE_NAME = "g-interruptions-0c0ffee"
QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:g-interruptions"


def build(spot=True, max_gpus=4):
    def program():
        provider = k8s.Provider("k8s", kubeconfig="{}")
        g = GpuCapacity("g", GpuCapacityArgs(
            cluster_name="transcribe-test", region="eu-west-1", provider=provider, oidc_provider_arn=OIDC_ARN,
            oidc_issuer=ISSUER, subnet_ids=["subnet-a", "subnet-b"], security_group_ids=["sg-cluster", "sg-worker"],
            kms_key_arn=KEY_ARN, instance_types=["g5.xlarge", "g6.xlarge"], spot=spot, max_gpus=max_gpus, tags=TAGS))
        return {"nodepool": g.nodepool, "queue": g.interruption_queue, "node_role": g.node_role_arn}
    return run_component(program)


@pytest.fixture(scope="module")
def run():
    return build()


def release(run, chart_suffix):
    [found] = [r for r in run.of_type(RELEASE) if r.inputs["chart"].endswith(chart_suffix)]
    return found.inputs


def test_the_gpu_nodepool_scales_from_zero_spot_first_with_on_demand_fallback(run):
    pool = run.one(NODEPOOL)
    assert pool.inputs["metadata"]["name"] == "gpu" == run.outputs["nodepool"]
    spec = pool.inputs["spec"]
    template = spec["template"]["spec"]
    assert template["nodeClassRef"] == {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu"}
    requirements = {r["key"]: (r["operator"], r["values"]) for r in template["requirements"]}
    assert requirements == {"node.kubernetes.io/instance-type": ("In", ["g5.xlarge", "g6.xlarge"]),
                            "karpenter.sh/capacity-type": ("In", ["spot", "on-demand"]),
                            "kubernetes.io/arch": ("In", ["amd64"])}
    assert spec["limits"] == {"nvidia.com/gpu": "4"}
    # only empty nodes are consolidated: a running transcription is never moved for cost
    assert spec["disruption"] == {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "10m"}
    assert (template["expireAfter"], template["terminationGracePeriod"]) == ("720h", "1h")
    assert "k8s" in pool.provider
    on_demand = build(spot=False, max_gpus=8).one(NODEPOOL).inputs["spec"]
    assert {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]} in \
        on_demand["template"]["spec"]["requirements"]
    assert on_demand["limits"] == {"nvidia.com/gpu": "8"}


def test_taint_labels_and_device_plugin_agree(run):
    template = run.one(NODEPOOL).inputs["spec"]["template"]
    assert template["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    labels = template["metadata"]["labels"]
    assert labels == {"role": "gpu", "workload": "transcription", "nvidia.com/gpu.present": "true"}
    plugin = release(run, "nvidia-device-plugin")
    assert (plugin["chart"], plugin["version"], plugin["namespace"]) == ("nvidia-device-plugin", "0.17.1", "kube-system")
    assert plugin["repositoryOpts"] == {"repo": "https://nvidia.github.io/k8s-device-plugin"}
    assert plugin["values"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert plugin["values"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert plugin["values"]["priorityClassName"] == "system-node-critical"


def test_the_node_class_encrypts_disks_requires_imdsv2_and_joins_both_security_groups(run):
    node_class = run.one(NODECLASS).inputs
    assert node_class["metadata"]["name"] == "gpu"
    spec = node_class["spec"]
    assert spec["role"] == "g-gpu-nodes"
    assert spec["amiSelectorTerms"] == [{"alias": "al2023@latest"}]  # Karpenter picks the NVIDIA variant
    assert spec["subnetSelectorTerms"] == [{"id": "subnet-a"}, {"id": "subnet-b"}]
    assert spec["securityGroupSelectorTerms"] == [{"id": "sg-cluster"}, {"id": "sg-worker"}]
    assert spec["blockDeviceMappings"] == [{"deviceName": "/dev/xvda", "ebs": {
        "volumeSize": "100Gi", "volumeType": "gp3", "encrypted": True, "kmsKeyID": KEY_ARN,
        "deleteOnTermination": True}}]
    assert spec["metadataOptions"] == {"httpEndpoint": "enabled", "httpTokens": "required",
                                       "httpPutResponseHopLimit": 1}
    assert spec["tags"] == TAGS


def test_karpenter_runs_on_system_nodes_with_its_irsa_role_and_the_interruption_queue(run):
    chart = release(run, "/karpenter")
    assert (chart["chart"], chart["version"], chart["namespace"]) == (
        "oci://public.ecr.aws/karpenter/karpenter", "1.8.1", "kube-system")
    values = chart["values"]
    assert values["settings"] == {"clusterName": "transcribe-test", "interruptionQueue": QUEUE_NAME}
    assert run.outputs["queue"] == QUEUE_NAME
    assert values["serviceAccount"] == {"name": "karpenter", "annotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/g-karpenter"}}
    assert values["nodeSelector"] == {"role": "system"}
    role = json.loads(run.one("aws:iam/role:Role", "g-karpenter").inputs["assumeRolePolicy"])
    assert role["Statement"][0]["Condition"]["StringEquals"][
        "oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub"] == "system:serviceaccount:kube-system:karpenter"


def test_spot_interruptions_reach_karpenter_through_eventbridge_and_sqs(run):
    queue = run.one("aws:sqs/queue:Queue").inputs
    assert queue["messageRetentionSeconds"] == 300 and queue["sqsManagedSseEnabled"] is True
    assert "name" not in queue  # autonamed: a deleted queue's name is blocked for 60 s
    rules = {r.name: json.loads(r.inputs["eventPattern"]) for r in run.of_type("aws:cloudwatch/eventRule:EventRule")}
    assert rules == {
        "g-spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
        "g-rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
        "g-state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
        "g-scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    }
    targets = {t.name: (t.inputs["rule"], t.inputs["arn"]) for t in run.of_type("aws:cloudwatch/eventTarget:EventTarget")}
    assert targets == {name: (f"{name}-0c0ffee", QUEUE_ARN) for name in rules}
    policy = json.loads(run.one("aws:sqs/queuePolicy:QueuePolicy").inputs["policy"])
    send, deny = policy["Statement"]
    assert send["Principal"] == {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]}
    assert (send["Action"], send["Resource"]) == ("sqs:SendMessage", QUEUE_ARN)
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_controller_may_end_only_what_it_launched(run):
    policy = json.loads(run.one("aws:iam/rolePolicy:RolePolicy", "g-karpenter").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    delete = by_sid["DeleteOwnOnly"]
    assert delete["Action"] == ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"]
    assert delete["Condition"]["StringEquals"] == {"aws:ResourceTag/kubernetes.io/cluster/transcribe-test": "owned"}
    assert by_sid["ReadInterruptions"]["Resource"] == QUEUE_ARN
    assert by_sid["PassNodeRole"]["Resource"] == "arn:aws:iam::123456789012:role/g-gpu-nodes" == run.outputs["node_role"]
    assert by_sid["FindApiServer"]["Resource"] == "arn:aws:eks:eu-west-1:123456789012:cluster/transcribe-test"
    assert not [s for s in policy["Statement"] if s["Action"] == "*" or "ec2:*" in s["Action"]]


def test_karpenter_nodes_have_their_own_role_admitted_by_an_access_entry(run):
    entry = run.one("aws:eks/accessEntry:AccessEntry").inputs
    assert entry == {"clusterName": "transcribe-test", "principalArn": "arn:aws:iam::123456789012:role/g-gpu-nodes",
                     "type": "EC2_LINUX", "tags": TAGS}
    attached = {r.inputs["policyArn"].rsplit("/", 1)[-1] for r in run.of_type(
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment") if r.inputs["role"] == "g-gpu-nodes"}
    assert attached == {"AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly",
                        "AmazonSSMManagedInstanceCore"}


def test_no_gpu_or_no_instance_type_is_refused():
    common = dict(cluster_name="c", region="eu-west-1", provider=None, oidc_provider_arn="a", oidc_issuer="i",
                  subnet_ids=[], security_group_ids=[], kms_key_arn=KEY_ARN, spot=True)
    with pytest.raises(ValueError, match="gpuMaxSize must be at least 1"):
        GpuCapacityArgs(instance_types=["g5.xlarge"], max_gpus=0, **common)
    with pytest.raises(ValueError, match="gpuInstanceTypes must name at least one"):
        GpuCapacityArgs(instance_types=[], max_gpus=1, **common)
    # BREAKER23b #7: opsctl judges GPUs per pod from GPUS_PER_INSTANCE_TYPE, so a type it lacks is refused
    with pytest.raises(ValueError, match="gpuInstanceTypes: x9.huge not in GPUS_PER_INSTANCE_TYPE"):
        GpuCapacityArgs(instance_types=["g5.xlarge", "x9.huge"], max_gpus=1, **common)
