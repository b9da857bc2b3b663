"""CI cancels a job with SIGTERM (issue 23, B23b 11): `opsctl deploy | promote | abort |
rollback` turn it into an interrupt, as backup, PITR and runbook runs do, so the operation
window ends (end event sent, silences gone) and the deploy lock is released, instead of the
process dying inside the window with the checks silenced for up to window_seconds.

Each case runs the real CLI in a child process on a local-platform environment with a real
webhook receiver; only the blue-green step itself is replaced by one that takes the real
deploy lock (the LocalDriver's, built without a platform up) and waits, so SIGTERM lands
inside the window with the lock held.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from opsctl.config import load_project
from opsctl.health import silences
from tests.health.servers import Receiver

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
from pathlib import Path
from opsctl.deploy import bluegreen, operation, rollback
from opsctl.deploy.drivers import local

def driver(project, env_name):  # the real LocalDriver and its real lock, without a platform up
    d = local.LocalDriver.__new__(local.LocalDriver)
    d.env, d.folder = project.env(env_name), local.st.folder_for(project.root)
    return d.env, d
operation._driver = driver

def held(driver, env, *_a, **_k):
    with driver.lock():
        Path(sys.argv[1]).write_text("inside")
        time.sleep(600)

for module, name in ((bluegreen, "deploy"), (bluegreen, "promote"), (bluegreen, "abort"), (rollback, "rollback")):
    setattr(module, name, held)
from opsctl.cli import app
app(sys.argv[2:], prog_name="opsctl")
"""


@pytest.mark.parametrize("command", [["deploy", "--image", "worker:9.9"], ["promote"], ["abort"], ["rollback"]])
def test_sigterm_inside_a_deploy_command_ends_its_window_and_releases_the_lock(tmp_path, command):
    receiver = Receiver()
    try:
        env = {"platform": "local", "health": {"sinks": [{"type": "webhook", "url_env": "TEST_HOOK_URL"}],
                                                "alerts": {"failure_threshold": 1, "reminder_minutes": None}}}
        (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": env}}))
        marker = tmp_path / "inside"
        environ = {k: v for k, v in os.environ.items() if k != "OPSCTL_ROOT"}
        environ.update(TEST_HOOK_URL=f"{receiver.url}/hook", PYTHONPATH=str(REPO))
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), *command, "--env", "ci", "--json"],
                                 cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(600):  # until the window is open and the lock taken (or the child ended)
                if marker.exists() or child.poll() is not None:
                    break
                time.sleep(0.1)
            assert marker.exists(), child.communicate(timeout=60)
            project = load_project(tmp_path)
            assert silences.active(project, "ci"), "the window holds its checks while the operation runs"
            child.send_signal(signal.SIGTERM)
            out, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode != -signal.SIGTERM, f"opsctl {command[0]} died of SIGTERM's default action"
        assert "Traceback" not in err, err
        ends = [e for e in receiver.at("/hook") if e.get("data", {}).get("event") == "end"]
        assert len(ends) == 1 and ends[0]["data"]["operation"] == command[0], receiver.posts
        assert ends[0]["data"]["outcome"] != "succeeded"
        assert silences.active(project, "ci") == []
        from opsctl.local import state

        holder = state.folder_for(project.root) / "deploy.lock.pid"
        assert holder.parent.is_dir() and not holder.exists(), "the deploy lock's holder file stayed"
    finally:
        receiver.close()


@pytest.mark.parametrize("command,module,core", [
    (["deploy", "--image", "worker:9.9"], "opsctl.deploy.operation", "deploy"),
    (["promote"], "opsctl.deploy.operation", "promote"),
    (["abort"], "opsctl.deploy.operation", "abort"),
    (["rollback"], "opsctl.deploy.operation", "rollback"),
    (["dr", "drill"], "opsctl.pitr.drill", "drill"),
    (["failover", "--yes"], "opsctl.pitr.failover", "failover")])
def test_every_command_with_an_operation_window_takes_sigterm_as_an_interrupt(runner, tmp_path, monkeypatch,
                                                                              command, module, core):
    """The other commands whose core opens an operation window (the restores already did):
    while the core function runs, SIGTERM is handled (raises KeyboardInterrupt), not the default."""
    import importlib

    seen = []

    def fake(*_a, **_k):
        seen.append(signal.getsignal(signal.SIGTERM))
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), core, fake)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments: {ci: {platform: local}}\n")
    from opsctl.cli import app

    result = runner.invoke(app, [*command, "--env", "ci"])
    assert len(seen) == 1, f"the core function was not reached: {result.output}"
    assert seen[0] not in (signal.SIG_DFL, signal.SIG_IGN, None), f"opsctl {' '.join(command)}: SIGTERM's default"
    assert signal.getsignal(signal.SIGTERM) is not seen[0], "the handler is restored after the command"
