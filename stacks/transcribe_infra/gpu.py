"""GPU capacity that appears on demand: Karpenter, its GPU NodePool, and the NVIDIA device plugin.

No GPU node runs while nothing asks for one. When a worker pod that requests `nvidia.com/gpu`
is Pending, Karpenter (https://karpenter.sh, v1 API) launches a node for it from the GPU
NodePool: one of `instance_types`, on spot when `spot` allows it and on on-demand when spot has
no capacity (a NodePool that allows both capacity types prefers spot and falls back), up to
`max_gpus` GPUs in all. Empty GPU nodes are removed after `consolidate_after`; busy ones are
never consolidated away (`WhenEmpty`).

Spot interruptions drain workers gracefully: EventBridge sends EC2's two-minute interruption
warnings, rebalance recommendations, scheduled maintenance and state changes to an SQS queue
that Karpenter reads (`settings.interruptionQueue`); on a warning Karpenter starts the
replacement node at once, then cordons and drains the doomed one, so worker pods get SIGTERM
and their termination grace period, and PodDisruptionBudgets hold.

Taint, labels and the device plugin are consistent by construction: GPU nodes carry
`GPU_TAINT` (only pods that tolerate it land there: the worker Deployment and the device
plugin) and `GPU_LABELS` (the worker's and the plugin's nodeSelector is
`nvidia.com/gpu.present=true`). The AMI is EKS's AL2023 family, for which Karpenter picks the
NVIDIA variant on GPU instance types (driver included, plugin not: hence the plugin here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from transcribe_infra.defaults import GPUS_PER_INSTANCE_TYPE
from transcribe_infra.workloads import trust_policy

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "true", "effect": "NoSchedule"}
GPU_LABELS = {"role": "gpu", "workload": "transcription", "nvidia.com/gpu.present": "true"}
KARPENTER_CHART = "oci://public.ecr.aws/karpenter/karpenter"
KARPENTER_NAMESPACE = "kube-system"
KARPENTER_SERVICE_ACCOUNT = "karpenter"
DEVICE_PLUGIN_CHART = "nvidia-device-plugin"
DEVICE_PLUGIN_REPO = "https://nvidia.github.io/k8s-device-plugin"
NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly",
                 "AmazonSSMManagedInstanceCore")
# What EC2 and AWS Health tell before a node goes away (Karpenter's interruption handling).
INTERRUPTION_EVENTS = {
    "spot-interruption": ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
    "rebalance": ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
    "state-change": ("aws.ec2", "EC2 Instance State-change Notification"),
    "scheduled-change": ("aws.health", "AWS Health Event"),
}
NODEPOOL = "gpu"


@dataclass
class GpuCapacityArgs:
    """Where and what GPU nodes Karpenter may start: instance types, spot or on-demand, at most
    `max_gpus` GPUs, the chart versions. ValueError for no instance type or max_gpus < 1."""

    cluster_name: pulumi.Input[str]
    region: str
    provider: k8s.Provider  # the cluster's kubernetes provider
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]  # private subnets the GPU nodes start in
    security_group_ids: list[pulumi.Input[str]]  # the cluster's and the worker's
    kms_key_arn: pulumi.Input[str]
    instance_types: list[str]
    spot: bool  # True: spot first, on-demand when spot has none; False: on-demand only
    max_gpus: int
    disk_gib: int = 100
    ami_alias: str = "al2023@latest"
    consolidate_after: str = "10m"
    karpenter_version: str = "1.8.1"
    device_plugin_version: str = "0.17.1"
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_gpus < 1:
            raise ValueError("transcribe:gpuMaxSize must be at least 1: the worker needs a GPU")
        if not self.instance_types:
            raise ValueError("transcribe:gpuInstanceTypes must name at least one GPU instance type")
        unknown = [t for t in self.instance_types if t not in GPUS_PER_INSTANCE_TYPE]
        if unknown:
            raise ValueError(f"transcribe:gpuInstanceTypes: {', '.join(unknown)} not in GPUS_PER_INSTANCE_TYPE "
                             "(transcribe_infra/defaults.py); add their GPU count there from AWS's instance type docs")

    @property
    def capacity_types(self) -> list[str]:
        """Karpenter's capacity-type values, in order of preference."""

        return ["spot", "on-demand"] if self.spot else ["on-demand"]

    @property
    def labels(self) -> dict[str, str]:
        """The labels of the in-cluster objects this component makes."""

        return {"app.kubernetes.io/part-of": "transcribe", "app.kubernetes.io/managed-by": "pulumi",
                "environment": self.tags.get("environment", "")}


def _assume_ec2() -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ec2.amazonaws.com"}}]})


