"""An option given empty is refused, never taken for its default, for "all" or for "none"
(reviewer 39 R9, R10): an unset CI variable (`--role-arn "$ROLE_ARN"`) expands to "", and
each of these did something other than the caller wrote, exit 0: the CronJobs rendered with
no AWS role, a deploy or render on the environment's strategy or image, a scheduled monitor
on health.cron, no report written where a later CI step uploads one, every run listed."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsctl.cli import app

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    shutil.copy(REPO / "opsctl.yaml", tmp_path / "opsctl.yaml")
    shutil.copytree(REPO / "runbooks", tmp_path / "runbooks")  # the scheduled ones make CronJobs
    monkeypatch.chdir(tmp_path)
    for var in ("OPSCTL_ROOT", "OPSCTL_ENV"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


EMPTY = [
    (["deploy", "--env", "local", "--image", "w:1.0", "--strategy", "", "--dry-run"], "--strategy is empty"),
    (["render", "--env", "staging", "--strategy", ""], "--strategy is empty"),
    (["render", "--env", "staging", "--image", ""], "--image is empty"),
    (["render", "schedules", "--env", "production", "--role-arn", ""], "--role-arn is empty"),
    (["render", "schedules", "--env", "production", "--role-arn", " "], "--role-arn is empty"),
    (["render", "schedules", "--env", "production", "--image", ""], "--image is empty"),
    (["health", "--env", "local", "--mode", "scheduled", "--cron", ""], "--cron is empty"),
    (["health", "--env", "local", "--mode", "scheduled", "--cron", "* * * * *", "--history", ""],
     "--history is empty"),
    (["health", "--env", "local", "--junit", ""], "--junit is empty"),
    (["loadtest", "run", "--env", "local", "--junit", ""], "--junit is empty"),
    (["loadtest", "run", "--env", "local", "--html", ""], "--html is empty"),
    (["loadtest", "run", "--env", "local", "--csv", ""], "--csv is empty"),
    (["runbook", "history", "--run", ""], "--run is empty"),
    (["runbook", "history", "--env", ""], "--env is empty"),
    (["runbook", "history", ""], "NAME is empty"),
    (["runbook", "run", "restore-drill", "--junit", "", "--dry-run"], "--junit is empty"),
    (["loadtest", "list", "--env", ""], "--env is empty"),
    (["loadtest", "list", "--profile", ""], "--profile is empty"),
    (["loadtest", "run", "--env", "local", "--locustfile", ""], "--locustfile is empty"),
    (["render", "ci", "--out", ""], "--out is empty"),
    (["render", "monitoring", "--env", "staging", "--out", ""], "--out is empty"),
    # breaker F11: `--replica "$R"` unset promoted database.replica_instance (exit 0)
    (["failover", "--env", "local", "--replica", "", "--yes"], "--replica is empty"),
    (["failover", "--env", "staging", "--replica", " ", "--yes"], "--replica is empty"),
]


@pytest.mark.parametrize("args, said", EMPTY, ids=[" ".join(a[:2]) + " " + s.split()[0] for a, s in EMPTY])
def test_an_empty_option_is_refused_in_one_line(runner, root, args, said):
    result = runner.invoke(app, args)
    line = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert line.count("\n") == 0 and said in line and "leave" in line, line  # what to do: give one, or leave it out
    assert not result.stdout.strip()


def test_dr_drill_reports_given_empty_are_refused_before_the_drill(root):
    """Checked directly: the drill's command checks the platform first (it needs one)."""
    from opsctl.config import load_project
    from opsctl.errors import UsageError
    from opsctl.pitr import drill

    project = load_project(root)
    for option, kwargs in (("--junit", {"junit_path": ""}), ("--metrics-file", {"metrics_path": " "})):
        with pytest.raises(UsageError, match=f"^{option} is empty"):
            drill.drill(project, project.env("local"), **kwargs)


def test_failover_abandon_with_a_replica_is_refused(runner, root):
    """Breaker F11: `failover --env local --abandon --replica foo` ignored --replica silently
    (without --abandon, --replica on local is refused)."""
    for replica in ("foo", ""):
        r = runner.invoke(app, ["failover", "--env", "local", "--abandon", "--replica", replica, "--yes"])
        line = r.output.strip()
        assert r.exit_code == 2 and len(line.splitlines()) == 1, r.output
        assert "--abandon and --replica given together" in line and "leave --replica out" in line, line


def test_failover_abandon_on_kubernetes_says_what_to_do_there(runner, root):
    """Breaker F11: it answered with `dr standby`'s message ("a standby from the archive is for
    the embedded platform"); --abandon undoes a local failover only, and an RDS one resumes."""
    r = runner.invoke(app, ["failover", "--env", "staging", "--abandon", "--yes"])
    line = r.output.strip()
    assert r.exit_code == 2 and len(line.splitlines()) == 1, r.output
    assert "--abandon undoes an interrupted failover of the embedded platform only" in line, line
    assert "re-run 'opsctl failover --env staging' without --abandon" in line and "resumes" in line, line
    assert "a standby from the archive" not in line, line


