"""A health monitor (continuous, scheduled) stopped by SIGTERM or Ctrl-C: one line, exit 130,
the alerts it had queued delivered first (breaker 38 H12: SIGTERM killed it outright)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_monitor_stopped_by_a_signal_says_so_and_exits_130(tmp_path, sig):
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "health": {"http": [{"name": "api", "url": "http://127.0.0.1:9/readyz"}]}}}}))
    history = tmp_path / "history.jsonl"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "opsctl"), "health", "--env", "ci", "--mode",
                             "continuous", "--interval", "1", "--history", str(history), "--json"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # SIGINT as a terminal leaves it (an xdist worker ignores it, and a child
                            # inherits that: Python then installs no Ctrl-C handler)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (history.exists() and history.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)  # a sweep done: the monitor is in its loop
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    errors = [line for line in err.splitlines() if line.startswith("opsctl: error:")]
    assert len(errors) == 1 and "health monitor of ci stopped" in errors[0], err
    assert "Traceback" not in err and out.strip().splitlines(), (out, err)
