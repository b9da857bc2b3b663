"""Bytes and keys of the YAML a person wrote (opsctl.yaml, runbooks), through the CLI (breaker 37).

G11: a file is decoded as YAML 1.2 says (UTF-8, or UTF-16/32 told by its first bytes), never
by the locale; bytes that are not text are one line naming the file, line and byte (exit 2).
G13: a key given twice in one mapping is refused (YAML 1.2 keys are unique); PyYAML kept the
later one, so a second `production:` silently dropped `protected: true`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsctl.cli import app
from opsctl.config import load_project
from opsctl.starter import starter_text
from tests.runbook.runbook_support import write_runbook

REPO = Path(__file__).resolve().parent.parent


def one_line_exit_2(runner, args: list[str]) -> str:
    """`opsctl ARGS` refused: exit 2, one line, neither a traceback nor an "unexpected" error."""
    result = runner.invoke(app, args)
    line = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(line.splitlines()) == 1 and "Traceback" not in line and "error: unexpected" not in line, \
        result.output
    return line


# --- G11: bytes that are not UTF-8 ---------------------------------------------------------

@pytest.mark.parametrize("data, said", [
    # the tester's file: 0xff 0xfe in the middle of line 2 (byte 20)
    (b"version: 1\nproject: \xff\xfe\nenvironments:\n  local: {platform: local}\n",
     "line 2: byte 20 (0xff) is not UTF-8 (invalid start byte); save the file as UTF-8"),
    # a Latin-1 editor's e-acute, in a comment on line 3
    (b"version: 1\nenvironments: {}\n# caf\xe9\n", "line 3: byte 33 (0xe9) is not UTF-8 (invalid continuation byte)"),
    # a multi-byte character cut off at the end of the file
    (b"version: 1\nproject: \xc3", "line 2: byte 20 (0xc3) is not UTF-8 (unexpected end of data)"),
])
def test_config_that_is_not_utf8_is_one_line_naming_the_line(runner, tmp_path, monkeypatch, data, said):
    (tmp_path / "opsctl.yaml").write_bytes(data)
    monkeypatch.chdir(tmp_path)
    line = one_line_exit_2(runner, ["config", "show"])
    assert line.startswith(f"opsctl: error: {tmp_path / 'opsctl.yaml'}: {said}"), line


@pytest.mark.parametrize("data", [
    "\ufeffversion: 1\nproject: café\n".encode("utf-8"),  # UTF-8 with a byte order mark (kept)
    "\ufeffversion: 1\nproject: café\n".encode("utf-16-le"),  # UTF-16 with its byte order mark
    "version: 1\nproject: café\n".encode("utf-16-be"),  # UTF-16 told by its zero bytes (YAML 1.2 5.2)
    "version: 1\nproject: café\n".encode("utf-32-le"),
])
def test_config_in_an_encoding_yaml_allows_is_read(runner, tmp_path, monkeypatch, data):
    (tmp_path / "opsctl.yaml").write_bytes(data)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert load_project(start=tmp_path).config.project == "café"


def test_config_is_read_as_utf8_whatever_the_locale(tmp_path):
    """The locale's encoding (ASCII under LC_ALL=C without UTF-8 mode) does not decide:
    path.read_text() failed on any non-ASCII character there."""
    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments:\n  local: {description: Zoë's laptop}\n",
                                          encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
           "OPSCTL_ROOT": str(tmp_path)}
    script = ("import locale, sys; from opsctl.config import load_project\n"
              "assert locale.getpreferredencoding(False).lower() in ('ascii', 'ansi_x3.4-1968'), "
              "locale.getpreferredencoding(False)\n"
              "sys.stdout.buffer.write(load_project().env('local').description.encode('utf-8'))\n")
    done = subprocess.run([sys.executable, "-X", "utf8=0", "-c", script], cwd=REPO, env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.decode("utf-8") == "Zoë's laptop"


def test_control_character_is_named_on_its_line(runner, tmp_path, monkeypatch):
    """PyYAML's ReaderError has no mark: it was reported on line 1, over two lines."""
    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments:\n  local: {description: \"a\x07b\"}\n")
    monkeypatch.chdir(tmp_path)
    line = one_line_exit_2(runner, ["config", "show"])
    assert "opsctl.yaml: line 3: the character U+0007 is not allowed in YAML" in line, line


# --- G13: a key given twice ---------------------------------------------------------------

