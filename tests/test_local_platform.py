"""`opsctl local`: the whole embedded platform, end to end, with real processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import redis

from opsctl.cli import app
from opsctl.local import s3 as s3mod

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).parent / "worker" / "data" / "hello.wav"


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
        resp = httpx.post(f"{first['router_url']}/v1/audio/transcriptions",
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


def test_local_on_a_kubernetes_environment_is_refused(runner, tmp_path, monkeypatch):
    (tmp_path / "opsctl.yaml").write_text("environments:\n  local: {platform: kubernetes}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["local", "up"])
    assert result.exit_code == 2
    assert "'opsctl local' manages platform: local" in result.output
