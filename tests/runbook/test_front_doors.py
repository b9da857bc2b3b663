"""One operation, two front doors (issue 21): a runbook action takes the options of the
command that runs the same core operation, under the same names."""

from __future__ import annotations

import inspect

import pytest
import typer.main

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


# point-in-time recovery is sequenced in opsctl/cli/pitr.py, not in a core operation a step
# could call: until it moves there, runbooks restore backups, not points in time
PITR_ONLY = {"to_time", "to_lsn", "beside"}


def test_restore_action_takes_the_options_of_opsctl_restore():
    from opsctl.cli.backup import restore

    cli = {"id" if n == "backup_id" else n for n in _options(restore)} - {"env", "yes", "as_json"} - PITR_ONLY
    assert set(arguments(ACTIONS["restore"])) == cli
