"""Issue 20 (kill at any instant), as a fresh reviewer broke it on the embedded platform:

- a switch to an earlier color (rollback, abort, the switch back of a resumed analysis) never
  goes to a color that is not running and ready: it is started again first; `status` checks
  "kept warm"; `local up` starts the known-good color a record says must stay warm;
- instant rollback uses only a standby that passed analysis with the wanted release (a killed
  deploy's preview of the same version with other settings never counts);
- the scale-down after a newer deploy started is that deploy's business (exit 0), and `status`
  never takes the deploy lock;
- a record is judged from its steps: killed during `abort` after the switch back it never
  reads "interrupted before the switch"; an instant rollback writes its intent before its switch.

Processes are killed at an exact instant by waiting for the state they make observable (the
router's upstream, the record's running step), never by a hook in the product.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from opsctl import httpclient
from opsctl.cli import app
from opsctl.local import caddy

pytestmark = pytest.mark.slow


@pytest.fixture
def platform(local_platform, monkeypatch, runner):
    monkeypatch.chdir(local_platform.root)
    monkeypatch.delenv("OPSCTL_WORKER_API_KEY", raising=False)
    local_platform.up()
    history = _history_path(local_platform.root)
    records = json.loads(history.read_text()) if history.exists() else []
    if records and records[-1]["outcome"] in ("in-progress", "awaiting-promotion"):
        runner.invoke(app, ["abort"])  # leave no unfinished deploy of an earlier test behind
    return local_platform


def _folder(root: Path) -> Path:
    return root / ".opsctl" / "local"


def _history_path(root: Path) -> Path:
    return _folder(root) / "deploys.json"


def _history(root: Path) -> list[dict]:
    return json.loads(_history_path(root).read_text())


def _state(root: Path) -> dict:
    return json.loads((_folder(root) / "state.json").read_text())


def _other(color: str) -> str:
    return "green" if color == "blue" else "blue"


def _status(runner) -> dict:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _router_version(router_url: str) -> str:
    resp = httpclient.get(f"{router_url}/version", timeout=10)
    assert resp.status_code == 200, f"the router answers {resp.status_code}: traffic went to a dead color"
    return resp.json()["version"]


def _serves(root: Path, color: str) -> bool:
    comps = _state(root)["components"]
    target = comps.get(f"worker-{color}")
    return bool(target) and caddy.current_upstream(comps["router"]["admin_port"]) == f"127.0.0.1:{target['port']}"


def _last_step(root: Path) -> tuple[str | None, tuple[str, str] | None]:
    try:
        record = _history(root)[-1]
    except (OSError, ValueError, IndexError):
        return None, None
    steps = record["steps"]
    return record["id"], ((steps[-1]["name"], steps[-1]["status"]) if steps else None)


def _kill_when(root: Path, args: list[str], condition: Callable[[], bool], timeout: float = 300) -> None:
    """Run `opsctl ARGS`, SIGKILL it (its whole group) the instant `condition` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "opsctl", *args], cwd=root, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"opsctl {args} ended before the instant: {proc.communicate()}"
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError(f"opsctl {args} never reached the instant")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _kill_after_switch(root: Path, runner, version: str) -> tuple[str, str]:
    """A deploy SIGKILLed the instant the router points at its color; (known-good color, version)."""
    before = _status(runner)
    good = before["active_color"]
    _kill_when(root, ["deploy", "--image", f"worker:{version}", "--no-wait"], lambda: _serves(root, _other(good)))
    return good, before["colors"][good]["version"]


def _stop_color(root: Path, color: str) -> None:
    """What `opsctl local down && opsctl local up` leaves: the standby color's process gone."""
    from opsctl.local import procs

    pid = _state(root)["components"][f"worker-{color}"]["pid"]
    assert procs.stop(pid, 30, "transcription-worker")


