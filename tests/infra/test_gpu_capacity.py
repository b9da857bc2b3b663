"""The GPU pool must hold what the autoscaler and a deploy ask for (issue 23, BREAKER23 #4).

Every worker pod asks for worker.resources' nvidia.com/gpu (default 1). A deploy grows the
preview to the active color's size before the switch, so both colors may run at the
autoscaler's maximum at once: the NodePool's GPU limit (transcribe:gpuMaxSize) must hold
2 x maxReplicaCount x GPUs per pod, or pods stay Pending and the deploy times out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opsctl.cli import app
from opsctl.config import load_project
from opsctl.deploy import manifests as mf
from opsctl.errors import UsageError
from opsctl.infra import target as tg

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["staging", "production"])
def test_the_shipped_gpu_pools_hold_both_colors_at_the_autoscalers_maximum(monkeypatch, name):
    monkeypatch.chdir(REPO)
    env = load_project(REPO).env(name)
    gpus = yaml.safe_load((REPO / "stacks" / f"Pulumi.{name}.yaml").read_text())["config"]["transcribe:gpuMaxSize"]
    high = mf.autoscaling_bounds(env)[1]
    assert 2 * high * 1 <= gpus, (name, high, gpus)
    tg.check_consistency(tg.target(load_project(REPO), env), env)  # and the rule agrees


def _root(tmp_path, monkeypatch, worker: str, gpus: int) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    (tmp_path / "opsctl.yaml").write_text(
        f"environments:\n  lab: {{platform: kubernetes, aws: {{region: eu-west-1}}, worker: {worker}}}\n")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.yaml").write_text("name: transcribe\nruntime: python\n")
    (tmp_path / "stacks" / "Pulumi.lab.yaml").write_text(yaml.safe_dump({"config": {
        "aws:region": "eu-west-1", "transcribe:audioBucket": "transcribe-audio",
        "transcribe:backupsBucket": "transcribe-backups", "transcribe:namespace": "transcribe",
        "transcribe:production": False, "transcribe:gpuMaxSize": gpus}}))
    return tmp_path


@pytest.mark.parametrize("worker, gpus, need", [
    ("{gpu: true, replicas: 1}", 2, 6),                                     # default max 3 x replicas: staging's case
    ("{gpu: true, replicas: 3}", 8, 18),                                    # production's case
    ("{gpu: true, replicas: 3, autoscaling: {max_replicas: 4}}", 7, 8),     # 4 per color, both colors
    ("{gpu: true, replicas: 1, autoscaling: {max_replicas: 2}, resources: {limits: {nvidia.com/gpu: 2}}}", 6, 8),
    ("{gpu: true, replicas: 4, autoscaling: {enabled: false}}", 6, 8),     # no autoscaler: worker.replicas per color
])
def test_a_gpu_pool_smaller_than_a_deploy_needs_is_refused_in_one_line(runner, tmp_path, monkeypatch,
                                                                       worker, gpus, need):
    _root(tmp_path, monkeypatch, worker, gpus)
    project = load_project(tmp_path)
    env = project.env("lab")
    with pytest.raises(UsageError, match=f"gpuMaxSize={gpus}.* needs {need} GPUs.* raise gpuMaxSize to {need}"):
        tg.check_consistency(tg.target(project, env), env)
    result = runner.invoke(app, ["render", "--env", "lab"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and f"raise gpuMaxSize to {need}" in result.stderr, result.stderr


def test_bring_up_and_the_dry_run_refuse_before_any_request(tmp_path, monkeypatch):
    """A deploy that cannot fit stops before it changes anything (no cluster is even reached),
    and its dry run's manifests are refused alike."""
    from opsctl.deploy.drivers.kubernetes import KubernetesDriver
    from opsctl.deploy.model import Release

    _root(tmp_path, monkeypatch, "{gpu: true, replicas: 2}", 4)
    project = load_project(tmp_path)
    driver = KubernetesDriver(project, project.env("lab"))
    with pytest.raises(UsageError, match="raise gpuMaxSize to 12 or lower worker.autoscaling.max_replicas to 2"):
        driver.bring_up("green", Release.parse("reg/w:2", []), 5)
    with pytest.raises(UsageError, match="raise gpuMaxSize to 12"):
        driver.render(Release.parse("reg/w:2", []), "green")
    assert driver._client is None


