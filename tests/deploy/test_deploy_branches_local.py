"""The riskiest deploy branches on the embedded platform (issue 20 §1, §3; issue 17 §1):
a failed post-promotion analysis, --no-auto-promote then promote or abort, a deploy killed
with SIGKILL right after its switch, and analysis that must judge the model, not the store.

A process is killed at an exact instant by waiting for the state it has made observable
(Caddy's admin API pointing at the new color), never by a hook in the product.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsctl import httpclient
from opsctl.cli import app
from opsctl.local import caddy

pytestmark = pytest.mark.slow


@pytest.fixture
def platform(local_platform, monkeypatch):
    monkeypatch.chdir(local_platform.root)
    monkeypatch.delenv("OPSCTL_WORKER_API_KEY", raising=False)
    local_platform.up()
    _settle(local_platform.root)
    return local_platform


def _settle(root: Path) -> None:
    """Leave no unfinished deploy from an earlier test behind (abort ends it)."""
    from typer.testing import CliRunner

    history = root / ".opsctl" / "local" / "deploys.json"
    records = json.loads(history.read_text()) if history.exists() else []
    if records and records[-1]["outcome"] in ("in-progress", "awaiting-promotion"):
        CliRunner().invoke(app, ["abort", "--json"])


def _status(runner) -> dict:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _other(color: str) -> str:
    return "green" if color == "blue" else "blue"


def _router_version(router_url: str) -> str:
    return httpclient.get(f"{router_url}/version", timeout=10).json()["version"]


def _record(runner, version: str) -> dict:
    return next(d for d in _status(runner)["deploys"] if d["version"] == version)


def _history(root: Path) -> list[dict]:
    return json.loads((root / ".opsctl" / "local" / "deploys.json").read_text())


def _local_state(root: Path) -> dict:
    return json.loads((root / ".opsctl" / "local" / "state.json").read_text())


def _start_deploy(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "opsctl", "deploy", *args], cwd=root, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_router_on(root: Path, color: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Block until Caddy itself sends traffic to `color`'s worker (the switch has happened)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the deploy ended before its switch: {proc.communicate()}"
        comps = _local_state(root)["components"]
        target = comps.get(f"worker-{color}")
        if target and caddy.current_upstream(comps["router"]["admin_port"]) == f"127.0.0.1:{target['port']}":
            return
        time.sleep(0.02)
    raise AssertionError(f"the router never pointed at {color}")


def _kill_after_switch(platform, version: str) -> tuple[str, str]:
    """Start a deploy, SIGKILL it the instant the router points at the new color; return
    (known-good color, its version)."""
    root = platform.root
    before = _status_doc(root)
    active = before["active_color"]
    proc = _start_deploy(root, "--image", f"worker:{version}")
    _wait_router_on(root, _other(active), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return active, before["colors"][active]["version"]


def _status_doc(root: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "opsctl", "status", "--json"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_post_promotion_failure_switches_traffic_back(runner, platform):
    """The new color dies right after the switch: analysis fails, traffic and record go back."""
    import psutil

    router = platform.endpoints().router_url
    before = _status(runner)
    good, good_version = before["active_color"], before["colors"][before["active_color"]]["version"]
    proc = _start_deploy(platform.root, "--image", "worker:dies-after-switch", "--json")
    _wait_router_on(platform.root, _other(good), proc)
    psutil.Process(_local_state(platform.root)["components"][f"worker-{_other(good)}"]["pid"]).kill()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    assert "rolled back to" in err
    record = _record(runner, "dies-after-switch")
    assert record["outcome"] == "rolled-back" and "post-promotion analysis failed" in record["reason"]
    steps = [s["name"] for s in _history(platform.root)[-1]["steps"]]
    assert steps[-3:] == ["switch", "post-promotion analysis", "switch back"]
    assert _router_version(router) == good_version
    assert _status(runner)["active_color"] == good


def test_awaiting_promotion_then_promote(runner, platform):
    router = platform.endpoints().router_url
    before = _router_version(router)
    waiting = runner.invoke(app, ["deploy", "--image", "worker:7.0.0", "--no-auto-promote", "--json"])
    assert waiting.exit_code == 0, waiting.output
    record = json.loads(waiting.stdout)
    assert record["outcome"] == "awaiting-promotion"
    assert _router_version(router) == before  # nothing switched yet
    doc = _status(runner)
    assert doc["awaiting_promotion"] == record["to_color"] and doc["colors"][record["to_color"]]["running"]

    promoted = runner.invoke(app, ["promote", "--json"])
    assert promoted.exit_code == 0, promoted.output
    after = json.loads(promoted.stdout)
    assert after["id"] == record["id"] and after["outcome"] == "promoted"
    assert [s["name"] for s in after["steps"]][-2:] == ["switch", "post-promotion analysis"]
    assert _router_version(router) == "7.0.0"
    doc = _status(runner)
    assert doc["active_color"] == record["to_color"]
    # breaker 53 F6: the old color said to "stay warm for 2s" ran on until the next deploy
    assert not doc["colors"][record["from_color"]]["running"], doc["colors"]


def test_promote_no_wait_leaves_the_old_color_and_status_says_when_it_overstays(runner, platform):
    """`promote --no-wait` returns at once, the old color warm; once its standby time (the
    environment's scale_down_delay, 2 s here) has passed, `status` says it still runs."""
    import time

    waiting = runner.invoke(app, ["deploy", "--image", "worker:7.0.1", "--no-auto-promote", "--json"])
    assert waiting.exit_code == 0, waiting.output
    record = json.loads(waiting.stdout)
    promoted = runner.invoke(app, ["promote", "--no-wait", "--json"])
    assert promoted.exit_code == 0, promoted.output
    standby_until = json.loads(promoted.stdout)["standby_until"]
    while time.time() <= standby_until:
        time.sleep(0.5)
    doc = _status(runner)
    assert doc["colors"][record["from_color"]]["running"]
    assert f"{record['from_color']} (" in doc["notice"] and "past its standby time" in doc["notice"], doc["notice"]
    text = runner.invoke(app, ["status"])
    assert "past its standby time" in " ".join(text.stdout.split()), text.stdout


def test_awaiting_promotion_then_abort(runner, platform):
    router = platform.endpoints().router_url
    before = _router_version(router)
    waiting = runner.invoke(app, ["deploy", "--image", "worker:7.1.0", "--no-auto-promote", "--json"])
    assert waiting.exit_code == 0, waiting.output
    preview = json.loads(waiting.stdout)["to_color"]
    assert _status(runner)["colors"][preview]["running"]

    aborted = runner.invoke(app, ["abort", "--json"])
    assert aborted.exit_code == 0, aborted.output
    assert json.loads(aborted.stdout)["outcome"] == "aborted"
    doc = _status(runner)
    assert not doc["colors"][preview]["running"]  # the preview is stopped
    assert doc["deploys"][0]["version"] == "7.1.0" and doc["deploys"][0]["outcome"] == "aborted"
    assert _router_version(router) == before
    again = runner.invoke(app, ["abort"])
    assert again.exit_code == 2 and "nothing to abort" in again.output
    assert runner.invoke(app, ["promote"]).exit_code == 2  # nothing awaits promotion any more


def test_deploy_killed_after_switch_is_finished_by_the_next_deploy(runner, platform):
    router = platform.endpoints().router_url
    good, good_version = _kill_after_switch(platform, "killed-after-switch")
    assert _router_version(router) == "killed-after-switch"  # traffic moved, no verdict yet

    doc = _status(runner)
    assert "interrupted after the switch" in doc["notice"]
    assert doc["known_good"] == {"color": good, "version": good_version}
    assert doc["colors"][good]["running"]  # the known-good color stays warm
    shown = runner.invoke(app, ["status"])
    assert "interrupted after the switch" in shown.output and f"known-good: {good}" in shown.output

    nxt = runner.invoke(app, ["deploy", "--image", "worker:after-interrupted", "--no-wait", "--json"])
    assert nxt.exit_code == 0, nxt.output
    finished = next(r for r in _history(platform.root) if r["version"] == "killed-after-switch")
    # its post-promotion analysis ran first, then the next deploy went ahead
    assert finished["outcome"] == "promoted"
    names = [s["name"] for s in finished["steps"]]
    assert "switch" in names and names[-2:] == ["resume", "post-promotion analysis"]
    assert "running" not in [s["status"] for s in finished["steps"]]
    assert finished["steps"][-1]["status"] == "ok" and "real transcriptions" in finished["steps"][-1]["detail"]
    assert _router_version(router) == "after-interrupted"
    assert _status(runner)["notice"] is None


def test_deploy_killed_after_switch_then_rollback_returns_to_known_good(runner, platform):
    router = platform.endpoints().router_url
    good, good_version = _kill_after_switch(platform, "killed-then-rollback")
    result = runner.invoke(app, ["rollback", "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["strategy"] == "rollback" and record["to_color"] == good
    assert "known-good" in record["reason"]
    assert _router_version(router) == good_version
    killed = _record(runner, "killed-then-rollback")
    assert killed["outcome"] == "rolled-back" and "interrupted after the switch" in killed["reason"]
    assert _status(runner)["active_color"] == good


def test_deploy_killed_after_switch_then_abort(runner, platform):
    router = platform.endpoints().router_url
    good, good_version = _kill_after_switch(platform, "killed-then-abort")
    result = runner.invoke(app, ["abort", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outcome"] == "aborted"
    assert _router_version(router) == good_version
    doc = _status(runner)
    assert doc["active_color"] == good and not doc["colors"][_other(good)]["running"]


def _shuffled_model(tmp: Path) -> Path:
    """The assembled Whisper base with the text ids of its tokenizer permuted: it loads, it is
    ready, and it transcribes garbage."""
    from opsctl.local import worker as wk

    source = Path(wk.assemble_model())
    target = tmp / "whisper-shuffled"
    target.mkdir()
    for item in source.iterdir():
        if item.name != "tokenizer.json":
            (target / item.name).symlink_to(item)
    doc = json.loads((source / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    tokens, ids = list(vocab), list(vocab.values())
    random.Random(17).shuffle(ids)
    doc["model"]["vocab"] = dict(zip(tokens, ids))
    (target / "tokenizer.json").write_text(json.dumps(doc))
    return target


def test_analysis_runs_the_model_not_the_transcript_store(runner, platform, tmp_path):
    """Issue 17 §1: with the sample's transcript already stored, a release that transcribes
    garbage is refused before the switch (pre-promotion sends Cache-Control: no-cache)."""
    from opsctl.deploy.analysis import TRANSCRIBE, sample

    router = platform.endpoints().router_url
    audio, expected = sample()
    stored = httpclient.post(f"{router}{TRANSCRIBE}", files={"file": ("sample.wav", audio, "audio/wav")},
                        data={"model": "whisper-1", "language": "en"}, timeout=120)  # now in the store
    assert stored.status_code == 200, stored.text
    before = _router_version(router)
    model = _shuffled_model(tmp_path)
    result = runner.invoke(app, ["deploy", "--image", "worker:shuffled-tokenizer", "--set", f"model_path={model}",
                                 "--set", "model_name=whisper-base", "--json"])
    assert result.exit_code == 1, result.output
    assert "pre-promotion analysis failed" in result.output and "word error" in result.output
    assert _router_version(router) == before
    assert _record(runner, "shuffled-tokenizer")["outcome"] == "failed"


def test_post_promotion_judges_real_transcriptions_only(platform):
    """Zero real transcriptions in the window is a failure, never a silent pass."""
    from opsctl.deploy import analysis

    doc = _status_doc(platform.root)
    url = doc["colors"][doc["active_color"]]["url"]
    idle = analysis.post_promotion(url, None, 1.0, 5.0, 300000, {}, probe_every=0.5)  # no canaries
    assert not idle.ok and "0 real transcriptions" in idle.detail
    busy = analysis.post_promotion(url, url, 1.0, 5.0, 300000, {}, probe_every=0.5)  # judges counting, not speed
    assert busy.ok, busy.detail
    assert busy.detail.startswith("judged ") and "real transcriptions" in busy.detail


def test_load_gate_and_analysis_send_the_configured_key(runner, platform, monkeypatch):
    """Issue 19 §3 / 17 §1: a release that demands a key passes pre-promotion analysis and the
    --load-gate when opsctl has the key (both send it, and Cache-Control: no-cache)."""
    import hashlib

    router = platform.endpoints().router_url
    before = _router_version(router)
    key = "gate-key-" + os.urandom(6).hex()
    monkeypatch.setenv("OPSCTL_WORKER_API_KEY", key)
    key_hash = hashlib.sha256(key.encode()).hexdigest()
    result = runner.invoke(app, ["deploy", "--image", "worker:keyed", "--set", f"api_key_hashes={key_hash}",
                                 # without the key every request is a 401 (100%); a short run may end
                                 # with a request in flight, which the load test counts as failed
                                 "--load-gate", "error_rate<50%", "--load-gate-duration", "5s",
                                 "--no-auto-promote", "--json"])
    assert result.exit_code == 0, result.output
    steps = {s["name"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["pre-promotion analysis"]["status"] == "ok", steps
    assert steps["pre-promotion load test"]["status"] == "ok" and "SLO met" in steps["pre-promotion load test"]["detail"]
    assert key not in result.output
    # the keyed preview's /metrics: read with the key, refused (and the analysis failed) without
    from opsctl.deploy import analysis

    preview = _status(runner)["colors"][json.loads(result.stdout)["to_color"]]["url"]
    with pytest.raises(analysis.ScrapeError, match="401"):
        analysis.scrape(preview, {})
    assert analysis.scrape(preview, analysis.analysis_headers("OPSCTL_WORKER_API_KEY")).transcriptions >= 1
    blind = analysis.post_promotion(preview, None, 0.1, 5.0, 300000, {})
    assert not blind.ok and "cannot read the promoted color's metrics" in blind.detail
    assert runner.invoke(app, ["abort"]).exit_code == 0  # the shared platform stays keyless
    assert _router_version(router) == before


def test_damaged_deploy_history_is_one_line(runner, platform):
    history = platform.root / ".opsctl" / "local" / "deploys.json"
    kept = history.read_bytes()
    try:
        history.write_text('[{"env": "local", "version": ')
        result = runner.invoke(app, ["status"])
        assert result.exit_code == 2 and "deploys.json is damaged" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    finally:
        history.write_bytes(kept)
