"""`infra.up` and `infra.destroy` own their sequence (issue 21): target check, preview, approval,
run. The Pulumi operations are replaced by a recorder here (the real ones, through a stand-in
pulumi CLI and Pulumi's mocks, are in test_infra_cli.py / test_infra_core.py): what is under
test is the order, what is asked and what is never run after a refusal."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from opsctl import infra
from opsctl.config import load_project
from opsctl.errors import UsageError
from opsctl.infra import InfraResult, operations

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project():
    return load_project(REPO)


@pytest.fixture
def pulumi(monkeypatch):
    """Replaces operations.run: records (operation, listener) and answers `changes[operation]`."""
    calls: list[tuple[str, object]] = []
    changes = {"preview": {"create": 3, "same": 2}, "up": {"create": 3, "same": 2}, "destroy": {"delete": 5}}

    def run(project, env, operation, on_event=None, policy=True):
        calls.append((operation, on_event))
        return InfraResult(env.name, env.name, operation, dict(changes[operation]), [])

    monkeypatch.setattr(operations, "run", run)
    return calls, changes


def recorder(answer=None):
    asked: list[str] = []

    def approve(question):
        asked.append(question)
        if answer is not None:
            raise UsageError(answer)
    return asked, approve


def test_up_at_a_terminal_previews_then_asks_with_the_count_then_runs(project, pulumi):
    calls, _ = pulumi
    asked, approve = recorder()
    previews = []
    result = infra.up(project, project.env("staging"), approve, preview_first=True, on_preview=previews.append)
    assert [op for op, _ in calls] == ["preview", "up"]
    assert [p.operation for p in previews] == ["preview"]
    assert asked == ["apply these 3 changes to 'staging'?"]
    assert result.operation == "up"


def test_up_whose_preview_changes_nothing_asks_nothing_and_runs_nothing(project, pulumi):
    calls, changes = pulumi
    changes["preview"] = {"same": 5}
    asked, approve = recorder()
    result = infra.up(project, project.env("staging"), approve, preview_first=True)
    assert [op for op, _ in calls] == ["preview"] and asked == []
    assert result.operation == "preview" and result.changed == 0


def test_up_refused_runs_nothing_after_the_preview(project, pulumi):
    calls, _ = pulumi
    asked, approve = recorder("not approved")
    with pytest.raises(UsageError, match="not approved"):
        infra.up(project, project.env("staging"), approve, preview_first=True)
    assert [op for op, _ in calls] == ["preview"] and len(asked) == 1


def test_up_without_a_preview_asks_about_the_stack_then_runs(project, pulumi):
    calls, _ = pulumi
    asked, approve = recorder()
    infra.up(project, project.env("staging"), approve)
    assert asked == ["update 'staging' (stack staging)"] and [op for op, _ in calls] == ["up"]


@pytest.mark.parametrize("operation", ["up", "destroy"])
def test_a_local_environment_is_refused_before_any_question(project, pulumi, operation):
    calls, _ = pulumi
    asked, approve = recorder()
    with pytest.raises(UsageError, match="'local' is a local environment"):
        getattr(infra, operation)(project, project.env("local"), approve)
    assert asked == [] and calls == []


def test_destroy_asks_then_runs_and_a_refusal_destroys_nothing(project, pulumi):
    calls, _ = pulumi
    asked, approve = recorder()
    result = infra.destroy(project, project.env("staging"), approve)
    assert asked == ["destroy every resource of 'staging'?"] and [op for op, _ in calls] == ["destroy"]
    assert result.changes == {"delete": 5}
    calls.clear()
    with pytest.raises(UsageError, match="nothing was destroyed"):
        infra.destroy(project, project.env("production"), infra.terminal_approval("destroy", project.env("production"),
                                                                                  yes=True, confirm_env="staging"))
    assert calls == []


def test_each_operation_is_watched_and_its_view_left_before_the_question(project, pulumi):
    calls, _ = pulumi
    events: list[str] = []

    @contextlib.contextmanager
    def watch(operation):
        events.append(f"enter {operation}")
        yield lambda tracker: None
        events.append(f"exit {operation}")

    def approve(question):
        events.append("ask")

    infra.up(project, project.env("staging"), approve, preview_first=True, watch=watch)
    assert events == ["enter preview", "exit preview", "ask", "enter up", "exit up"]
    assert all(listener is not None for _, listener in calls)  # each run got the view's listener
