"""The DR drill alerts, with `promtool test rules`: the drill's metrics (`dr drill
--metrics-file`, read by the node exporter's textfile collector) page when the last drill
failed or missed a target, when its RTO or RPO (a part's too) is above the target it was
judged against, and when no drill started within the dr-drill runbook's schedule plus a day
(or none is reported at all). A failed drill's NaN RTO and RPO fire no threshold alert; a
passing drill within its schedule fires nothing. The series fed to promtool are the lines
`opsctl.pitr.drill.metrics` writes, so the rules are tested against the drill's own output."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from opsctl import monitoring
from opsctl.config import load_project
from opsctl.local import state as st
from opsctl.pitr import drill

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed: apt-get install prometheus "
                                    "(make test installs it where apt-get works)")
SCRAPE = {"job": "node-exporter", "instance": "127.0.0.1:9100"}  # the textfile collector's target
DRILL_ALERTS = ("DrDrillFailed", "DrDrillRtoAboveTarget", "DrDrillRpoAboveTarget", "DrDrillNotRecent")
DAY = 24 * 60  # minutes


def _root(tmp_path: Path, env: dict, schedule: str | None = "30 3 * * 0") -> Path:
    """An ops root with one environment `e` and the dr-drill runbook (on `schedule`; None:
    unscheduled), its local platform recorded as started (render monitoring names its ports)."""
    root = tmp_path / "ops"
    (root / "runbooks" / "dr-drill").mkdir(parents=True)
    book = yaml.safe_load((REPO / "runbooks" / "dr-drill" / "v2.yaml").read_text())
    book["version"] = 1
    if schedule:
        book["schedule"] = schedule
    else:
        book.pop("schedule", None)
    (root / "runbooks" / "dr-drill" / "v1.yaml").write_text(yaml.safe_dump(book, sort_keys=False))
    (root / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"e": env}}))
    state = st.LocalState(st.folder_for(root))
    state.components = {"router": st.Component(port=8080, admin_port=2019), "worker-blue": st.Component(port=9000)}
    state.save()
    return root


LOCAL = {"platform": "local", "dr": {"rto": "1h", "rpo": "1h"},
         "monitoring": {"exporters": {"node": "127.0.0.1:9100"}, "health_exporter": "127.0.0.1:9464"}}


def _render(root: Path) -> dict[str, str]:
    project = load_project(root)
    return monitoring.render_all(project, project.env("e"))


def _drill_rules(files: dict[str, str]) -> dict[str, dict]:
    doc = yaml.safe_load(files["alert-rules.yml"])
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if r["alert"] in DRILL_ALERTS}


def _result(passed: bool, rto: float | None, rpo: float | None, parts: dict | None = None) -> drill.DrillResult:
    """A drill of environment `e` started at Unix time 0 (promtool's clock starts there)."""
    out = drill.DrillResult("e", "local", dt.datetime.fromtimestamp(0, dt.timezone.utc), rto, rpo, 3600.0, 3600.0,
                            passed, None, None, "scratch")
    out.part_rpo_seconds = dict(parts or {})
    return out


def _series(result: drill.DrillResult | None, minutes: int) -> list[dict]:
    """The drill's metrics as the textfile collector exposes them, scraped every minute."""
    if result is None:  # no drill result reaches Prometheus: some other series, so the test has input
        return [{"series": 'up{job="node-exporter",instance="127.0.0.1:9100"}', "values": f"1x{minutes}"}]
    out = []
    for line in drill.metrics(result).splitlines():
        if line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, labels = series[:-1].split("{", 1)
        labels += "".join(f',{k}="{v}"' for k, v in SCRAPE.items())
        out.append({"series": f"{name}{{{labels}}}", "values": f"{value}+0x{minutes}"})  # NaNx70 does not parse
    return out


def _fires(rule: dict, minute: int, labels: dict, value: float) -> dict:
    full = {**labels, **{k: str(v) for k, v in rule["labels"].items()}}
    notes = {k: re.sub(r"\{\{\s*\$value\s*\}\}", f"{value:g}", v) for k, v in rule["annotations"].items()}
    return {"eval_time": f"{minute}m", "alertname": rule["alert"],
            "exp_alerts": [{"exp_labels": full, "exp_annotations": notes}]}


def _quiet(alert: str, minute: int) -> dict:
    return {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": []}


def _promtool_test(tmp_path: Path, files: dict[str, str], series: list[dict], checks: list[dict]) -> None:
    rules = tmp_path / "alert-rules.yml"
    rules.write_text(files["alert-rules.yml"])
    spec = {"rule_files": [rules.name], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}]}
    (tmp_path / "test-drill.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", "test-drill.yml"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_drill_writes_the_targets_it_was_judged_against():
    text = drill.metrics(_result(False, None, None))
    assert 'opsctl_dr_drill_rto_target_seconds{env="e"} 3600\n' in text
    assert 'opsctl_dr_drill_rpo_target_seconds{env="e"} 3600\n' in text
    assert 'opsctl_dr_drill_rto_seconds{env="e"} NaN\n' in text  # a failed drill achieved none


@needs_promtool
def test_the_rules_pass_promtool_check(tmp_path):
    files = _render(_root(tmp_path, LOCAL))
    assert set(_drill_rules(files)) == set(DRILL_ALERTS)
    (tmp_path / "alert-rules.yml").write_text(files["alert-rules.yml"])
    result = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "alert-rules.yml")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_a_passing_drill_pages_for_nothing_until_the_schedule_misses_one(tmp_path):
    # weekly on Sundays: the longest gap is 7 days, plus a day's grace = 8 days (691200 s), then for: 1h
    files = _render(_root(tmp_path, LOCAL))
    rules = _drill_rules(files)
    assert "> 691200" in rules["DrDrillNotRecent"]["expr"]
    passed = _result(True, 20.0, 0.5, {"redis": 1800.0, "audio objects": 3000.0})
    checks = [_quiet(a, m) for a in DRILL_ALERTS for m in (10, 60, 7 * DAY, 8 * DAY + 30)]
    checks.append(_fires(rules["DrDrillNotRecent"], 8 * DAY + 61, {"env": "e"}, 8 * DAY * 60 + 61 * 60))
    _promtool_test(tmp_path, files, _series(passed, 8 * DAY + 70), checks)


