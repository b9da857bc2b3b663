"""Blue-green deploys on the embedded platform: real worker processes, real Caddy switch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from opsctl import httpclient
from opsctl.cli import app

pytestmark = pytest.mark.slow

from tests import router_client
from tests.samples import variant


class LoadLoop:
    """Transcriptions through the router, one after another, until stopped (bounded); a
    request sent again on a stale connection is counted in `stale` (tests/router_client.py),
    anything else (an error status, a wrong transcript, a lost response) is a failure."""

    def __init__(self, router_url: str, max_seconds: float = 300):
        self.url, self.max_seconds = router_url, max_seconds
        self.ok = 0
        self.stale = 0
        self.failures: list[str] = []
        self.colors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    audio = variant("hello", self.ok + len(self.failures))  # a real transcription each time
                    resp, resent = router_client.transcribe(client, self.url, audio)
                    self.stale += resent
                    if resp.status_code == 200 and "hello" in resp.json()["text"].lower():
                        self.ok += 1
                        color = resp.headers.get("x-worker-color", "?")
                        if not self.colors or self.colors[-1] != color:
                            self.colors.append(color)
                    else:
                        self.failures.append(f"{resp.status_code} {resp.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> "LoadLoop":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def _status(runner) -> dict:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _active_version(runner) -> str:
    doc = _status(runner)
    return doc["colors"][doc["active_color"]]["version"]


def _router_version(router_url: str) -> str:
    return httpclient.get(f"{router_url}/version", timeout=10).json()["version"]


@pytest.fixture
def platform(local_platform, monkeypatch):
    monkeypatch.chdir(local_platform.root)
    local_platform.up()
    return local_platform


def test_deploy_under_load_drops_nothing_and_switches_version(runner, platform):
    router = platform.endpoints().router_url
    before = _active_version(runner)
    with LoadLoop(router) as load:
        while load.ok < 3:  # traffic flows before the deploy starts
            time.sleep(0.2)
        result = runner.invoke(app, ["deploy", "--image", "registry/worker:2.0.0", "--json"])
        seen = load.ok
        while load.ok < seen + 3:  # and keeps flowing after the old color was stopped
            time.sleep(0.2)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.split("\n}\n")[0] + "\n}")
    assert record["outcome"] == "promoted" and record["version"] == "2.0.0"
    assert [s["name"] for s in record["steps"]] == [
        "validate", "bring up", "wait ready", "pre-promotion analysis", "switch", "post-promotion analysis"]
    assert load.failures == [], load.failures
    assert load.stale <= 1  # at most the one connection idle at the switch's config load
    assert len(load.colors) == 2, load.colors  # requests were served by both colors, in turn
    assert _router_version(router) == "2.0.0" != before
    doc = _status(runner)
    old = "blue" if doc["active_color"] == "green" else "green"
    assert not doc["colors"][old]["running"]  # scaled down after the delay, under load


def test_deploy_that_never_gets_ready_keeps_traffic_and_exits_1(runner, platform):
    router = platform.endpoints().router_url
    before = _router_version(router)
    result = runner.invoke(app, ["deploy", "--image", "worker:broken", "--set", "compute_type=bogus"])
    assert result.exit_code == 1
    assert "deploy of broken failed" in result.output and f"traffic stays on" in result.output
    assert _router_version(router) == before
    history = _status(runner)["deploys"]
    assert history[0]["version"] == "broken" and history[0]["outcome"] == "failed"


def test_deploy_failing_analysis_keeps_traffic(runner, platform, monkeypatch):
    """Ready but broken: the release demands an API key the probes do not have."""
    router = platform.endpoints().router_url
    before = _router_version(router)
    monkeypatch.delenv("OPSCTL_WORKER_API_KEY", raising=False)
    key_hash = hashlib.sha256(b"a-key-nobody-has").hexdigest()
    result = runner.invoke(app, ["deploy", "--image", "worker:locked", "--set", f"api_key_hashes={key_hash}"])
    assert result.exit_code == 1
    assert "pre-promotion analysis failed" in result.output and "401" in result.output
    assert _router_version(router) == before
    assert not _status(runner)["colors"][_other(_status(runner)["active_color"])]["running"]


def _other(color: str) -> str:
    return "green" if color == "blue" else "blue"


def test_rollback_restores_the_previous_version(runner, platform):
    router = platform.endpoints().router_url
    first = runner.invoke(app, ["deploy", "--image", "worker:3.0.0", "--no-wait", "--json"])
    assert first.exit_code == 0, first.output
    previous = json.loads(first.stdout)["from_version"]
    assert _router_version(router) == "3.0.0"
    result = runner.invoke(app, ["rollback", "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["strategy"] == "rollback" and "instant" in record["reason"]
    assert _router_version(router) == previous
    # the warm color is gone after a scale-down: rollback --to redeploys the kept version
    again = runner.invoke(app, ["rollback", "--to", "3.0.0", "--json"])
    assert again.exit_code == 0, again.output
    assert _router_version(router) == "3.0.0"
    unknown = runner.invoke(app, ["rollback", "--to", "9.9.9"])
    assert unknown.exit_code == 2 and "9.9.9 is not among the last" in unknown.output


def test_second_concurrent_deploy_is_refused(runner, platform):
    first = subprocess.Popen([sys.executable, "-m", "opsctl", "deploy", "--image", "worker:4.0.0", "--json"],
                             cwd=platform.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = platform.root / ".opsctl" / "local" / "deploys.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = json.loads(history.read_text()) if history.exists() else []
        if records and records[-1]["version"] == "4.0.0":
            break
        time.sleep(0.1)
    second = runner.invoke(app, ["deploy", "--image", "worker:4.0.1"])
    out, err = first.communicate(timeout=300)
    assert second.exit_code == 1
    assert "another deploy is running" in second.output
    assert first.returncode == 0, err
    assert json.loads(out)["version"] == "4.0.0"


def test_dry_run_changes_nothing(runner, platform):
    before = _status(runner)
    result = runner.invoke(app, ["deploy", "--image", "worker:5.0.0", "--dry-run", "--json", "--backup",
                                 "--load-gate", "p95<9000ms", "--set", "part_memory_key_percent=20"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    # breaker 58 G7: the plan left out every variable named with KEY, this setting with them
    assert "WORKER_PART_MEMORY_KEY_PERCENT=20" in plan["manifests"].splitlines(), plan["manifests"]
    assert "DATABASE_URL" not in plan["manifests"] and "AWS_SECRET" not in plan["manifests"]
    assert plan["target_color"] == _other(before["active_color"])
    assert any("pre-promotion analysis" in s for s in plan["steps"])
    assert "pre-deploy database backup" in plan["steps"]
    assert any("gated by p95<9000ms" in s for s in plan["steps"])
    assert "WORKER_VERSION=5.0.0" in plan["manifests"]
    assert _status(runner) == before


def test_bad_deploy_input_is_one_line_exit_2(runner, platform):
    for args, expected in ([["deploy"], "--image is required"],
                           [["deploy", "--image", "w:1", "--set", "colour=red"], "unknown worker setting"],
                           [["deploy", "--image", "w:1", "--set", "novalue"], "is not KEY=VALUE"],
                           [["deploy", "--image", "w:1", "--strategy", "canary"], "use blue-green or rolling"],
                           [["promote"], "nothing awaits promotion"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_pre_deploy_backup_and_pre_promotion_load_gate(runner, platform, monkeypatch):
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", platform.backup_key)  # the repository's own key
    router = platform.endpoints().router_url
    before = _router_version(router)
    refused = runner.invoke(app, ["deploy", "--image", "worker:gated", "--load-gate", "p95<1ms",
                                  "--load-gate-duration", "3s", "--json"])
    assert refused.exit_code == 1
    assert "pre-promotion load test failed" in refused.output and "p95<1ms" in refused.output
    assert _router_version(router) == before

    result = runner.invoke(app, ["deploy", "--image", "worker:6.0.0", "--backup", "--load-gate",
                                 "error_rate<5%", "--load-gate-duration", "3s", "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    steps = {s["name"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["pre-deploy backup"]["status"] == "ok" and steps["pre-deploy backup"]["detail"].startswith("backup ")
    assert steps["pre-promotion load test"]["status"] == "ok" and "SLO met" in steps["pre-promotion load test"]["detail"]
    backups = json.loads(runner.invoke(app, ["backup", "list", "--json"]).stdout)["backups"]
    assert steps["pre-deploy backup"]["detail"].split()[1] in {b["id"] for b in backups}
    assert _router_version(router) == "6.0.0"


def test_killed_deploy_leaves_traffic_in_place_and_the_next_deploy_cleans_up(runner, platform):
    import os
    import signal

    router = platform.endpoints().router_url
    before = _router_version(router)
    history = platform.root / ".opsctl" / "local" / "deploys.json"
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", "deploy", "--image", "worker:killed"],
                            cwd=platform.root, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = json.loads(history.read_text()) if history.exists() else []
        if records and records[-1]["version"] == "killed" and any(
                s["name"] == "bring up" for s in records[-1]["steps"]):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way through bringing up the new color
    proc.wait()
    assert _router_version(router) == before  # traffic never moved to the unready color

    result = runner.invoke(app, ["deploy", "--image", "worker:after-kill", "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    killed = next(d for d in _status(runner)["deploys"] if d["version"] == "killed")
    assert killed["outcome"] == "interrupted"
    assert _router_version(router) == "after-kill"


def _whole_at_80(text: str, values: list[str]) -> None:
    """No line wider than 80 but one holding a single word wider than its room (a path, a
    server's JSON answer: whole, where it can be copied), nothing cut, every value whole."""
    assert "…" not in text, text
    assert all(len(line) <= 80 or len(line.split()) <= 2 for line in text.splitlines()), text
    for value in values:
        assert value in text, f"{value!r} is not whole in:\n{text}"


def test_status_at_80_columns_and_through_a_pipe_shows_every_value_whole(runner, platform, monkeypatch):
    deployed = runner.invoke(app, ["deploy", "--image", "registry.example.com/worker:2.1.0-rc.1",
                                   "--no-wait", "--json"])
    assert deployed.exit_code == 0, deployed.output
    doc = _status(runner)
    values = [d[k] for d in doc["deploys"] for k in ("started_at", "version", "outcome")]
    values += [c["version"] for c in doc["colors"].values() if c["version"]]
    assert "2.1.0-rc.1" in values

    monkeypatch.setenv("COLUMNS", "80")
    table = runner.invoke(app, ["status"])  # CliRunner: no TTY
    assert table.exit_code == 0, table.output
    _whole_at_80(table.stdout, values)

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run([sys.executable, "-m", "opsctl", "status"], cwd=platform.root, env=env, text=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert piped.returncode == 0, piped.stderr
    _whole_at_80(piped.stdout, values)
