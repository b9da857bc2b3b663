"""Incomplete uploads piling up (issue 26) in the rendered alert rules, with `promtool test
rules`: the worker's database-wide gauges judged with `health.uploads`, the thresholds the
health sweep's `uploads` check uses; two workers reporting the same figure page once."""

from __future__ import annotations

import pytest
import yaml

from opsctl import monitoring
from opsctl.config import load_project
from tests.monitoring.test_alert_lifecycle import PROMTOOL, _annotations, _promtool_test, serving

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed: apt-get install prometheus "
                                "(make test installs it where apt-get works)")


def _rules(tmp_path):
    root = tmp_path / "ops"
    root.mkdir()
    (root / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"staging": {
        "platform": "kubernetes", "health": {"uploads": {"incomplete": 20, "oldest_incomplete_seconds": 5400}}}}}))
    project = load_project(root)
    files = monitoring.render_all(project, project.env("staging"))
    plain = tmp_path / "alert-rules.yml"
    plain.write_text(files["alert-rules.yml"])
    rule = next(d for d in yaml.safe_load_all(files["kubernetes/monitoring.yaml"]) if d["kind"] == "PrometheusRule")
    k8s = tmp_path / "prometheusrule-rules.yml"
    k8s.write_text(yaml.safe_dump(rule["spec"]))
    return {"rule file": (plain, yaml.safe_load(plain.read_text())), "PrometheusRule": (k8s, rule["spec"])}


def _gauges(ip: str, color: str, count: str, oldest: str) -> list[dict]:
    labels = f'job="worker",instance="{ip}:9090",color="{color}"'
    return [{"series": f"worker_uploads_incomplete{{{labels}}}", "values": count},
            {"series": f"worker_uploads_oldest_incomplete_age_seconds{{{labels}}}", "values": oldest}]


def _check(doc, alert: str, minute: int, value: float | None) -> dict:
    if value is None:
        return {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": []}
    rule = next(r for g in doc["groups"] for r in g["rules"] if r["alert"] == alert)
    return {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": [{
        "exp_labels": {k: str(v) for k, v in rule["labels"].items()},
        "exp_annotations": _annotations(rule, {}, value)}]}


@pytest.mark.parametrize("variant", ["rule file", "PrometheusRule"])
def test_uploads_piling_up_warn_once_for_the_fleet(tmp_path, variant):
    rules, doc = _rules(tmp_path)[variant]
    # both colors report the database-wide figures: 5 open for 10 min, then 30 (above 20);
    # the oldest one 600 s old, then past the expiry and growing above 5400 s
    count, oldest = "5x10 30x40", "600x10 6000+60x40"
    series = (serving("10.0.0.1", "blue") + serving("10.0.0.2", "green")
              + _gauges("10.0.0.1", "blue", count, oldest) + _gauges("10.0.0.2", "green", count, oldest))
    checks = [_check(doc, "UploadsPilingUp", 9, None), _check(doc, "UploadsNotExpiring", 9, None),
              _check(doc, "UploadsPilingUp", 20, None),                 # above for 10 min (< for: 15m)
              _check(doc, "UploadsPilingUp", 30, 30), _check(doc, "UploadsNotExpiring", 30, 6000 + 60 * 19)]
    _promtool_test(tmp_path, rules, f"uploads {variant}", series, checks)


def test_the_upload_thresholds_come_from_health_uploads(tmp_path):
    _, doc = _rules(tmp_path)["rule file"]
    by_name = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}
    assert by_name["UploadsPilingUp"] == 'max(worker_uploads_incomplete{job="worker"}) > 20'
    assert by_name["UploadsNotExpiring"].endswith("> 5400")
