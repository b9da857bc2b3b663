"""EKS: the control plane and the system node group (cluster add-ons, Karpenter, KEDA).

GPU nodes are not a node group: Karpenter launches them on demand from its GPU NodePool
(`gpu.py`), from zero, so an idle environment pays for no GPU. The system group uses a launch
template for encrypted root volumes and IMDSv2 with a hop limit of 1 (pods use IRSA, never the
node's role). `security_group_id` is the cluster security group every node joins; GPU nodes
also join the worker security group, the only source the database and cache admit.

The API endpoint is private (reached from inside the VPC: the nodes, a VPN or a bastion) unless
`public_access_cidrs` names who may reach it from the internet; 0.0.0.0/0 is refused here and
by the `private-api-endpoint` policy rule (EKS best practices: restrict or disable the public
endpoint).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from transcribe_infra.settings import with_name

NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")


@dataclass
class NodeGroupSpec:
    """A managed node group's instance types, sizes (min <= desired <= max: ValueError
    otherwise), capacity type and disk in GiB.
    """
    instance_types: list[str]
    min_size: int
    max_size: int
    desired_size: int
    capacity_type: str = "ON_DEMAND"
    disk_gib: int = 50

    def __post_init__(self) -> None:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError("node group sizes must satisfy min <= desired <= max")


@dataclass
class ClusterArgs:
    """The EKS cluster's name, region, private subnets, key, system node group and Kubernetes
    version; `public_access_cidrs` (never a /0: ValueError) makes its API public to those ranges.
    """
    name: str
    region: str
    subnet_ids: list[pulumi.Input[str]]  # private subnets: nodes and the API's ENIs
    kms_key_arn: pulumi.Input[str]
    system: NodeGroupSpec = field(default_factory=lambda: NodeGroupSpec(["m6i.large"], 2, 4, 2))
    version: str = "1.33"
    deletion_protection: bool = False
    public_access_cidrs: list[str] = field(default_factory=list)  # empty: the API is private
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_api_cidrs(self.public_access_cidrs)

    @property
    def endpoint_public(self) -> bool:
        """Whether the API endpoint is public (to public_access_cidrs only)."""
        return bool(self.public_access_cidrs)


# Addresses no one on the internet has (RFC 6890 special-purpose blocks, documentation ranges;
# for IPv6 everything outside global unicast 2000::/3): a set of allowed ranges that covers all
# the rest admits the whole internet, however it is split (0.0.0.0/1 + 128.0.0.0/1).
_NOT_PUBLIC = {4: ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                   "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
                   "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3"),
               6: ("::/3", "4000::/2", "8000::/1", "2001:db8::/32")}


def internet_wide(cidrs: list[str]) -> list[str]:
    """The entries of `cidrs` that together admit every public IPv4 or every public IPv6
    address (collapsed with ipaddress.collapse_addresses); [] when no family is covered.
    Entries that are not CIDR blocks are left out (validated elsewhere)."""
    import ipaddress

    wide: list[str] = []
    for version, special in _NOT_PUBLIC.items():
        nets = []
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except (TypeError, ValueError):
                continue
            if net.version == version:
                nets.append((cidr, net))
        reserved = [ipaddress.ip_network(s) for s in special]
        everything = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
        if nets and list(ipaddress.collapse_addresses([n for _, n in nets] + reserved)) == [everything]:
            # name the one range that is the whole internet by itself, else every range of the set
            alone = [c for c, n in nets if list(ipaddress.collapse_addresses([n, *reserved])) == [everything]]
            wide += alone or [c for c, _ in nets]
    return wide


def check_api_cidrs(cidrs: list[str]) -> None:
    """ValueError unless every entry is a CIDR block narrower than the whole internet."""
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            raise ValueError(f"transcribe:apiAllowedCidrs: {cidr!r} is not a CIDR block such as 203.0.113.0/24") from None
    if wide := internet_wide(cidrs):  # 0.0.0.0/0, or 0.0.0.0/1 + 128.0.0.0/1: the same
        raise ValueError(f"transcribe:apiAllowedCidrs: {', '.join(wide)} {'opens' if len(wide) == 1 else 'open'} the "
                         "cluster API to the whole internet; list your office, VPN or CI egress ranges, or none (private)")


def kubeconfig(name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig that authenticates through `aws eks get-token`: it holds no credential."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", name, "--region", region]}}}],
    })


def _assume(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": service}}]})


class Cluster(pulumi.ComponentResource):
    """EKS with its control-plane role, secrets encryption, OIDC provider (IRSA) and system node group. Outputs:
    name, kubeconfig, oidc_provider_arn, oidc_issuer (and the ids below).
    """
    name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("transcribe:infra:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(f"{name}-control-plane", assume_role_policy=_assume("eks.amazonaws.com"),
                            tags=args.tags, opts=child)
        attach = aws.iam.RolePolicyAttachment(f"{name}-control-plane", role=role.name, opts=child,
                                              policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy")
        cluster = aws.eks.Cluster(
            f"{name}-eks", name=args.name, version=args.version, role_arn=role.arn,
            vpc_config={"subnet_ids": args.subnet_ids, "endpoint_private_access": True,
                        "endpoint_public_access": args.endpoint_public,
                        **({"public_access_cidrs": args.public_access_cidrs} if args.endpoint_public else {})},
            encryption_config={"resources": ["secrets"], "provider": {"key_arn": args.kms_key_arn}},
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": True},
            deletion_protection=args.deletion_protection,
            tags=with_name(args.tags, args.name), opts=pulumi.ResourceOptions(parent=self, depends_on=[attach]))
        issuer = cluster.identities.apply(lambda ids: ids[0].oidcs[0].issuer)
        oidc = aws.iam.OpenIdConnectProvider(f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"],
                                             tags=args.tags, opts=child)

        node_role = aws.iam.Role(f"{name}-nodes", assume_role_policy=_assume("ec2.amazonaws.com"),
                                 tags=args.tags, opts=child)
        node_attachments = [
            aws.iam.RolePolicyAttachment(f"{name}-nodes-{policy}", role=node_role.name, opts=child,
                                         policy_arn=f"arn:aws:iam::aws:policy/{policy}")
            for policy in NODE_POLICIES]
        cluster_sg = cluster.vpc_config.cluster_security_group_id
        spec = args.system
        template = aws.ec2.LaunchTemplate(
            f"{name}-system", name_prefix=f"{args.name}-system-", update_default_version=True,
            vpc_security_group_ids=[cluster_sg],
            block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {
                "volume_size": spec.disk_gib, "volume_type": "gp3", "encrypted": "true",
                "kms_key_id": args.kms_key_arn, "delete_on_termination": "true"}}],
            metadata_options={"http_tokens": "required", "http_endpoint": "enabled",
                              "http_put_response_hop_limit": 1},
            tag_specifications=[{"resource_type": "instance", "tags": with_name(args.tags, f"{args.name}-system")}],
            tags=args.tags, opts=child)
        aws.eks.NodeGroup(
            f"{name}-system", cluster_name=cluster.name, node_group_name=f"{args.name}-system",
            node_role_arn=node_role.arn, subnet_ids=args.subnet_ids, ami_type="AL2023_x86_64_STANDARD",
            instance_types=spec.instance_types, capacity_type=spec.capacity_type,
            scaling_config={"min_size": spec.min_size, "max_size": spec.max_size, "desired_size": spec.desired_size},
            update_config={"max_unavailable": 1}, labels={"role": "system"},
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            tags=args.tags, opts=pulumi.ResourceOptions(parent=self, depends_on=node_attachments))

        self.name = cluster.name
        self.oidc_provider_arn = oidc.arn
        self.oidc_issuer = issuer
        self.security_group_id = cluster_sg
        self.kubeconfig = pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.certificate_authority.apply(lambda ca: ca.data),
        ).apply(lambda a: kubeconfig(a[0], a[1], a[2], args.region))
        self.register_outputs({"name": cluster.name, "kubeconfig": self.kubeconfig,
                               "oidc_provider_arn": oidc.arn, "oidc_issuer": issuer})
