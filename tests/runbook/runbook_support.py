"""What the runbook tests share: writing a runbook version into an ops root, and running
one through the front door (`opsctl runbook run`)."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

from opsctl.cli import app


def write_runbook(root: Path, name: str, version: int, text: str) -> Path:
    """`text` (dedented) as runbooks/<name>/v<version>.yaml under `root`; returns the path."""
    path = root / "runbooks" / name / f"v{version}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))
    return path


def run_runbook(runner, *args: str, exit_code: int = 0) -> dict:
    """`opsctl runbook run ARGS --json`: asserts the exit code (0 succeeded, 1 a step failed)
    and that stdout is one JSON document; returns it (run_id, status, steps...)."""
    result = runner.invoke(app, ["runbook", "run", *args, "--json"])
    assert result.stdout.strip(), result.output
    doc = json.loads(result.stdout)
    assert result.exit_code == exit_code, (result.exit_code, doc.get("status"),
                                           [(s["id"], s["status"], s["detail"]) for s in doc.get("steps", [])])
    return doc


def run_refused(runner, *args: str) -> str:
    """`opsctl runbook run ARGS` refused before any step: exit 2 and one line, never a
    traceback; returns that line."""
    result = runner.invoke(app, ["runbook", "run", *args])
    line = result.output.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1 and "Traceback" not in line, result.output
    return line
