"""The VPC: three AZs of public and private subnets, NAT, flow logs and the security groups.

Only the load balancers and NAT gateways live in public subnets; the database, the cache and
every node live in private ones. The database and cache security groups admit exactly one
source, the worker security group, on exactly one port each: nothing else can reach them,
whatever else gets deployed in the VPC later.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from transcribe_infra.settings import with_name

POSTGRES_PORT = 5432
REDIS_PORT = 6379


@dataclass
class NetworkArgs:
    """The VPC's CIDR, its availability zones (at least 2; ValueError otherwise), one NAT per AZ
    or one shared, the key for flow logs, and the cluster name the subnets are tagged for."""

    cidr: str
    availability_zones: list[str]
    nat_per_az: bool  # production: an AZ outage must not cut the other AZs off the internet
    kms_key_arn: pulumi.Input[str]
    cluster_name: str  # subnets carry the tags the AWS load balancer controller looks for
    flow_log_retention_days: int = 90
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.availability_zones) < 2:
            raise ValueError("a network needs at least two availability zones")


def subnet_cidrs(cidr: str, count: int) -> tuple[list[str], list[str]]:
    """Split the VPC into /20s: the first `count` public, the next `count` private."""
    network = ipaddress.ip_network(cidr)
    blocks = list(network.subnets(new_prefix=20)) if network.prefixlen <= 20 else []
    if len(blocks) < 2 * count:
        raise ValueError(f"{cidr} is too small for {count} public and {count} private /20 subnets")
    return [str(b) for b in blocks[:count]], [str(b) for b in blocks[count:2 * count]]


class Network(pulumi.ComponentResource):
    """The VPC, public and private subnets per AZ, NAT, flow logs and the security groups of the
    worker, database and cache. Outputs: the ids below."""

    vpc_id: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    worker_sg_id: pulumi.Output[str]
    database_sg_id: pulumi.Output[str]
    cache_sg_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("transcribe:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = args.tags
        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=args.cidr, enable_dns_hostnames=True,
                          enable_dns_support=True, tags=with_name(tags, name), opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=with_name(tags, name), opts=child)

        public_cidrs, private_cidrs = subnet_cidrs(args.cidr, len(args.availability_zones))
        public_rt = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, tags=with_name(tags, f"{name}-public"),
                                       routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}], opts=child)
        self.public_subnet_ids, self.private_subnet_ids = [], []
        nats: list[aws.ec2.NatGateway] = []
        for i, az in enumerate(args.availability_zones):
            public = aws.ec2.Subnet(
                f"{name}-public-{az}", vpc_id=vpc.id, cidr_block=public_cidrs[i], availability_zone=az,
                map_public_ip_on_launch=False,  # nothing in here should get a public IP by accident
                tags={**with_name(tags, f"{name}-public-{az}"), "kubernetes.io/role/elb": "1"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-{az}", subnet_id=public.id,
                                          route_table_id=public_rt.id, opts=child)
            self.public_subnet_ids.append(public.id)
            if args.nat_per_az or i == 0:
                eip = aws.ec2.Eip(f"{name}-nat-{az}", domain="vpc", tags=with_name(tags, f"{name}-nat-{az}"),
                                  opts=child)
                nats.append(aws.ec2.NatGateway(f"{name}-nat-{az}", allocation_id=eip.id, subnet_id=public.id,
                                               tags=with_name(tags, f"{name}-nat-{az}"),
                                               opts=pulumi.ResourceOptions(parent=self, depends_on=[igw])))
        for i, az in enumerate(args.availability_zones):
            nat = nats[i] if args.nat_per_az else nats[0]
            private = aws.ec2.Subnet(
                f"{name}-private-{az}", vpc_id=vpc.id, cidr_block=private_cidrs[i], availability_zone=az,
                map_public_ip_on_launch=False,
                tags={**with_name(tags, f"{name}-private-{az}"), "kubernetes.io/role/internal-elb": "1",
                      f"kubernetes.io/cluster/{args.cluster_name}": "shared"}, opts=child)
            rt = aws.ec2.RouteTable(f"{name}-private-{az}", vpc_id=vpc.id,
                                    routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                                    tags=with_name(tags, f"{name}-private-{az}"), opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{az}", subnet_id=private.id, route_table_id=rt.id,
                                          opts=child)
            self.private_subnet_ids.append(private.id)

        self._flow_logs(name, vpc, args, child)
        worker, database, cache = self._security_groups(name, vpc, args, child)
        self.vpc_id = vpc.id
        self.worker_sg_id, self.database_sg_id, self.cache_sg_id = worker.id, database.id, cache.id
        self.register_outputs({
            "vpc_id": vpc.id, "public_subnet_ids": self.public_subnet_ids,
            "private_subnet_ids": self.private_subnet_ids, "worker_sg_id": worker.id,
            "database_sg_id": database.id, "cache_sg_id": cache.id,
        })

    def _flow_logs(self, name: str, vpc: aws.ec2.Vpc, args: NetworkArgs, child: pulumi.ResourceOptions) -> None:
        """Every accepted and rejected flow to an encrypted log group: what an incident review needs."""
        group = aws.cloudwatch.LogGroup(f"{name}-flow-logs", name=f"/vpc/{name}/flow-logs",
                                        retention_in_days=args.flow_log_retention_days,
                                        kms_key_id=args.kms_key_arn, tags=args.tags, opts=child)
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "vpc-flow-logs.amazonaws.com"}}]}
        role = aws.iam.Role(f"{name}-flow-logs", assume_role_policy=json.dumps(trust), tags=args.tags, opts=child)
        aws.iam.RolePolicy(f"{name}-flow-logs", role=role.id, opts=child, policy=pulumi.Output.json_dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Resource": [group.arn, pulumi.Output.concat(group.arn, ":*")],
                           "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]}],
        }))
        aws.ec2.FlowLog(f"{name}-flow-logs", vpc_id=vpc.id, traffic_type="ALL", log_destination_type="cloud-watch-logs",
                        log_destination=group.arn, iam_role_arn=role.arn, max_aggregation_interval=60,
                        tags=args.tags, opts=child)

    def _security_groups(self, name: str, vpc: aws.ec2.Vpc, args: NetworkArgs, child: pulumi.ResourceOptions):
        """Worker SG (on the GPU nodes) is the only source the database and cache SGs admit."""
        worker = aws.ec2.SecurityGroup(f"{name}-worker", vpc_id=vpc.id, description="transcription worker nodes",
                                       tags=with_name(args.tags, f"{name}-worker"), opts=child)
        aws.vpc.SecurityGroupEgressRule(f"{name}-worker-egress", security_group_id=worker.id, ip_protocol="-1",
                                        cidr_ipv4="0.0.0.0/0", description="worker reaches AWS APIs and models",
                                        tags=args.tags, opts=child)
        groups = []
        for kind, port in (("database", POSTGRES_PORT), ("cache", REDIS_PORT)):
            sg = aws.ec2.SecurityGroup(f"{name}-{kind}", vpc_id=vpc.id, description=f"{kind}: worker only",
                                       tags=with_name(args.tags, f"{name}-{kind}"), opts=child)
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{kind}-from-worker", security_group_id=sg.id, referenced_security_group_id=worker.id,
                ip_protocol="tcp", from_port=port, to_port=port, description=f"{kind} from the worker only",
                tags=args.tags, opts=child)
            groups.append(sg)
        return worker, groups[0], groups[1]
