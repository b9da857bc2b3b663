"""The autoscaler rule on scale-from-zero groups spelled other ways (issue 23, BREAKER23): a
self-managed Auto Scaling group, a cluster-autoscaler that discovers another cluster, the
list form of an Auto Scaling group's tags."""
from __future__ import annotations

import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pytest
from stacks_support import run_component

from transcribe_infra import policy

TAGS = {"project": "transcribe", "environment": "x", "managed-by": "pulumi"}
DISCOVERY = {"k8s.io/cluster-autoscaler/enabled": "true", "k8s.io/cluster-autoscaler/c": "owned"}


def _findings(run, rule="autoscaler"):
    return [str(v) for v in policy.check(run, production=False) if v.rule == rule]


def _autoscaler(cluster: str | None):
    values = {"autoDiscovery": {"clusterName": cluster}} if cluster else {}
    k8s.helm.v3.Release("ca", chart="cluster-autoscaler", namespace="kube-system",
                        repository_opts={"repo": "https://kubernetes.github.io/autoscaler"}, values=values)


def _asg(tags: dict, min_size=0):
    lt = aws.ec2.LaunchTemplate("gpu", image_id="ami-123", instance_type="g5.xlarge", tags=TAGS,
                                block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {"encrypted": "true"}}])
    aws.autoscaling.Group("gpu", min_size=min_size, max_size=4, desired_capacity=min_size, vpc_zone_identifiers=["s"],
                          launch_template={"id": lt.id, "version": "$Latest"},
                          tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in tags.items()])


def _node_group(tags: dict):
    aws.eks.NodeGroup("gpu", cluster_name="c", node_role_arn="arn:aws:iam::1:role/n", subnet_ids=["s"],
                      scaling_config={"min_size": 0, "max_size": 4, "desired_size": 0}, tags=tags)


@pytest.mark.parametrize("tags, cluster", [
    (TAGS, None),                      # nothing at all
    ({**TAGS, **DISCOVERY}, None),      # tagged, no autoscaler
    (TAGS, "c"),                       # autoscaler, untagged
    ({**TAGS, **DISCOVERY}, "other"),  # the autoscaler discovers another cluster
    ({**TAGS, "k8s.io/cluster-autoscaler/enabled": "true"}, "c"),  # the cluster's own tag missing
])
def test_a_self_managed_group_from_zero_that_nothing_grows_is_refused(tags, cluster):
    def program():
        _asg(tags)
        if cluster:
            _autoscaler(cluster)
    (found,) = _findings(run_component(program))
    assert found.startswith("[autoscaler] aws:autoscaling/group:Group 'gpu': scales from zero (min_size 0)")


def test_a_self_managed_group_discovered_by_the_autoscaler_passes():
    def program():
        _asg({**TAGS, **DISCOVERY})
        _autoscaler("c")
    assert _findings(run_component(program)) == []
    assert _findings(run_component(lambda: _asg(TAGS, min_size=1))) == []  # not from zero: nothing needed


@pytest.mark.parametrize("tags, cluster", [
    ({**TAGS, "k8s.io/cluster-autoscaler/enabled": "true"}, "some-other-cluster"),
    ({**TAGS, **DISCOVERY}, "some-other-cluster"),
    ({**TAGS, "k8s.io/cluster-autoscaler/enabled": "true"}, "c"),
    ({**TAGS, "k8s.io/cluster-autoscaler/enabled": "true", "k8s.io/cluster-autoscaler/other": "owned"}, "other"),
    ({**TAGS, **DISCOVERY}, None),  # the chart without autoDiscovery.clusterName discovers nothing
])
def test_a_managed_group_the_autoscaler_does_not_discover_is_refused(tags, cluster):
    def program():
        _node_group(tags)
        _autoscaler(cluster)
    (found,) = _findings(run_component(program))
    assert "cluster 'c'" in found and "k8s.io/cluster-autoscaler/<cluster>" in found, found


def test_the_policy_reads_an_auto_scaling_groups_list_of_tags():
    """aws.autoscaling.Group takes `tags` as a list of {key, value, propagate_at_launch}: the
    check neither crashes on it nor misses a required tag written that way."""
    def program(tags):
        aws.autoscaling.Group("gpu", min_size=1, max_size=4, desired_capacity=1, vpc_zone_identifiers=["s"],
                              launch_configuration="lc",
                              tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in tags.items()])
    assert _findings(run_component(lambda: program(TAGS)), "tags") == []
    missing = {k: v for k, v in TAGS.items() if k != "environment"}
    assert _findings(run_component(lambda: program(missing)), "tags") == [
        "[tags] aws:autoscaling/group:Group 'gpu': missing tags environment"]
