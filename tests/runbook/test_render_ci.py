"""`opsctl render ci` and `opsctl render schedules`: the workflow's jobs, triggers,
concurrency and credentials, checked by actionlint and GitHub's workflow schema; the
CronJobs checked against the Kubernetes API schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCHEDULED = {"health-sweep": "*/15 * * * *", "nightly-backup": "0 2 * * *", "redis-snapshot": "0 * * * *"}
if (REPO / "runbooks" / "dr-drill").is_dir():  # the weekly DR drill is scheduled where its runbook exists
    SCHEDULED["dr-drill"] = "30 3 * * 0"


@pytest.fixture
def workflow(runner, monkeypatch, tmp_path) -> Path:
    monkeypatch.chdir(REPO)
    out = tmp_path / "deploy.yml"
    result = runner.invoke(app, ["render", "ci", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_workflow_runs_the_shipped_runbooks_in_order(workflow):
    flow = yaml.safe_load(workflow.read_text())
    jobs = flow["jobs"]
    assert list(jobs) == ["test", "build-worker", "build-opsctl", "deploy-staging", "load-test-gate",
                          "deploy-production", "scheduled-staging", "scheduled-production"]
    assert jobs["build-worker"]["strategy"]["matrix"]["target"] == ["cpu", "cuda"]
    assert jobs["deploy-production"]["needs"] == ["load-test-gate"]
    assert jobs["deploy-production"]["environment"] == "production"  # its reviewers are the approval
    commands = [s["run"] for job in jobs.values() for s in job["steps"] if "runbook run" in s.get("run", "")]
    assert len(commands) == 3 + 2 * len(SCHEDULED)
    for command in commands:
        name = command.split("runbook run ")[1].split()[0].split("@")[0]
        assert (REPO / "runbooks" / name).is_dir(), name
        assert "--yes" in command and "--junit" in command
    assert any("test" in s.get("run", "") for s in jobs["test"]["steps"])


def test_schedules_trigger_only_the_scheduled_jobs(workflow):
    flow = yaml.safe_load(workflow.read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as true
    assert sorted(t["cron"] for t in triggers["schedule"]) == sorted(SCHEDULED.values())
    jobs = flow["jobs"]
    assert jobs["test"]["if"] == "github.event_name != 'schedule'"
    for name in ("build-worker", "build-opsctl", "deploy-staging", "load-test-gate", "deploy-production"):
        assert "github.event_name != 'schedule'" in jobs[name]["if"], name
    for env in ("staging", "production"):
        job = jobs[f"scheduled-{env}"]
        assert job["if"] == "github.event_name == 'schedule'" and job["environment"] == f"{env}-scheduled"
        steps = {s["run"].split("runbook run ")[1].split()[0].split("@")[0]: s["if"]
                 for s in job["steps"] if "runbook run" in s.get("run", "")}
        assert steps == {n: f"!cancelled() && steps.kubeconfig.outcome == 'success' && "
                            f"github.event.schedule == '{c}'" for n, c in SCHEDULED.items()}


def test_a_dispatched_tag_is_deployed_never_built_over(workflow):
    """Breaker 53 F4: "deploy image tag 1.4.0" by workflow_dispatch built the branch as it is now,
    pushed it over the release's 1.4.0 tags, and deployed that everywhere as 1.4.0. Builds push
    the commit's tags only and are skipped when a tag is given; the deploy chain deploys the tag
    given, else the commit's build, each job after its predecessor's success (not success(),
    which a skipped build would fail)."""
    flow = yaml.safe_load(workflow.read_text())
    assert flow["env"]["TAG"] == "${{ github.sha }}"
    assert flow["env"]["DEPLOY_TAG"] == "${{ inputs.image_tag || github.sha }}"
    jobs = flow["jobs"]
    for name in ("build-worker", "build-opsctl"):
        assert "!inputs.image_tag" in jobs[name]["if"], jobs[name]["if"]
        pushes = [s["with"]["tags"] for s in jobs[name]["steps"] if s.get("uses", "").startswith("docker/build-push")]
        assert pushes and all("env.TAG" in t and "inputs" not in t for t in pushes), pushes
    assert jobs["deploy-staging"]["if"] == "!cancelled() && !failure() && github.event_name != 'schedule'"
    assert jobs["load-test-gate"]["if"].endswith("needs.deploy-staging.result == 'success'")
    assert jobs["deploy-production"]["if"].endswith("needs.load-test-gate.result == 'success'")
    deploys = [s["run"] for j in ("deploy-staging", "deploy-production") for s in jobs[j]["steps"]
               if "deploy-worker" in s.get("run", "")]
    assert len(deploys) == 2 and all('-p "image=${IMAGE}:${DEPLOY_TAG}-cuda"' in d for d in deploys), deploys


def test_one_deploy_chain_runs_at_a_time_and_schedules_are_never_held(workflow):
    """Breaker 54 F5: the jobs' groups alone let a newer push's staging deploy run between this
    run's deploy and its load-test gate, which then judged the other release. The workflow's
    own group holds a whole deploy chain; scheduled runs get a group each."""
    flow = yaml.safe_load(workflow.read_text())
    group = flow["concurrency"]["group"]
    assert "'opsctl-deploy-chain'" in group and "github.event_name == 'schedule'" in group
    assert "github.run_id" in group and flow["concurrency"]["cancel-in-progress"] is False
    jobs = flow["jobs"]
    assert all(j.get("concurrency", {}).get("group") != "opsctl-deploy-chain" for j in jobs.values())


def test_a_project_without_the_platforms_sources_is_warned(runner, tmp_path):
    """Breaker 54 F4: rendered in an `opsctl init` project, the workflow's jobs (make test, the
    worker's build, pip install -e ., the deploy runbooks) have nothing to run, and it said so."""
    assert runner.invoke(app, ["init", str(tmp_path / "proj")]).exit_code == 0
    text = (tmp_path / "proj" / "opsctl.yaml").read_text()
    import yaml as _yaml

    doc = _yaml.safe_load(text)
    env = {"platform": "kubernetes", "kubernetes": {"context": "c", "namespace": "t"}}
    doc["environments"] |= {"staging": env, "production": env}
    (tmp_path / "proj" / "opsctl.yaml").write_text(_yaml.safe_dump(doc))
    result = runner.invoke(app, ["--root", str(tmp_path / "proj"), "render", "ci"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "Makefile" in said and "worker/Dockerfile" in said and "runbooks/deploy-worker" in said, said


def test_runbooks_sharing_a_schedule_each_run_when_another_fails(runner, monkeypatch, tmp_path):
    """Issue 23 (B23b): alpha and beta on the same cron are two steps of one scheduled job; an
    `if:` without a status function is ANDed with success(), so a failed alpha skipped beta.
    Each step is `!cancelled() && <setup succeeded> && <its schedule>`, the cron is listed once
    in on.schedule, and actionlint stays clean."""
    import re

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    (tmp_path / "opsctl.yaml").write_text("version: 1\nenvironments:\n  staging: {platform: kubernetes}\n"
                                          "  production: {platform: kubernetes, protected: true}\n")
    template = (REPO / "runbooks" / "redis-snapshot" / "v1.yaml").read_text()
    for name in ("alpha", "beta"):
        text = re.sub(r"(?m)^name: .*$", f"name: {name}", template)
        text = re.sub(r"(?m)^schedule: .*$", 'schedule: "0 2 * * *"', text)
        (tmp_path / "runbooks" / name).mkdir(parents=True)
        (tmp_path / "runbooks" / name / "v1.yaml").write_text(text)
    out = tmp_path / "wf.yml"
    result = runner.invoke(app, ["render", "ci", "--out", str(out)])
    assert result.exit_code == 0, result.output
    flow = yaml.safe_load(out.read_text())
    assert [t["cron"] for t in flow[True]["schedule"]] == ["0 2 * * *"]
    for env in ("staging", "production"):
        job = flow["jobs"][f"scheduled-{env}"]
        setup = [s for s in job["steps"] if s.get("id") == "kubeconfig"]
        assert len(setup) == 1
        runs = [s for s in job["steps"] if "runbook run" in s.get("run", "")]
        assert [s["run"].split("runbook run ")[1].split()[0].split("@")[0] for s in runs] == ["alpha", "beta"]
        for step in runs:
            assert step["if"].startswith("!cancelled() && steps.kubeconfig.outcome == 'success' && "), step["if"]
            assert step["if"].endswith("github.event.schedule == '0 2 * * *'"), step["if"]
    lint = _actionlint(out)
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout + lint.stderr


def test_one_concurrency_group_and_oidc_credentials_per_environment(workflow):
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    groups = {name: job["concurrency"]["group"] for name, job in jobs.items() if "concurrency" in job}
    assert groups == {"deploy-staging": "opsctl-staging", "load-test-gate": "opsctl-staging",
                      "deploy-production": "opsctl-production",
                      # a group per schedule (BREAKER23): never the deploy chain's, whose pending jobs it would cancel
                      "scheduled-staging": "opsctl-staging-schedule-${{ github.event.schedule }}",
                      "scheduled-production": "opsctl-production-schedule-${{ github.event.schedule }}"}
    assert all(not jobs[n]["concurrency"]["cancel-in-progress"] for n in groups)
    for name in groups:
        job = jobs[name]
        assert job["permissions"]["id-token"] == "write"
        creds = next(s for s in job["steps"] if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@"))
        assert creds["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}" and creds["with"]["aws-region"] == "eu-west-1"
        kube = next(s for s in job["steps"] if "update-kubeconfig" in s.get("run", ""))
        context = "transcribe-production" if "production" in name else "transcribe-staging"
        assert f"--alias {context}" in kube["run"]
        names = [s.get("name", s.get("uses", s.get("run"))) for s in job["steps"]]
        assert names.index(kube["name"]) < min(i for i, n in enumerate(names) if str(n).startswith("runbook"))
        env = "PRODUCTION" if "production" in name else "STAGING"
        for step in (s for s in job["steps"] if "runbook run" in s.get("run", "")):
            # what opsctl.yaml names: database, Redis, backup key and the worker API key for analysis
            assert set(step["env"]) == {f"{env}_DATABASE_URL", f"{env}_REDIS_URL", "OPSCTL_BACKUP_KEY",
                                        "OPSCTL_WORKER_API_KEY"}
            assert all(v == f"${{{{ secrets.{k} }}}}" for k, v in step["env"].items())


def _actionlint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "actionlint"), "-no-color", str(path)], capture_output=True, text=True)


def test_workflow_passes_actionlint_with_no_findings(workflow):
    result = _actionlint(workflow)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_actionlint_would_catch_a_node20_action(workflow):
    """The check above can fail: the majors the workflow used before run on Node 20."""
    old = workflow.with_name("old.yml")
    old.write_text(workflow.read_text().replace("actions/upload-artifact@v6", "actions/upload-artifact@v4"))
    result = _actionlint(old)
    assert result.returncode != 0 and 'runtime "node20"' in result.stdout


def test_workflow_passes_the_github_workflow_schema(workflow):
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             str(workflow)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_refuses_a_local_environment(runner, monkeypatch):
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["render", "ci", "--staging", "local"])
    assert result.exit_code == 2
    assert "CI deploys kubernetes environments" in result.output


