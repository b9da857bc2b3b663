"""Retention applies its rules to each kind of backup on its own (breaker 35 F3): counted
together, the hourly Redis snapshots (redis-snapshot) pushed the nightly database backup out
of keep_last within hours, and `restore --latest` had no database left to restore. As
restic's `forget` groups by host and paths, opsctl groups by what a backup holds."""

from __future__ import annotations

import pytest

from backup_support import KEY, ok, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow


def test_redis_snapshots_never_push_a_database_backup_out_of_retention(seeded, runner, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{repo}",
                   backup={"repository": f"file://{repo}", "retention": {"keep_last": 2}})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)

    def create(kind: str) -> dict:
        return ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", kind, "--json"]))

    db = create("db")["id"]
    snapshots = [create("redis") for _ in range(3)]
    assert snapshots[-1]["pruned"] == [snapshots[0]["id"]], snapshots  # the oldest snapshot, not the database
    listed = {b["id"]: b for b in ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]}
    assert sorted(listed) == sorted([db, snapshots[1]["id"], snapshots[2]["id"]]), listed

    plan = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--dry-run", "--json"]))
    assert plan["removed"] == [] and plan["reasons"][db] == "last 1 of db", plan
    assert plan["reasons"][snapshots[2]["id"]] == "last 1 of redis", plan
