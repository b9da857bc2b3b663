"""Bad input is one clear line and exit 2, found before any load is sent."""

from __future__ import annotations

import socket

import pytest

from loadtest_support import opsctl


def _one_line(outcome) -> str:
    assert outcome.code == 2, (outcome.stdout, outcome.stderr)
    assert outcome.stdout == ""
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opsctl: error: "), outcome.stderr
    assert "Traceback" not in outcome.stderr
    return lines[0]


def test_unknown_profile(ops_root):
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--profile", "gigantic"))
    assert "unknown profile 'gigantic'" in line and "light, medium, heavy, stress" in line


def test_malformed_slo_names_the_term(ops_root):
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--slo", "p95<2000ms,error_rate<<5%"))
    assert "bad term 'error_rate<<5%'" in line


def test_bad_duration(ops_root):
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--duration", "5 minutes", "--host", "http://127.0.0.1:9"))
    assert "'5 minutes' is not a duration" in line


def test_unreachable_host(ops_root):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--host", f"http://127.0.0.1:{port}"))
    assert f"cannot reach http://127.0.0.1:{port}" in line and "connection refused" in line


def test_local_platform_never_started(ops_root):
    line = _one_line(opsctl(ops_root, "loadtest", "run", "-t", "5s"))
    assert "opsctl local up" in line


def test_not_a_url(ops_root):
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--host", "127.0.0.1:8080"))
    assert "is not an http(s) URL" in line


def test_compare_unknown_run(ops_root):
    line = _one_line(opsctl(ops_root, "loadtest", "compare", "nope", "latest"))
    assert "no load test runs saved" in line


@pytest.mark.integration
def test_unknown_user_class(local_platform):
    line = _one_line(opsctl(local_platform.root, "loadtest", "run", "--classes", "AdminUser,RobotUser", "-t", "3s"))
    assert "RobotUser" in line and "AdminUser, ChunkedUploadUser, StressUser, TranscriptionUser" in line


def test_malformed_classes(ops_root):
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--classes", "AdminUser=zero"))
    assert "--classes: bad term 'AdminUser=zero'" in line


def test_a_csv_prefix_too_long_for_locusts_file_names_is_refused(ops_root):
    # PREFIX_stats_history.csv is the longest name Locust writes, after the run
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--host", "http://127.0.0.1:9", "--csv", "p" * 245))
    assert "--csv" in line and "longer than" in line


@pytest.mark.parametrize("value, said", [
    ("[1, 2", "line 4: expected ',' or ']'"),  # syntax: where the parser gave up
    ("2026-02-30", "line 3: the value 2026-02-30 can't be read: day is out of range"),  # parsed, not buildable
])
def test_unreadable_profiles_file_is_one_line(ops_root, value, said):
    (ops_root / "loadtests").mkdir()
    (ops_root / "loadtests" / "profiles.yaml").write_text(f"profiles:\n  light:\n    users: {value}\n")
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--profile", "light"))
    assert "profiles.yaml: not valid YAML" in line and said in line, line


@pytest.mark.parametrize("text", ["hello\n", "version: 1\nprofiles: [1, 2]\n", "profiles:\n  light: [1]\n"])
def test_a_profiles_file_of_the_wrong_shape_is_one_line(ops_root, text):
    """Breaker 38 H5: 'unexpected AttributeError' for a profiles.yaml holding a word or a list."""
    import shutil
    from pathlib import Path

    shutil.copytree(Path(__file__).resolve().parents[2] / "loadtests", ops_root / "loadtests")
    (ops_root / "loadtests" / "profiles.yaml").write_text(text)
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--profile", "light", "--host", "http://127.0.0.1:9"))
    assert "profiles.yaml" in line and "unexpected" not in line, line


def test_a_locustfile_that_is_not_utf8_is_one_line(ops_root):
    """Breaker 38 H5: `render locust` ended in 'unexpected UnicodeDecodeError'."""
    import shutil
    from pathlib import Path

    shutil.copytree(Path(__file__).resolve().parents[2] / "loadtests", ops_root / "loadtests")
    with open(ops_root / "loadtests" / "locustfile.py", "ab") as f:
        f.write(b"# \xff\xfe garbage \x80\n")
    (ops_root / "opsctl.yaml").write_text("version: 1\nenvironments:\n  staging: {platform: kubernetes}\n")
    line = _one_line(opsctl(ops_root, "render", "locust", "--env", "staging"))
    assert "locustfile.py: byte" in line and "is not UTF-8" in line, line


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_a_list_limit_below_one_is_refused(ops_root, limit):
    """Reviewer 39 R12: --limit 0 or below listed one run."""
    line = _one_line(opsctl(ops_root, "loadtest", "list", "--limit", limit))
    assert "--limit" in line, line


@pytest.mark.parametrize("field, value", [("users", "yes"), ("spawn_rate", "on"), ("users", '"3"'), ("users", "2.5")])
def test_a_profile_number_that_is_no_number_is_one_line(ops_root, field, value):
    """Breaker 44 T6: `users: yes` (YAML's boolean) ran a 1-user test that passed its gate."""
    import shutil
    from pathlib import Path

    shutil.copytree(Path(__file__).resolve().parents[2] / "loadtests", ops_root / "loadtests")
    spec = {"users": "3", "spawn_rate": "1", "duration": "5s", field: value}
    (ops_root / "loadtests" / "profiles.yaml").write_text(
        "profiles:\n  light:\n" + "".join(f"    {k}: {v}\n" for k, v in spec.items()))
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--profile", "light", "--host", "http://127.0.0.1:9"))
    assert f"profiles.light: missing or bad {field}" in line and "write a number" in line, line
