"""The CLI conventions: help, exit codes, one-line errors, JSON on stdout, version, doctor."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from opsctl.cli import app

GROUPS = ["infra", "deploy", "promote", "rollback", "status", "render", "backup", "restore",
          "health", "loadtest", "runbook", "local", "doctor", "version"]


def test_help_lists_every_command_group(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for group in GROUPS:
        assert f" {group} " in result.output, group


def test_unknown_command_is_one_line_exit_2(runner):
    result = runner.invoke(app, ["deploi"])
    assert result.exit_code == 2
    assert result.output.strip() == "opsctl: error: No such command 'deploi'. Did you mean 'deploy'? (see 'opsctl --help')"


def test_unknown_option_is_one_line_exit_2(runner):
    result = runner.invoke(app, ["version", "--jsn"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "opsctl: error: No such option: --jsn (Possible options: --json) (see 'opsctl version --help')"]


def test_bad_log_format(runner):
    result = runner.invoke(app, ["--log-format", "xml", "version"])
    assert result.exit_code == 2
    assert "--log-format must be 'text' or 'json'" in result.output


def test_version_json_is_one_document(runner):
    result = runner.invoke(app, ["version", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["opsctl"] == __import__("opsctl").__version__
    assert doc["python"].startswith("3.")
    assert doc["libraries"]["typer"]


def test_doctor_json_reports_every_check_with_a_fix(runner):
    result = runner.invoke(app, ["doctor", "--json"])
    doc = json.loads(result.stdout)
    names = {c["name"] for c in doc["checks"]}
    assert {"python", "pg_dump", "pg_restore", "psql", "redis-server", "caddy", "whisper model",
            "aws credentials", "kube context", "pulumi CLI"} <= names
    for check in doc["checks"]:
        assert check["ok"] or check["fix"], check
    assert result.exit_code == (0 if doc["ok"] else 1)


def test_doctor_names_missing_pulumi_with_install_hint(runner, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    doc = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    pulumi = next(c for c in doc["checks"] if c["name"] == "pulumi CLI")
    assert not pulumi["ok"] and "get.pulumi.com" in pulumi["fix"] and not pulumi["required"]


def test_console_script_maps_errors_to_exit_codes(tmp_path):
    (tmp_path / "opsctl.yaml").write_text("environments:\n  x: {platform: mars}\n")
    proc = subprocess.run([sys.executable, "-m", "opsctl", "config", "show"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "environments.x.platform" in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "opsctl", "--debug", "config", "show"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_log_format_json_writes_json_lines_to_stderr(tmp_path):
    code = ("import logging, opsctl.output as o; o.setup_logging('json');"
            "logging.getLogger('opsctl.test').info('hello', extra={'fields': {'n': 1}})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    doc = json.loads(proc.stderr)
    assert doc["message"] == "hello" and doc["level"] == "info" and doc["n"] == 1


def test_confirm_refuses_without_yes_in_ci(monkeypatch):
    from opsctl.cli.common import confirm
    from opsctl.errors import UsageError

    monkeypatch.setenv("CI", "true")
    with pytest.raises(UsageError, match="pass --yes"):
        confirm("destroy production", yes=False)
    confirm("destroy production", yes=True)


def test_to_jsonable_keeps_the_json_forms_of_results():
    """opsctl.output.to_jsonable is pydantic_core's to_jsonable_python: the JSON every
    `--json` printed before it (hand-written walker) comes out the same."""
    import dataclasses
    import datetime as dt
    import enum
    import math
    from pathlib import Path

    from opsctl.config import Environment
    from opsctl.health.model import CheckResult, Status
    from opsctl.output import to_jsonable

    class Color(enum.StrEnum):
        BLUE = "blue"

    class Kind(enum.Enum):
        FULL = "full"

    @dataclasses.dataclass
    class Result:
        id: str
        color: Color
        kind: Kind
        path: Path
        day: dt.date
        at: dt.datetime
        parts: tuple
        tags: frozenset
        sizes: dict
        env: Environment
        ratio: float = math.inf
        _ctx: dict = dataclasses.field(default_factory=dict, repr=False)

    env = Environment(name="staging", platform="local")
    doc = to_jsonable(Result("20260101T020000Z-1a2b", Color.BLUE, Kind.FULL, Path("/srv/backups"),
                             dt.date(2026, 1, 1), dt.datetime(2026, 1, 1, 2, 0, 0, 500), (1, "a"),
                             frozenset({"db"}), {1: "x", Color.BLUE: [Path("a")]}, env))
    assert doc == {"id": "20260101T020000Z-1a2b", "color": "blue", "kind": "full", "path": "/srv/backups",
                   "day": "2026-01-01", "at": "2026-01-01T02:00:00.000500", "parts": [1, "a"], "tags": ["db"],
                   "sizes": {"1": "x", "blue": ["a"]}, "env": env.model_dump(mode="json"), "ratio": math.inf,
                   "_ctx": {}}
    # pydantic models: field names, as model_dump(mode="json")
    assert to_jsonable(env) == env.model_dump(mode="json")
    # dataclasses nested in results: their fields, an IntEnum as its number
    check = CheckResult(name="db", kind="postgres", status=Status.CRITICAL, message="down")
    assert to_jsonable({"checks": [check]})["checks"][0]["status"] == int(Status.CRITICAL)
    # the fallback: a type pydantic_core does not know becomes its text

    class Opaque:
        def __str__(self) -> str:
            return "opaque thing"

    assert to_jsonable([Opaque()]) == ["opaque thing"]
    json.dumps(to_jsonable(env))  # one JSON document


def test_config_show_json_is_the_environment_with_defaults(runner, tmp_path, monkeypatch):
    from opsctl.config import load_project

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config", "show", "--env", "local", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == load_project(start=tmp_path).env("local").model_dump(mode="json")
