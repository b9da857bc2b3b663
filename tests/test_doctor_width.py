"""`opsctl doctor` and `opsctl version` at 80 columns and without a TTY (CliRunner: no
terminal): no value is cut with '…', a path and a fix command stand whole on one line, where
they can be copied (breaker 37 G9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsctl.cli import app

# 70 characters: wider than the old table's detail column, narrow enough for a line of 80
CADDY = Path("/opt/opsctl-doctor-test/a-long-folder-for-the-tools/bin/of-this/caddy")


@pytest.fixture(autouse=True)
def fresh_consoles(monkeypatch):
    """opsctl.output makes its Consoles once per process and Rich reads COLUMNS then: made
    afresh here, each command is laid out at the width its test gives."""
    import opsctl.output

    for name in ("stdout", "stderr"):
        monkeypatch.delitem(vars(opsctl.output), name, raising=False)


@pytest.fixture
def doctor_run(runner, monkeypatch):
    """`opsctl doctor` with caddy found at CADDY and no pulumi on PATH (so its fix is shown)."""
    from opsctl import doctor

    monkeypatch.setattr(doctor.binaries, "caddy", lambda: CADDY)
    monkeypatch.setenv("PATH", "/nonexistent")
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "80"})
    assert result.exit_code in (0, 1), result.output
    return result


def test_doctor_cuts_no_value_at_80_columns(doctor_run):
    out = doctor_run.stdout
    assert "…" not in out, out
    # a line is longer only to hold one word whole (a path wider than the room: copyable)
    assert all(len(line.rstrip()) <= 80 or len(line.split()) <= 2 for line in out.splitlines()), out
    assert not any(line.endswith(" ") for line in out.splitlines()), out  # no padding to the width
    for name in ("python", "caddy", "pulumi CLI", "kube context", "aws credentials", "whisper model"):
        assert name in out, name


def test_doctor_shows_a_path_and_the_fix_command_whole_on_one_line(doctor_run):
    lines = doctor_run.stdout.splitlines()
    assert any(str(CADDY) in line for line in lines), doctor_run.stdout
    # copyable whole: the command on one line, not wrapped after '-fsSL' or cut after 'pulumi.'
    assert any("curl -fsSL https://get.pulumi.com | sh" in line for line in lines), doctor_run.stdout
    assert any("aws eks update-kubeconfig --name CLUSTER" in line for line in lines), doctor_run.stdout


def test_doctor_json_fix_is_the_command_alone(runner, monkeypatch):
    """What the fix is for goes in the detail, so the fix can be pasted into a shell as is."""
    import json

    monkeypatch.setenv("PATH", "/nonexistent")
    checks = {c["name"]: c for c in json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)["checks"]}
    assert checks["pulumi CLI"]["fix"] == "curl -fsSL https://get.pulumi.com | sh"
    assert "opsctl infra" in checks["pulumi CLI"]["detail"]


def test_version_cuts_no_library_name_in_a_narrow_pane(runner):
    from opsctl.about import versions

    result = runner.invoke(app, ["version"], env={"COLUMNS": "32"})  # a narrow split pane
    assert result.exit_code == 0 and "…" not in result.stdout, result.stdout
    for name, ver in versions()["libraries"].items():
        assert name in result.stdout and (ver or "not installed") in result.stdout, name