# --- render schedules ----------------------------------------------------------------------

def test_render_schedules_emits_valid_cronjobs_for_the_scheduled_runbooks(runner, monkeypatch):
    import kubernetes_validate

    monkeypatch.chdir(REPO)
    role = "arn:aws:iam::123456789012:role/opsctl-production"
    result = runner.invoke(app, ["render", "schedules", "--env", "production", "--image", "ghcr.io/x/opsctl:1.2.3",
                                 "--role-arn", role])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)  # raises ValidationError on any misfit
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    by_runbook = {d["metadata"]["labels"]["opsctl.dev/runbook"]: d for d in docs if d["kind"] == "CronJob"}
    assert {n: d["spec"]["schedule"] for n, d in by_runbook.items()} == SCHEDULED
    for name, doc in by_runbook.items():
        spec = doc["spec"]
        assert doc["kind"] == "CronJob" and doc["metadata"]["namespace"] == "transcribe"
        assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] == "Etc/UTC"
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        (container,) = pod["containers"]
        assert container["image"] == "ghcr.io/x/opsctl:1.2.3"
        args = container["args"]
        ref = args[args.index("run") + 1]
        assert ref.startswith(f"{name}@") and (REPO / "runbooks" / name / f"v{ref.split('@')[1]}.yaml").exists()
        assert args[args.index("--env") + 1] == "production" and "--yes" in args
        assert container["envFrom"] == [{"secretRef": {"name": "opsctl-production"}}]


