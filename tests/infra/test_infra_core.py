"""opsctl.infra without the pulumi CLI: engine events, approvals, outputs, the pulumi environment."""

from __future__ import annotations

import dataclasses
import io
import stat
import sys

import pytest
from pulumi.automation import EngineEvent, OutputValue
from rich.console import Console

from opsctl.config import Environment
from opsctl.errors import UsageError
from opsctl.infra import OUTPUTS, StackOutputs, approve
from opsctl.infra import operations, target
from opsctl.infra.events import LiveView, Tracker

URN = "urn:pulumi:staging::transcribe::transcribe:infra:Database$aws:rds/instance:Instance::"


def event(seq, **body):
    return EngineEvent.from_json({"sequence": seq, "timestamp": 0, **body})


def step(op, name, typ="aws:rds/instance:Instance"):
    return {"metadata": {"op": op, "urn": URN + name, "type": typ, "provider": ""}}


ENGINE_EVENTS = [
    event(1, preludeEvent={"config": {}}),
    event(2, resourcePreEvent=step("same", "transcribe-staging", "pulumi:pulumi:Stack")),
    event(3, resourcePreEvent=step("create", "db")),
    event(4, resourcePreEvent=step("same", "vpc", "aws:ec2/vpc:Vpc")),
    event(5, resourcePreEvent=step("update", "sg", "aws:ec2/securityGroup:SecurityGroup")),
    event(6, resOutputsEvent=step("create", "db")),
    event(7, diagnosticEvent={"message": "creating failed: AccessDenied\n", "color": "never",
                              "severity": "error", "urn": URN + "sg"}),
    event(8, resOpFailedEvent={"metadata": step("update", "sg", "aws:ec2/securityGroup:SecurityGroup")["metadata"],
                               "status": 1, "steps": 1}),
    event(9, diagnosticEvent={"message": "deprecated argument", "color": "never", "severity": "warning"}),
    event(10, summaryEvent={"maybeCorrupt": False, "durationSeconds": 3,
                            "resourceChanges": {"create": 1, "update": 1, "same": 2}, "PolicyPacks": {}}),
]


def test_tracker_folds_engine_events_into_steps_errors_and_summary():
    seen = []
    tracker = Tracker(listener=lambda t: seen.append(len(t.steps)))
    for e in ENGINE_EVENTS:
        tracker(e)
    steps = {s.name: (s.op, s.status) for s in tracker.snapshot()}
    assert steps == {"db": ("create", "done"), "sg": ("update", "failed")}
    assert tracker.unchanged == 1  # the vpc; the Stack itself is not a resource change
    assert tracker.errors == ["sg: creating failed: AccessDenied"]
    assert tracker.warnings == ["deprecated argument"]
    assert tracker.summary == {"create": 1, "update": 1, "same": 2}
    assert tracker.counts() == {"create": 1, "update": 1}
    assert len(seen) == len(ENGINE_EVENTS)


def test_live_view_without_a_terminal_prints_each_finished_step_once():
    buffer = io.StringIO()
    view = LiveView("pulumi up · staging", console=Console(file=buffer, force_terminal=False, width=200))
    tracker = Tracker(listener=view.update)
    with view:
        for e in ENGINE_EVENTS:
            tracker(e)
    assert buffer.getvalue().splitlines() == [
        "pulumi up · staging",
        "+ aws:rds/instance:Instance db: create done",
        "~ aws:ec2/securityGroup:SecurityGroup sg: update failed",
    ]


def test_live_view_on_a_terminal_draws_progress():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    view = LiveView("pulumi up · staging", console=console)
    tracker = Tracker()
    for e in ENGINE_EVENTS[:6]:
        tracker(e)
    console.print(view.render(tracker))
    text = buffer.getvalue()
    assert "pulumi up · staging  1/2 changes done, 1 unchanged" in text
    assert "update running" in text and "create done" in text


PROTECTED = Environment(name="production", protected=True)
PLAIN = Environment(name="staging")


def ask(answer):
    def _ask(_question):
        return answer
    return _ask


