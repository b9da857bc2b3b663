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
