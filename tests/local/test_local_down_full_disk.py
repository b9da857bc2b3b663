"""`local down` on a full volume (breaker 33 B6): it wrote who holds the platform's deploy
lease before anything else and, the volume full, stopped nothing ("writing .../deploy.owner:
No space left on device"): the command a person runs to get out of trouble refused in it.
Who holds the lease is a note for others; the lock is the file lock. And the state file
saved at the end only records the processes as stopped (`status` finds them by PID file
either way), so a save that fails is said and is not a failure of `down`."""

from __future__ import annotations

import json

from opsctl.cli import app
from opsctl.local import state as st
from tests.volumes import fill


def test_local_down_on_a_full_volume_stops_and_says_what_it_could_not_write(small_volume, runner, monkeypatch):
    from opsctl.starter import starter_text

    root = small_volume
    (root / "opsctl.yaml").write_text(starter_text())
    monkeypatch.chdir(root)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    folder = st.folder_for(root)
    # a platform whose processes died with the machine: its state lists them, none runs
    state = st.LocalState(folder)
    state.components["redis"] = st.Component(port=1, pid=4_000_000)
    state.save()
    fill(small_volume)

    result = runner.invoke(app, ["local", "down", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stopped"] == [], result.stdout
    said = " ".join(result.stderr.split())  # the log handler wraps at the terminal's width
    assert f"everything is stopped, but writing {folder / 'state.json'}: No space left on device" in said, said
    assert f"holding the deploy lease unnamed: writing {folder}" in said and "Traceback" not in said, said
    assert not list(folder.glob(".*.tmp")), list(folder.iterdir())  # nothing half-written left
    assert json.loads((folder / "state.json").read_text())["components"]["redis"]["pid"] == 4_000_000
