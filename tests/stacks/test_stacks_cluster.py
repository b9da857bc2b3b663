import json
import re

import pytest
from stacks_support import KEY_ARN, TAGS, run_component

from transcribe_infra.cluster import Cluster, ClusterArgs, NodeGroupSpec

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LT = "aws:ec2/launchTemplate:LaunchTemplate"


def build(deletion_protection=False, api_cidrs=()):
    def program():
        c = Cluster("k", ClusterArgs(
            name="transcribe-test", region="eu-west-1", subnet_ids=["subnet-a", "subnet-b", "subnet-c"],
            kms_key_arn=KEY_ARN, deletion_protection=deletion_protection, public_access_cidrs=list(api_cidrs),
            tags=TAGS))
        return {"name": c.name, "kubeconfig": c.kubeconfig, "oidc_arn": c.oidc_provider_arn, "issuer": c.oidc_issuer,
                "sg": c.security_group_id}
    return run_component(program)


@pytest.fixture(scope="module")
def run():
    return build()


def test_gpu_nodes_are_no_node_group_karpenter_launches_them(run):
    assert [g.name for g in run.of_type(NODE_GROUP)] == ["k-system"]
    assert run.outputs["sg"] == "sg-eks-cluster"  # GPU nodes join it (see test_stacks_gpu)


def test_system_node_group_is_untainted_standard_al2023(run):
    system = run.one(NODE_GROUP, "k-system").inputs
    assert system["amiType"] == "AL2023_x86_64_STANDARD"
    assert system.get("taints", []) == []
    assert system["scalingConfig"]["minSize"] >= 2  # cluster add-ons must keep running
    assert system["capacityType"] == "ON_DEMAND"
    assert system["scalingConfig"] == {"minSize": 2, "maxSize": 4, "desiredSize": 2}
    assert system["labels"] == {"role": "system"}  # Karpenter's and KEDA's nodeSelector
    assert system["launchTemplate"] == {"id": "k-system-id", "version": "1"}
    assert system["subnetIds"] == ["subnet-a", "subnet-b", "subnet-c"]


def test_launch_template_encrypts_disks_and_requires_imdsv2(run):
    system = run.one(LT, "k-system").inputs
    assert system["vpcSecurityGroupIds"] == ["sg-eks-cluster"]
    for lt, size in ((system, 50),):
        [bdm] = lt["blockDeviceMappings"]
        assert bdm["ebs"]["encrypted"] == "true" and bdm["ebs"]["kmsKeyId"] == KEY_ARN
        assert bdm["ebs"]["volumeSize"] == size
        assert lt["metadataOptions"]["httpTokens"] == "required"
        assert lt["metadataOptions"]["httpPutResponseHopLimit"] == 1


def test_control_plane_encrypts_secrets_logs_and_uses_access_entries(run):
    eks = run.one("aws:eks/cluster:Cluster").inputs
    assert eks["name"] == "transcribe-test" and eks["version"] == "1.33"
    assert eks["encryptionConfig"] == {"resources": ["secrets"], "provider": {"keyArn": KEY_ARN}}
    assert set(eks["enabledClusterLogTypes"]) >= {"api", "audit"}
    assert eks["vpcConfig"]["subnetIds"] == ["subnet-a", "subnet-b", "subnet-c"]
    assert eks["vpcConfig"]["endpointPrivateAccess"] is True
    assert eks["accessConfig"]["authenticationMode"] == "API"
    assert eks["deletionProtection"] is False
    assert build(deletion_protection=True).one("aws:eks/cluster:Cluster").inputs["deletionProtection"] is True


def test_irsa_oidc_provider_and_node_role_policies(run):
    oidc = run.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider").inputs
    assert oidc["url"] == run.outputs["issuer"] == "https://oidc.eks.eu-west-1.amazonaws.com/id/C0FFEE"
    assert oidc["clientIdLists"] == ["sts.amazonaws.com"]
    attached = {r.inputs["policyArn"].rsplit("/", 1)[-1] for r in run.of_type(
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment") if r.inputs["role"] == "k-nodes"}
    assert attached == {"AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"}


def test_kubeconfig_authenticates_through_aws_eks_get_token(run):
    config = json.loads(run.outputs["kubeconfig"])
    [cluster] = config["clusters"]
    assert cluster["cluster"]["server"] == "https://k-eks.gr7.eu-west-1.eks.amazonaws.com"
    assert cluster["cluster"]["certificate-authority-data"] == "Q0EtREFUQQ=="
    [user] = config["users"]
    assert user["user"]["exec"]["command"] == "aws"
    assert user["user"]["exec"]["args"] == ["eks", "get-token", "--cluster-name", "transcribe-test",
                                            "--region", "eu-west-1"]
    assert set(user["user"]) == {"exec"}  # no token, no client key: nothing secret in it


def test_node_group_sizes_are_validated():
    with pytest.raises(ValueError, match="min <= desired <= max"):
        NodeGroupSpec(["g5.xlarge"], 2, 1, 1)


def test_the_api_endpoint_is_private_unless_ranges_are_named(run):
    vpc = run.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]
    assert (vpc["endpointPrivateAccess"], vpc["endpointPublicAccess"]) == (True, False)
    assert "publicAccessCidrs" not in vpc
    named = build(api_cidrs=["203.0.113.0/24", "2001:db8::/48"]).one("aws:eks/cluster:Cluster").inputs["vpcConfig"]
    assert named["endpointPublicAccess"] is True
    assert named["publicAccessCidrs"] == ["203.0.113.0/24", "2001:db8::/48"]


@pytest.mark.parametrize("cidr, error", [
    ("0.0.0.0/0", "0.0.0.0/0 opens the cluster API to the whole internet"),
    ("::/0", "::/0 opens the cluster API to the whole internet"),
    ("10.0.0.1/8", "'10.0.0.1/8' is not a CIDR block"),
    ("office", "'office' is not a CIDR block"),
])
def test_an_api_open_to_the_internet_or_a_malformed_range_is_refused(cidr, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        ClusterArgs(name="x", region="eu-west-1", subnet_ids=[], kms_key_arn=KEY_ARN,
                    public_access_cidrs=["198.51.100.0/24", cidr])