@pytest.mark.parametrize("worker, gpus", [
    ("{gpu: true, replicas: 1}", 6),
    ("{gpu: true, replicas: 3, autoscaling: {max_replicas: 4}}", 8),
    ("{gpu: false, replicas: 3}", 1),  # no GPU asked: the pool does not limit the worker
    ("{gpu: true, replicas: 2, autoscaling: {enabled: false}}", 4),  # not 3 x replicas: no autoscaler
])
def test_a_gpu_pool_that_fits_passes(runner, tmp_path, monkeypatch, worker, gpus):
    _root(tmp_path, monkeypatch, worker, gpus)
    project = load_project(tmp_path)
    env = project.env("lab")
    tg.check_consistency(tg.target(project, env), env)
    assert runner.invoke(app, ["render", "--env", "lab"]).exit_code == 0


def _shipped(tmp_path, monkeypatch, worker: str, stack_edit=None) -> None:
    """An ops root with this repository's Pulumi program and staging stack (g5.xlarge, g6.xlarge,
    gpuMaxSize 6), `stack_edit` applied to the stack file."""
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    shutil.copytree(REPO / "stacks", tmp_path / "stacks", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    stack = tmp_path / "stacks" / "Pulumi.staging.yaml"
    stack.write_text((stack_edit or str)((REPO / "stacks" / "Pulumi.staging.yaml").read_text()))
    (tmp_path / "opsctl.yaml").write_text(
        f"version: 1\nenvironments:\n  staging:\n    platform: kubernetes\n    worker: {worker}\n")


def _refused(runner, message: str) -> None:
    result = runner.invoke(app, ["render", "--env", "staging"])
    assert result.exit_code == 2, result.output[-300:]
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def _without_key(key: str):
    return lambda text: "\n".join(line for line in text.splitlines() if key not in line) + "\n"


@pytest.mark.parametrize("worker, need", [
    ("{gpu: true, replicas: 2, autoscaling: {max_replicas: 6}}", 12),
    ("{gpu: true, replicas: 2, autoscaling: {enabled: false}}", 4),
])
def test_a_stack_without_gpumaxsize_is_checked_at_the_programs_default(runner, tmp_path, monkeypatch, worker, need):
    """BREAKER23b #6: the program's NodePool holds defaults.GPU_MAX_SIZE GPUs when the key is unset."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_defaults", REPO / "stacks" / "transcribe_infra" / "defaults.py")
    defaults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defaults)
    _shipped(tmp_path, monkeypatch, worker, _without_key("gpuMaxSize"))
    _refused(runner, f"gpuMaxSize={defaults.GPU_MAX_SIZE} (the program's default: unset)")
    assert f"needs {need} GPUs" in runner.invoke(app, ["render", "--env", "staging"]).stderr
    _shipped(tmp_path, monkeypatch, "{gpu: true, replicas: 1, autoscaling: {max_replicas: 1}}",
             _without_key("gpuMaxSize"))
    assert runner.invoke(app, ["render", "--env", "staging"]).exit_code == 0  # 2 x 1 fits the default 2


@pytest.mark.parametrize("gpus, stack_edit", [
    (2, None),  # g5.xlarge, g6.xlarge: 1 GPU each
    (2, _without_key("gpuInstanceTypes")),  # the program's default types
    (5, lambda text: text.replace("[g5.xlarge, g6.xlarge]", "[g5.xlarge, g5.12xlarge]")),  # 4 at most
])
def test_a_pod_asking_more_gpus_than_any_listed_instance_has_is_refused(runner, tmp_path, monkeypatch, gpus, stack_edit):
    """BREAKER23b #7: no node Karpenter may launch holds the pod: Pending for ever, whatever gpuMaxSize."""
    _shipped(tmp_path, monkeypatch, "{gpu: true, replicas: 1, autoscaling: {max_replicas: 1}, "
                                    f"resources: {{limits: {{nvidia.com/gpu: {gpus}}}}}}}", stack_edit)
    _refused(runner, f"is {gpus} GPUs per pod, but the largest of transcribe:gpuInstanceTypes")


def test_a_pod_that_fits_a_larger_listed_instance_passes(runner, tmp_path, monkeypatch):
    _shipped(tmp_path, monkeypatch, "{gpu: true, replicas: 1, autoscaling: {max_replicas: 1}, "
                                    "resources: {limits: {nvidia.com/gpu: 4}}}",
             lambda text: text.replace("[g5.xlarge, g6.xlarge]", "[g5.xlarge, g5.12xlarge]").replace(
                 "gpuMaxSize: 6", "gpuMaxSize: 8"))
    assert runner.invoke(app, ["render", "--env", "staging"]).exit_code == 0


def test_every_instance_type_the_shipped_stacks_allow_has_a_gpu_count():
    """The program refuses a type the table lacks (gpu.py), so opsctl can always judge a pod."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_defaults", REPO / "stacks" / "transcribe_infra" / "defaults.py")
    defaults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defaults)
    for name in ("staging", "production"):
        types = yaml.safe_load((REPO / "stacks" / f"Pulumi.{name}.yaml").read_text())["config"].get(
            "transcribe:gpuInstanceTypes", defaults.GPU_INSTANCE_TYPES)
        assert all(defaults.GPUS_PER_INSTANCE_TYPE.get(t, 0) >= 1 for t in types), (name, types)


@pytest.mark.parametrize("worker", [
    "{gpu: false, replicas: 4, resources: {limits: {nvidia.com/gpu: 1}}}",
    "{gpu: false, replicas: 1, resources: {requests: {nvidia.com/gpu: 1}, limits: {nvidia.com/gpu: 1}}}",
])
def test_a_gpu_limit_on_a_worker_without_gpu_is_refused(runner, tmp_path, monkeypatch, worker):
    """BREAKER23b #8: the pods would ask for GPUs with no toleration of the GPU nodes' taint."""
    _shipped(tmp_path, monkeypatch, worker)
    _refused(runner, "but gpu is false")


def test_gpu_demand_counts_the_limit_whatever_worker_gpu_says():
    from opsctl.config import Environment

    env = Environment.model_validate({"name": "x", "platform": "kubernetes", "worker": {"gpu": True, "replicas": 2,
                                      "autoscaling": {"enabled": False}, "resources": {"limits": {"nvidia.com/gpu": 2}}}})
    assert tg.gpu_demand(env) == (2, 2.0)
    # gpu false with a GPU limit is refused at load; were it let through, the GPUs still count
    env = env.model_copy(update={"worker": env.worker.model_copy(update={"gpu": False})})
    assert tg.gpu_demand(env) == (2, 2.0)
    env = env.model_copy(update={"worker": env.worker.model_copy(update={"resources": {}})})
    assert tg.gpu_demand(env) == (0, 0.0)  # no GPU asked: nothing to hold


@pytest.mark.parametrize("value", ['"six"', "2.5", "-1", "true", "[6]"])
def test_a_gpumaxsize_that_is_not_a_whole_number_is_one_line_exit_2(runner, tmp_path, monkeypatch, value):
    """BREAKER23b #9: int('six') was a ValueError traceback, exit 1."""
    _shipped(tmp_path, monkeypatch, "{gpu: true}", lambda text: text.replace("gpuMaxSize: 6", f"gpuMaxSize: {value}"))
    _refused(runner, "not a whole number of GPUs")


def test_an_explicit_zero_gpumaxsize_is_read_as_zero_not_the_default(runner, tmp_path, monkeypatch):
    """Breaker 45 F7's review: `gpuMaxSize: 0` was read here as the program's default (Pulumi's
    old `or` reading), while the program now refuses 0: the line names the 0 the file holds."""
    _shipped(tmp_path, monkeypatch, "{gpu: true}", lambda text: text.replace("gpuMaxSize: 6", "gpuMaxSize: 0"))
    _refused(runner, "gpuMaxSize=0, but")
