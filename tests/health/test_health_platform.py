"""Sweeps of the embedded platform (the session's `local_platform`): real PostgreSQL, Redis,
moto S3, Caddy and the worker, through `opsctl health` as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest
import yaml

from opsctl import httpclient
from opsctl.cli import app
from tests.health.servers import HungServer

pytestmark = pytest.mark.slow

# The host check reads this machine's CPU, memory and disk, and the metrics check judges the
# worker's p95 since the previous sweep, both of which the test run itself loads: platform
# sweeps skip them; test_host_check_follows_the_configured_thresholds and
# test_worker_metrics_take_a_baseline_then_judge_the_window cover them.
PLATFORM_CHECKS = {"router", "postgres", "redis", "s3"}


def sweep(runner, root: Path, *args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["--root", str(root), "health", "--json", *args])
    assert result.stdout.strip(), result.output
    return result.exit_code, json.loads(result.stdout)


def by_name(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def side_root(tmp_path: Path, platform_root: Path, health: dict, thresholds: dict | None = None) -> Path:
    """An ops root whose `local` is the session's platform (its state folder linked) with
    extra health settings, so a test can add checks without touching the shared opsctl.yaml."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((platform_root / "opsctl.yaml").read_text())
    cfg["environments"]["local"]["health"] = health
    if thresholds:
        cfg["environments"]["local"]["thresholds"] = thresholds
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / ".opsctl").mkdir()
    (tmp_path / ".opsctl" / "local").symlink_to(platform_root / ".opsctl" / "local")
    return tmp_path


def test_healthy_platform_sweep_exits_0(local_platform, runner, tmp_path):
    local_platform.up()
    junit = tmp_path / "health.xml"
    # The backup age check is left out: a fresh platform has no backup yet (tested on its own).
    code, doc = sweep(runner, local_platform.root, "--skip", "backup", "--skip", "host", "--skip", "metrics", "--junit", str(junit))
    checks = by_name(doc)
    assert PLATFORM_CHECKS | {f"worker-{local_platform.endpoints().active_color}"} <= set(checks)
    assert code == 0, [c for c in doc["checks"] if c["status"] != "OK"]
    assert doc["status"] == "OK" and all(c["status"] == "OK" for c in doc["checks"])
    assert checks["postgres"]["details"]["max_connections"] > checks["postgres"]["details"]["connections"] > 0
    assert checks["redis"]["message"].startswith("PONG")
    assert "canary round trip" in checks["s3"]["message"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("tests")) == len(doc["checks"]) and suite.get("failures") == "0"
    # the S3 canary cleans up after itself
    ep = local_platform.endpoints()
    left = ep.s3_client().list_objects_v2(Bucket=ep.audio_bucket, Prefix=".opsctl-health/").get("KeyCount")
    assert left == 0


def test_stopped_redis_is_critical_and_the_rest_still_reports(local_platform, runner):
    local_platform.up()
    state = json.loads((local_platform.root / ".opsctl" / "local" / "state.json").read_text())
    pid = state["components"]["redis"]["pid"]
    try:
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(10) if psutil.pid_exists(pid) else None
        code, doc = sweep(runner, local_platform.root, "--skip", "backup", "--skip", "host", "--skip", "metrics")
        checks = by_name(doc)
        assert code == 2 and doc["status"] == "CRITICAL"
        assert checks["redis"]["status"] == "CRITICAL" and "cannot ping" in checks["redis"]["message"]
        assert PLATFORM_CHECKS <= set(checks)
        others = {n: c["status"] for n, c in checks.items() if n != "redis"}
        assert all(s == "OK" for s in others.values()), others  # the worker's readiness does not hang on Redis
    finally:
        local_platform.up()
    code, doc = sweep(runner, local_platform.root, "--check", "redis")
    assert code == 0 and by_name(doc)["redis"]["status"] == "OK"


def test_hung_endpoint_is_critical_after_its_timeout(local_platform, runner, tmp_path):
    local_platform.up()
    hung = HungServer()
    try:
        root = side_root(tmp_path, local_platform.root, {"http": [
            {"name": "hung", "url": f"{hung.url}/readyz", "timeout": 1.5}]})
        code, doc = sweep(runner, root, "--skip", "backup", "--skip", "host", "--skip", "metrics")
        checks = by_name(doc)
        assert code == 2
        assert checks["hung"]["status"] == "CRITICAL" and "1.5s" in checks["hung"]["message"]
        assert hung.accepted, "the check never reached the hung server"
        assert PLATFORM_CHECKS <= set(checks)
        assert all(c["status"] == "OK" for n, c in checks.items() if n != "hung")
    finally:
        hung.close()


