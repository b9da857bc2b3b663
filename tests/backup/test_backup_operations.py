"""Restore and prune are one core operation each (issue 21), called by the command and the
runbook step alike: a restore runs inside the environment's operation window (issue 23
notifications: start and end events, "failed" with the error when it fails); prune reads the
catalog once, asks before deleting complete backups and deletes nothing when refused."""

from __future__ import annotations

import pytest

from backup_support import KEY, flip, keyed_file_repo, ok, one_line_error, rows, side_env
from opsctl.cli import app
from tests.health.servers import Receiver

pytestmark = pytest.mark.slow


def _events(receiver) -> list[dict]:
    return [b for b in receiver.at("/hook") if b.get("specversion") == "1.0"]


def _announcing_env(receiver, seeded, tmp_path, monkeypatch) -> str:
    """A side environment whose notification sink is a webhook to `receiver`, encrypted file:// repository."""
    monkeypatch.setenv("TEST_HOOK_URL", f"{receiver.url}/hook")
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{tmp_path / 'repo'}",
                   health={"sinks": [{"type": "webhook", "url_env": "TEST_HOOK_URL"}]})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    return env


def test_a_restore_is_announced_and_a_failed_one_says_failed(seeded, runner, tmp_path, monkeypatch):
    receiver = Receiver()
    try:
        env = _announcing_env(receiver, seeded, tmp_path, monkeypatch)
        made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))["id"]
        assert _events(receiver) == []  # a backup is not an operation that holds checks
        done = ok(runner.invoke(app, ["restore", "--env", env, "--latest", "--components", "redis", "--yes",
                                      "--json"]))
        assert done["backup_id"] == made and done["backup_created_at"]
        events = _events(receiver)
        assert [e["type"] for e in events] == ["io.opsctl.operation.started", "io.opsctl.operation.finished"]
        assert events[0]["subject"] == f"restore backup {made} (redis)"
        assert events[1]["data"]["outcome"] == "succeeded"

        obj = tmp_path / "repo" / made / "redis.rdb.zst"
        obj.write_bytes(flip(obj.read_bytes()))
        one_line_error(runner.invoke(app, ["restore", "--env", env, "--id", made, "--components", "redis", "--yes"]),
                       1, made)
        events = _events(receiver)[2:]
        assert [e["type"] for e in events] == ["io.opsctl.operation.started", "io.opsctl.operation.finished"]
        assert events[1]["data"]["outcome"] == "failed" and events[1]["data"]["error"]
    finally:
        receiver.close()


def test_a_refused_restore_is_never_announced(seeded, runner, tmp_path, monkeypatch):
    receiver = Receiver()
    try:
        env = _announcing_env(receiver, seeded, tmp_path, monkeypatch)
        ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))
        # over live Redis keys, in CI, without --yes: refused before anything runs
        one_line_error(runner.invoke(app, ["restore", "--env", env, "--latest", "--components", "redis"]), 2,
                       "needs approval")
        assert _events(receiver) == []
    finally:
        receiver.close()


def test_prune_reads_the_catalog_once_and_a_refusal_deletes_nothing(seeded, runner, tmp_path, monkeypatch):
    from opsctl.backup import catalog

    env, _, ids = keyed_file_repo(runner, seeded, tmp_path, monkeypatch, 3)
    scans = []
    real = catalog.scan
    monkeypatch.setattr(catalog, "scan", lambda *a, **k: scans.append(1) or real(*a, **k))
    one_line_error(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1"]), 2,
                   "delete 2 backup(s)", "--yes")
    assert set(rows(runner, env)) == set(ids)
    scans.clear()
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"]))
    assert pruned["removed"] == ids[:2] and len(scans) == 1
    assert set(rows(runner, env)) == {ids[2]}
