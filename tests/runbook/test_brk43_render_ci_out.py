"""`render ci --out` (brk43 S8) never writes over the ops root's own files and folders
(symbolic links followed) nor a file it did not render, and says what it wrote."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(ops_root):
    for name in ("runbooks", "loadtests", "templates", "stacks"):
        shutil.copytree(REPO / name, ops_root / name)
    shutil.copy(REPO / "opsctl.yaml", ops_root / "opsctl.yaml")
    for name in ("Makefile", "pyproject.toml", "worker/Dockerfile"):  # what the workflow's jobs use
        (ops_root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, ops_root / name)
    return ops_root


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("out", ["opsctl.yaml", "runbooks/lock.json", "runbooks/new/v1.yaml", "templates/x.yml",
                                 "stacks/x.yml", "loadtests/locustfile.py", ".opsctl/health/silences-local.json",
                                 ".opsctl/runs/x.jsonl", "link.yml", "other.yml"])
def test_render_ci_refuses_the_roots_own_files(runner, root, out):
    (root / "link.yml").symlink_to(root / "opsctl.yaml")
    (root / "other.yml").write_text("name: hand-written\n")
    before = _snapshot(root)
    result = runner.invoke(app, ["render", "ci", "--out", out])
    line = result.output.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1 and "Traceback" not in line, result.output
    assert line.startswith(f"opsctl: error: --out {out} "), line
    assert _snapshot(root) == before
    assert not (root / "runbooks" / "new").exists() and not (root / ".opsctl").exists()
    assert runner.invoke(app, ["config", "show"]).exit_code == 0


def test_render_ci_says_what_it_wrote_and_replaces_its_own_render(runner, root):
    for _ in range(2):
        result = runner.invoke(app, ["render", "ci", "--out", ".github/workflows/deploy.yml"])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"wrote {root / '.github/workflows/deploy.yml'}", result.output
    assert "jobs:" in (root / ".github/workflows/deploy.yml").read_text()
