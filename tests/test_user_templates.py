"""Templates an ops root overrides (`<root>/templates/`) are the user's text: a fault in one is
one line naming the template, exit 2, for every command that renders (reviewer 39 R5: a stray
byte or a Jinja syntax error ended `render` and `deploy` on "unexpected ..."; a key given twice
in an overridden manifest was silently merged, the later one applied)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from opsctl.cli import app

REPO = Path(__file__).resolve().parent.parent

COMMANDS = {
    "kubernetes/worker-deployment.yaml.j2": ["render", "manifests", "--env", "staging"],
    "ci/github-actions.yml.j2": ["render", "ci"],
    "monitoring/alert-rules.yml.j2": ["render", "monitoring", "--env", "staging"],
}


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    shutil.copy(REPO / "opsctl.yaml", tmp_path / "opsctl.yaml")
    monkeypatch.chdir(tmp_path)
    for var in ("OPSCTL_ROOT", "OPSCTL_ENV"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _override(root: Path, name: str, data: bytes) -> None:
    path = root / "templates" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _one_line_exit_2(result, *wanted: str) -> str:
    line = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert line.count("\n") == 0 and "unexpected" not in line and "Traceback" not in result.output, line
    for w in wanted:
        assert w in line, line
    return line


@pytest.mark.parametrize("name", COMMANDS)
def test_the_shipped_template_renders_from_an_override(runner, root, name):
    """The override is read: the shipped text copied in renders as before (so the faults
    below are the override's, not a missing file's)."""
    _override(root, name, (REPO / "templates" / name).read_bytes())
    assert runner.invoke(app, COMMANDS[name]).exit_code == 0


@pytest.mark.parametrize("name", COMMANDS)
def test_a_template_that_is_not_utf8_is_one_line(runner, root, name):
    _override(root, name, (REPO / "templates" / name).read_bytes() + b"\n# caf\xe9 \xff\n")
    _one_line_exit_2(runner.invoke(app, COMMANDS[name]), name, "not UTF-8", "0xe9")


@pytest.mark.parametrize("name", COMMANDS)
def test_a_jinja_syntax_error_is_one_line_with_its_line(runner, root, name):
    text = (REPO / "templates" / name).read_bytes()
    _override(root, name, text + b"\n{% if %}\n")
    line = _one_line_exit_2(runner.invoke(app, COMMANDS[name]), name, "Jinja syntax")
    lines = text.count(b"\n") + 2  # the `{% if %}` line
    assert f"line {lines}" in line


def test_a_jinja_runtime_fault_is_one_line(runner, root):
    name = "ci/github-actions.yml.j2"
    _override(root, name, b"{{ range(10) | join(1, 2, 3) }}\n")
    _one_line_exit_2(runner.invoke(app, COMMANDS[name]), name)


def test_an_included_template_missing_is_named(runner, root):
    name = "ci/github-actions.yml.j2"
    _override(root, name, b'{% include "ci/nowhere.j2" %}\n')
    _one_line_exit_2(runner.invoke(app, COMMANDS[name]), name, "ci/nowhere.j2", "not found")


def test_a_key_given_twice_in_an_overridden_manifest_is_refused(runner, root):
    """Kubernetes would apply the later `resources:`; the author meant one of them."""
    name = "kubernetes/worker-deployment.yaml.j2"
    text = (REPO / "templates" / name).read_text()
    assert "\n  replicas:" in text
    _override(root, name, text.replace("\n  replicas:", "\n  minReadySeconds: 5\n  minReadySeconds: 10\n  replicas:",
                                       1).encode())
    line = _one_line_exit_2(runner.invoke(app, COMMANDS[name]), "templates/kubernetes", "duplicate key",
                            "minReadySeconds")
    assert "invalid YAML" in line


@pytest.mark.parametrize("name", ["ci/github-actions.yml.j2", "monitoring/alert-rules.yml.j2"])
def test_a_key_given_twice_in_other_rendered_yaml_is_refused(runner, root, name):
    _override(root, name, b"groups: []\nname: a\nname: b\n")
    _one_line_exit_2(runner.invoke(app, COMMANDS[name]), name, "duplicate key name", "line 3")


def test_ci_that_renders_broken_yaml_is_one_line(runner, root):
    name = "ci/github-actions.yml.j2"
    _override(root, name, b"on: [push\njobs: {}\n")
    _one_line_exit_2(runner.invoke(app, COMMANDS[name]), name, "invalid YAML")
