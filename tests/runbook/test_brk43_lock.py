"""A damaged runbooks/lock.json (brk43 S6) is one line naming the file and the fix, exit 2,
for every runbook command and `render ci`; never "unexpected JSONDecodeError"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]

DAMAGE = {
    "garbage": lambda p: p.write_text("garbage{"),
    "empty": lambda p: p.write_text(""),
    "list": lambda p: p.write_text("[]"),
    "folder": lambda p: (p.unlink(), p.mkdir()),
    "conflict": lambda p: p.write_text('{\n<<<<<<< HEAD\n  "a@1": "sha256:' + "0" * 64 + '"\n=======\n'
                                       '  "a@1": "sha256:' + "1" * 64 + '"\n>>>>>>> branch\n}\n'),
    "not a pin": lambda p: p.write_text('{"health-sweep@2": 5}'),
    "dangling link": lambda p: (p.unlink(), p.symlink_to(p.parent / "gone.json")),
    "binary": lambda p: p.write_bytes(b"\xff\xfe\x00"),
}


@pytest.fixture
def shipped(ops_root):
    for name in ("runbooks", "loadtests", "templates", "stacks"):
        shutil.copytree(REPO / name, ops_root / name)
    shutil.copy(REPO / "opsctl.yaml", ops_root / "opsctl.yaml")
    return ops_root


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", [["runbook", "list"], ["runbook", "validate"],
                                     ["runbook", "run", "nightly-backup", "--dry-run"], ["render", "ci"],
                                     ["runbook", "publish", "health-sweep@2"]])
def test_a_damaged_lock_is_one_line_naming_it(runner, shipped, damage, command):
    lock = shipped / "runbooks" / "lock.json"
    DAMAGE[damage](lock)
    result = runner.invoke(app, command)
    line = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(line.splitlines()) == 1 and "Traceback" not in line and "unexpected" not in line, line
    assert "runbooks/lock.json" in line and "restore it from git" in line, line


def test_an_intact_lock_still_works(runner, shipped):
    result = runner.invoke(app, ["runbook", "validate"])
    assert result.exit_code == 0, result.output