def controller_policy(cluster: str, region: str, account: str, queue_arn: str, node_role_arn: str) -> dict:
    """What the Karpenter controller may do: launch and end only instances tagged as its own.

    The shape of Karpenter's v1 reference policy (getting-started CloudFormation template).
    """
    owned = {f"aws:RequestTag/kubernetes.io/cluster/{cluster}": "owned"}
    own_resource = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"}
    ec2 = f"arn:aws:ec2:{region}"
    launched = [f"{ec2}:*:{kind}/*" for kind in ("fleet", "instance", "volume", "network-interface",
                                                  "launch-template")]
    profile_tags = {"aws:RequestTag/topology.kubernetes.io/region": region, **owned}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "LaunchFromSharedResources", "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": [f"{ec2}::image/*", f"{ec2}::snapshot/*", f"{ec2}:*:spot-instances-request/*",
                      f"{ec2}:*:security-group/*", f"{ec2}:*:subnet/*", f"{ec2}:*:launch-template/*"]},
        {"Sid": "LaunchTaggedResources", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"], "Resource": launched,
         "Condition": {"StringEquals": owned, "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "TagOnCreation", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": launched,
         "Condition": {"StringEquals": {**owned, "ec2:CreateAction": ["RunInstances", "CreateFleet",
                                                                      "CreateLaunchTemplate"]},
                       "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "TagOwnInstances", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": f"{ec2}:*:instance/*",
         "Condition": {"StringEquals": own_resource, "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
                       "ForAllValues:StringEquals": {"aws:TagKeys": ["karpenter.sh/nodeclaim", "Name"]}}},
        {"Sid": "DeleteOwnOnly", "Effect": "Allow", "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
         "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"],
         "Condition": {"StringEquals": own_resource, "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "ReadRegion", "Effect": "Allow", "Resource": "*",
         "Action": ["ec2:DescribeAvailabilityZones", "ec2:DescribeImages", "ec2:DescribeInstances",
                    "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes", "ec2:DescribeLaunchTemplates",
                    "ec2:DescribeSecurityGroups", "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets"],
         "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "ReadAmiParameters", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": f"arn:aws:ssm:{region}::parameter/aws/service/*"},
        {"Sid": "ReadPrices", "Effect": "Allow", "Action": "pricing:GetProducts", "Resource": "*"},
        {"Sid": "ReadInterruptions", "Effect": "Allow", "Resource": queue_arn,
         "Action": ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]},
        {"Sid": "PassNodeRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": node_role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        {"Sid": "CreateInstanceProfiles", "Effect": "Allow", "Action": "iam:CreateInstanceProfile", "Resource": "*",
         "Condition": {"StringEquals": profile_tags, "StringLike": {"aws:RequestTag/karpenter.sh/nodeclass": "*"}}},
        {"Sid": "TagInstanceProfiles", "Effect": "Allow", "Action": "iam:TagInstanceProfile", "Resource": "*",
         "Condition": {"StringEquals": {**profile_tags, **own_resource,
                                        "aws:ResourceTag/topology.kubernetes.io/region": region},
                       "StringLike": {"aws:RequestTag/karpenter.sh/nodeclass": "*",
                                      "aws:ResourceTag/karpenter.sh/nodeclass": "*"}}},
        {"Sid": "ManageOwnInstanceProfiles", "Effect": "Allow", "Resource": "*",
         "Action": ["iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile"],
         "Condition": {"StringEquals": {**own_resource, "aws:ResourceTag/topology.kubernetes.io/region": region},
                       "StringLike": {"aws:ResourceTag/karpenter.sh/nodeclass": "*"}}},
        {"Sid": "ReadInstanceProfiles", "Effect": "Allow", "Action": "iam:GetInstanceProfile", "Resource": "*"},
        {"Sid": "FindApiServer", "Effect": "Allow", "Action": "eks:DescribeCluster",
         "Resource": f"arn:aws:eks:{region}:{account}:cluster/{cluster}"},
    ]}


