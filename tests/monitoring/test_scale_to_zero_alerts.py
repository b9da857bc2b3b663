"""A fleet KEDA scales to zero on purpose (worker.autoscaling.min_replicas 0) is idle, not
down (BREAKER23 9, the alert-rule side of the kubernetes check): WorkerFleetDown pages only
while work waits (the environment's wake_query above 0) and nothing serves it past a cold
start; an always-on fleet keeps its 2-minute rule. Checked with `promtool test rules`."""

from __future__ import annotations

import pytest
import yaml

from opsctl import monitoring
from opsctl.config import load_project
from tests.monitoring.test_alert_lifecycle import PROMTOOL, _promtool_test, serving

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
WAKE = 'sum(rate(router_requests_total{job="router"}[2m]))'


def _rules(tmp_path, autoscaling: dict):
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"staging": {
        "platform": "kubernetes", "worker": {"autoscaling": autoscaling}}}}))
    project = load_project(tmp_path)
    files = monitoring.render_all(project, project.env("staging"))
    rules = tmp_path / "alert-rules.yml"
    rules.write_text(files["alert-rules.yml"])
    return rules


def _requests(per_minute: str) -> list[dict]:
    """The router's request counter: `per_minute` as promtool's expanding notation."""
    return [{"series": 'router_requests_total{job="router"}', "values": per_minute}]


def _firing(rules) -> list[dict]:
    (rule,) = [r for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]
               if r["alert"] == "WorkerFleetDown"]
    return [{"exp_labels": {"severity": "critical", "env": "staging"}, "exp_annotations": rule["annotations"]}]


def test_an_idle_fleet_scaled_to_zero_pages_for_nothing(tmp_path):
    rules = _rules(tmp_path, {"min_replicas": 0, "wake_query": WAKE})
    series = _requests("0+0x60")  # no traffic, no worker at all: the intended idle state
    checks = [{"eval_time": f"{m}m", "alertname": "WorkerFleetDown", "exp_alerts": []} for m in (5, 20, 40, 59)]
    _promtool_test(tmp_path, rules, "idle at zero", series, checks)


def test_work_waiting_with_no_worker_pages_after_a_cold_start(tmp_path):
    rules = _rules(tmp_path, {"min_replicas": 0, "wake_query": WAKE})
    series = _requests("0+0x5 0+60x55")  # requests arrive from minute 5, no worker ever comes up
    checks = [{"eval_time": "12m", "alertname": "WorkerFleetDown", "exp_alerts": []},  # cold start: not yet
              {"eval_time": "30m", "alertname": "WorkerFleetDown", "exp_alerts": _firing(rules)}]
    _promtool_test(tmp_path, rules, "work waits", series, checks)


def test_a_woken_fleet_serving_the_work_pages_for_nothing(tmp_path):
    rules = _rules(tmp_path, {"min_replicas": 0, "wake_query": WAKE})
    series = _requests("0+60x60") + serving("10.0.0.1", "blue")
    checks = [{"eval_time": f"{m}m", "alertname": "WorkerFleetDown", "exp_alerts": []} for m in (20, 59)]
    _promtool_test(tmp_path, rules, "serving", series, checks)


def test_an_always_on_fleet_still_pages_at_once_without_traffic(tmp_path):
    rules = _rules(tmp_path, {"min_replicas": 1})
    checks = [{"eval_time": "5m", "alertname": "WorkerFleetDown", "exp_alerts": _firing(rules)}]
    _promtool_test(tmp_path, rules, "always on", _requests("0+0x60"), checks)
