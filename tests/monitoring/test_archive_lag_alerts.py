"""The WAL archive lag alerts (issue 22, health and monitoring), with `promtool test rules`:
the health exporter's `opsctl_check_value{check="wal archive"}` (seconds of commits at risk)
warns above a fraction of the environment's RPO and is critical above the RPO itself, in the
plain rule file and in the PrometheusRule alike; a lag within the RPO pages for nothing."""

from __future__ import annotations

import pytest
import yaml

from opsctl import monitoring
from opsctl.config import load_project
from tests.monitoring.test_alert_lifecycle import PROMTOOL, _annotations, _promtool_test, serving

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed: apt-get install prometheus "
                                "(make test installs it where apt-get works)")
LABELS = {"job": "opsctl-health", "env": "staging", "check": "wal archive", "kind": "backup"}


def _rules(tmp_path, rpo: str, warning: float | None = None):
    monitoring_settings = {"health_exporter": "127.0.0.1:9464"}
    if warning is not None:
        monitoring_settings["archive_lag_warning"] = warning
    root = tmp_path / "ops"
    root.mkdir()
    (root / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"staging": {
        "platform": "kubernetes", "dr": {"rpo": rpo}, "monitoring": monitoring_settings}}}))
    project = load_project(root)
    files = monitoring.render_all(project, project.env("staging"))
    plain = tmp_path / "alert-rules.yml"
    plain.write_text(files["alert-rules.yml"])
    rule = next(d for d in yaml.safe_load_all(files["kubernetes/monitoring.yaml"]) if d["kind"] == "PrometheusRule")
    k8s = tmp_path / "prometheusrule-rules.yml"
    k8s.write_text(yaml.safe_dump(rule["spec"]))
    return {"rule file": (plain, yaml.safe_load(plain.read_text())), "PrometheusRule": (k8s, rule["spec"])}


def _lag(values: str) -> list[dict]:
    series = ",".join(f'{k}="{v}"' for k, v in LABELS.items())
    return [{"series": f"opsctl_check_value{{{series}}}", "values": values}]


def _expect(doc: dict, alert: str, minute: int, value: float | None) -> dict:
    rule = next(r for g in doc["groups"] for r in g["rules"] if r["alert"] == alert)
    if value is None:
        return {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": []}
    labels = {**LABELS, **{k: str(v) for k, v in rule["labels"].items()}}
    return {"eval_time": f"{minute}m", "alertname": alert,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": _annotations(rule, LABELS, value)}]}


@pytest.mark.parametrize("variant", ["rule file", "PrometheusRule"])
def test_archive_lag_warns_at_a_fraction_of_the_rpo_and_pages_above_it(tmp_path, variant):
    # RPO 30 min = 1800 s, warning at half: 900 s. The lag stays low for 10 minutes, sits
    # between the warning and the RPO for 20, then above the RPO for 30.
    rules, doc = _rules(tmp_path, "30m")[variant]
    series = _lag("60x10 1200x20 2400x30")
    checks = [_expect(doc, "WalArchiveLagHigh", 5, None), _expect(doc, "WalArchiveLagAboveRpo", 5, None),
              _expect(doc, "WalArchiveLagHigh", 15, None),            # above 900 s for 4 min (< for: 10m)
              _expect(doc, "WalArchiveLagHigh", 25, 1200), _expect(doc, "WalArchiveLagAboveRpo", 25, None),
              _expect(doc, "WalArchiveLagAboveRpo", 35, 2400), _expect(doc, "WalArchiveLagHigh", 35, None)]
    _promtool_test(tmp_path, rules, f"archive lag {variant}", series, checks)
    summary = next(r for g in doc["groups"] for r in g["rules"] if r["alert"] == "WalArchiveLagHigh")["annotations"]
    assert "50% of the RPO of 30m" in summary["summary"]


@pytest.mark.parametrize("variant", ["rule file", "PrometheusRule"])
def test_archive_lag_within_the_rpo_pages_for_nothing(tmp_path, variant):
    # RPO 1 h with the warning at 0.8 (2880 s): a lag of 2000 s and a short spike above the
    # RPO (1 minute, shorter than the rule's for: 2m) page for nothing
    rules, doc = _rules(tmp_path, "1h", warning=0.8)[variant]
    series = _lag("60x20 2000x20 60x5 4000 60x14") + serving("10.0.0.1", "blue")  # a fleet serving
    names = sorted({r["alert"] for g in doc["groups"] for r in g["rules"]})
    checks = [{"eval_time": f"{m}m", "alertname": n, "exp_alerts": []} for m in (10, 30, 39, 46, 47, 48, 55)
              for n in names]
    _promtool_test(tmp_path, rules, f"archive lag quiet {variant}", series, checks)


def test_the_thresholds_follow_the_environment(tmp_path):
    _, doc = _rules(tmp_path, "2h", warning=0.25)["rule file"]
    by_name = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}
    assert by_name["WalArchiveLagAboveRpo"].endswith("> 7200")
    assert "> 1800)" in by_name["WalArchiveLagHigh"] and by_name["WalArchiveLagHigh"].endswith("<= 7200")