@pytest.mark.parametrize("text, said", [
    # the tester's file: the second production would drop protected: true
    ("version: 1\nenvironments:\n  production:\n    platform: local\n    protected: true\n"
     "  production:\n    platform: local\n",
     "line 6: duplicate key environments.production (also on line 3)"),
    ("version: 1\nproject: a\nproject: b\n", "line 3: duplicate key project (also on line 2)"),
    ("environments:\n  local:\n    worker:\n      replicas: 2\n      replicas: 1\n",
     "line 5: duplicate key environments.local.worker.replicas (also on line 4)"),
    # flow style, and inside a list
    ("environments: {local: {protected: true, protected: false}}\n",
     "line 1: duplicate key environments.local.protected (also on line 1)"),
    ("environments:\n  local:\n    health: {extra: [{name: a, name: b}]}\n",
     "line 3: duplicate key environments.local.health.extra[0].name (also on line 3)"),
])
def test_duplicate_key_in_config_is_refused_with_both_lines(runner, tmp_path, monkeypatch, text, said):
    (tmp_path / "opsctl.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    line = one_line_exit_2(runner, ["config", "show"])
    assert f"{tmp_path / 'opsctl.yaml'}: {said}" in line and "merge the two into one" in line, line


def test_keys_equal_once_read_are_one_key(runner, tmp_path, monkeypatch):
    """Quoted or not, one key; 1 and 1.0 too (a dict would keep one of them)."""
    (tmp_path / "opsctl.yaml").write_text("environments:\n  local: {}\n  \"local\": {}\n")
    monkeypatch.chdir(tmp_path)
    assert "line 3: duplicate key environments.local (also on line 2)" in one_line_exit_2(runner, ["config", "show"])
    (tmp_path / "opsctl.yaml").write_text("environments:\n  local:\n    worker: {resources: {limits: {1: a, 1.0: b}}}\n")
    assert "line 3: duplicate key environments.local.worker.resources.limits.1.0 (also on line 3)" in \
        one_line_exit_2(runner, ["config", "show"])


def test_merge_keys_may_be_overridden(runner, tmp_path, monkeypatch):
    """`<<: *base` then the same key is a merge's purpose, not a duplicate."""
    (tmp_path / "opsctl.yaml").write_text(
        "environments:\n  staging: &base\n    platform: local\n    protected: false\n"
        "  production:\n    <<: *base\n    protected: true\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert load_project(start=tmp_path).env("production").protected


def test_repository_and_starter_configs_still_load(runner, tmp_path, monkeypatch):
    (tmp_path / "opsctl.yaml").write_text(starter_text())
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["config", "show"]).exit_code == 0
    assert load_project(start=REPO).env("production").protected


# --- runbooks, read by the same module ------------------------------------------------------

def test_every_runbook_of_the_repository_still_validates(runner, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    result = runner.invoke(app, ["runbook", "validate"])
    assert result.exit_code == 0, result.output


def test_duplicate_key_in_runbook_fails_validate_with_file_and_line(runner, ops_root):
    path = write_runbook(ops_root, "twice", 1, """\
        name: twice
        version: 1
        steps:
          - id: w
            action: shell
            with: {command: "true"}
            action: wait
        """)
    line = one_line_exit_2(runner, ["runbook", "validate", "twice"])
    assert f"{path}:7: not valid YAML: duplicate key steps[0].action (also on line 5)" in line, line
    assert "twice" in one_line_exit_2(runner, ["runbook", "run", "twice"])


def test_runbook_that_is_not_utf8_fails_validate_run_and_show(runner, ops_root):
    path = write_runbook(ops_root, "latin", 1, """\
        name: latin
        version: 1
        steps:
          - id: w
            action: wait
        """)
    offset = len(path.read_bytes()) + len("# caf")
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    said = f"{path}:6: not valid YAML: byte {offset} (0xe9) is not UTF-8 (invalid continuation byte)"
    for args in (["runbook", "validate", "latin"], ["runbook", "run", "latin"], ["runbook", "show", "latin"]):
        line = one_line_exit_2(runner, args)
        assert said in line and "save the file as UTF-8" in line, (args, line)


# --- breaker 43 S1, S10: aliases that expand without end, nesting without end ----------------

def _laughs(levels: int) -> str:
    text = 'x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n"
    return text


def test_a_runbook_of_nested_aliases_is_refused_before_anything_walks_it(ops_root, runner):
    """470 bytes of nested aliases (a "billion laughs") made `runbook validate` take 1.2 GB at
    7 levels and 23 GB at 9 (the OOM killer): the expansion is sized by node, once each."""
    book = ops_root / "runbooks" / "laughs" / "v1.yaml"
    book.parent.mkdir(parents=True)
    book.write_text("name: laughs\nversion: 1\n" + _laughs(6) + "steps:\n  - {id: a, action: wait, with: {seconds: 1}}\n")
    r = runner.invoke(app, ["runbook", "validate", "laughs"])
    assert r.exit_code == 2, r.output
    assert f"{book}:8: not valid YAML: its aliases expand to more than 100,000 values" in r.output, r.output


@pytest.mark.parametrize("value, said", [
    ("[" * 10_000 + "]" * 10_000, "line 4: the YAML nests deeper than 64 levels"),  # PyYAML's recursion
    ("[" * 100 + "]" * 100, "line 4: the YAML nests deeper than 64 levels"),
    ("\n" + "".join(f"      {line}\n" for line in _laughs(7).splitlines()), "line 10: its aliases expand"),
])
def test_opsctl_yaml_that_nests_or_expands_without_end_is_one_line(ops_root, runner, value, said):
    (ops_root / "opsctl.yaml").write_text(f"version: 1\nenvironments:\n  local:\n    description: {value}\n")
    line = one_line_exit_2(runner, ["config", "show"])
    assert said in line, line


def test_an_alias_of_its_own_parent_is_refused(ops_root, runner):
    (ops_root / "opsctl.yaml").write_text("version: 1\nenvironments:\n  local: &l\n    platform: local\n    x: *l\n")
    line = one_line_exit_2(runner, ["config", "show"])
    assert "line 3: an alias refers to a node that contains it" in line, line


def test_one_long_string_aliased_many_times_is_refused(ops_root, runner):
    """Breaker 44 T3: a 200 kB string aliased 20,000 times is few values and 4 GB of text:
    `runbook validate` spent 203 s of CPU and said valid, `config show` never ended."""
    big = '"' + "A" * 200_000 + '"'
    (ops_root / "opsctl.yaml").write_text("version: 1\nenvironments:\n  local:\n    description:\n"
                                          f"      x: &a {big}\n      y: [{', '.join(['*a'] * 20_000)}]\n")
    line = one_line_exit_2(runner, ["config", "show"])
    assert "line 6: its aliases expand to more than 2,000,000 characters" in line, line
