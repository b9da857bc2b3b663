"""One operation, two front doors (issue 21): a runbook action takes the options of the
command that runs the same core operation, under the same names."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import typer.main
from typer.testing import CliRunner

from opsctl.errors import OperationFailed

from opsctl.runbook.actions import ACTIONS
from opsctl.runbook.model import arguments


def _options(command_fn) -> set[str]:
    """The option names (Python side) of a Typer command function."""
    return {p.name for p in typer.main.get_command_from_info(
        typer.models.CommandInfo(callback=command_fn), pretty_exceptions_short=True,
        rich_markup_mode=None).params}


def _core(fn, skip: set[str]) -> set[str]:
    return {n for n in inspect.signature(fn).parameters if n not in skip}


def test_loadtest_action_takes_the_options_of_loadtest_run():
    from opsctl.cli.loadtest import run
    from opsctl.loadtest.operation import load_test

    action = set(arguments(ACTIONS["loadtest"]))
    assert action == _core(load_test, {"project", "env", "live"})
    assert action == _options(run) - {"env", "as_json"}


def test_deploy_action_takes_the_options_of_opsctl_deploy():
    from opsctl.cli.deploy import deploy
    from opsctl.deploy import operation

    cli = {"set" if n == "set_" else n for n in _options(deploy)} - {"env_name", "dry_run", "as_json"}
    action = set(arguments(ACTIONS["deploy"]))
    assert action == cli
    assert {"backup", "load_gate", "load_gate_duration", "wait"} <= action
    # both call the one core operation, which takes the same options
    assert action == {"set" if n == "settings" else n
                      for n in _core(operation.deploy, {"project", "env_name", "progress"})}


def test_restore_action_takes_the_options_of_opsctl_restore_and_calls_the_same_core(monkeypatch):
    """#21 D2: to_time, to_lsn and beside were command-only (the choice between a backup and a
    point-in-time restore sat in the Typer layer); both doors now call restore_any."""
    from opsctl.backup import restore as core
    from opsctl.cli.backup import restore

    cli = {"id" if n == "backup_id" else n for n in _options(restore)} - {"env", "yes", "as_json"}
    assert set(arguments(ACTIONS["restore"])) == cli
    calls = []

    def restore_any(project, env, *args, **kwargs):
        calls.append(args)
        return {"recovered_to": "2026-11-30T06:00:00Z"}

    monkeypatch.setattr(core, "restore_any", restore_any)
    ctx = type("Ctx", (), {"project": None, "env": None, "yes": True})()
    assert ACTIONS["restore"](ctx, to_time="2026-11-30T06:00:00Z", beside=True) == {"recovered_to": "2026-11-30T06:00:00Z"}
    assert calls[0][-3:] == ("2026-11-30T06:00:00Z", None, True)


def test_restore_any_refuses_mixed_kinds():
    from opsctl.backup.restore import restore_any
    from opsctl.errors import UsageError

    with pytest.raises(UsageError, match="don't combine"):
        restore_any(None, None, backup_id="20261130T020000Z", to_time="latest")


def test_promote_action_takes_the_options_of_opsctl_promote():
    from opsctl.cli.deploy import promote

    assert set(arguments(ACTIONS["promote"])) == _options(promote) - {"env_name", "as_json"}


def test_rollback_action_takes_the_options_of_opsctl_rollback():
    """#21 D3: the action hard-coded wait=False while the command defaults to --wait."""
    from opsctl.cli.deploy import rollback

    action = arguments(ACTIONS["rollback"])
    assert set(action) == _options(rollback) - {"env_name", "as_json"}
    assert inspect.signature(ACTIONS["rollback"]).parameters["wait"].default is True


def test_prune_action_takes_the_options_of_backup_prune_and_asks_the_same_way(tmp_path, monkeypatch):
    """#21 D3: the prune action passed no approval: a runbook without --yes deleted backups."""
    from opsctl.cli.backup import prune
    from opsctl.errors import UsageError

    # the command's --yes is the runbook's --yes (Context.yes)
    assert set(arguments(ACTIONS["prune"])) == _options(prune) - {"env", "yes", "as_json"}
    asked = []

    def prune_environment(project, env, *rules, dry_run, approve=None):
        asked.append(approve)
        if approve is not None:
            approve("delete 2 backup(s) from s3://bucket")
        return type("R", (), {"removed": ["a", "b"], "kept": []})()

    monkeypatch.setattr("opsctl.backup.retention.prune_environment", prune_environment)
    monkeypatch.setenv("CI", "true")
    ctx = type("Ctx", (), {"project": None, "env": None, "yes": False})()
    with pytest.raises(UsageError, match="needs approval: no terminal to ask on, pass --yes"):
        ACTIONS["prune"](ctx)
    ctx.yes = True
    assert ACTIONS["prune"](ctx)["removed"] == ["a", "b"]
    assert all(a is not None for a in asked)


