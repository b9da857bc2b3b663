"""Issue 20 (kill at any instant), second fresh review (BREAKER20b), on the embedded platform:

- a recorded PID is stopped only when it is still ours (it listens on the component's port,
  or its PID file names it, create time checked), never on its command line alone: the
  standby (`local down`, `dr standby --stop`), a worker, the primary a restore or failover
  stops;
- a stranger serving a component's kept port is never taken for the server `up` started:
  nothing of ours is loaded into it and the dead PID is never recorded ready;
- `local down` killed between the two renames of the S3 save leaves `data/s3.old` as the only
  saved copy: `up` loads it and the next `down` keeps it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local.test_local_crash import moto, opsctl, root  # noqa: F401  (fixtures)

STATE = Path(".opsctl") / "local" / "state.json"


def _stranger(*argv: str) -> subprocess.Popen:
    """Someone else's process whose command line names our program (a `tail -f postgres.log`)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])


@pytest.mark.parametrize("cmd", [("local", "down"), ("dr", "standby", "--stop", "--env", "local")])
def test_a_standby_pid_reused_by_a_stranger_is_never_stopped(root, cmd):  # noqa: F811
    stranger = _stranger("postgres")
    try:
        (root / STATE).write_text(json.dumps({"version": 1, "components": {
            "postgres": {"port": 1, "pid": None},
            "postgres-standby": {"port": 2, "pid": stranger.pid}}}))
        result = opsctl(root, *cmd)
        assert stranger.poll() is None, f"{cmd} stopped an unrelated process: {result.stdout}{result.stderr}"
    finally:
        stranger.kill()
        stranger.wait()


def test_recorded_pids_are_stopped_only_when_they_are_still_ours(root):  # noqa: F811
    from opsctl.config import load_project
    from opsctl.local import state as st
    from opsctl.local import worker as wk
    from opsctl.pitr import standby

    stranger = _stranger("transcription-worker", "postgres")
    try:
        state = st.LocalState(st.folder_for(root))
        comp = st.Component(port=1, pid=stranger.pid)
        comp.metrics_port = 2
        state.components["worker-blue"] = comp
        state.components["postgres"] = st.Component(port=3, pid=stranger.pid)
        state.components["postgres-standby"] = st.Component(port=4, pid=stranger.pid)
        state.save()
        assert wk.stop(comp) is False
        assert standby.stop_for_down(state) is False
        failed: list[str] = []
        # the failover's worker restart: a color whose recorded PID is not ours is not running
        assert standby._restart_workers(state, load_project(root).env("local"), failed) == []
        assert failed == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_stranger_on_the_kept_s3_port_is_never_taken_for_ours(root, tmp_path):  # noqa: F811
    """After a reboot another project's moto got the kept port: `up` fails in one line naming
    the port, uploads nothing of ours into it and never records its own dead moto ready."""
    from opsctl.config import load_project
    from opsctl.errors import OperationFailed
    from opsctl.local import platform, procs
    from opsctl.local import s3 as s3mod
    from opsctl.local import state as st

    folder = st.folder_for(root)
    mine_port = procs.free_port()
    mine = s3mod.start(mine_port, tmp_path / "m.log")
    try:  # this project's saved objects, as an earlier `down` left them
        s3mod.client(s3mod.endpoint(mine_port)).create_bucket(Bucket="private")
        s3mod.client(s3mod.endpoint(mine_port)).put_object(Bucket="private", Key="secret.wav", Body=b"mine")
        s3mod.save(s3mod.endpoint(mine_port), st.LocalState(folder).data("s3"))
    finally:
        procs.stop(mine, 10, "moto")
    port = procs.free_port()
    (folder / "state.json").write_text(json.dumps({"version": 1, "components": {
        "s3": {"port": port, "pid": 999999, "ready": True}}}))
    stranger = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        procs.wait_until(lambda: s3mod.ready(port), 60, "stranger moto")
        with st.locked(folder):
            state = st.load(folder)
            with pytest.raises(OperationFailed, match=f"port {port} kept for s3 .* another process"):
                platform.start_component("s3", state, load_project(root).env("local"))
            state.save()
        comp = st.load(folder).components["s3"]
        assert not comp.ready and not procs.alive(comp.pid, "moto")
        held = [b["Name"] for b in s3mod.client(s3mod.endpoint(port)).list_buckets()["Buckets"]]
        assert "private" not in held
        result = opsctl(root, "local", "up")
        assert result.returncode == 1 and f"port {port}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert stranger.poll() is None  # and the stranger is left alone
    finally:
        stranger.kill()
        stranger.wait()
        opsctl(root, "local", "down")


@pytest.mark.parametrize("new_copy_whole", [True, False])
def test_saved_objects_survive_a_kill_between_the_renames_of_the_s3_save(root, moto, new_copy_whole):  # noqa: F811
    import shutil

    from opsctl.config import load_project
    from opsctl.local import platform, procs
    from opsctl.local import s3 as s3mod
    from opsctl.local import state as st

    state, endpoint, pid = moto
    state.components["s3"].ready = True  # an `up` that finished: it loaded the saved set
    state.save()
    s3mod.client(endpoint).create_bucket(Bucket="audio")
    s3mod.client(endpoint).put_object(Bucket="audio", Key="kept/one.mp3", Body=b"customer audio")
    assert opsctl(root, "local", "down").returncode == 0
    assert not procs.alive(pid)
    data = state.data("s3")
    # the next down killed right after data/s3 -> data/s3.old (its new copy whole or not begun)
    data.rename(data.with_name("s3.old"))
    if new_copy_whole:
        shutil.copytree(data.with_name("s3.old"), data.with_name("s3.saving"))
    with st.locked(st.folder_for(root)):
        s = st.load(st.folder_for(root))
        platform.start_component("s3", s, load_project(root).env("local"))
        s.save()
    try:
        listed = s3mod.client(s3mod.endpoint(s.components["s3"].port)).list_objects_v2(Bucket="audio")
        assert [o["Key"] for o in listed.get("Contents", [])] == ["kept/one.mp3"]
    finally:
        assert opsctl(root, "local", "down").returncode == 0
    assert sorted(p.name for p in data.parent.iterdir() if p.name.startswith("s3")) == ["s3"]
    assert [p for p in data.rglob("*") if p.is_file() and p.read_bytes() == b"customer audio"]


def test_a_worker_pid_reused_by_a_stranger_is_not_a_color_to_probe(root):  # noqa: F811
    """After a color stopped, its recorded PID may run someone else's program (even one whose
    command line names ours): the endpoints health and deploys probe leave that color out."""
    from opsctl.config import load_project
    from opsctl.endpoints import resolve
    from opsctl.local import state as st

    stranger = _stranger("transcription-worker")
    try:
        state = st.LocalState(st.folder_for(root))
        for key, port in (("postgres", 1), ("redis", 2), ("s3", 3), ("router", 4)):
            state.components[key] = st.Component(port=port, pid=None)
        state.components["worker-blue"] = st.Component(port=5, pid=stranger.pid)
        state.save()
        project = load_project(root)
        assert resolve(project, project.env("local")).workers == {}
    finally:
        stranger.kill()
        stranger.wait()
