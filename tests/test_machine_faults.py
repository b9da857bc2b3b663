"""Faults of the machine or of an endpoint, not of opsctl: one line saying what was being
done and what to do about it, exit 1, never "unexpected ... (rerun with --debug)".

Found when a disk filled up under `backup create`: "opsctl: error: unexpected OSError:
[Errno 28] No space left on device (rerun with --debug for the traceback)" read like a bug
in opsctl and named no file. The repository's own writes are tried on a full volume in
tests/backup/test_full_disk.py.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from opsctl.cli import app
from opsctl.errors import OperationFailed, outside_fault
from opsctl.files import write_json, write_text
from tests.volumes import fill


def _one_line(result) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("opsctl: error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr  # logs may come first
    assert "unexpected" not in errors[0] and "--debug" not in errors[0] and "Traceback" not in result.output
    return errors[0]


def test_a_report_on_a_full_device_names_it(runner, tmp_path, monkeypatch):
    with pytest.raises(OperationFailed, match=r"^writing /dev/full: No space left on device; free space"):
        write_text(Path("/dev/full"), "<testsuites/>")
    (tmp_path / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {"e": {"platform": "kubernetes"}}}))
    monkeypatch.setenv("OPSCTL_ROOT", str(tmp_path))
    # the sweep's verdict stands, printed with its own exit code (a Nagios plugin's; breaker 34
    # F1: a report that could not be written turned CRITICAL into 1, WARNING); the fault is named
    result = runner.invoke(app, ["health", "--env", "e", "--check", "backup age", "--junit", "/dev/full", "--json"])
    assert result.exit_code == json.loads(result.stdout)["code"], result.output
    assert "the JUnit report was not written: writing /dev/full: No space left on device" in result.stderr, \
        result.stderr


def test_a_state_file_on_a_full_volume_keeps_its_previous_version_and_no_temporary(small_volume):
    state = write_json(small_volume / "state.json", {"version": 1})
    fill(small_volume)
    with pytest.raises(OperationFailed, match=f"^writing {state}: No space left on device"):
        write_json(state, {"version": 2, "pad": "x" * 8192})
    assert json.loads(state.read_text()) == {"version": 1}
    assert sorted(p.name for p in small_volume.iterdir()) == ["filler", "state.json"]


def test_no_credentials_for_the_audio_bucket_is_one_line(runner, tmp_path, monkeypatch):
    """botocore's own error (raised before any request: no retry to wait for), through the CLI."""
    (tmp_path / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {"e": {
        "platform": "kubernetes", "aws": {"endpoint_url": "http://127.0.0.1:9"},
        "backup": {"repository": f"file://{tmp_path / 'repo'}"}}}}))
    monkeypatch.setenv("OPSCTL_ROOT", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = _one_line(runner.invoke(app, ["backup", "create", "--env", "e", "--type", "files", "--no-encrypt"]))
    assert "Unable to locate credentials; check the environment's AWS endpoint" in line, line
    assert not [p for p in (tmp_path / "repo").rglob("*") if p.is_file() and "/20" in str(p)]  # nothing of it left


def test_only_faults_from_outside_are_worded_as_such():
    assert outside_fault(ValueError("a bug")) is None
    assert outside_fault(KeyError("a bug")) is None
    assert outside_fault(PermissionError(errno.EPERM, "Operation not permitted")) is None  # os.kill: no path
    assert outside_fault(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")) is None
    named = outside_fault(PermissionError(errno.EACCES, "Permission denied", "/srv/reports/x.xml"))
    assert str(named).startswith("/srv/reports/x.xml: Permission denied; give the user")
    assert "ulimit -n" in str(outside_fault(OSError(errno.EMFILE, "Too many open files")))


def test_init_and_a_silence_on_a_full_volume_name_their_file_and_leave_nothing(small_volume, runner, monkeypatch):
    """Breaker 33 B12, B13: `opsctl init` and `health silence` wrote their own temporaries:
    on a full volume they said "a file operation" and left an empty `.tmp` behind."""
    root = small_volume / "ops"
    root.mkdir()
    fill(small_volume)
    line = _one_line(runner.invoke(app, ["init", str(root)]))
    assert f"writing {root / 'opsctl.yaml'}: No space left on device" in line, line
    assert list(root.iterdir()) == []
    (small_volume / "filler").unlink()
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    monkeypatch.setenv("OPSCTL_ROOT", str(root))
    monkeypatch.setenv("CI", "true")
    assert runner.invoke(app, ["health", "silence", "--check", "redis", "--for", "30m"]).exit_code == 0
    state = sorted(p.relative_to(root) for p in root.rglob("*"))
    fill(small_volume)
    line = _one_line(runner.invoke(app, ["health", "silence", "--check", "postgres", "--for", "1h"]))
    assert "writing " in line and "silences" in line and "No space left on device" in line, line
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == state  # no temporary left


def test_an_s3_repository_without_credentials_is_the_environment_s_fault(runner, tmp_path, monkeypatch):
    """Breaker 33 B11: exit 2 (a usage error) and "check the S3 endpoint" for missing AWS
    credentials; the command was right, the environment was not."""
    (tmp_path / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {"e": {
        "platform": "kubernetes", "aws": {"endpoint_url": "http://127.0.0.1:9"},
        "backup": {"repository": "s3://backups/opsctl"}}}}))
    monkeypatch.setenv("OPSCTL_ROOT", str(tmp_path))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = _one_line(runner.invoke(app, ["backup", "list", "--env", "e"]))
    assert "s3://backups/opsctl is unreachable (Unable to locate credentials)" in line, line
    assert "the AWS credentials" in line, line
