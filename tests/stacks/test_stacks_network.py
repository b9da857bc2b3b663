import ipaddress
import json

import pytest
from stacks_support import AZS, KEY_ARN, TAGS, run_component

from transcribe_infra.network import Network, NetworkArgs, subnet_cidrs

NAT = "aws:ec2/natGateway:NatGateway"
SUBNET = "aws:ec2/subnet:Subnet"
RT = "aws:ec2/routeTable:RouteTable"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


def build(nat_per_az: bool):
    def program():
        net = Network("net", NetworkArgs(cidr="10.20.0.0/16", availability_zones=AZS, nat_per_az=nat_per_az,
                                         kms_key_arn=KEY_ARN, cluster_name="c1", tags=TAGS))
        return {"worker": net.worker_sg_id, "db": net.database_sg_id, "cache": net.cache_sg_id,
                "private": net.private_subnet_ids, "public": net.public_subnet_ids, "vpc": net.vpc_id}
    return run_component(program)


@pytest.fixture(scope="module")
def shared():
    return build(nat_per_az=False)


@pytest.fixture(scope="module")
def per_az():
    return build(nat_per_az=True)


def private_routes(run):
    return {rt.name: rt.inputs["routes"][0]["natGatewayId"] for rt in run.of_type(RT) if "private" in rt.name}


def test_one_shared_nat_outside_production(shared):
    nats = shared.of_type(NAT)
    assert [n.name for n in nats] == ["net-nat-eu-west-1a"]
    assert set(private_routes(shared).values()) == {"net-nat-eu-west-1a-id"}
    assert len(private_routes(shared)) == 3


def test_a_nat_per_az_in_production(per_az):
    assert sorted(n.name for n in per_az.of_type(NAT)) == [f"net-nat-{az}" for az in AZS]
    routes = private_routes(per_az)
    assert routes == {f"net-private-{az}": f"net-nat-{az}-id" for az in AZS}
    assert len(per_az.of_type("aws:ec2/eip:Eip")) == 3
    nat_subnets = {n.inputs["subnetId"] for n in per_az.of_type(NAT)}
    assert nat_subnets == {f"net-public-{az}-id" for az in AZS}


def test_three_azs_of_public_and_private_subnets(shared):
    subnets = shared.of_type(SUBNET)
    public = [s for s in subnets if "-public-" in s.name]
    private = [s for s in subnets if "-private-" in s.name]
    assert sorted(s.inputs["availabilityZone"] for s in public) == AZS
    assert sorted(s.inputs["availabilityZone"] for s in private) == AZS
    vpc = ipaddress.ip_network("10.20.0.0/16")
    cidrs = [ipaddress.ip_network(s.inputs["cidrBlock"]) for s in subnets]
    assert all(c.subnet_of(vpc) for c in cidrs)
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1:])
    assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in subnets)
    assert all(s.inputs["tags"]["kubernetes.io/role/elb"] == "1" for s in public)
    assert all(s.inputs["tags"]["kubernetes.io/role/internal-elb"] == "1" for s in private)
    assert shared.outputs["private"] == [f"net-private-{az}-id" for az in AZS]
    public_rt = shared.one(RT, "net-public")
    assert public_rt.inputs["routes"] == [{"cidrBlock": "0.0.0.0/0", "gatewayId": "net-igw-id"}]


def test_database_and_cache_admit_only_the_worker(shared):
    rules = shared.of_type(INGRESS)
    by_target = {r.inputs["securityGroupId"]: r.inputs for r in rules}
    assert set(by_target) == {"net-database-id", "net-cache-id"}  # no other ingress anywhere
    for sg, port in (("net-database-id", 5432), ("net-cache-id", 6379)):
        rule = by_target[sg]
        assert rule["referencedSecurityGroupId"] == "net-worker-id" == shared.outputs["worker"]
        assert (rule["fromPort"], rule["toPort"], rule["ipProtocol"]) == (port, port, "tcp")
        assert "cidrIpv4" not in rule and "cidrIpv6" not in rule


def test_flow_logs_capture_all_traffic_to_an_encrypted_group(shared):
    flow = shared.one("aws:ec2/flowLog:FlowLog")
    group = shared.one("aws:cloudwatch/logGroup:LogGroup")
    assert flow.inputs["trafficType"] == "ALL"
    assert flow.inputs["vpcId"] == "net-vpc-id"
    assert flow.inputs["logDestination"].endswith(":net-flow-logs")
    assert flow.inputs["iamRoleArn"] == "arn:aws:iam::123456789012:role/net-flow-logs"
    assert group.inputs["kmsKeyId"] == KEY_ARN
    assert group.inputs["retentionInDays"] == 90


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="two availability zones"):
        NetworkArgs(cidr="10.0.0.0/16", availability_zones=["a"], nat_per_az=False, kms_key_arn=KEY_ARN,
                    cluster_name="c")
    with pytest.raises(ValueError, match="too small"):
        subnet_cidrs("10.0.0.0/22", 3)
