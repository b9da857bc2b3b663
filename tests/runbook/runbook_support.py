"""What the runbook tests share: writing a runbook version into an ops root."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent


def write_runbook(root: Path, name: str, version: int, text: str) -> Path:
    """`text` (dedented) as runbooks/<name>/v<version>.yaml under `root`; returns the path."""
    path = root / "runbooks" / name / f"v{version}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))
    return path
