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


def _root_on(volume, monkeypatch):
    """An ops root (the starter opsctl.yaml) on `volume`, as the current directory."""
    from opsctl.starter import starter_text

    (volume / "opsctl.yaml").write_text(starter_text())
    monkeypatch.chdir(volume)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    return volume


def test_local_down_on_a_full_volume_stops_and_says_what_it_could_not_write(small_volume, runner, monkeypatch):
    folder = st.folder_for(_root_on(small_volume, monkeypatch))
    # a platform whose processes died with the machine: its state lists them, none runs
    state = st.LocalState(folder)
    state.components["redis"] = st.Component(port=1, pid=4_000_000)
    state.save()
    fill(small_volume)

    result = runner.invoke(app, ["local", "down", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stopped"] == [], result.stdout
    said = " ".join(result.stderr.split())  # the log handler wraps at the terminal's width
    assert f"the state file was not updated: writing {folder / 'state.json'}: No space left on device" in said, said
    assert f"holding the deploy lease unnamed: writing {folder}" in said and "Traceback" not in said, said
    assert not list(folder.glob(".*.tmp")), list(folder.iterdir())  # nothing half-written left
    assert json.loads((folder / "state.json").read_text())["components"]["redis"]["pid"] == 4_000_000


def test_a_redis_that_cannot_save_on_a_full_volume_is_left_running_not_killed(small_volume, runner, monkeypatch):
    """Breaker 34 F5: Redis's SHUTDOWN SAVE failed on the full volume, Redis refused to exit
    ("can't exit"), and `down` then signalled it: it exited unsaved, every write since its last
    snapshot was gone, and `down` listed it "stopped". Now it is left running with its data,
    `down` says so (exit 1, one line), and once there is room the next `down` saves and stops it."""
    import os

    import redis

    from opsctl.local import procs
    from opsctl.local import redis as rd

    folder = st.folder_for(_root_on(small_volume, monkeypatch))
    state = st.LocalState(folder)
    port = procs.free_port()
    pid = rd.start(state.data("redis"), port, state.log("redis"), pidfile=state.pidfile("redis"))
    try:
        state.components["redis"] = st.Component(port=port, pid=pid)
        state.save()
        client = redis.Redis(host=procs.HOST, port=port)
        for i in range(200):
            client.set(f"k{i}", os.urandom(10_000))  # 2 MB written since the last snapshot (none)
        filler = fill(small_volume)

        full = runner.invoke(app, ["local", "down"])
        assert full.exit_code == 1, full.output
        (line,) = [ln for ln in full.output.splitlines() if ln.startswith("opsctl: error: ")]
        assert f"Redis (PID {pid}) could not write its final snapshot" in line, line
        assert "left running so its data is not lost" in line and "run 'opsctl local down' again" in line, line
        assert procs.alive(pid, "redis-server") and client.dbsize() == 200
        # `local status` says why it still runs while the rest is stopped
        status = runner.invoke(app, ["local", "status", "--json"])
        (row,) = [c for c in json.loads(status.stdout)["components"] if c["name"] == "redis"]
        assert row["pid"] == pid and "running while the rest of the platform is stopped, 200 writes since its " \
            "last snapshot" in row["note"], row
        assert "in memory only: 'opsctl local down' saves and stops it (free space first" in row["note"], row

        filler.unlink()
        freed = runner.invoke(app, ["local", "down", "--json"])
        assert freed.exit_code == 0, freed.output
        assert json.loads(freed.stdout)["stopped"] == ["redis"], freed.stdout
        assert not procs.alive(pid, "redis-server")
        again = rd.start(state.data("redis"), port, state.log("redis"))  # from its snapshot alone
        try:
            assert redis.Redis(host=procs.HOST, port=port).dbsize() == 200
        finally:
            rd.stop(again, port, keep=False)
    finally:
        procs.stop(pid, 5) if procs.alive(pid, "redis-server") else None
