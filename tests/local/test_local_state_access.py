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


@pytest.mark.parametrize("text, said", [
    ("{not json", "Expecting property name"), ("[]", "not a JSON object with an object of components"),
    ('{"components": 5}', "not a JSON object with an object of components"),
    ('{"components": {"redis": {"pid": 5}}}', "component 'redis' has no port"),
])
def test_a_damaged_state_file_still_says_so_and_never_advises_deleting_the_data(ops_root, runner, text, said):
    """Breaker 43 S9: the one remedy given was 'local down --purge', which deletes the databases,
    Redis and the WAL queue; other damage printed Python's text ('list' object has no attribute
    'get', Component.__init__() missing 1 required positional argument)."""
    folder = ops_root / ".opsctl" / "local"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(text)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2 and "is damaged" in result.stderr and said in result.stderr, result.output
    assert "--purge" not in result.stderr and "attribute" not in result.stderr, result.stderr
    assert f"move it aside (mv {folder / 'state.json'} {folder / 'state.json'}.damaged)" in result.stderr
