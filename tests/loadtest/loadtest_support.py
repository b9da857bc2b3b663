"""Helpers of the load test tests: run the CLI against the session's embedded platform."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsctl.cli import app


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict:
        return json.loads(self.stdout)


def opsctl(root: Path, *args: str) -> Outcome:
    result = CliRunner().invoke(app, ["--root", str(root), *args])
    return Outcome(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("loadtest-reports")
