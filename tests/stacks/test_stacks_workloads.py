import json

import pytest
from stacks_support import KEY_ARN, TAGS, run_component

from transcribe_infra.workloads import Workloads, WorkloadsArgs

ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC"
AUDIO = "arn:aws:s3:::t-audio"


@pytest.fixture(scope="module")
def run():
    def program():
        w = Workloads("w", WorkloadsArgs(
            kubeconfig="{}", namespace="transcribe", service_account="transcription-worker",
            oidc_provider_arn="arn:aws:iam::123456789012:oidc-provider/x", oidc_issuer=ISSUER,
            audio_bucket_arn=AUDIO, kms_key_arn=KEY_ARN, tags=TAGS))
        return {"namespace": w.namespace, "sa": w.service_account, "role": w.worker_role_arn}
    return run_component(program)


def test_kubernetes_objects_go_through_the_cluster_provider(run):
    provider = run.one("pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == "{}"
    for typ in ("kubernetes:core/v1:Namespace", "kubernetes:core/v1:ServiceAccount", "kubernetes:helm.sh/v3:Release"):
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
