"""`opsctl render monitoring --out DIR` follows the rule every report option follows
(files.report_path): nothing lands in an ops root's own places (breaker 65's note: `--out
runbooks`, `stacks`, `.git`, `.opsctl/local` wrote prometheus.yml, alert-rules.yml and
dashboards/ there with exit 0), and a refusal writes nothing at all."""

from __future__ import annotations

import pytest
import yaml

from opsctl.cli import app

STAGING = {"platform": "kubernetes", "aws": {"region": "eu-west-1"},
           "kubernetes": {"context": "transcribe-staging", "namespace": "transcribe"},
           "database": {"url_env": "STAGING_DATABASE_URL"}, "redis": {"url_env": "STAGING_REDIS_URL"},
           "buckets": {"audio": "transcribe-staging-audio", "backups": "transcribe-staging-backups"},
           "worker": {"image": "registry.example.com/worker:1.0.0"}}


@pytest.fixture
def project(ops_root):
    """The starter ops root with a kubernetes environment (whose files need no local platform)."""
    cfg = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    cfg["environments"]["staging"] = STAGING
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    return ops_root


@pytest.mark.parametrize("out", ["runbooks", "stacks", ".git", ".opsctl/local", "runbooks/monitoring"])
def test_an_ops_roots_own_places_are_refused_and_nothing_is_written(project, runner, out):
    ops_root = project
    for folder in ("runbooks", "stacks", ".git", ".opsctl/local"):
        (ops_root / folder).mkdir(parents=True, exist_ok=True)
    before = sorted(p.relative_to(ops_root) for p in ops_root.rglob("*"))
    result = runner.invoke(app, ["render", "monitoring", "--env", "staging", "--out", out])
    assert result.exit_code == 2, result.output
    line = " ".join(result.stderr.split())
    assert line.startswith("opsctl: error: --out ") and "would write into" in line, line
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.output
    assert sorted(p.relative_to(ops_root) for p in ops_root.rglob("*")) == before


def test_a_folder_of_the_users_own_is_written(project, runner):
    ops_root = project
    result = runner.invoke(app, ["render", "monitoring", "--env", "staging", "--out", "reports/monitoring"])
    assert result.exit_code == 0, result.output
    written = ops_root / "reports" / "monitoring"
    assert (written / "prometheus.yml").is_file() and (written / "alert-rules.yml").is_file()
    assert any((written / "dashboards").glob("*.json"))


def test_a_link_to_a_folder_that_does_not_exist_is_one_line(project, runner):
    """Breaker 66 G3: "unexpected FileExistsError", exit 1, from mkdir of a dangling link."""
    (project / "o7").symlink_to(project / "nowhere")
    result = runner.invoke(app, ["render", "monitoring", "--env", "staging", "--out", "o7"])
    assert result.exit_code == 2, result.output
    assert "is a link to" in result.stderr and "which does not exist" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (project / "nowhere").exists()