@pytest.mark.parametrize("operation, env, kwargs, error", [
    ("up", PLAIN, dict(yes=True, interactive=False), None),
    ("up", PLAIN, dict(yes=False, interactive=False), "pass --yes"),
    ("up", PLAIN, dict(yes=False, interactive=True, ask_yes_no=ask(True)), None),
    ("up", PLAIN, dict(yes=False, interactive=True, ask_yes_no=ask(False)), "not approved"),
    ("destroy", PLAIN, dict(yes=True, interactive=False), None),
    # protected: --yes alone is never enough
    ("destroy", PROTECTED, dict(yes=True, interactive=False), "needs --yes --confirm-env production"),
    ("destroy", PROTECTED, dict(yes=True, interactive=False, confirm_env="staging"), "is not 'production'"),
    ("destroy", PROTECTED, dict(yes=False, interactive=False, confirm_env="production"), "pass --yes"),
    ("destroy", PROTECTED, dict(yes=True, interactive=False, confirm_env="production"), None),
    ("destroy", PROTECTED, dict(yes=True, interactive=True, ask_text=ask("production")), None),
    ("destroy", PROTECTED, dict(yes=True, interactive=True, ask_text=ask("prod")), "typed 'prod'"),
    ("up", PROTECTED, dict(yes=True, interactive=False), None),  # up needs no typed name
])
def test_approvals(operation, env, kwargs, error):
    def never(_q):
        raise AssertionError("must not ask")
    args = dict(confirm_env=None, ask_yes_no=never, ask_text=never, question="go?")
    args.update(kwargs)
    if error is None:
        approve(operation, env, **args)
    else:
        with pytest.raises(UsageError, match=error):
            approve(operation, env, **args)


def test_secret_outputs_are_masked():
    masked = operations._mask({"databaseEndpoint": OutputValue("db:5432", False),
                               "token": OutputValue("s3cr3t", True)})
    assert masked == {"databaseEndpoint": "db:5432", "token": "[secret]"}


def test_every_output_opsctl_reads_has_a_typed_field():
    fields = {f.name for f in dataclasses.fields(StackOutputs)}
    assert {operations.field_name(k) for k in OUTPUTS} == fields
    assert operations.field_name("databaseSecretArn") == "database_secret_arn"


def test_pulumi_runs_the_program_with_this_interpreter_and_the_environment_account(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    env = Environment.model_validate({"name": "staging", "aws": {"region": "eu-west-1", "profile": "ts"},
                                      "pulumi": {"stack": "staging", "backend": "s3://state/pulumi"}})
    assert target.workspace_env(env) == {
        "PULUMI_PYTHON_CMD": sys.executable, "PULUMI_SKIP_UPDATE_CHECK": "true", "AWS_REGION": "eu-west-1",
        "AWS_PROFILE": "ts", "PULUMI_BACKEND_URL": "s3://state/pulumi"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")  # credentials already chosen: the profile must not override
    assert "AWS_PROFILE" not in target.workspace_env(env)


def test_the_cli_is_found_on_path_or_where_the_installer_puts_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "home"))
    assert target.find_cli() is None
    with pytest.raises(UsageError, match="https://www.pulumi.com/docs/install/"):
        target.require_cli()
    binary = tmp_path / "home" / "bin" / "pulumi"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    assert target.find_cli() is None  # not executable
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    assert target.find_cli() == binary


def test_result_rendering_summarises_the_changes():
    from opsctl.cli.infra import _render_result
    from opsctl.infra import InfraResult
    from opsctl.output import to_jsonable

    result = InfraResult(environment="staging", stack="staging", operation="up",
                         changes={"create": 2, "update": 1, "same": 70},
                         steps=[{"type": "aws:rds/instance:Instance", "name": "db", "op": "create", "status": "done"}],
                         outputs={"databaseEndpoint": "db:5432", "kubeconfig": "x" * 500, "token": "[secret]"},
                         duration_seconds=42.0)
    buffer = io.StringIO()
    _render_result(result)(Console(file=buffer, width=200, color_system=None))
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "staging (stack staging): pulumi up changed 2 create, 1 update; 70 unchanged in 42.0s"
    assert any("x" * 60 + "… (500 chars; --json shows it whole)" in line for line in lines)
    assert result.changed == 3
    assert to_jsonable(result)["outputs"]["kubeconfig"] == "x" * 500
