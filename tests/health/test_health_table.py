"""The sweep table at 80 columns without a TTY (CI logs): check names, statuses, values and
durations whole, on one line each; only the message wraps (issue 21)."""

from __future__ import annotations

import re

import yaml
from typer.testing import CliRunner

from opsctl.cli import app
from tests.health.servers import ScriptedServer


def test_sweep_table_keeps_names_statuses_and_figures_whole_at_80_columns(tmp_path):
    target = ScriptedServer([503] * 4)
    names = ["storage-gateway-eu-west-1-readiness", "billing-api"]
    try:
        long_conditions = ["[STATUS] == 200", "[BODY].status == ready", "[BODY].components.database == ok"]
        (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
            "platform": "kubernetes", "health": {"http": [
                {"name": n, "url": f"{target.url}/readyz", "conditions": long_conditions} for n in names]}}}}))
        out = CliRunner().invoke(app, ["--root", str(tmp_path), "health", "--env", "ci", "--check", "*-*",
                                       "--check", "billing-api"], env={"COLUMNS": "80"})
    finally:
        target.close()
    assert out.exit_code == 2, out.output
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, out.stdout
    assert "…" not in out.stdout
    for name in names:
        (row,) = [line for line in lines if name in line]
        assert re.search(rf"{re.escape(name)}\s+CRITICAL\s+\d+(\.\d+)? ms\s", row), row
        assert re.search(r"\s\d+$", row.rstrip()), row   # the duration, whole, at the end of its line
