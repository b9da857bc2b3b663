"""The whole program with the real stack configs: what differs between production and staging."""

import json

import pytest
import yaml
from stacks_support import STACKS

from opsctl.config import load_project
from opsctl.infra import OUTPUTS
from opsctl.infra.target import check_consistency, target
from transcribe_infra import policy

RDS = "aws:rds/instance:Instance"
REDIS = "aws:elasticache/replicationGroup:ReplicationGroup"
EKS = "aws:eks/cluster:Cluster"
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_every_output_opsctl_reads_is_exported(stack, request):
    run = request.getfixturevalue(stack)
    missing = [k for k in OUTPUTS if k not in run.outputs]
    assert missing == []
    assert all(run.outputs[k] not in (None, "") for k in OUTPUTS)
    assert run.outputs["clusterName"] == f"transcribe-{stack}"
    assert run.outputs["audioBucket"] == f"transcribe-{stack}-audio"
    assert run.outputs["backupsBucket"] == f"transcribe-{stack}-backups"
    assert run.outputs["databaseSecretArn"].startswith("arn:aws:secretsmanager:eu-west-1:")
    assert json.loads(run.outputs["kubeconfig"])["current-context"] == f"transcribe-{stack}"


def test_nat_per_az_in_production_one_shared_in_staging(staging, production):
    nat = "aws:ec2/natGateway:NatGateway"
    assert len(production.of_type(nat)) == 3
    assert len(staging.of_type(nat)) == 1


def test_database_multi_az_and_protected_only_in_production(staging, production):
    p, s = production.one(RDS, "transcribe-production-instance").inputs, staging.one(RDS).inputs
    assert (p["multiAz"], p["deletionProtection"], p["backupRetentionPeriod"]) == (True, True, 14)
    assert (s["multiAz"], s["deletionProtection"], s["backupRetentionPeriod"]) == (False, False, 7)
    assert p["identifier"] == "transcribe-production" and p["instanceClass"] == "db.r6g.large"
    for db in (p, s):
        assert db["publiclyAccessible"] is False and db["storageEncrypted"] is True


def test_cache_fails_over_only_in_production(staging, production):
    p, s = production.one(REDIS).inputs, staging.one(REDIS).inputs
    assert (p["automaticFailoverEnabled"], p["multiAzEnabled"], p["numCacheClusters"]) == (True, True, 2)
    assert (s["automaticFailoverEnabled"], s["multiAzEnabled"], s["numCacheClusters"]) == (False, False, 1)


def test_cluster_buckets_and_gpu_capacity_per_environment(staging, production):
    assert production.one(EKS).inputs["deletionProtection"] is True
    assert staging.one(EKS).inputs["deletionProtection"] is False
    buckets = "aws:s3/bucket:Bucket"
    assert all(b.inputs["forceDestroy"] is False for b in production.of_type(buckets))
    assert all(b.inputs["forceDestroy"] is True for b in staging.of_type(buckets))


def capacity(run) -> dict:
    spec = run.one(NODEPOOL).inputs["spec"]
    reqs = {r["key"]: r["values"] for r in spec["template"]["spec"]["requirements"]}
    return {"types": reqs["node.kubernetes.io/instance-type"], "capacity": reqs["karpenter.sh/capacity-type"],
            "gpus": spec["limits"]["nvidia.com/gpu"]}