@needs_promtool
def test_a_failed_drill_pages_by_its_success_alone(tmp_path):
    # the drill failed (error): RTO and RPO NaN, no part restored; NaN compares false
    files = _render(_root(tmp_path, LOCAL))
    rules = _drill_rules(files)
    labels = {"env": "e", **SCRAPE}
    checks = [_quiet("DrDrillFailed", 4), _fires(rules["DrDrillFailed"], 10, labels, 0)]
    checks += [_quiet(a, m) for a in ("DrDrillRtoAboveTarget", "DrDrillRpoAboveTarget", "DrDrillNotRecent")
               for m in (10, 60)]
    _promtool_test(tmp_path, files, _series(_result(False, None, None), 70), checks)


@needs_promtool
def test_a_missed_rto_or_rpo_fires_its_threshold_alert(tmp_path):
    files = _render(_root(tmp_path, LOCAL))
    rules = _drill_rules(files)
    labels = {"env": "e", **SCRAPE}
    slow = _result(False, 5000.0, 10.0, {"redis": 100.0, "audio objects": 200.0})
    checks = [_fires(rules["DrDrillFailed"], 10, labels, 0), _fires(rules["DrDrillRtoAboveTarget"], 10, labels, 5000),
              _quiet("DrDrillRpoAboveTarget", 10), _quiet("DrDrillNotRecent", 10)]
    _promtool_test(tmp_path, files, _series(slow, 20), checks)
    (tmp_path / "b").mkdir()
    stale_redis = _result(False, 30.0, 10.0, {"redis": 7200.0, "audio objects": 200.0})  # the hourly snapshot stopped
    checks = [_fires(rules["DrDrillRpoAboveTarget"], 10, {**labels, "part": "redis"}, 7200),
              _quiet("DrDrillRtoAboveTarget", 10)]
    _promtool_test(tmp_path / "b", files, _series(stale_redis, 20), checks)
    (tmp_path / "c").mkdir()
    lost = _result(False, 30.0, 4000.0)  # the database's RPO; parts not restored (NaN)
    checks = [_fires(rules["DrDrillRpoAboveTarget"], 10, labels, 4000), _quiet("DrDrillRtoAboveTarget", 10)]
    _promtool_test(tmp_path / "c", files, _series(lost, 20), checks)


@needs_promtool
def test_no_drill_reported_pages_after_an_hour(tmp_path):
    files = _render(_root(tmp_path, LOCAL))
    rules = _drill_rules(files)
    checks = [_quiet("DrDrillNotRecent", 30), _fires(rules["DrDrillNotRecent"], 61, {"env": "e"}, 1)]
    checks += [_quiet(a, 61) for a in ("DrDrillFailed", "DrDrillRtoAboveTarget", "DrDrillRpoAboveTarget")]
    _promtool_test(tmp_path, files, _series(None, 70), checks)


def test_the_staleness_follows_the_schedule_and_needs_one(tmp_path):
    daily = _drill_rules(_render(_root(tmp_path / "daily", LOCAL, schedule="0 4 * * *")))
    assert "> 172800 or absent(" in daily["DrDrillNotRecent"]["expr"]  # 1 day + 1 day of grace
    assert "No DR drill started in the last 2 days" in daily["DrDrillNotRecent"]["annotations"]["summary"]
    unscheduled = _drill_rules(_render(_root(tmp_path / "none", LOCAL, schedule=None)))
    assert set(unscheduled) == {"DrDrillFailed", "DrDrillRtoAboveTarget", "DrDrillRpoAboveTarget"}


def test_no_drill_rules_where_the_metrics_cannot_reach_prometheus(tmp_path):
    # no node exporter (its textfile collector is the drill metrics' way in), or kubernetes
    # (the scheduled drill's .opsctl is the CronJob's emptyDir)
    no_node = {**LOCAL, "monitoring": {"health_exporter": "127.0.0.1:9464"}}
    assert _drill_rules(_render(_root(tmp_path / "a", no_node))) == {}
    k8s = {"platform": "kubernetes", "monitoring": LOCAL["monitoring"]}
    assert _drill_rules(_render(_root(tmp_path / "b", k8s))) == {}
