"""Monitoring as code: rendered config passes promtool, and names only exported metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from opsctl import httpclient
from opsctl import monitoring
from opsctl.config import load_project

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed: apt-get install prometheus "
                                    "(make test installs it where apt-get works)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True)


def _check_config(path: Path) -> subprocess.CompletedProcess:
    """promtool check config; Debian builds Prometheus without Kubernetes discovery, so there
    the kubernetes_sd job is checked field by field here and the rest by promtool."""
    result = _promtool("check", "config", str(path))
    if "field kubernetes_sd_configs not found" not in result.stdout + result.stderr:
        return result
    config = yaml.safe_load(path.read_text())
    k8s = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" in j]
    assert k8s and all(sd["role"] == "pod" for j in k8s for sd in j["kubernetes_sd_configs"])
    keep = [r for j in k8s for r in j["relabel_configs"] if r.get("action") == "keep"]
    assert any(r["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"] for r in keep)
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j not in k8s]
    path.write_text(yaml.safe_dump(config))
    return _promtool("check", "config", str(path))


@needs_promtool
@pytest.mark.integration
def test_local_files_pass_promtool(local_platform, tmp_path):
    project = local_platform.project()
    files = monitoring.render_all(project, project.env("local"))
    monitoring.write(files, tmp_path)
    rules = _promtool("check", "rules", str(tmp_path / "alert-rules.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 10 rules found" in rules.stdout  # 8 + the two upload alerts
    config = _check_config(tmp_path / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    scrape = yaml.safe_load(files["prometheus.yml"])
    worker_job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "worker")
    ports = {t for c in worker_job["static_configs"] for t in c["targets"]}
    from opsctl.local import state as st
    from opsctl.local import worker as wk

    active = st.load(st.folder_for(project.root)).components[wk.name(local_platform.endpoints().active_color)]
    assert f"127.0.0.1:{active.metrics_port or active.port}" in ports  # the keyless metrics listener


@needs_promtool
def test_production_files_pass_promtool_with_exporters(tmp_path):
    project = load_project(REPO)
    env = project.env("production").model_copy(deep=True)
    env.monitoring.exporters = {"node": "node-exporter:9100"}
    env.monitoring.health_exporter = "opsctl-health:9464"
    files = monitoring.render_all(project, env)
    monitoring.write(files, tmp_path)
    rules = _promtool("check", "rules", str(tmp_path / "alert-rules.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 17 rules found" in rules.stdout  # 13 + two WAL archive lag + two upload alerts
    config = _check_config(tmp_path / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    docs = list(yaml.safe_load_all(files["kubernetes/monitoring.yaml"]))
    assert [d["kind"] for d in docs] == ["PrometheusRule", "PodMonitor", "ConfigMap"]
    assert json.loads(docs[2]["data"]["transcription-worker.json"])["uid"] == "opsctl-worker-production"
    names = {r["alert"] for g in docs[0]["spec"]["groups"] for r in g["rules"]}
    assert {"WorkerFleetDown", "WorkerCrashLooping", "HighErrorRate", "SlowResponses", "HostDiskFull", "BackupTooOld"} <= names


def test_every_rule_has_severity_summary_and_runbook_that_exists(tmp_path):
    project = load_project(REPO)
    env = project.env("staging").model_copy(deep=True)
    env.monitoring.exporters = {"node": "node-exporter:9100"}
    env.monitoring.health_exporter = "opsctl-health:9464"
    rules = yaml.safe_load(monitoring.render_all(project, env)["alert-rules.yml"])
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule
            assert rule["annotations"]["summary"], rule
            runbook = rule["annotations"]["runbook_url"]
            assert runbook.startswith("runbooks/") and (REPO / runbook).is_dir(), runbook


@pytest.mark.integration
def test_every_metric_in_rules_and_dashboards_is_exported_by_the_worker(local_platform):
    project = local_platform.project()
    files = monitoring.render_all(project, project.env("local"))
    url = local_platform.endpoints().workers[local_platform.endpoints().active_color]
    exported = {s.name for f in text_string_to_metric_families(httpclient.get(f"{url}/metrics", timeout=10).text)
                for s in f.samples} | {f.name for f in text_string_to_metric_families(
                    httpclient.get(f"{url}/metrics", timeout=10).text)}
    wanted = monitoring.metric_names(files)
    assert {"worker_requests_total", "worker_request_duration_seconds", "worker_queue_depth",
            "worker_realtime_factor", "worker_audio_seconds_total", "worker_build_info"} <= wanted
    missing = {m for m in wanted if m not in exported and f"{m}_bucket" not in exported}
    assert missing == set(), f"rules or dashboards query metrics the worker does not export: {missing}"


def test_threshold_in_opsctl_yaml_reaches_the_rendered_rule(tmp_path):
    (tmp_path / "opsctl.yaml").write_text(
        "environments:\n  staging:\n    platform: kubernetes\n"
        "    thresholds: {error_rate_percent: 2.5, response_time_ms: 750, queue_depth: 40}\n")
    project = load_project(tmp_path)
    rules = yaml.safe_load(monitoring.render_all(project, project.env("staging"))["alert-rules.yml"])
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert by_name["HighErrorRate"]["expr"].endswith("> 2.5")
    assert by_name["SlowResponses"]["expr"].endswith("> 0.75")
    assert by_name["QueueBacklog"]["expr"] == "sum(worker_queue_depth) > 40"


@pytest.mark.integration
def test_one_threshold_drives_both_the_alert_rule_and_the_health_sweep(local_platform, runner, tmp_path):
    """response_time_ms set in opsctl.yaml: the rendered SlowResponses rule and the health
    sweep's router check both judge with it."""
    from opsctl.cli import app

    cfg = yaml.safe_load((local_platform.root / "opsctl.yaml").read_text())
    cfg["environments"]["local"]["thresholds"] = {"response_time_ms": 0.01}
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / ".opsctl").mkdir()
    (tmp_path / ".opsctl" / "local").symlink_to(local_platform.root / ".opsctl" / "local")
    local_platform.up()

    result = runner.invoke(app, ["--root", str(tmp_path), "render", "monitoring", "--env", "local",
                                 "--out", str(tmp_path / "monitoring")])
    assert result.exit_code == 0, result.output
    rules = yaml.safe_load((tmp_path / "monitoring" / "alert-rules.yml").read_text())
    slow = next(r for g in rules["groups"] for r in g["rules"] if r["alert"] == "SlowResponses")
    assert slow["expr"].endswith("> 1e-05")

    sweep = runner.invoke(app, ["--root", str(tmp_path), "health", "--json", "--check", "router"])
    router = next(c for c in json.loads(sweep.stdout)["checks"] if c["name"] == "router")
    assert router["status"] in ("WARNING", "CRITICAL") and "0.01" in router["message"], router
    normal = runner.invoke(app, ["--root", str(local_platform.root), "health", "--json", "--check", "router"])
    assert next(c for c in json.loads(normal.stdout)["checks"] if c["name"] == "router")["status"] == "OK"