@pytest.mark.parametrize("arn", ["arn:aws:iam::12:role/x", "arn:aws:s3:::bucket", "role/opsctl",
                                 "arn:aws:iam::123456789012:user/ci"])
def test_a_role_arn_that_is_not_an_iam_role_is_refused(runner, root, arn):
    result = runner.invoke(app, ["render", "schedules", "--env", "production", "--role-arn", arn])
    assert result.exit_code == 2 and "is not an IAM role ARN" in result.stderr, result.output


@pytest.mark.parametrize("arn", ["arn:aws:iam::123456789012:role/opsctl-production",
                                 "arn:aws-cn:iam::123456789012:role/service/ops.ctl@x",
                                 "arn:aws-us-gov:iam::123456789012:role/a/b/c"])
def test_iam_role_arns_are_annotated(runner, root, arn):
    import yaml

    result = runner.invoke(app, ["render", "schedules", "--env", "production", "--role-arn", arn])
    assert result.exit_code == 0, result.output
    (account,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "ServiceAccount"]
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn}


def test_left_out_still_means_the_default(runner, root):
    """The refusals are of "" only: no option is the environment's value, as before."""
    import yaml

    docs = [d for d in yaml.safe_load_all(runner.invoke(app, ["render", "--env", "staging"]).stdout) if d]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/example/transcription-worker:latest"
    schedules = runner.invoke(app, ["render", "schedules", "--env", "production"])
    assert schedules.exit_code == 0 and "kind: ServiceAccount" in schedules.stdout
    assert "eks.amazonaws.com/role-arn" not in schedules.stdout
    assert runner.invoke(app, ["runbook", "history"]).exit_code == 0


def test_a_health_history_setting_given_empty_is_refused_at_load(runner, root):
    text = (root / "opsctl.yaml").read_text()
    (root / "opsctl.yaml").write_text(text.replace("  local:\n", "  local:\n    health: {history: ''}\n", 1))
    result = runner.invoke(app, ["health", "--env", "local", "--mode", "scheduled", "--cron", "* * * * *"])
    assert result.exit_code == 2 and "history" in result.stderr, result.output


def test_ctrl_c_ends_a_log_follow_with_exit_130(root):
    """As every command Ctrl-C stops (reviewer 39 R11: `local logs -f` exited 0)."""
    from opsctl.config import load_project
    from opsctl.local import state as st

    log = st.folder_for(load_project(root).root) / "logs" / "postgres.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\ntwo\n")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "opsctl"), "local", "logs", "postgres", "-f"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # SIGINT as a terminal leaves it (an xdist worker ignores it, and a child
                            # inherits that: Python then installs no Ctrl-C handler)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline() == "one\n" and proc.stdout.readline() == "two\n"  # following now
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip() == "opsctl: error: interrupted", err


def test_a_runbook_report_that_cannot_be_written_is_refused_before_any_step(runner, root):
    """`--junit` is checked as every report path is, before the run (a folder was found only
    after every step had run)."""
    (root / "reports").mkdir()
    result = runner.invoke(app, ["runbook", "run", "restore-drill", "--junit", "reports/", "--dry-run"])
    assert result.exit_code == 2 and "--junit reports/ is a folder" in result.stderr, result.output
    assert not (root / ".opsctl" / "runs").exists()


def test_render_ci_out_writes_the_workflow_whole(runner, root):
    target = root / ".github" / "workflows" / "deploy.yml"
    result = runner.invoke(app, ["render", "ci", "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == runner.invoke(app, ["render", "ci"]).stdout
    assert not [p for p in target.parent.iterdir() if p != target]  # no temporary file left


@pytest.mark.parametrize("name", ["OPSCTL_ENV", "OPSCTL_ROOT"])
def test_a_setting_variable_set_empty_is_refused_unless_its_option_is_given(runner, root, monkeypatch, name):
    """Breaker 41 Q9: Click reads an empty variable as unset, so `OPSCTL_ENV=$DEPLOY_ENV` with the
    CI variable missing ran on the default environment."""
    monkeypatch.setenv(name, "")
    result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 2 and result.stderr.strip() == (
        f"opsctl: error: {name} is set but empty; give it a value, or unset it "
        f"({'--env' if name == 'OPSCTL_ENV' else '--root'} wins over it)"), result.output
    given = ["--env", "local"] if name == "OPSCTL_ENV" else ["--root", str(root)]
    args = [*given, "config", "show", "--json"] if name == "OPSCTL_ROOT" else ["config", "show", *given, "--json"]
    assert runner.invoke(app, args).exit_code == 0
