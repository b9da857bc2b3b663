"""A state file this user cannot read is not a damaged one (breaker 33 B5): the advice was
"state.json is damaged (Permission denied); run 'opsctl local down --purge' to start over",
and following it deletes the platform's data.

The suite runs as root, whom file modes do not stop, so the read is refused by making
Path.read_bytes raise the PermissionError another user gets for that one file."""

from __future__ import annotations

import errno
import json
import pathlib

import pytest

from opsctl.cli import app


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied"),
                                   OSError(errno.EIO, "Input/output error")])
def test_an_unreadable_state_file_says_whose_it_is_and_never_advises_purge(ops_root, runner, monkeypatch, error):
    folder = ops_root / ".opsctl" / "local"
    folder.mkdir(parents=True)
    state = folder / "state.json"
    state.write_text(json.dumps({"components": {}, "active_color": "blue"}))
    real = pathlib.Path.read_bytes

    def read_bytes(self):
        if self == state:
            raise type(error)(error.errno, error.strerror, str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert f"{state} cannot be read ({error.strerror})" in line and "owns" in line, line
    assert "--purge" not in line and "damaged" not in line, line
    assert json.loads(state.read_text()) == {"components": {}, "active_color": "blue"}  # untouched


def test_a_damaged_state_file_still_says_so(ops_root, runner):
    folder = ops_root / ".opsctl" / "local"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{not json")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2 and "is damaged" in result.stderr and "--purge" in result.stderr, result.output