def test_gpu_capacity_per_environment_comes_from_a_karpenter_nodepool(staging, production):
    assert staging.of_type("aws:eks/nodeGroup:NodeGroup")[0].name == "transcribe-staging-system"
    assert capacity(staging) == {"types": ["g5.xlarge", "g6.xlarge"], "capacity": ["spot", "on-demand"], "gpus": "6"}
    assert capacity(production) == {"types": ["g5.xlarge", "g5.2xlarge", "g6.xlarge"], "capacity": ["on-demand"],
                                    "gpus": "18"}
    for run, stack in ((staging, "staging"), (production, "production")):
        assert run.outputs["gpuNodePool"] == "gpu"
        assert run.outputs["gpuInterruptionQueue"] == f"transcribe-{stack}-interruptions-0c0ffee"


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_worker_deployment_lands_on_the_gpu_pool(env, request):
    """DEPLOY's rendered Deployment (templates/kubernetes) against the stack's NodePool and plugin."""
    from opsctl.deploy.manifests import render_env

    run = request.getfixturevalue(env)
    project = load_project(STACKS.parent)
    [deployment] = [d for d in yaml.safe_load_all(render_env(project, project.env(env)))
                    if d and d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    template = run.one(NODEPOOL).inputs["spec"]["template"]
    for taint in template["spec"]["taints"]:
        assert policy._tolerates(pod["tolerations"], taint), (taint, pod["tolerations"])
    labels = template["metadata"]["labels"]
    assert pod["nodeSelector"] and all(labels.get(k) == v for k, v in pod["nodeSelector"].items())
    [worker] = [c for c in pod["containers"] if c["name"] == "worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1  # what the device plugin advertises
    assert policy.check(run, production=env == "production") == []  # the plugin fits the pool too


def test_database_and_cache_live_in_private_subnets_behind_the_worker_sg(staging):
    private = [f"transcribe-staging-private-eu-west-1{z}-id" for z in "abc"]
    assert staging.one("aws:rds/subnetGroup:SubnetGroup").inputs["subnetIds"] == private
    assert staging.one("aws:elasticache/subnetGroup:SubnetGroup").inputs["subnetIds"] == private
    assert staging.one(RDS).inputs["vpcSecurityGroupIds"] == ["transcribe-staging-database-id"]
    assert staging.one(REDIS).inputs["securityGroupIds"] == ["transcribe-staging-cache-id"]
    sources = {r.inputs["referencedSecurityGroupId"] for r in staging.of_type(policy.INGRESS)}
    assert sources == {"transcribe-staging-worker-id"}


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_the_stack_passes_every_policy_and_tags_its_environment(stack, request):
    run = request.getfixturevalue(stack)
    assert [str(v) for v in policy.check(run, production=stack == "production")] == []
    tagged = [r for r in run.resources if r.custom and policy.taggable(r.type)]
    assert len(tagged) > 40
    assert {r.inputs["tags"]["environment"] for r in tagged} == {stack}


@pytest.mark.parametrize("env", ["staging", "production"])
def test_stack_configs_match_opsctl_yaml(env):
    project = load_project(STACKS.parent)
    t = target(project, project.env(env))
    assert t.stack_file == STACKS / f"Pulumi.{env}.yaml"
    check_consistency(t, project.env(env))  # raises on the first difference


def test_main_py_is_the_program_pulumi_runs():
    import runpy

    from transcribe_infra import offline

    assert "runtime:\n  name: python" in (STACKS / "Pulumi.yaml").read_text()
    config, secrets = offline.stack_config(STACKS, "staging")
    run = offline.run(lambda: runpy.run_path(str(STACKS / "__main__.py")) and None, config, "staging", secrets)
    assert sorted(run.outputs) == sorted(offline.run_stack(STACKS, "staging").outputs)
    assert len(run.of_type(RDS)) == 1


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_the_redis_token_is_generated_by_the_program_not_passed_in(stack, request):
    from transcribe_infra import offline

    run = request.getfixturevalue(stack)
    config, secrets = offline.stack_config(STACKS, stack)
    assert secrets == [] and not [k for k in config if "Token" in k]  # opsctl hands the program no secret
    run.one("random:index/randomPassword:RandomPassword", f"transcribe-{stack}-auth-token")
    is_secret, token = offline.unsecret(run.one(REDIS).inputs["authToken"])
    assert is_secret and len(token) == 64


def test_a_legacy_stack_keeps_the_token_in_its_config():
    from transcribe_infra import offline
    from transcribe_infra.program import main

    config, _ = offline.stack_config(STACKS, "staging")
    run = offline.run(main, {**config, "transcribe:redisAuthToken": "L" * 64}, "staging",
                      ["transcribe:redisAuthToken"])
    assert [r.name for r in run.of_type("random:index/randomPassword:RandomPassword") if "auth-token" in r.name] == []
    assert offline.unsecret(run.one(REDIS).inputs["authToken"]) == (True, "L" * 64)


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_the_worker_role_reaches_the_audio_bucket_and_never_the_backups(stack, request):
    run = request.getfixturevalue(stack)
    role = run.one("aws:iam/role:Role", f"transcribe-{stack}-worker")
    [policy] = [r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.inputs["role"] == role.name]
    text = policy.inputs["policy"]
    assert f"transcribe-{stack}-backups" not in text
    s3 = [s for s in json.loads(text)["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    assert [s["Resource"] for s in s3] == [f"arn:aws:s3:::transcribe-{stack}-audio",
                                           f"arn:aws:s3:::transcribe-{stack}-audio/*"]


def test_the_cluster_api_follows_the_allowed_ranges_of_the_stack_config():
    from transcribe_infra import offline
    from transcribe_infra.program import main

    config, _ = offline.stack_config(STACKS, "staging")
    assert "transcribe:apiAllowedCidrs" not in config  # the shipped stacks keep the API private
    vpc = offline.run(main, {**config, "transcribe:apiAllowedCidrs": ["198.51.100.0/24"]}, "staging").one(
        EKS).inputs["vpcConfig"]
    assert (vpc["endpointPublicAccess"], vpc["publicAccessCidrs"]) == (True, ["198.51.100.0/24"])


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_the_shipped_stacks_keep_the_cluster_api_private(stack, request):
    vpc = request.getfixturevalue(stack).one(EKS).inputs["vpcConfig"]
    assert (vpc["endpointPrivateAccess"], vpc["endpointPublicAccess"]) == (True, False)


def test_only_production_gets_a_read_replica_tagged_for_failover(staging, production):
    assert [r.name for r in staging.of_type(RDS)] == ["transcribe-staging-instance"]
    assert "databaseReplicaId" not in staging.outputs
    replica = production.one(RDS, "transcribe-production-replica").inputs
    assert replica["replicateSourceDb"] == "transcribe-production"
    assert replica["tags"]["opsctl:replica-of"] == "transcribe-production"
    assert replica["tags"]["opsctl:role"] == "read-replica"
    assert replica["deletionProtection"] is True and replica["instanceClass"] == "db.r6g.large"
    assert production.outputs["databaseReplicaId"] == "transcribe-production-replica"


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_the_worker_secret_comes_from_the_stack_and_no_output_holds_a_credential(stack, request):
    """The Secret transcription-worker is made from the database's and cache's own values;
    neither its URLs, nor the passwords, nor the generated API key appear in any output."""
    from transcribe_infra import offline

    run = request.getfixturevalue(stack)
    whole, values = offline.unsecret(run.one("kubernetes:core/v1:Secret").inputs["stringData"])
    data = {k: (whole or offline.unsecret(v)[0], offline.unsecret(v)[1]) for k, v in values.items()}
    assert all(was_secret for was_secret, _ in data.values())
    password = offline.unsecret(run.one("aws:rds/instance:Instance", f"transcribe-{stack}-instance").inputs["password"])[1]
    token = offline.unsecret(run.one("aws:elasticache/replicationGroup:ReplicationGroup").inputs["authToken"])[1]
    assert data["database-url"][1] == (f"postgresql://transcribe:{password}@transcribe-{stack}.c0ffee.eu-west-1.rds."
                                       f"amazonaws.com:5432/transcribe?sslmode=require")
    assert data["redis-url"][1] == f"rediss://:{token}@master.transcribe-{stack}.c0ffee.euw1.cache.amazonaws.com:6379/0"
    api_key = json.loads(offline.unsecret(run.one("aws:secretsmanager/secretVersion:SecretVersion",
                                                  f"transcribe-{stack}-worker-api-key").inputs["secretString"])[1])["api_key"]
    shown = json.dumps(run.outputs, default=str)
    for credential in (password, token, api_key, data["database-url"][1], data["redis-url"][1], data["api-key-hashes"][1]):
        assert credential not in shown
    assert run.outputs["workerApiKeySecretArn"].startswith("arn:aws:secretsmanager:")


def test_a_run_under_the_mocks_leaves_no_descriptor_open():
    """Each offline run (the tests, `opsctl infra policy` before every preview and up) closes
    what it opened: its event loop and the loops pulumi's invokes set in the executor's threads.
    Before, each run kept about 20 descriptors, and a pytest worker that ran a few hundred went
    past select's 1024 (CI stop 51). Three runs after a first (which may import and cache) leave
    the process's descriptors as they were."""
    from stacks_support import offline

    from tests.descriptors import grown, held

    offline.run_stack(STACKS, "staging")
    before = held()
    for _ in range(3):
        offline.run_stack(STACKS, "staging")
    assert grown(before, held()) == {}
