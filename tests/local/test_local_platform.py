"""`opsctl local`: the whole embedded platform, end to end, with real processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from opsctl import httpclient
from opsctl.cli import app
from opsctl.local import s3 as s3mod

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).parent.parent / "worker" / "data" / "hello.wav"


def _status(runner) -> dict:
    result = runner.invoke(app, ["local", "status", "--json"])
    doc = json.loads(result.stdout)
    return {c["name"]: c for c in doc["components"]} | {"_healthy": doc["healthy"], "_rc": result.exit_code}


def _up(runner) -> dict:
    result = runner.invoke(app, ["local", "up", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _our_pids(status: dict) -> list[int]:
    return [c["pid"] for name, c in status.items() if not name.startswith("_") and c["pid"]]


@pytest.fixture(scope="module")
def platform_root(tmp_path_factory):
    from opsctl.starter import starter_text

    root = tmp_path_factory.mktemp("ops")
    (root / "opsctl.yaml").write_text(starter_text())
    old = os.getcwd()
    os.chdir(root)
    yield root
    from typer.testing import CliRunner

    CliRunner().invoke(app, ["local", "down", "--purge", "--yes"])
    os.chdir(old)


def test_up_status_transcribe_idempotent_repair_down_up(runner, platform_root):
    first = _up(runner)
    assert first["started"] == ["postgres", "redis", "s3", "worker", "router"]
    status = _status(runner)
    assert status["_healthy"] and status["_rc"] == 0
    assert {"postgres", "redis", "s3", "worker-blue", "router"} <= set(status)
    assert status["postgres"]["version"].startswith("18")

    # a real transcription through the Caddy front door
    with SAMPLE.open("rb") as audio:
        resp = httpclient.post(f"{first['router_url']}/v1/audio/transcriptions",
                          files={"file": ("hello.wav", audio, "audio/wav")},
                          data={"model": "whisper-1"}, timeout=120)
    assert resp.status_code == 200, resp.text
    assert "hello world" in resp.json()["text"].lower()
    assert resp.headers["x-worker-color"] == "blue"

    # every server of ours listens on 127.0.0.1 only
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                 and c.pid in set(_our_pids(status))]
    assert {c.pid for c in listening} == set(_our_pids(status))
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}

    # each component's log is one command away
    logs = runner.invoke(app, ["local", "logs", "worker", "-n", "200"])
    assert logs.exit_code == 0 and "model loaded" in logs.output

    # up again changes nothing
    again = _up(runner)
    assert again["started"] == [] and again["router_url"] == first["router_url"]

    # kill one component: up restarts only that one, on the same port
    os.kill(status["redis"]["pid"], signal.SIGKILL)
    psutil.Process(status["redis"]["pid"]).wait(10) if psutil.pid_exists(status["redis"]["pid"]) else None
    assert _status(runner)["_rc"] == 1
    repaired = _up(runner)
    assert repaired["started"] == ["redis"]
    after = _status(runner)
    assert after["redis"]["port"] == status["redis"]["port"]
    assert after["postgres"]["pid"] == status["postgres"]["pid"]

    # write data everywhere, then down: no process of ours is left
    pg_port, redis_port, s3_port = after["postgres"]["port"], after["redis"]["port"], after["s3"]["port"]
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg_port}/transcribe", autocommit=True) as conn:
        conn.execute("create table kept (id int primary key, note text)")
        conn.execute("insert into kept values (1, 'survives down/up')")
    redis.Redis(port=redis_port).set("kept", "yes")
    s3mod.client(s3mod.endpoint(s3_port)).put_object(Bucket="transcribe-audio", Key="a/kept.txt", Body=b"kept")
    pids = _our_pids(after)
    down = runner.invoke(app, ["local", "down", "--json"])
    assert down.exit_code == 0, down.output
    assert set(json.loads(down.stdout)["stopped"]) == {"router", "worker-blue", "s3", "redis", "postgres"}
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    # up after down finds the data written before
    back = _up(runner)
    assert back["started"] == ["postgres", "redis", "s3", "worker", "router"]
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg_port}/transcribe") as conn:
        assert conn.execute("select note from kept where id = 1").fetchone()[0] == "survives down/up"
    assert redis.Redis(port=redis_port).get("kept") == b"yes"
    body = s3mod.client(s3mod.endpoint(s3_port)).get_object(Bucket="transcribe-audio", Key="a/kept.txt")["Body"]
    assert body.read() == b"kept"


def test_logs_names_unknown_component(runner, platform_root):
    result = runner.invoke(app, ["local", "logs", "nginx"])
    assert result.exit_code == 2
    assert "unknown component 'nginx'" in result.output

def test_logs_lines_are_what_tail_n_gives(runner, platform_root):
    """Breaker 37 G15: -n -5 printed a line; -n 0 (tail's "none of the past") printed the whole log."""
    from opsctl.config import load_project
    from opsctl.local.platform import log_path

    log = log_path(load_project(platform_root), "router")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("one\ntwo\nthree\n")
    result = runner.invoke(app, ["local", "logs", "router", "-n", "-5"])
    assert result.exit_code == 2 and "--lines must be 0 or more, not -5" in result.output
    result = runner.invoke(app, ["local", "logs", "router", "-n", "0"])
    assert result.exit_code == 0 and result.stdout == "", result.output
    result = runner.invoke(app, ["local", "logs", "router", "-n", "2"])
    assert result.exit_code == 0 and result.stdout.split() == ["two", "three"], result.output


def test_local_on_a_kubernetes_environment_is_refused(runner, tmp_path, monkeypatch):
    (tmp_path / "opsctl.yaml").write_text("environments:\n  local: {platform: kubernetes}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["local", "up"])
    assert result.exit_code == 2
    assert "'opsctl local' manages platform: local" in result.output


# -- killed at any instant (issue 20 §2, §3) -----------------------------------------------

def _pids_in(folder: Path) -> set[int]:
    from opsctl.local import procs

    files = list((folder / "run").glob("*.pid")) + [folder / "data" / "postgres" / "postmaster.pid"]
    return {pid for f in files if (pid := procs.read_pidfile(f))}


def _running(pids: set[int]) -> set[int]:
    return {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}


def _up_killed_when(root: Path, ready, what: str) -> None:
    """`opsctl local up` in its own process group, SIGKILLed (with its children, as a killed
    terminal or CI job would be) as soon as `ready()` sees the state it waits for."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "local", "up"], cwd=root, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"local up ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_up_killed_at_each_component_then_up_and_down(runner, tmp_path, monkeypatch):
    from opsctl.starter import starter_text

    (tmp_path / "opsctl.yaml").write_text(starter_text())
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / ".opsctl" / "local"
    data = folder / "data"
    seen: set[int] = set()
    try:
        # during initdb: the cluster is made in a temporary folder, never half at data/postgres
        _up_killed_when(tmp_path, lambda: any((d / "PG_VERSION").exists() for d in data.glob("postgres.initdb-*")),
                        "initdb running")
        assert not (data / "postgres").exists()
        # then as soon as each component's process exists (its PID file appears)
        for name, pidfile in (("postgres", data / "postgres" / "postmaster.pid"),
                              ("redis", folder / "run" / "redis.pid"), ("s3", folder / "run" / "s3.pid"),
                              ("worker", folder / "run" / "worker-blue.pid")):
            _up_killed_when(tmp_path, pidfile.exists, f"{name} started")
            seen |= _pids_in(folder)
        # down after a killed up stops everything that up left, found by PID
        down = runner.invoke(app, ["local", "down", "--json"])
        assert down.exit_code == 0, down.output
        assert {"postgres", "redis", "s3", "worker-blue"} <= set(json.loads(down.stdout)["stopped"])
        assert not _running(seen)
        _up_killed_when(tmp_path, (folder / "run" / "router.pid").exists, "router started")
        seen |= _pids_in(folder)

        # the next up adopts or restarts what the killed one left, and finishes
        back = _up(runner)
        assert back["started"], back
        status = _status(runner)
        assert status["_healthy"] and status["_rc"] == 0
        live = set(_our_pids(status))
        assert not _running(seen - live)  # nothing half-started was left running beside them
        with SAMPLE.open("rb") as audio:
            resp = httpclient.post(f"{back['router_url']}/v1/audio/transcriptions", files={"file": ("hello.wav", audio, "audio/wav")},
                              data={"model": "whisper-1"}, timeout=120)
        assert resp.status_code == 200 and "hello" in resp.json()["text"].lower()

        # a damaged state file: up says what to do (move it aside, never --purge: breaker 43 S9),
        # down --purge works anyway
        (folder / "state.json").write_text('{"version": 1, "components": {"postgres": ')
        refused = runner.invoke(app, ["local", "up"])
        assert refused.exit_code == 2 and "move it aside" in refused.output and "--purge" not in refused.output
        purged = runner.invoke(app, ["local", "down", "--purge", "--yes", "--json"])
        assert purged.exit_code == 0, purged.output
        assert {"router", "worker-blue", "s3", "redis", "postgres"} <= set(json.loads(purged.stdout)["stopped"])
        assert not _running(seen | live)
        assert not data.exists() and not (folder / "state.json").exists()
    finally:
        runner.invoke(app, ["local", "down", "--purge", "--yes"])


def test_local_status_at_80_columns_and_through_a_pipe_shows_every_value_whole(runner, local_platform,
                                                                              monkeypatch):
    import subprocess
    import sys

    monkeypatch.chdir(local_platform.root)
    local_platform.up()
    doc = json.loads(runner.invoke(app, ["local", "status", "--json"]).stdout)
    # a component without a port or version (the archiver) shows "-" there
    values = [str(v) for c in doc["components"] for v in (c["name"], c["pid"], c["port"], c["version"]) if v]

    def whole(text: str) -> None:
        assert "…" not in text, text
        assert all(len(line) <= 80 for line in text.splitlines()), text
        for value in values:
            assert value in text, f"{value!r} is not whole in:\n{text}"

    monkeypatch.setenv("COLUMNS", "80")
    table = runner.invoke(app, ["local", "status"])  # CliRunner: no TTY
    assert table.exit_code == 0, table.output
    whole(table.stdout)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run([sys.executable, "-m", "opsctl", "local", "status"], cwd=local_platform.root, env=env,
                           text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=120)
    assert piped.returncode == 0, piped.stderr
    whole(piped.stdout)


def test_logs_through_the_one_core_call(runner, local_platform, monkeypatch):
    monkeypatch.chdir(local_platform.root)
    shown = runner.invoke(app, ["local", "logs", "router", "-n", "3"])
    assert shown.exit_code == 0, shown.output
    assert 0 < len(shown.output.splitlines()) <= 3
    unknown = runner.invoke(app, ["local", "logs", "nginx"])
    assert unknown.exit_code == 2 and "unknown component 'nginx'" in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1


def test_logs_show_control_characters_escaped(runner, platform_root):
    """Reviewer 39 R6: a log line holding an ESC sequence (a request path, an S3 key) reached the
    terminal as it was."""
    from opsctl.config import load_project
    from opsctl.local.platform import log_path

    log = log_path(load_project(platform_root), "router")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("GET /\x1b]0;pwned\x07 404\n")
    result = runner.invoke(app, ["local", "logs", "router", "-n", "1"])
    assert result.exit_code == 0 and result.stdout == "GET /\\x1b]0;pwned\\x07 404\n", repr(result.stdout)
