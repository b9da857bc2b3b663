"""Helpers of the load test tests: run the CLI against the session's embedded platform."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsctl.cli import app
from opsctl.local import procs


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


@pytest.fixture
def http_server(tmp_path):
    """A target that answers (so a run would really start): /healthz 200, the rest 404."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "healthz").write_text('{"status": "ok"}')  # the worker's liveness answer
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.wait_until(lambda: procs.port_open(port), 20, "http.server")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
