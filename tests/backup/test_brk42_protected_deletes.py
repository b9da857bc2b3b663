"""breaker 42 R11: on a `protected: true` environment `backup prune` and `local down --purge`
deleted backups / all data with `--yes` alone. Now each needs the environment's name
(--confirm-env NAME, or typed at a terminal), as restore and failover do; `local down --purge`
deletes the data of every `platform: local` environment, so it needs each protected one's name."""
from __future__ import annotations

import datetime as dt

import pytest
import yaml

from backup_support import KEY, keyed_file_repository
from opsctl.backup import catalog
from opsctl.cli import app
from test_brk42_backup_age import create

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@pytest.fixture
def ops(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    monkeypatch.setenv("CI", "true")
    repo = keyed_file_repository(tmp_path / "repo")
    ids = [create(repo, NOW - dt.timedelta(days=3 - i), "db") for i in range(3)]
    root = tmp_path / "ops"
    root.mkdir()
    (root / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {
        "local": {"platform": "local", "protected": True, "backup": {"repository": repo.url}},
        "lab": {"platform": "local", "protected": True},
        "dev": {"platform": "local"},
        "staging": {"platform": "kubernetes"}}}))
    return root, repo, ids


def cli(root, runner, *args):
    return runner.invoke(app, ["--root", str(root), *args])


def test_prune_of_a_protected_environment_needs_its_name(ops, runner):
    root, repo, ids = ops
    r = cli(root, runner, "backup", "prune", "--env", "local", "--keep-last", "1", "--yes")
    assert r.exit_code == 2 and "--confirm-env local" in r.output, r.output
    assert [e.id for e in catalog.entries(repo) if e.complete] == ids  # nothing deleted
    r = cli(root, runner, "backup", "prune", "--env", "local", "--keep-last", "1", "--yes", "--confirm-env", "lab")
    assert r.exit_code == 2 and "is not 'local'" in r.output, r.output
    assert [e.id for e in catalog.entries(repo) if e.complete] == ids
    dry = cli(root, runner, "backup", "prune", "--env", "local", "--keep-last", "1", "--dry-run")
    assert dry.exit_code == 0, dry.output  # a dry run deletes nothing: no name needed
    r = cli(root, runner, "backup", "prune", "--env", "local", "--keep-last", "1", "--yes", "--confirm-env", "local")
    assert r.exit_code == 0, r.output
    assert [e.id for e in catalog.entries(repo) if e.complete] == ids[-1:]


def test_purge_needs_the_name_of_every_protected_local_environment(ops, runner):
    root, _, _ = ops
    data = root / ".opsctl" / "local" / "data"  # what --purge deletes
    data.mkdir(parents=True)
    (data / "keep-me").write_text("data")
    r = cli(root, runner, "local", "down", "--purge", "--yes")
    assert r.exit_code == 2 and "--confirm-env lab --confirm-env local" in r.output, r.output
    r = cli(root, runner, "local", "down", "--purge", "--yes", "--confirm-env", "local")
    assert r.exit_code == 2 and "lab" in r.output, r.output
    r = cli(root, runner, "local", "down", "--purge", "--yes", "--confirm-env", "local", "--confirm-env", "staging")
    assert r.exit_code == 2 and "staging" in r.output, r.output  # not served by the local platform
    r = cli(root, runner, "local", "down", "--confirm-env", "local", "--confirm-env", "lab")
    assert r.exit_code == 2 and r.output.strip().endswith(  # a pipeline's check that would be ignored
        "--confirm-env is for --purge (deleting the data); a plain 'local down' keeps it"), r.output
    assert (data / "keep-me").exists()  # every refusal changed nothing
    r = cli(root, runner, "local", "down", "--purge", "--yes", "--confirm-env", "local", "--confirm-env", "lab")
    assert r.exit_code == 0, r.output
    assert not (data / "keep-me").exists()


def test_typed_names_at_a_terminal(ops, monkeypatch):
    from opsctl import approval
    from opsctl.config import load_project
    from opsctl.errors import UsageError

    project = load_project(ops[0])
    served = [project.env(n) for n in ("local", "lab", "dev")]
    answers = iter(["local", "lab"])
    approval.approve_all("purge", served, yes=False, interactive=True, ask_yes_no=lambda q: False,
                         ask_text=lambda q: next(answers))
    with pytest.raises(UsageError, match="typed 'oops'"):
        approval.approve_all("purge", served, yes=True, interactive=True, ask_yes_no=lambda q: True,
                             ask_text=lambda q: "oops")