# where a name must differ: the command's --check is repeatable, the step's `check` takes a
# list or a comma string; `fail_on` is the step's verdict (the command reports the worst
# status as its exit code, 0-3, for the caller to judge); a step is one sweep, so the
# continuous/scheduled options and --beat belong to the command only
HEALTH_COMMAND_ONLY = {"mode", "interval", "cron", "iterations", "metrics_port", "beat"}
HEALTH_STEP_ONLY = {"fail_on"}


def test_health_action_takes_the_options_of_opsctl_health():
    from opsctl.cli.health import health

    cli = _options(health) - {"ctx", "env", "as_json"} - HEALTH_COMMAND_ONLY
    assert set(arguments(ACTIONS["health"])) - HEALTH_STEP_ONLY == cli


def test_backup_action_takes_the_options_of_backup_create():
    """#21 D3: the action had no no_encrypt."""
    from opsctl.cli.backup import create

    cli = {"type" if n == "kind" else n for n in _options(create)} - {"env", "as_json"}
    assert set(arguments(ACTIONS["backup"])) == cli


def test_verify_chain_action_takes_the_options_of_verify_chain_and_calls_the_same_core(monkeypatch):
    from opsctl.cli.pitr import verify_chain
    from opsctl.pitr.ops import ChainReport

    assert set(arguments(ACTIONS["verify-chain"])) == _options(verify_chain) - {"env", "as_json"}
    broken = ChainReport("file:///r", "1", False, [{"id": "b"}], {"b": "damaged"}, ["b"], 3, 4,
                         [{"file": "000000010000000000000003", "kind": "missing", "detail": "x"}], [], None)
    seen = []
    monkeypatch.setattr("opsctl.pitr.ops.verify_chain",
                        lambda project, env, timeline=None: seen.append(timeline) or broken)
    ctx = SimpleNamespace(project=None, env=None)
    with pytest.raises(OperationFailed, match=r"000000010000000000000003 \(missing\), base backup b"):
        ACTIONS["verify-chain"](ctx, timeline=2)
    assert seen == [2]


def test_base_backup_action_kinds_are_the_command_line_s(monkeypatch):
    """`backup base` (full), `--incremental`, `--auto`; both flags together are refused."""
    from opsctl.cli import app

    kinds = []
    monkeypatch.setattr("opsctl.pitr.ops.create_base",
                        lambda project, env, kind, report=None: kinds.append(kind) or SimpleNamespace(
                            id="b", kind=kind, parent=None, stored_bytes=1, seconds=0.1))
    ctx = SimpleNamespace(project=None, env=None)
    assert ACTIONS["base-backup"](ctx)["kind"] == "auto"
    assert ACTIONS["base-backup"](ctx, kind="full")["kind"] == "full"
    both = CliRunner().invoke(app, ["backup", "base", "--incremental", "--auto"])
    assert both.exit_code == 2 and "--incremental and --auto both given" in both.output
    assert kinds == ["auto", "full"]


def test_prune_chain_action_takes_the_options_of_prune_chain_and_asks_the_same_way(monkeypatch):
    from opsctl.cli.pitr import prune_chain
    from opsctl.errors import UsageError

    assert set(arguments(ACTIONS["prune-chain"])) == _options(prune_chain) - {"env", "yes", "as_json"}
    asked = []

    def run(project, env, keep_full, dry_run=False, approve=None, drop_damaged=False):
        approve(f"delete 1 base backup(s), keeping {keep_full}")
        asked.append(keep_full)
        return SimpleNamespace(kept=["new"], removed=["old"], wal_removed=3, damaged={}, dropped={},
                               waiting={"queued": "its WAL is not archived yet: ..."})

    monkeypatch.setattr("opsctl.pitr.ops.prune_chain", run)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(UsageError, match="needs approval: no terminal to ask on, pass --yes"):
        ACTIONS["prune-chain"](SimpleNamespace(project=None, env=None, yes=False), keep_full=3)
    done = ACTIONS["prune-chain"](SimpleNamespace(project=None, env=None, yes=True), keep_full=3)
    assert done["removed"] == ["old"] and asked == [3]
    assert done["waiting"] == {"queued": "its WAL is not archived yet: ..."}  # an output, as `damaged` is