def test_rollback_starts_a_stopped_known_good_color_before_switching(runner, platform):
    root, router = platform.root, platform.endpoints().router_url
    good, good_version = _kill_after_switch(root, runner, "crash20-rollback")
    _stop_color(root, good)
    doc = _status(runner)
    assert doc["known_good"]["color"] == good and doc["known_good_warm"] is False
    assert "is NOT running" in doc["notice"] and "kept warm" not in doc["notice"]
    assert "not running" in runner.invoke(app, ["status"]).output

    result = runner.invoke(app, ["rollback", "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    assert _router_version(router) == good_version  # never a 502 from a dead color
    killed = next(r for r in _history(root) if r["version"] == "crash20-rollback")
    assert killed["outcome"] == "rolled-back"
    assert [s["name"] for s in killed["steps"]][-2:] == [f"bring back {good}", "return"]


def test_abort_starts_a_stopped_known_good_color_and_leaves_a_worker(runner, platform):
    root, router = platform.root, platform.endpoints().router_url
    good, good_version = _kill_after_switch(root, runner, "crash20-abort")
    _stop_color(root, good)
    # killed between Caddy's switch and the state write: the file still names the old color
    doc = _state(root)
    doc["active_color"] = good
    (_folder(root) / "state.json").write_text(json.dumps(doc))
    result = runner.invoke(app, ["abort", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outcome"] == "aborted"
    assert _router_version(router) == good_version
    doc = _status(runner)
    assert doc["active_color"] == good and doc["colors"][good]["ready"]
    assert not doc["colors"][_other(good)]["running"]


def test_local_up_starts_the_known_good_color_a_record_keeps_warm(runner, platform):
    from opsctl.local import platform as lp

    root = platform.root
    good, good_version = _kill_after_switch(root, runner, "crash20-up")
    _stop_color(root, good)
    assert _status(runner)["known_good_warm"] is False
    started = lp.up(platform.project()).started
    assert f"worker-{good}" in started
    doc = _status(runner)
    assert doc["known_good_warm"] is True and doc["colors"][good]["version"] == good_version
    assert runner.invoke(app, ["abort"]).exit_code == 0


def test_resumed_analysis_that_fails_switches_back_to_a_restarted_known_good(runner, platform):
    from opsctl.local import procs

    root, router = platform.root, platform.endpoints().router_url
    good, good_version = _kill_after_switch(root, runner, "crash20-settle")
    _stop_color(root, good)
    bad = _other(good)
    procs.stop(_state(root)["components"][f"worker-{bad}"]["pid"], 30, "transcription-worker")  # fails analysis
    result = runner.invoke(app, ["promote", "--json"])
    assert result.exit_code == 1, result.output
    record = next(r for r in _history(root) if r["version"] == "crash20-settle")
    assert record["outcome"] == "rolled-back", record
    assert [s["name"] for s in record["steps"]][-2:] == [f"bring back {good}", "switch back"]
    assert _router_version(router) == good_version


def test_instant_rollback_never_uses_a_preview_a_killed_deploy_left(runner, platform):
    """Same version as the warm standby, other settings, killed while its preview waits to be
    ready or is being analysed: it never passed analysis, so rollback cleans it up and redeploys
    the analysed release. (A preview can be ready in 0.0 s, too short for the test to see the
    'wait ready' step running; the analysis step is seconds long and still unfinished.)"""
    root = platform.root
    before = _status(runner)
    standby, standby_version = before["active_color"], before["colors"][before["active_color"]]["version"]
    standby_settings = _state(root)["components"][f"worker-{standby}"]["settings"]
    assert runner.invoke(app, ["deploy", "--image", "worker:crash20-newer", "--no-wait"]).exit_code == 0
    start = _last_step(root)[0]
    _kill_when(root, ["deploy", "--image", f"worker:{standby_version}", "--set", "rate_limit_rpm=1", "--no-wait"],
               lambda: _last_step(root)[0] != start
               and _last_step(root)[1] in (("wait ready", "running"), ("pre-promotion analysis", "running")))
    from opsctl.local import worker as wk

    port = _state(root)["components"][f"worker-{standby}"]["port"]
    deadline = time.monotonic() + 240
    while not wk.ready(port) and time.monotonic() < deadline:  # the killed deploy's preview gets ready
        time.sleep(0.2)
    result = runner.invoke(app, ["rollback", "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    comps = _state(root)["components"]
    active = _status(runner)["active_color"]
    assert comps[f"worker-{active}"]["version"] == standby_version
    assert comps[f"worker-{active}"]["settings"] == standby_settings, "traffic went to the unanalysed preview"
    killed = [r for r in _history(root) if r["settings"].get("rate_limit_rpm") == "1"][-1]
    assert killed["outcome"] == "interrupted"


def test_killed_abort_after_its_switch_back_is_told_from_its_steps(runner, platform):
    root, router = platform.root, platform.endpoints().router_url
    good, good_version = _kill_after_switch(root, runner, "crash20-abort-killed")
    _kill_when(root, ["abort"], lambda: _last_step(root)[1] == ("stop", "running"))
    doc = _status(runner)
    assert "before the switch" not in doc["notice"]
    assert f"returned it to {good}" in doc["notice"]
    assert _router_version(router) == good_version
    nxt = runner.invoke(app, ["abort", "--json"])
    assert nxt.exit_code == 0, nxt.output
    record = next(r for r in _history(root) if r["version"] == "crash20-abort-killed")
    assert record["outcome"] == "aborted" and "running" not in [s["status"] for s in record["steps"]]
    names = [s["name"] for s in record["steps"]]
    assert "switch back" in names and record["steps"][names.index("switch back")]["status"] == "ok"


def test_instant_rollback_writes_its_intent_before_the_switch(runner, platform):
    """Killed at its switch (held there by the platform's state lock, which the switch takes),
    the rollback has left its record; the next command closes it from where traffic is."""
    from filelock import FileLock

    root, router = platform.root, platform.endpoints().router_url
    assert runner.invoke(app, ["deploy", "--image", "worker:crash20-intent", "--no-wait"]).exit_code == 0
    doc = _status(runner)
    active, standby = doc["active_color"], _other(doc["active_color"])
    assert doc["colors"][standby]["ready"]
    with FileLock(str(_folder(root) / "lock")):
        _kill_when(root, ["rollback", "--no-wait"], lambda: _history(root)[-1]["strategy"] == "rollback"
                   and _last_step(root)[1] == ("switch", "running"), timeout=120)
    last = _history(root)[-1]
    assert last["to_color"] == standby and last["outcome"] == "in-progress"
    assert "rollback" in _status(runner)["notice"]
    assert runner.invoke(app, ["abort"]).exit_code == 2  # nothing to abort once the rollback is closed
    closed = _history(root)[-1]
    assert closed["id"] == last["id"] and closed["outcome"] == "interrupted"
    assert "running" not in [s["status"] for s in closed["steps"]]
    assert _router_version(router) == "crash20-intent" and _status(runner)["active_color"] == active


def test_scale_down_after_a_newer_deploy_holds_the_lock_is_skipped(platform):
    """The old color's scale-down of a finished deploy meets another deploy's lock: a note, not
    a failure (the newer deploy stops what is overdue)."""
    from opsctl.deploy import bluegreen
    from opsctl.deploy.drivers.local import LocalDriver
    from opsctl.deploy.model import DeployRecord, Outcome

    project = platform.project()
    driver = LocalDriver(project, project.env("local"))
    kept = _history_path(platform.root).read_bytes()
    active = driver.active_color()
    record = DeployRecord(env="local", strategy="blue-green", image="worker:x", version="x", settings={},
                          to_color=active, from_color=_other(active), from_version="y",
                          outcome=Outcome.PROMOTED, standby_until=time.time())
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom opsctl.config import load_project\nfrom opsctl.deploy.drivers.local import LocalDriver\n"
        "p = load_project(sys.argv[1]); d = LocalDriver(p, p.env('local'))\n"
        "with d.lock():\n    print('held', flush=True); time.sleep(60)\n"), str(platform.root)],
        stdout=subprocess.PIPE, text=True)
    try:
        driver.save(record)
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(bluegreen.Superseded, match="another deploy holds the deploy lock"):
            bluegreen.finish_scale_down(driver, record)
    finally:
        holder.kill()
        holder.wait()
        _history_path(platform.root).write_bytes(kept)


def test_status_never_takes_the_deploy_lock(platform, monkeypatch):
    from filelock import FileLock

    from opsctl.deploy import operation

    taken = []
    real = FileLock.acquire
    monkeypatch.setattr(FileLock, "acquire", lambda self, *a, **kw: (
        taken.append(self.lock_file) if str(self.lock_file).endswith("deploy.lock") else None, real(self, *a, **kw))[1])
    doc = operation.status(platform.project(), "local")
    assert doc["active_color"] and not taken, taken
