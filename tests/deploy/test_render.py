"""`opsctl render`: the manifests GitOps users commit, from this repository's opsctl.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_root(monkeypatch) -> Path:
    monkeypatch.chdir(REPO)
    for var in ("OPSCTL_ROOT", "OPSCTL_ENV"):
        monkeypatch.delenv(var, raising=False)
    return REPO


def _render(runner, *args: str) -> list[dict]:
    result = runner.invoke(app, ["render", *args])
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def test_render_staging_prints_parseable_manifests(runner, repo_root):
    docs = _by_kind(_render(runner, "--env", "staging"))
    assert sorted(docs) == ["Deployment", "PodDisruptionBudget", "ScaledObject", "Service"]
    (dep,) = docs["Deployment"]
    (pdb,) = docs["PodDisruptionBudget"]
    assert pdb["metadata"]["name"] == dep["metadata"]["name"]  # one budget per color
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]}}
    assert dep["metadata"]["name"] == "transcription-worker-blue"
    assert dep["metadata"]["namespace"] == "transcribe"
    assert dep["spec"]["replicas"] == 1
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/example/transcription-worker:latest"  # worker.image of staging
    assert {s["metadata"]["name"] for s in docs["Service"]} == {"transcription-worker", "transcription-worker-preview"}
    assert all(s["spec"]["selector"]["app.kubernetes.io/color"] == "blue" for s in docs["Service"])


def test_render_production_has_three_gpu_replicas(runner, repo_root):
    docs = _by_kind(_render(runner, "--env", "production"))
    (dep,) = docs["Deployment"]
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert (env["WORKER_DEVICE"], env["WORKER_COMPUTE_TYPE"]) == ("cuda", "float16")


def test_render_manifests_takes_image_and_color(runner, repo_root):
    docs = _by_kind(_render(runner, "manifests", "--env", "staging", "--image", "reg/worker:1.4.0", "--color", "green"))
    (dep,) = docs["Deployment"]
    assert dep["metadata"]["name"] == "transcription-worker-green"
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "1.4.0"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/worker:1.4.0"
    assert {"name": "WORKER_VERSION", "value": "1.4.0"} in container["env"]


def test_render_rolling_shows_what_a_rolling_deploy_applies(runner, repo_root):
    """On Kubernetes a rolling deploy is a switch between colors without analysis (bring_up,
    switch): `render --strategy rolling` shows those colored objects, never an uncoloured
    Deployment or a ScaledObject on `transcription-worker`, which no deploy creates (BREAKER23 #6)."""
    rolling = _render(runner, "--env", "production", "--strategy", "rolling")
    assert rolling == _render(runner, "--env", "production", "--strategy", "blue-green")
    docs = _by_kind(rolling)
    (dep,) = docs["Deployment"]
    assert dep["metadata"]["name"] == "transcription-worker-blue"
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/color"] == "blue"
    (so,) = docs["ScaledObject"]
    assert so["spec"]["scaleTargetRef"]["name"] == "transcription-worker-blue"
    green = _by_kind(_render(runner, "--env", "production", "--strategy", "rolling", "--color", "green"))
    assert green["ScaledObject"][0]["spec"]["scaleTargetRef"]["name"] == "transcription-worker-green"


def test_render_json_is_one_document(runner, repo_root):
    result = runner.invoke(app, ["render", "manifests", "--env", "staging", "--json"])
    assert result.exit_code == 0, result.output
    assert [d["kind"] for d in json.loads(result.stdout)] == ["Deployment", "PodDisruptionBudget", "Service", "Service",
                                                              "ScaledObject"]


@pytest.mark.parametrize("args, message", [
    (["--env", "staging", "--color", "red"], "--color red: use blue or green"),
    (["--env", "staging", "--strategy", "canary"], "--strategy canary: use blue-green or rolling"),
    (["--env", "nowhere"], "unknown environment 'nowhere'"),
])
def test_render_bad_input_is_one_line_and_exit_2(runner, repo_root, args, message):
    result = runner.invoke(app, ["render", *args])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_dry_run_without_a_cluster_points_to_render(runner, repo_root, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(repo_root / "no-such-kubeconfig"))
    result = runner.invoke(app, ["deploy", "--env", "staging", "--image", "reg/worker:1.4.0", "--dry-run"])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "no usable Kubernetes configuration" in line
    assert "'opsctl render manifests --env staging --image reg/worker:1.4.0'" in line


def _worker_env(doc: dict) -> dict:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_api_keys_are_required_unless_opsctl_yaml_says_auth_none(runner, tmp_path, monkeypatch):
    """Issue 19 §3: a missing api-key-hashes Secret key must not leave a production worker open."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    for auth, required in ((None, True), ("api-keys", True), ("none", False)):
        worker = "{auth: %s}" % auth if auth else "{}"
        (tmp_path / "opsctl.yaml").write_text(f"environments:\n  prod: {{platform: kubernetes, worker: {worker}}}\n")
        (dep,) = _by_kind(_render(runner, "--env", "prod"))["Deployment"]
        env = _worker_env(dep)
        ref = env["WORKER_API_KEY_HASHES"]["secretKeyRef"]
        assert ref["key"] == "api-key-hashes"
        assert ref.get("optional", False) is (not required), (auth, ref)
        assert ("WORKER_REQUIRE_API_KEYS" in env) is required and env.get("WORKER_REQUIRE_API_KEYS", "true") == "true"
        # the keyless metrics listener, as a named port the PodMonitor can select
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert {"name": "metrics", "containerPort": int(env["WORKER_METRICS_PORT"]), "protocol": "TCP"} in container["ports"]
    (tmp_path / "opsctl.yaml").write_text("environments:\n  prod: {platform: kubernetes, worker: {auth: open}}\n")
    bad = runner.invoke(app, ["render", "--env", "prod"])
    assert bad.exit_code == 2 and "auth" in bad.output


# -- the worker's autoscaler, and the manifests against the API's schemas (issue 23) -------------

KEDA_CRD = REPO / "tests" / "data" / "keda" / "keda.sh_scaledobjects.yaml"  # KEDA v2.20.2, vendored


def _strict(schema: dict) -> dict:
    """The CRD's OpenAPI schema as the API server judges with fieldValidation=Strict (what
    `kubectl apply --validate=strict` asks): an unknown field is an error, not pruned."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def _validate(doc: dict) -> None:
    """Core kinds against Kubernetes 1.30's schemas (kubernetes-validate, strict); the ScaledObject
    against KEDA's CRD schema with the metadata a CRD object always has."""
    import jsonschema
    import kubernetes_validate

    if doc["kind"] != "ScaledObject":
        kubernetes_validate.validate(doc, "1.30", strict=True)
        return
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == doc["apiVersion"].split("/")[1]]
    assert doc["apiVersion"].split("/")[0] == crd["spec"]["group"] and doc["kind"] == crd["spec"]["names"]["kind"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object", "required": ["name", "namespace"], "properties": {
        "name": {"type": "string"}, "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}, "additionalProperties": False}
    jsonschema.validate(doc, schema)


@pytest.mark.parametrize("args", [("--env", "staging"), ("--env", "production"), ("--env", "production", "--color", "green"),
                                  ("--env", "production", "--strategy", "rolling")])
def test_rendered_manifests_pass_the_api_schemas(runner, repo_root, args):
    docs = _render(runner, *args)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject"}
    for doc in docs:
        _validate(doc)


def test_the_schemas_really_judge(runner, repo_root):
    """A misspelt field of the ScaledObject, or a Deployment without its selector, is refused."""
    import jsonschema
    import kubernetes_validate

    docs = _by_kind(_render(runner, "--env", "staging"))
    (so,) = docs["ScaledObject"]
    so["spec"]["minReplicas"] = 1  # HPA's spelling, not KEDA's
    with pytest.raises(jsonschema.ValidationError):
        _validate(so)
    (dep,) = docs["Deployment"]
    del dep["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(dep)


def test_the_scaled_object_scales_the_rendered_color_on_its_work_per_pod(runner, repo_root):
    (so,) = _by_kind(_render(runner, "--env", "production", "--color", "green"))["ScaledObject"]
    assert so["metadata"]["name"] == "transcription-worker"
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "transcription-worker-green"}
    # production is protected: never below worker.replicas (3), default maximum 3 x that
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (3, 9)
    (trigger,) = so["spec"]["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    query = trigger["metadata"]["query"]
    assert "worker_queue_depth|worker_transcriptions_in_progress" in query
    assert 'color="green"' in query and 'namespace="transcribe"' in query and 'job="worker"' in query
    assert trigger["metadata"]["threshold"] == "1"  # worker.concurrency: one transcription per pod at a time


def _project(tmp_path, monkeypatch, env: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    (tmp_path / "opsctl.yaml").write_text(f"environments:\n  e: {env}\n")


def test_scale_to_zero_where_not_protected_with_a_wake_query(runner, tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch, "{platform: kubernetes, worker: {replicas: 2, concurrency: 4, autoscaling: "
             "{min_replicas: 0, max_replicas: 5, wake_query: 'sum(rate(nginx_ingress_controller_requests[1m]))'}}}")
    (so,) = _by_kind(_render(runner, "--env", "e"))["ScaledObject"]
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 5)
    work, wake = so["spec"]["triggers"]
    assert work["metadata"]["threshold"] == "4"  # queued + running per pod: the sizing signal
    # the wake query only wakes the color from zero: its per-pod target never asks for a second pod
    assert (wake["metadata"]["activationThreshold"], wake["metadata"]["threshold"]) == ("0", "1000000")
    assert wake["metadata"]["query"] == "sum(rate(nginx_ingress_controller_requests[1m]))"
    _validate(so)


@pytest.mark.parametrize("env, message", [
    ("{platform: kubernetes, protected: true, worker: {replicas: 3, autoscaling: {min_replicas: 1}}}",
     "worker.autoscaling.min_replicas 1 is below worker.replicas 3 on a protected environment"),
    ("{platform: kubernetes, worker: {autoscaling: {min_replicas: 0}}}",
     "worker.autoscaling.min_replicas 0 needs worker.autoscaling.wake_query"),
    ("{platform: kubernetes, worker: {replicas: 4, autoscaling: {max_replicas: 2}}}",
     "worker.autoscaling.max_replicas 2 is below min_replicas 4"),
])
def test_autoscaling_bounds_that_cannot_hold_are_one_line_and_exit_2(runner, tmp_path, monkeypatch, env, message):
    _project(tmp_path, monkeypatch, env)
    result = runner.invoke(app, ["render", "--env", "e"])
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_autoscaling_off_renders_no_scaled_object(runner, tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch, "{platform: kubernetes, worker: {autoscaling: {enabled: false}}}")
    assert "ScaledObject" not in _by_kind(_render(runner, "--env", "e"))


# -- settings a real API server refuses are refused at config load (issue 23, BREAKER23 #7) -------

def _project(tmp_path, monkeypatch, env: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    (tmp_path / "opsctl.yaml").write_text(f"environments:\n  e: {env}\n")


@pytest.mark.parametrize("env, key", [
    ("{platform: kubernetes, kubernetes: {namespace: Transcribe_NS}}", "kubernetes.namespace"),  # not an RFC 1123 label
    ("{platform: kubernetes, kubernetes: {namespace: " + "n" * 64 + "}}", "kubernetes.namespace"),  # longer than 63
    ("{platform: kubernetes, kubernetes: {namespace: -transcribe}}", "kubernetes.namespace"),
    ("{platform: kubernetes, kubernetes: {namespace: transcribe.eu}}", "kubernetes.namespace"),  # a dot: not a label
    ("{platform: kubernetes, worker: {resources: {limits: {cpu: two}}}}", "worker.resources"),  # not a quantity
    ("{platform: kubernetes, worker: {resources: {requests: {memory: 8 GB}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {requests: {memory: 8GB}}}}", "worker.resources"),  # no such suffix
    ("{platform: kubernetes, worker: {resources: {requests: {memory: ' 8Gi'}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {cpu: '-1'}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {CPU: '2'}}}}", "worker.resources"),  # not a resource name
    ("{platform: kubernetes, worker: {resources: {limits: {gpu: 1}}}}", "worker.resources"),  # unprefixed extended
    # BREAKER23b #4: Decimal (behind parse_quantity) takes these; the API server's grammar does not
    ("{platform: kubernetes, worker: {resources: {limits: {memory: '1_000'}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {memory: Infinity}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {memory: inf}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {memory: '-Infinity'}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {memory: NaN}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {memory: \u0663Gi}}}}", "worker.resources"),  # Arabic-Indic 3
    ("{platform: kubernetes, worker: {resources: {limits: {cpu: \uff12}}}}", "worker.resources"),  # fullwidth 2
    ("{platform: kubernetes, worker: {resources: {limits: {memory: '8Gi\\n'}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {memory: 1e}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {memory: 1.5.5Gi}}}}", "worker.resources"),
    ("{platform: kubernetes, worker: {resources: {limits: {memory: 8gi}}}}", "worker.resources"),
])
def test_settings_the_api_server_refuses_are_refused_at_config_load(runner, tmp_path, monkeypatch, env, key):
    _project(tmp_path, monkeypatch, env)
    result = runner.invoke(app, ["render", "--env", "e"])
    assert result.exit_code == 2, result.stdout[:300]
    line = result.stderr.strip()
    assert line.count("\n") == 0 and f"environments.e.{key}" in line, line
    assert any(rule in line for rule in ("DNS-1123 label", "is not a Kubernetes quantity", "not a container resource")), line


@pytest.mark.parametrize("env", [
    "{platform: kubernetes, kubernetes: {namespace: transcribe-eu-1}}",
    "{platform: kubernetes, kubernetes: {namespace: " + "n" * 63 + "}}",
    "{platform: kubernetes, worker: {gpu: true, resources: {limits: {cpu: 2000m, memory: 8Gi, nvidia.com/gpu: 1}, "
    "requests: {cpu: '1.5', memory: 1e9, ephemeral-storage: 10G}}}}",
    "{platform: kubernetes, worker: {resources: {limits: {cpu: '+2', memory: 1E}, requests: {cpu: '.5', memory: 4.Gi}}}}",
    "{platform: kubernetes, worker: {resources: {limits: {memory: 4Gi, hugepages-2Mi: 100Mi}, "
    "requests: {hugepages-2Mi: 100Mi}}}}",
])
def test_settings_the_api_server_takes_still_render(runner, tmp_path, monkeypatch, env):
    _project(tmp_path, monkeypatch, env)
    for doc in _render(runner, "--env", "e"):
        _validate(doc)


# -- the dry run shows what bring_up applies (BREAKER23 #5) ---------------------------------------

def test_dry_run_shows_the_deployment_at_the_size_bring_up_applies(repo_root):
    from opsctl.config import load_project
    from opsctl.deploy.drivers.kubernetes import KubernetesDriver
    from opsctl.deploy.model import ColorState, Release
    from opsctl.deploy.plan import plan

    env = load_project(repo_root).env("production")

    class Offline(KubernetesDriver):  # the cluster's answers, as the driver reads them
        active, sizes = None, {}

        def active_color(self):
            return self.active

        def colors(self):
            return {c: ColorState(c, "1.0" if n else None, bool(n), bool(n), None, f"{n}/{n} ready")
                    for c, n in (("blue", self.sizes.get("blue", 0)), ("green", self.sizes.get("green", 0)))}

        def _deployment(self, color):
            return {"spec": {"replicas": self.sizes[color]}} if color in self.sizes else None

    release = Release.parse("ghcr.io/example/transcription-worker:2.0", [])
    cases = [(None, {}, "blue", env.worker.replicas),           # first deploy: full size
             ("blue", {"blue": 3}, "green", 1),                   # deploy.preview_replicas
             ("blue", {"blue": 5}, "green", 1),                   # the autoscaler grew blue
             ("green", {"green": 2, "blue": 0}, "blue", 1)]
    for strategy in ("blue-green", "rolling"):
        for active, sizes, target, applied in cases:
            driver = Offline(load_project(repo_root), env)
            driver.active, driver.sizes = active, sizes
            assert driver.preview_size() == applied
            doc = plan(driver, env, release, strategy, True)
            assert doc["target_color"] == target
            (dep,) = [d for d in yaml.safe_load_all(doc["manifests"]) if d and d["kind"] == "Deployment"]
            assert (dep["metadata"]["name"], dep["spec"]["replicas"]) == (f"transcription-worker-{target}", applied), \
                (strategy, active, sizes)
            step = next(s for s in doc["steps"] if s.startswith("bring up"))
            if active:
                assert f"at {applied} replica(s)" in step, step
                assert any(s.startswith(f"scale {target} to the active color's size") for s in doc["steps"]), strategy


@pytest.mark.parametrize("worker, message", [
    ("{resources: {requests: {hugepages-2Mi: 100Mi}}}", "requests.hugepages-2Mi has no limits.hugepages-2Mi"),
    ("{resources: {requests: {hugepages-1Gi: 1Gi}, limits: {hugepages-2Mi: 2Mi}}}", "requests.hugepages-1Gi has no"),
    ("{resources: {requests: {example.com/fpga: 1}}}", "requests.example.com/fpga has no limits.example.com/fpga"),
    ("{resources: {requests: {nvidia.com/gpu: 1}}}", "requests.nvidia.com/gpu has no limits.nvidia.com/gpu"),
    ("{resources: {limits: {nvidia.com/gpu: 1}}}", "nvidia.com/gpu: 1 but gpu is false"),  # no toleration
])
def test_a_request_of_a_non_overcommitable_resource_without_its_limit_is_refused_at_load(runner, tmp_path, monkeypatch,
                                                                                         worker, message):
    """BREAKER23b #5, #8: the API server refuses a hugepages-* or extended-resource request without
    a limit ("Limit must be set for non overcommitable resources"); a GPU on a worker without
    `gpu` would never be scheduled on the tainted GPU nodes."""
    _project(tmp_path, monkeypatch, "{platform: kubernetes, worker: %s}" % worker)
    result = runner.invoke(app, ["render", "--env", "e"])
    assert result.exit_code == 2, result.stdout[:300]
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "environments.e.worker" in line and message in line, line


@pytest.mark.parametrize("resources, message", [
    ("{requests: {memory: 16Gi}}", "requests.memory 16Gi is above limits.memory 12Gi"),  # over the GPU default limit
    ("{requests: {cpu: '4'}, limits: {cpu: 2000m}}", "requests.cpu 4 is above limits.cpu 2000m"),
    ("{requests: {nvidia.com/gpu: 2}}", "requests.nvidia.com/gpu 2 differs from limits.nvidia.com/gpu 1"),
    ("{limits: {nvidia.com/gpu: 500m}}", "limits.nvidia.com/gpu: '500m' is fractional"),
])
def test_resources_the_api_server_refuses_once_merged_with_the_defaults(runner, tmp_path, monkeypatch, resources, message):
    """Each value is a quantity, but together with the defaults the API server refuses the pod."""
    _project(tmp_path, monkeypatch, "{platform: kubernetes, worker: {gpu: true, resources: %s}}" % resources)
    result = runner.invoke(app, ["render", "--env", "e"])
    assert result.exit_code == 2, result.stdout[:300]
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    _project(tmp_path, monkeypatch, "{platform: kubernetes, worker: {gpu: true, resources: "
                                    "{requests: {memory: 12Gi, nvidia.com/gpu: 1}, limits: {cpu: '4'}}}}")
    assert runner.invoke(app, ["render", "--env", "e"]).exit_code == 0
