"""`doctor` checks the backup repositories of the ops root `--root` selects, not the one
around the current directory (brk43 S5), and an unreadable one gets a fix that matches
the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[1]


def _rows(result) -> dict:
    assert result.exit_code in (0, 1), result.output
    return {c["name"]: c for c in json.loads(result.stdout)["checks"] if c["name"].startswith("backup repository")}


def test_doctor_uses_the_root_option(runner, ops_root, tmp_path_factory):
    here = tmp_path_factory.mktemp("repos")
    (ops_root / "opsctl.yaml").write_text(
        f'version: 1\nenvironments:\n  local:\n    platform: local\n    backup: {{repository: "file://{here}/A"}}\n')
    other = tmp_path_factory.mktemp("other")
    (other / "opsctl.yaml").write_text(
        f'version: 1\nenvironments:\n  local:\n    platform: local\n    backup: {{repository: "file://{here}/B"}}\n'
        f'  bee:\n    platform: local\n    backup: {{repository: "file://{here}/B2"}}\n')
    rows = _rows(runner.invoke(app, ["--root", str(other), "doctor", "--json"]))
    assert sorted(rows) == ["backup repository bee", "backup repository local"], rows
    assert f"file://{here}/B:" in rows["backup repository local"]["detail"], rows
    assert f"file://{here}/B2:" in rows["backup repository bee"]["detail"], rows


def test_an_unstarted_local_platform_gets_a_matching_fix(runner, ops_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("shipped")
    shutil.copy(REPO / "opsctl.yaml", root / "opsctl.yaml")
    rows = _rows(runner.invoke(app, ["--root", str(root), "doctor", "--json"]))
    row = rows["backup repository local"]
    assert "never started" in row["detail"], row
    assert "local up" in row["fix"] and "encrypted" not in row["fix"], row
