"""What the health monitor keeps on disk (alert state, history, heartbeats, metric samples,
silences) is private: files 0600 in 0700 folders (issue 18 §4)."""

from __future__ import annotations

import os
import stat

import yaml

from opsctl.config import load_project
from opsctl.health import monitor, silences
from opsctl.health.checks import heartbeat
from tests.health.servers import ScriptedServer


def test_health_state_is_private(tmp_path):
    target = ScriptedServer([500] * 6)
    try:
        (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
            "platform": "kubernetes", "health": {"http": [{"name": "target", "url": f"{target.url}/readyz"}],
                                                 "alerts": {"failure_threshold": 1},
                                                 "heartbeats": [{"name": "nightly", "cron": "0 2 * * *"}]}}}}))
        project = load_project(tmp_path)
        os.umask(0o022)
        history = project.state_dir / "health" / "history.jsonl"
        monitor.watch(project, project.env("ci"), interval=0.02, iterations=2, only=["target"], history=history)
        heartbeat.record(project.state_dir, "nightly")
        silences.add(project, "ci", "target", 60)
    finally:
        target.close()
    folder = project.state_dir / "health"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"history.jsonl", "alerts-ci.json", "heartbeats.json", "silences-ci.json"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