def test_a_broken_cronjob_fails_the_schema_check():
    """kubernetes-validate really checks: a CronJob without its job template is refused."""
    import kubernetes_validate

    doc = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "x"},
           "spec": {"schedule": "0 2 * * *", "concurrencyPolicy": "Sometimes"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_render_schedules_refuses_a_local_environment(runner, monkeypatch):
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["render", "schedules", "--env", "local"])
    assert result.exit_code == 2 and "in cron instead" in result.output


@pytest.mark.parametrize("header, reason", [
    ('schedule: "0 25 * * *"', "is not a 5-field cron expression"),
    ('schedule: "@daily please"', "is not a 5-field cron expression"),
    ('schedule: "0 2 * * *"\nparameters:\n  who: {required: true}', "parameter 'who' needs a default"),
])
def test_validate_refuses_a_bad_schedule(runner, ops_root, header, reason):
    path = ops_root / "runbooks" / "tick" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(f"name: tick\nversion: 1\n{header}\nsteps:\n  - id: wait\n    action: wait\n    with: {{seconds: 0}}\n")
    result = runner.invoke(app, ["runbook", "validate", "tick"])
    assert result.exit_code == 2 and reason in result.output and f"{path}:3:" in result.output, result.output


def test_the_opsctl_image_is_built_from_a_dockerfile_matching_the_cronjobs(workflow):
    """The workflow builds the image the CronJobs run: every file it copies exists, and it
    holds the ops root where the CronJobs look (OPSCTL_ROOT) as the user they run as."""
    from opsctl.runbook.schedules import OPS_ROOT

    build = yaml.safe_load(workflow.read_text())["jobs"]["build-opsctl"]
    push = next(s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    dockerfile = REPO / push["with"]["file"]
    assert push["with"]["context"] == "." and push["with"]["tags"] == "ghcr.io/example/opsctl:${{ env.TAG }}"
    lines = [line.split() for line in dockerfile.read_text().splitlines() if line.strip() and not line.startswith("#")]
    copies = [words[1:-1] for words in lines if words[0] == "COPY" and not words[1].startswith("--from")]
    assert copies and all((REPO / src).exists() for sources in copies for src in sources)
    assert ["WORKDIR", OPS_ROOT] in lines and ["USER", "10001"] in lines
    assert any(w[0] == "ENV" and f"OPSCTL_ROOT={OPS_ROOT}" in w for w in lines)
