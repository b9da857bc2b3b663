"""Object keys from data never become paths (issues 18 §4 and 25 §1): keys that are legal in
S3 but collide or escape on a filesystem (`a/b` beside `a/b/c`, `../../x`) are saved by
`local down` and backed up into a file:// repository, and come back byte for byte."""

from __future__ import annotations

import json
import os
import stat

import pytest

from backup_support import KEY, side_env
from opsctl.cli import app

pytestmark = pytest.mark.integration

KEYS = {"audio/x/clip": b"the clip", "audio/x/clip/part1.wav": b"part one",
        "../../escaped": b"outside?", "a/./b/../c": b"dots", "%2F/odd name": b"percent"}


def _fill(s3) -> str:
    bucket = s3.make_bucket("names")
    client = s3.client()
    for key, body in KEYS.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return bucket


@pytest.fixture
def own_s3(s3, tmp_path):
    """A moto server of this test's own: `save` and `load` take every bucket of the endpoint,
    and on the session's server other tests' buckets came along (one 500'd on re-upload when
    xdist ran a worker test first on the same process)."""
    from opsctl.local import procs
    from opsctl.local import s3 as s3mod

    port = procs.free_port()
    pid = s3mod.start(port, tmp_path / "moto.log")
    yield type(s3)(port, pid)
    procs.stop(pid)


def test_local_save_and_load_keep_every_key_inside_the_folder(own_s3, tmp_path):
    from opsctl.local import s3 as s3mod

    s3 = own_s3
    bucket = _fill(s3)
    folder = tmp_path / "deep" / "save"
    s3mod.save(s3.endpoint_url, folder)
    inside = {p.resolve() for p in folder.rglob("*")}
    everything = {p.resolve() for p in tmp_path.rglob("*") if p.name != "moto.log"}
    assert everything - inside == {tmp_path.resolve() / "deep", folder.resolve()}  # nothing beside the folder
    for path in folder.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    client = s3.client()
    for key in KEYS:
        client.delete_object(Bucket=bucket, Key=key)
    s3mod.load(s3.endpoint_url, folder)
    assert {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in KEYS} == KEYS


