"""Scheduled runbooks as GitHub and the API server take them (BREAKER23 1, 2, 10): a schedule
`runbook validate` accepts is one actionlint (GitHub's grammar) accepts; CronJob names are
distinct DNS-1123 names and labels valid however long the runbook's name; `render schedules`
grants the ServiceAccount what its runbooks read and write, and nothing more."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _root(tmp_path, monkeypatch, runbooks: dict[str, str], env: str = "{platform: kubernetes}",
          template: str = "redis-snapshot") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    (tmp_path / "opsctl.yaml").write_text(
        f"version: 1\nenvironments:\n  staging: {env}\n  production: {{platform: kubernetes, protected: true}}\n")
    text0 = (REPO / "runbooks" / template / "v1.yaml").read_text()
    for name, cron in runbooks.items():
        (tmp_path / "runbooks" / name).mkdir(parents=True)
        text = re.sub(r"(?m)^name: .*$", f"name: {name}", text0)
        if re.search(r"(?m)^schedule: ", text):
            text = re.sub(r"(?m)^schedule: .*$", f'schedule: "{cron}"', text)
        else:
            text = re.sub(r"(?m)^(version: .*)$", rf'\1\nschedule: "{cron}"', text)
        text = text.replace("required: true", 'default: "ghcr.io/example/transcription-worker:1.0"')  # runs without -p
        (tmp_path / "runbooks" / name / "v1.yaml").write_text(text)
    return tmp_path


# --- (1) the cron grammar GitHub and Kubernetes share ---------------------------------------

@pytest.mark.parametrize("cron", ["0 3 L * *", "0 3 * * 5#2", "0 3 1W * *", "R 3 * * *", "* * * * *",
                                  "*/4 * * * *", "58,1 * * * *", "0 2 * * 7", "0 2 ? * *", "5/10 * * * *",
                                  "0 2 * * * *", "10-5 * * * *", "H 2 * * *", "0 2 * * MON#1",
                                  # non-ASCII digits pass str.isdigit()/int(), not strconv.Atoi (issue 23, B23b)
                                  "\u0663 2 * * *", "0 \u0662 * * *", "0 2 */\u0663 * *", "0 2 1-\uff15 * *",
                                  # never fire: no month has that day (B23b)
                                  "0 0 31 2 *", "0 0 30 2 *", "0 2 31 4,6,9,11 *", "0 2 30-31 FEB *"])
def test_validate_refuses_a_schedule_github_or_kubernetes_refuses(runner, tmp_path, monkeypatch, cron):
    _root(tmp_path, monkeypatch, {"odd-schedule": cron})
    result = runner.invoke(app, ["runbook", "validate"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "schedule" in line]
    assert len(lines) == 1 and cron in lines[0], result.output


@pytest.mark.parametrize("cron", ["0 2 * * MON-FRI", "0 2 1 JAN *", "*/5 * * * *", "58,1 3 * * *",
                                  "0 0 1,15 * *", "0 9-17/2 * * 1-5",
                                  # Feb 29 comes in leap years; a restricted weekday is ORed with the day
                                  "0 0 29 2 *", "0 0 31 2 1", "0 2 31 1-2 *"])
def test_a_schedule_validate_accepts_passes_actionlint(runner, tmp_path, monkeypatch, cron):
    _root(tmp_path, monkeypatch, {"fine-schedule": cron})
    validated = runner.invoke(app, ["runbook", "validate"])
    assert validated.exit_code == 0, validated.output
    out = tmp_path / "wf.yml"
    result = runner.invoke(app, ["render", "ci", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert cron in out.read_text()
    lint = subprocess.run([str(BIN / "actionlint"), "-no-color", str(out)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


# --- (2) CronJob names and labels ---------------------------------------------------------

def test_cronjob_names_are_distinct_and_valid_for_long_runbook_names(runner, tmp_path, monkeypatch):
    import kubernetes_validate

    names = {"a" * 44 + "-nightly": "0 1 * * *",
             "nightly-redis-snapshot-for-the-eu-west-region-primary": "0 2 * * *",
             "nightly-redis-snapshot-for-the-eu-west-region-replica": "0 3 * * *",
             "nightly-redis-snapshot-for-the-eu-west-region-" + "x" * 25: "0 4 * * *",
             "b" * 44 + "-": "0 5 * * *",  # the schema lets a name end in '-'
             "short": "0 6 * * *"}
    _root(tmp_path, monkeypatch, names)
    assert runner.invoke(app, ["runbook", "validate"]).exit_code == 0
    result = runner.invoke(app, ["render", "schedules", "--env", "staging"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    jobs = [d for d in docs if d["kind"] == "CronJob"]
    cj_names = [d["metadata"]["name"] for d in jobs]
    assert len(set(cj_names)) == len(names), cj_names
    assert all(DNS_LABEL.match(n) and len(n) <= 52 for n in cj_names), cj_names
    assert "opsctl-short" in cj_names  # a name that fits is kept as it is
    for d in jobs:
        for where in (d["metadata"], d["spec"]["jobTemplate"]["metadata"],
                      d["spec"]["jobTemplate"]["spec"]["template"]["metadata"]):
            assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in where["labels"].values()), where["labels"]
    refs = sorted(d["metadata"]["annotations"]["opsctl.dev/runbook"] for d in jobs)
    assert refs == sorted(f"{n}@1" for n in names)  # the full name is kept where no length limit applies
    labels = [d["metadata"]["labels"]["opsctl.dev/runbook"] for d in jobs]
    assert len(set(labels)) == len(labels)


# --- (10) RBAC for the ServiceAccount the CronJobs run as --------------------------------------

def _docs(runner, env="staging"):
    result = runner.invoke(app, ["render", "schedules", "--env", env])
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _granted(docs, kind="Role") -> dict[tuple[str, str], set[str]]:
    out: dict = {}
    for role in (d for d in docs if d["kind"] == kind):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_the_shipped_schedules_grant_the_sweep_read_access_only(runner, monkeypatch):
    import kubernetes_validate

    monkeypatch.chdir(REPO)
    docs = _docs(runner)
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    granted = _granted(docs)
    assert granted[("", "pods")] == {"get", "list", "watch"}
    assert granted[("keda.sh", "scaledobjects")] == {"get", "list", "watch"}
    assert granted[("apps", "deployments")] == {"get", "list", "watch"}
    assert not any(v & {"create", "patch", "update", "delete"} for v in granted.values())  # least privilege
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert binding["roleRef"]["name"] == next(d for d in docs if d["kind"] == "Role")["metadata"]["name"]
    pods = [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in docs if d["kind"] == "CronJob"]
    assert {p["serviceAccountName"] for p in pods} == {account["metadata"]["name"]}


def test_nodes_are_readable_cluster_wide_only_where_the_sweep_counts_gpus(runner, tmp_path, monkeypatch):
    _root(tmp_path, monkeypatch, {"sweep": "*/15 * * * *"}, template="health-sweep",
          env="{platform: kubernetes, worker: {gpu: true}}")
    docs = _docs(runner)
    assert _granted(docs, "ClusterRole") == {("", "nodes"): {"get", "list"}}
    (crb,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert crb["subjects"][0]["name"] == "opsctl"
    _root(tmp_path / "cpu", monkeypatch, {"sweep": "*/15 * * * *"}, template="health-sweep")
    docs = _docs(runner)
    assert not [d for d in docs if d["kind"].startswith("Cluster")]
    assert ("", "pods") in _granted(docs)


def test_backups_alone_get_no_kubernetes_rights_and_a_scheduled_deploy_gets_what_it_applies(
        runner, tmp_path, monkeypatch):
    import kubernetes_validate

    _root(tmp_path, monkeypatch, {"snap": "0 * * * *"})  # backup + verify + notify: database and bucket only
    docs = _docs(runner)
    assert not [d for d in docs if "Role" in d["kind"]], [d["kind"] for d in docs]
    _root(tmp_path / "deploy", monkeypatch, {"nightly-deploy": "0 4 * * *"}, template="deploy-worker")
    assert runner.invoke(app, ["runbook", "validate"]).exit_code == 0
    docs = _docs(runner)
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    granted = _granted(docs)
    for key in [("apps", "deployments"), ("", "services"), ("policy", "poddisruptionbudgets"),
                ("coordination.k8s.io", "leases"), ("keda.sh", "scaledobjects"), ("", "configmaps")]:
        assert {"get", "create", "patch"} <= granted[key], (key, granted.get(key))
    assert ("", "secrets") not in granted


# --- (design risks) CI concurrency and where schedules run ------------------------------------

def test_scheduled_runs_never_share_the_deploy_chains_concurrency_group(runner, monkeypatch, tmp_path):
    """GitHub cancels a group's older PENDING job when a newer one arrives: a scheduled run in
    the deploy chain's group would cancel a pending load-test gate or deploy, and the hourly,
    15-minute and nightly schedules firing together at 02:00 would cancel one another."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "wf.yml"
    assert runner.invoke(app, ["render", "ci", "--out", str(out)]).exit_code == 0
    jobs = yaml.safe_load(out.read_text())["jobs"]
    chain = {jobs[j]["concurrency"]["group"] for j in ("deploy-staging", "load-test-gate", "deploy-production")}
    for env in ("staging", "production"):
        group = jobs[f"scheduled-{env}"]["concurrency"]["group"]
        assert group not in chain and "${{ github.event.schedule }}" in group and env in group
    lint = subprocess.run([str(BIN / "actionlint"), "-no-color", str(out)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_render_ci_can_leave_the_schedules_to_the_cronjobs(runner, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    out = tmp_path / "wf.yml"
    result = runner.invoke(app, ["render", "ci", "--no-schedules", "--out", str(out)])
    assert result.exit_code == 0, result.output
    flow = yaml.safe_load(out.read_text())
    triggers = flow.get("on") or flow.get(True)  # PyYAML reads the key `on` as True
    assert "schedule" not in triggers and not [j for j in flow["jobs"] if j.startswith("scheduled-")]
    assert "deploy-production" in flow["jobs"]
    lint = subprocess.run([str(BIN / "actionlint"), "-no-color", str(out)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
