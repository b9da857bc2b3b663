"""A command started with stdout closed (`>&-`) whose output went there fails (P12): it
exited 0 and the output was lost without a word (`opsctl backup list --json >&-`, a script
then working from nothing), where `>/dev/full` gave exit 1 and one line. Now exit 1 and one
line on stderr saying the output could not be written. A command that writes nothing on
stdout (files written with --out) exits by its own result, and a closed stderr stays quiet.

The installed `opsctl` is run in a child whose descriptor is closed before it starts, as a
shell's `>&-` does (the CLI's own stream handling is what is tested: CliRunner replaces the
streams)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

OPSCTL = Path(sys.executable).parent / "opsctl"


def _run(args: list[str], cwd: Path, *closed: int) -> subprocess.CompletedProcess:
    """`opsctl args` with the descriptors `closed` closed; what is still open is captured."""
    def close() -> None:
        for fd in closed:
            os.close(fd)

    return subprocess.run([str(OPSCTL), *args], cwd=cwd, timeout=60, preexec_fn=close,
                          stdout=subprocess.DEVNULL if 1 in closed else subprocess.PIPE,
                          stderr=subprocess.DEVNULL if 2 in closed else subprocess.PIPE, text=True)


@pytest.fixture
def root(tmp_path) -> Path:
    """An ops root made by `opsctl init`, with two kubernetes environments for `render ci`."""
    made = subprocess.run([str(OPSCTL), "init", str(tmp_path / "ops")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    config = tmp_path / "ops" / "opsctl.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["environments"].update(staging={"platform": "kubernetes"}, production={"platform": "kubernetes"})
    config.write_text(yaml.safe_dump(doc))
    return tmp_path / "ops"


@pytest.mark.parametrize("args", [["version"], ["version", "--json"], ["config", "show", "--json"],
                                  ["config", "show"]])
def test_output_to_a_closed_stdout_fails_with_one_line(root, args):
    done = _run(["--root", str(root), *args], root, 1)
    lines = done.stderr.splitlines()
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("opsctl: error: "), done.stderr
    assert "could not be written" in lines[0] and "stdout closed" in lines[0], lines
    # the same command with stdout open: it works and prints (the failure is the closed stream's)
    assert _run(["--root", str(root), *args], root).returncode == 0


def test_a_command_that_writes_nothing_on_stdout_exits_by_its_result(root):
    """`render ci --out` writes a file and prints nothing: exit 0, the file written, nothing
    said; a command that fails on its own keeps its own code and line."""
    from opsctl.ci import NEEDS

    for name in NEEDS:  # what the workflow's jobs use, else render ci warns (and says more)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).mkdir() if name.startswith("runbooks/") else (root / name).touch()
    done = _run(["--root", str(root), "render", "ci", "--out", str(root / "deploy.yml")], root, 1)
    assert done.returncode == 0 and done.stderr == f"wrote {root / 'deploy.yml'}\n", (done.returncode, done.stderr)
    assert "jobs:" in (root / "deploy.yml").read_text()

    failed = _run(["--root", str(root / "nowhere"), "status"], root, 1)
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.splitlines() == [f"opsctl: error: {root / 'nowhere'} holds no opsctl.yaml; run "
                                          f"'opsctl init {root / 'nowhere'}' to create one"], failed.stderr


def test_a_closed_stderr_stays_quiet(root):
    """Logs and errors are not the result: with only stderr closed the command exits by its
    result; with both closed, output lost still fails (exit 1) with nothing to say it on."""
    alone = _run(["--root", str(root), "version", "--json"], root, 2)
    assert alone.returncode == 0 and '"opsctl"' in alone.stdout, alone
    both = _run(["--root", str(root), "version"], root, 1, 2)
    assert both.returncode == 1, both
