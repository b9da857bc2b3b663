"""Fixtures of the `opsctl infra` tests: no pulumi CLI, and a copy of the ops root to change."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_pulumi(tmp_path, monkeypatch):
    """A PATH and PULUMI_HOME with no pulumi CLI in them, and no terminal (CI)."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))
    monkeypatch.setenv("CI", "true")
    return tmp_path


@pytest.fixture
def program_copy(tmp_path, monkeypatch):
    """An ops root holding a copy of opsctl.yaml and stacks/, to plant changes in."""
    root = tmp_path / "ops"
    root.mkdir()
    shutil.copy(REPO / "opsctl.yaml", root / "opsctl.yaml")
    shutil.copytree(REPO / "stacks", root / "stacks", ignore=shutil.ignore_patterns("__pycache__"))
    path, modules = list(sys.path), {k: v for k, v in sys.modules.items() if k.startswith("transcribe_infra")}
    yield root
    sys.path[:] = path  # the copy's transcribe_infra must not shadow the repository's for later tests
    for name in [k for k in sys.modules if k.startswith("transcribe_infra")]:
        del sys.modules[name]
    sys.modules.update(modules)