def test_worker_metrics_take_a_baseline_then_judge_the_window(local_platform, runner, tmp_path):
    local_platform.up()
    root = side_root(tmp_path, local_platform.root, {})
    color = local_platform.endpoints().active_color
    _, first = sweep(runner, root, "--check", "metrics-*")
    assert "baseline taken" in by_name(first)[f"metrics-{color}"]["message"]
    base = local_platform.endpoints().workers[color]
    for _ in range(3):  # API requests (a 404 is the client's, no error) and probes, which are not traffic
        assert httpclient.get(f"{base}/v1/jobs/job_none", timeout=10).status_code == 404
        assert httpclient.get(f"{base}/version", timeout=10).status_code == 200
    code, second = sweep(runner, root, "--check", "metrics-*")
    details = by_name(second)[f"metrics-{color}"]["details"]
    assert code == 0 and details["requests"] >= 3  # the three above, within the window since the baseline
    assert details["error_rate_percent"] == 0.0 and details["queue_depth"] == 0


def test_backup_age_of_a_real_backup(local_platform, runner, tmp_path):
    pytest.importorskip("opsctl.backup", reason="the backup capability (issue 6) is not installed")
    local_platform.up()
    root = side_root(tmp_path, local_platform.root, {})
    cfg = yaml.safe_load((root / "opsctl.yaml").read_text())
    repo = {"repository": f"file://{tmp_path / 'repo'}"}
    cfg["environments"]["local"]["backup"] = repo
    cfg["environments"]["local"]["health"] = {"heartbeats": [
        {"name": "nightly-backup", "cron": "0 2 * * *", "grace_minutes": 60, "source": "backup"}]}
    cfg["environments"]["strict"] = {"platform": "local", "backup": repo, "thresholds": {"backup_age_hours": 1e-7}}
    (root / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    code, doc = sweep(runner, root, "--check", "backup age", "--check", "heartbeat")
    assert by_name(doc)["heartbeat nightly-backup"]["status"] == "CRITICAL"
    assert code in (2, 3) and by_name(doc)["backup age"]["status"] != "OK"  # none yet
    made = runner.invoke(app, ["--root", str(root), "backup", "create", "--type", "redis", "--no-encrypt", "--json"])
    assert made.exit_code == 0, made.output
    code, doc = sweep(runner, root, "--check", "backup age")
    # a Redis snapshot is no database backup (breaker 42 R5: hourly snapshots kept the check OK)
    assert code == 2 and "no complete backup of the database" in by_name(doc)["backup age"]["message"], json.dumps(doc)
    made = runner.invoke(app, ["--root", str(root), "backup", "create", "--type", "db", "--no-encrypt", "--json"])
    assert made.exit_code == 0, made.output
    code, doc = sweep(runner, root, "--check", "backup age", "--check", "heartbeat")
    check = by_name(doc)["backup age"]
    assert code == 0 and check["value"] < 0.1 and check["details"]["source"] == "opsctl.backup catalog", json.dumps(doc)
    assert by_name(doc)["heartbeat nightly-backup"]["status"] == "OK"  # the backup is the beat
    code, doc = sweep(runner, root, "--env", "strict", "--check", "backup age")
    assert code == 2 and "above" in by_name(doc)["backup age"]["message"], json.dumps(doc)


def test_host_check_follows_the_configured_thresholds(local_platform, runner, tmp_path):
    lenient = side_root(tmp_path / "a", local_platform.root, {},
                        {"cpu_percent": 100, "memory_percent": 100, "disk_percent": 100})  # never above
    code, doc = sweep(runner, lenient, "--check", "host")
    assert code == 0 and by_name(doc)["host"]["status"] == "OK"
    full = side_root(tmp_path / "b", local_platform.root, {}, {"disk_percent": 0.001})
    code, doc = sweep(runner, full, "--check", "host")
    host = by_name(doc)["host"]
    assert code == 2 and host["status"] == "CRITICAL" and "disk" in host["message"]


def test_uploads_check_reads_the_real_workers_gauges(local_platform, runner):
    """The `uploads` check against the session's real worker: the figure it reports is the
    one the worker's /metrics exports (issue 26)."""
    from opsctl.health.checks.uploads import INCOMPLETE, read_gauges

    local_platform.up()
    ep = local_platform.endpoints()
    code, doc = sweep(runner, local_platform.root, "--check", "uploads")
    (check,) = doc["checks"]
    exported = read_gauges(httpclient.get(f"{ep.workers[ep.active_color]}/metrics", timeout=10).text)
    assert check["name"] == "uploads" and check["status"] == "OK", check
    assert check["value"] == exported[INCOMPLETE] and check["unit"] == "uploads"
    assert code == 0