class GpuCapacity(pulumi.ComponentResource):
    """Karpenter (controller, IRSA role, interruption queue), its GPU NodePool and EC2NodeClass,
    and the NVIDIA device plugin. Outputs: nodepool, interruption_queue, node_role_arn."""

    nodepool: pulumi.Output[str]
    interruption_queue: pulumi.Output[str]
    node_role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: GpuCapacityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("transcribe:infra:GpuCapacity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        in_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id

        # the nodes Karpenter launches: their own role, admitted to the cluster by an access entry
        node_role = aws.iam.Role(f"{name}-gpu-nodes", assume_role_policy=_assume_ec2(), tags=args.tags, opts=child)
        attachments = [aws.iam.RolePolicyAttachment(f"{name}-gpu-nodes-{policy}", role=node_role.name, opts=child,
                                                    policy_arn=f"arn:aws:iam::aws:policy/{policy}")
                       for policy in NODE_POLICIES]
        access = aws.eks.AccessEntry(f"{name}-gpu-nodes", cluster_name=args.cluster_name,
                                     principal_arn=node_role.arn, type="EC2_LINUX", tags=args.tags, opts=child)

        # interruption handling: EC2 and AWS Health events -> SQS -> Karpenter drains the node
        queue = aws.sqs.Queue(f"{name}-interruptions", message_retention_seconds=300, sqs_managed_sse_enabled=True,
                              tags=args.tags, opts=child)
        aws.sqs.QueuePolicy(f"{name}-interruptions", queue_url=queue.id, opts=child,
                            policy=pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [
                                {"Sid": "EventsSend", "Effect": "Allow", "Action": "sqs:SendMessage",
                                 "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
                                 "Resource": queue.arn},
                                {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*",
                                 "Action": "sqs:*", "Resource": queue.arn,
                                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
        for kind, (source, detail_type) in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{name}-{kind}", tags=args.tags, opts=child,
                                            description=f"{kind} events for Karpenter's interruption queue",
                                            event_pattern=json.dumps({"source": [source],
                                                                      "detail-type": [detail_type]}))
            aws.cloudwatch.EventTarget(f"{name}-{kind}", rule=rule.name, arn=queue.arn,
                                       target_id="KarpenterInterruptionQueue", opts=child)

        # the controller, through IRSA: only kube-system/karpenter may assume its role
        controller = aws.iam.Role(
            f"{name}-karpenter", tags=args.tags, opts=child,
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda a: json.dumps(trust_policy(a[0], a[1], KARPENTER_NAMESPACE, KARPENTER_SERVICE_ACCOUNT))))
        aws.iam.RolePolicy(f"{name}-karpenter", role=controller.name, opts=child, policy=pulumi.Output.all(
            args.cluster_name, account, queue.arn, node_role.arn).apply(
                lambda a: json.dumps(controller_policy(a[0], args.region, a[1], a[2], a[3]))))
        release = k8s.helm.v3.Release(
            f"{name}-karpenter", opts=pulumi.ResourceOptions(parent=self, provider=args.provider,
                                                             depends_on=[access, *attachments]),
            name="karpenter", chart=KARPENTER_CHART, version=args.karpenter_version,
            namespace=KARPENTER_NAMESPACE, atomic=True,
            values={
                "settings": {"clusterName": args.cluster_name, "interruptionQueue": queue.name},
                "serviceAccount": {"name": KARPENTER_SERVICE_ACCOUNT,
                                   "annotations": {"eks.amazonaws.com/role-arn": controller.arn}},
                # the controller runs on the system node group, never on nodes it manages
                "nodeSelector": {"role": "system"},
                "controller": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                                             "limits": {"memory": "512Mi"}}},
            })

        after_karpenter = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[release])
        node_class = k8s.apiextensions.CustomResource(
            f"{name}-gpu-nodeclass", api_version="karpenter.k8s.aws/v1", kind="EC2NodeClass",
            metadata={"name": NODEPOOL, "labels": args.labels}, opts=after_karpenter,
            spec={
                "role": node_role.name,
                "amiSelectorTerms": [{"alias": args.ami_alias}],
                "subnetSelectorTerms": [{"id": s} for s in args.subnet_ids],
                "securityGroupSelectorTerms": [{"id": sg} for sg in args.security_group_ids],
                "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {
                    "volumeSize": f"{args.disk_gib}Gi", "volumeType": "gp3", "encrypted": True,
                    "kmsKeyID": args.kms_key_arn, "deleteOnTermination": True}}],
                # IMDSv2, one hop: pods use IRSA, never the node's role
                "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required",
                                    "httpPutResponseHopLimit": 1},
                # Karpenter names each instance after its node (the Name tag) and adds its own keys
                "tags": dict(args.tags),
            })
        pool = k8s.apiextensions.CustomResource(
            f"{name}-gpu-nodepool", api_version="karpenter.sh/v1", kind="NodePool",
            metadata={"name": NODEPOOL, "labels": args.labels},
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[release, node_class]),
            spec={
                "template": {
                    "metadata": {"labels": dict(GPU_LABELS)},
                    "spec": {
                        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": NODEPOOL},
                        "taints": [dict(GPU_TAINT)],
                        "requirements": [
                            {"key": "node.kubernetes.io/instance-type", "operator": "In",
                             "values": list(args.instance_types)},
                            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": args.capacity_types},
                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                        ],
                        "expireAfter": "720h",
                        # how long a drain (expiry, drift) may wait on a PodDisruptionBudget or a long
                        # transcription before the node goes; a spot warning gives two minutes whatever
                        "terminationGracePeriod": "1h",
                    },
                },
                "limits": {GPU_RESOURCE: str(args.max_gpus)},
                # only empty nodes are taken away: a running transcription is never consolidated off
                "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": args.consolidate_after},
            })

        k8s.helm.v3.Release(
            f"{name}-nvidia-device-plugin", opts=in_cluster,
            name=DEVICE_PLUGIN_CHART, chart=DEVICE_PLUGIN_CHART, version=args.device_plugin_version,
            repository_opts={"repo": DEVICE_PLUGIN_REPO}, namespace="kube-system", atomic=True,
            values={
                "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": GPU_TAINT["effect"]}],
                "nodeSelector": {"nvidia.com/gpu.present": GPU_LABELS["nvidia.com/gpu.present"]},
                "priorityClassName": "system-node-critical",
            })

        self.nodepool = pool.id.apply(lambda _: NODEPOOL)
        self.interruption_queue = queue.name
        self.node_role_arn = node_role.arn
        self.register_outputs({"nodepool": self.nodepool, "interruption_queue": queue.name,
                               "node_role_arn": node_role.arn})

