"""Issue 20 §2 (the embedded platform is safe to kill at any instant), as a fresh reviewer broke it:

- `down [--purge]` works whatever types a state file holds, and process checks never raise;
- a recorded PID that another program reused is never stopped, whatever its command line says;
- moto's saved objects are never overwritten by an endpoint that did not load them, and a
  moto nothing says anything about (damaged state) is never stopped without saving;
- the WAL archiver writes its own PID file: `up` adopts it, `down` stops it in every state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pitr.pitr_support import pitr  # noqa: F401  (module fixture: PostgreSQL + archiver)

STATE = Path(".opsctl") / "local" / "state.json"


def opsctl(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsctl", *args], cwd=root, capture_output=True, text=True,
                          env={**__import__("os").environ, "CI": "true"}, timeout=180)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments:\n  local: {platform: local}\n")
    (tmp_path / ".opsctl" / "local").mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("field,value", [("pid", -1), ("pid", "123"), ("pid", 1.5), ("pid", True),
                                         ("port", "5432"), ("admin_port", -3), ("ready", "yes")])
def test_down_purge_works_whatever_types_the_state_file_holds(root, field, value):
    (root / STATE).write_text(json.dumps({"version": 1, "components": {
        "postgres": {"port": 5432, "pid": None, field: value}}}))
    (root / ".opsctl" / "local" / "data").mkdir()
    result = opsctl(root, "local", "down", "--purge", "--yes")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / ".opsctl" / "local" / "data").exists()


@pytest.mark.parametrize("pid", [-1, 0, "123", 1.5, True, None, [1]])
def test_process_checks_never_raise_on_odd_pids(pid):
    from opsctl.local import procs

    assert procs.alive(pid) is False and procs.alive(pid, "postgres") is False
    assert procs.stop(pid) is False
    assert procs.listens(pid, [5432]) is False


@pytest.mark.parametrize("key,hint", [("postgres", "postgres"), ("redis", "redis-server"), ("s3", "moto"),
                                      ("router", "caddy"), ("worker-blue", "transcription-worker")])
def test_down_never_stops_a_process_that_reused_a_recorded_pid(root, tmp_path, key, hint):
    """Someone's process got a PID the state file holds, and its command line names the same
    program (`tail -f postgres.log`, an editor on caddy.json...): it is not ours."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", hint])
    try:
        comp = {"port": 1, "pid": stranger.pid, **({"admin_port": 2} if key == "router" else {})}
        (root / STATE).write_text(json.dumps({"version": 1, "active_color": "blue", "components": {key: comp}}))
        result = opsctl(root, "local", "down")
        assert result.returncode == 0, result.stderr
        assert stranger.poll() is None, f"down stopped an unrelated process: {result.stdout}{result.stderr}"
    finally:
        stranger.kill()
        stranger.wait()


@pytest.fixture
def moto(root):
    """A moto server started by the platform's own code, recorded as a killed `up` leaves it
    (PID known, start-up not finished: `ready` false)."""
    from opsctl.local import procs
    from opsctl.local import s3 as s3mod
    from opsctl.local import state as st

    state = st.LocalState(st.folder_for(root))
    port = procs.free_port()
    pid = s3mod.start(port, state.log("s3"), pidfile=state.pidfile("s3"))
    state.components["s3"] = st.Component(port=port, pid=pid, ready=False)
    state.save()
    yield state, s3mod.endpoint(port), pid
    procs.stop(pid, 10, "moto")


def _saved_set(state, endpoint: str) -> dict:
    """A saved object set as `down` writes it, made by the same code (s3.save)."""
    from opsctl.local import s3 as s3mod

    client = s3mod.client(endpoint)
    client.create_bucket(Bucket="audio")
    client.put_object(Bucket="audio", Key="kept/one.mp3", Body=b"saved before")
    s3mod.save(endpoint, state.data("s3"))
    client.delete_object(Bucket="audio", Key="kept/one.mp3")  # the running moto never loaded it
    client.delete_bucket(Bucket="audio")
    return json.loads((state.data("s3") / "index.json").read_text())


def test_down_never_saves_an_unloaded_s3_over_the_saved_objects(root, moto):
    from opsctl.local import procs

    state, endpoint, pid = moto
    saved = _saved_set(state, endpoint)
    assert saved == {"audio": {next(iter(saved["audio"])): "kept/one.mp3"}}
    result = opsctl(root, "local", "down")
    assert result.returncode == 0, result.stderr
    assert not procs.alive(pid)
    assert json.loads((state.data("s3") / "index.json").read_text()) == saved  # not emptied


def test_down_with_a_damaged_state_saves_moto_before_stopping_it(root, moto):
    from opsctl.local import procs
    from opsctl.local import s3 as s3mod

    state, endpoint, pid = moto
    saved = _saved_set(state, endpoint)
    client = s3mod.client(endpoint)
    client.create_bucket(Bucket="audio")
    client.put_object(Bucket="audio", Key="new/two.mp3", Body=b"written since")
    (root / STATE).write_text('{"version": 1, "components": {')  # damaged
    result = opsctl(root, "local", "down")
    assert result.returncode == 0, result.stderr
    assert not procs.alive(pid)
    assert json.loads((state.data("s3") / "index.json").read_text()) == saved  # the saved set as it was
    aside = list(state.data("s3").parent.glob("s3.unloaded-*"))
    assert len(aside) == 1, "moto was stopped without saving what it held"
    assert list(json.loads((aside[0] / "index.json").read_text())["audio"].values()) == ["new/two.mp3"]


def test_archiver_is_adopted_by_its_pid_file_and_stopped_with_a_damaged_state(pitr):  # noqa: F811
    import psutil

    from opsctl.local import state as st
    from opsctl.pitr import local as pitr_local

    folder = st.folder_for(pitr.root)
    state = st.load(folder)
    pid = state.components["archiver"].pid
    assert psutil.pid_exists(pid)
    # an `up` killed after spawning the archiver, before saving its PID
    doc = json.loads(state.path.read_text())
    del doc["components"]["archiver"]
    state.path.write_text(json.dumps(doc))
    pitr.ensure_archiver()  # must adopt it, not start a second archiver on the same queue
    queue = str(pitr_local.queue_dir(state))
    archivers = [p for p in psutil.process_iter(["cmdline"])
                 if pitr_local.HINT in " ".join(p.info["cmdline"] or []) and queue in " ".join(p.info["cmdline"] or [])]
    assert [p.pid for p in archivers] == [pid]
    assert st.load(folder).components["archiver"].pid == pid

    kept = state.path.read_text()
    state.path.write_text("{damaged")
    try:
        result = opsctl(pitr.root, "local", "down")
        assert result.returncode == 0, result.stderr
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        state.path.write_text(kept)