def test_files_backup_of_colliding_keys_into_a_file_repository(s3, seeded, runner, tmp_path, monkeypatch):
    bucket = _fill(s3)
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                   aws={"endpoint_url": s3.endpoint_url}, buckets={"audio": bucket})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "files", "--json"])
    assert made.exit_code == 0, made.output
    backup_id = json.loads(made.stdout)["id"]
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "repo" / "escaped").exists()
    client = s3.client()
    for key in KEYS:
        client.delete_object(Bucket=bucket, Key=key)
    done = runner.invoke(app, ["restore", "--env", env, "--id", backup_id, "--yes", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["files_restored"] == len(KEYS)
    assert {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in KEYS} == KEYS


def test_down_keeps_moto_running_when_saving_objects_fails(tmp_path, monkeypatch):
    """`local down` with a save that fails: the other components are stopped, moto is left
    running (its memory holds the only copy of what changed since the last save), the error
    says so and what to do, and the previous copy of the objects is kept."""
    from opsctl.config import load_project
    from opsctl.errors import OperationFailed
    from opsctl.local import platform, procs
    from opsctl.local import redis as rd
    from opsctl.local import s3 as s3mod
    from opsctl.local import state as st

    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {}\n")
    project = load_project(tmp_path)
    folder = st.folder_for(project.root)
    state = st.LocalState(folder)
    moto_port, redis_port = procs.free_port(), procs.free_port()
    state.components["s3"] = st.Component(moto_port, s3mod.start(moto_port, tmp_path / "moto.log"))
    state.components["redis"] = st.Component(redis_port, rd.start(state.data("redis"), redis_port,
                                                                  tmp_path / "redis.log"))
    previous = state.data("s3")
    previous.mkdir(parents=True)
    (previous / "index.json").write_text("{}")
    state.save()

    def broken(endpoint, target):
        target.mkdir(parents=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(s3mod, "save", broken)
    try:
        with pytest.raises(OperationFailed, match="saving the S3 objects failed.*No space left.*left running"
                                                  ".*previous copy.*local down' again"):
            platform.down(project)
        assert procs.alive(state.components["s3"].pid) and not procs.alive(state.components["redis"].pid)
        # breaker 25 F8: the moto left running stays recorded (status showed it gone)
        assert st.load(folder).components["s3"].pid == state.components["s3"].pid
    finally:
        procs.stop(state.components["s3"].pid)
    assert (previous / "index.json").read_text() == "{}"
    assert not previous.with_name(previous.name + ".saving").exists()


def test_down_whose_moto_dies_during_the_save_does_not_say_it_is_left_running(tmp_path, monkeypatch):
    """Breaker 25 F6: moto killed during the save, `down` said "moto is left running so they
    are not lost" while what it held since the last save was gone. It now says moto is gone,
    and that the previous copy is kept and is what `local up` starts from."""
    import signal

    from opsctl.config import load_project
    from opsctl.errors import OperationFailed
    from opsctl.local import platform, procs
    from opsctl.local import s3 as s3mod
    from opsctl.local import state as st

    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {}\n")
    project = load_project(tmp_path)
    folder = st.folder_for(project.root)
    state = st.LocalState(folder)
    port = procs.free_port()
    state.components["s3"] = st.Component(port, s3mod.start(port, tmp_path / "moto.log"))
    state.save()
    moto = state.components["s3"].pid

    def dies(endpoint, target):
        os.kill(moto, signal.SIGKILL)
        procs.stop(moto)  # reaped
        raise ConnectionError("Could not connect to the endpoint URL")

    monkeypatch.setattr(s3mod, "save", dies)
    with pytest.raises(OperationFailed, match=f"moto \\(PID {moto}\\) is gone.*previous copy.*local up") as err:
        platform.down(project)
    assert "left running" not in str(err.value)
    assert st.load(folder).components["s3"].pid is None


def test_down_after_moto_died_says_what_went_with_it(tmp_path, caplog):
    """Breaker 25 F15: moto killed before `local down`, which said "stopped: ...; data kept" and
    nothing of the objects moto held in memory since `up`. It now says they went with it and
    that the next `up` starts from the saved copy."""
    import signal

    from opsctl.config import load_project
    from opsctl.local import platform, procs
    from opsctl.local import s3 as s3mod
    from opsctl.local import state as st

    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {}\n")
    project = load_project(tmp_path)
    state = st.LocalState(st.folder_for(project.root))
    port = procs.free_port()
    state.components["s3"] = st.Component(port, s3mod.start(port, tmp_path / "moto.log"))
    state.save()
    moto = state.components["s3"].pid
    os.kill(moto, signal.SIGKILL)
    procs.stop(moto)  # reaped
    with caplog.at_level("WARNING", logger="opsctl.local"):
        assert "s3" not in platform.down(project)
    assert f"moto (PID {moto}) was not running" in caplog.text and "next 'up' starts from that copy" in caplog.text


def test_down_with_moto_stopped_says_so_at_once_and_keeps_it_running(tmp_path):
    """Breaker 22 F12: with moto stopped (SIGSTOP, as a hung one), `local down` waited on the
    save's S3 client (timeouts and retries: minutes) with nothing on screen. It now probes
    moto first: the other components stop, moto is left running with its objects, and the
    error names it and how to resume it."""
    import signal

    from opsctl.config import load_project
    from opsctl.errors import OperationFailed
    from opsctl.local import platform, procs
    from opsctl.local import redis as rd
    from opsctl.local import s3 as s3mod
    from opsctl.local import state as st

    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {}\n")
    project = load_project(tmp_path)
    state = st.LocalState(st.folder_for(project.root))
    moto_port, redis_port = procs.free_port(), procs.free_port()
    state.components["s3"] = st.Component(moto_port, s3mod.start(moto_port, tmp_path / "moto.log"))
    state.components["s3"].ready = True
    state.components["redis"] = st.Component(redis_port, rd.start(state.data("redis"), redis_port,
                                                                  tmp_path / "redis.log"))
    state.save()
    moto = state.components["s3"].pid
    os.kill(moto, signal.SIGSTOP)
    try:
        with pytest.raises(OperationFailed, match=f"saving the S3 objects failed \\(moto \\(PID {moto}\\) is "
                                                  f"stopped.*'kill -CONT {moto}'.*left running"):
            platform.down(project)
        assert procs.alive(moto) and not procs.alive(state.components["redis"].pid)
    finally:
        os.kill(moto, signal.SIGCONT)
        procs.stop(moto)
    assert not state.data("s3").exists()  # nothing half-saved in its place
