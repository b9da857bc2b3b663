import hashlib
import json
import re

import pulumi
import pytest
from stacks_support import KEY_ARN, TAGS, run_component

from transcribe_infra import offline
from transcribe_infra.workloads import Workloads, WorkloadsArgs

ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC"
AUDIO = "arn:aws:s3:::t-audio"
DB_URL = "postgresql://transcribe:pw0@db.internal:5432/transcribe?sslmode=require"
REDIS_URL = "rediss://:tok0@redis.internal:6379/0"
EXTRA_HASH = hashlib.sha256(b"a customer key").hexdigest()


@pytest.fixture(scope="module")
def run():
    def program():
        w = Workloads("w", WorkloadsArgs(
            kubeconfig="{}", namespace="transcribe", service_account="transcription-worker",
            oidc_provider_arn="arn:aws:iam::123456789012:oidc-provider/x", oidc_issuer=ISSUER,
            audio_bucket_arn=AUDIO, kms_key_arn=KEY_ARN, database_url=pulumi.Output.secret(DB_URL),
            redis_url=pulumi.Output.secret(REDIS_URL), api_key_hashes=[EXTRA_HASH], tags=TAGS))
        return {"namespace": w.namespace, "sa": w.service_account, "role": w.worker_role_arn,
                "api_key_secret": w.api_key_secret_arn}
    return run_component(program)


def test_kubernetes_objects_go_through_the_cluster_provider(run):
    provider = run.one("pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == "{}"
    for typ in ("kubernetes:core/v1:Namespace", "kubernetes:core/v1:ServiceAccount", "kubernetes:helm.sh/v3:Release",
                "kubernetes:core/v1:Secret"):
        assert "w-k8s" in run.one(typ).provider, typ


def test_namespace_and_irsa_service_account(run):
    ns = run.one("kubernetes:core/v1:Namespace").inputs["metadata"]
    assert ns["name"] == "transcribe" == run.outputs["namespace"]
    assert ns["labels"]["app.kubernetes.io/managed-by"] == "pulumi"
    sa = run.one("kubernetes:core/v1:ServiceAccount").inputs["metadata"]
    assert (sa["name"], sa["namespace"]) == ("transcription-worker", "transcribe")
    assert sa["annotations"]["eks.amazonaws.com/role-arn"] == run.outputs["role"] == \
        "arn:aws:iam::123456789012:role/w-worker"


def test_worker_role_trusts_only_that_service_account(run):
    role = run.one("aws:iam/role:Role", "w-worker").inputs
    [statement] = json.loads(role["assumeRolePolicy"])["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {"Federated": "arn:aws:iam::123456789012:oidc-provider/x"}
    assert statement["Condition"]["StringEquals"] == {
        "oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub": "system:serviceaccount:transcribe:transcription-worker",
        "oidc.eks.eu-west-1.amazonaws.com/id/ABC:aud": "sts.amazonaws.com",
    }


def test_worker_role_may_use_the_audio_bucket_and_the_key_only(run):
    attached = run.one("aws:iam/rolePolicy:RolePolicy").inputs
    assert attached["role"] == "w-worker"
    policy = json.loads(attached["policy"])
    resources = [s["Resource"] for s in policy["Statement"]]
    assert resources == [AUDIO, f"{AUDIO}/*", KEY_ARN]
    assert all(s["Effect"] == "Allow" and "*" not in s["Action"] for s in policy["Statement"])


def test_the_keda_operator_is_installed_on_system_nodes(run):
    release = run.one("kubernetes:helm.sh/v3:Release").inputs  # the device plugin lives with the GPU pool
    assert (release["chart"], release["version"], release["namespace"]) == ("keda", "2.21.1", "keda")
    assert release["repositoryOpts"] == {"repo": "https://kedacore.github.io/charts"}
    assert release["createNamespace"] is True and release["atomic"] is True
    assert release["values"]["nodeSelector"] == {"role": "system"}


def test_the_worker_secret_holds_what_the_deployment_reads_as_pulumi_secrets(run):
    from opsctl.deploy.manifests import SECRET, SECRET_ENV

    secret = run.one("kubernetes:core/v1:Secret").inputs
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (SECRET, "transcribe")
    whole, values = offline.unsecret(secret["stringData"])  # the engine may mark the whole map secret
    data = {k: (whole or offline.unsecret(v)[0], offline.unsecret(v)[1]) for k, v in values.items()}
    assert sorted(data) == sorted(key for _, key in SECRET_ENV)  # the very keys the Deployment reads
    assert all(was_secret for was_secret, _ in data.values()), "every value is a Pulumi secret"
    assert data["database-url"][1] == DB_URL and data["redis-url"][1] == REDIS_URL
    # the generated key's SHA-256 (what the worker compares Bearer keys with), then the listed ones
    stored = run.one("aws:secretsmanager/secretVersion:SecretVersion").inputs["secretString"]
    was_secret, text = offline.unsecret(stored)
    api_key = json.loads(text)["api_key"]
    assert was_secret and re.fullmatch(r"[A-Za-z0-9]{48}", api_key)
    assert data["api-key-hashes"][1] == f"{hashlib.sha256(api_key.encode()).hexdigest()},{EXTRA_HASH}"
    kept = run.one("aws:secretsmanager/secret:Secret").inputs
    assert kept["namePrefix"] == "transcribe/worker-api-key-" and kept["kmsKeyId"] == KEY_ARN
    assert run.outputs["api_key_secret"].startswith("arn:aws:secretsmanager:")


def test_a_key_instead_of_a_hash_is_refused():
    with pytest.raises(ValueError, match="not SHA-256 hex digests"):
        WorkloadsArgs(kubeconfig="{}", namespace="t", service_account="w", oidc_provider_arn="p", oidc_issuer=ISSUER,
                      audio_bucket_arn=AUDIO, kms_key_arn=KEY_ARN, database_url="d", redis_url="r",
                      api_key_hashes=["my-plain-api-key"])
