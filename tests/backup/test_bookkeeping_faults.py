"""What follows a backup's real work may fail on its own (breaker 33 B7, B8): retention after
`backup create`, the verdict `backup verify` keeps in the repository. The backup made, or the
verdict reached, stands: exit 0 with the fault said, never exit 1 (a runbook's retries then
made a second and third backup; a sound backup read as bad). The fault is made for real: the
older backup's folder, or the verified one's, is a read-only bind mount (EROFS, root too)."""

from __future__ import annotations

import json

import pytest

from backup_support import KEY, ok, side_env
from opsctl.cli import app
from tests.volumes import read_only

pytestmark = pytest.mark.slow


def _env(tmp_path, monkeypatch, seeded, **backup) -> tuple[str, object]:
    repo = tmp_path / "repo"
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{repo}",
                   backup={"repository": f"file://{repo}", **backup})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    return env, repo


def test_a_backup_whose_retention_fails_is_made_and_said(seeded, runner, tmp_path, monkeypatch):
    env, repo = _env(tmp_path, monkeypatch, seeded, retention={"keep_last": 1})
    first = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    with read_only(repo / first):  # the old backup can't be deleted
        made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"])
        text = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db"])
    assert made.exit_code == 0, made.output
    doc = json.loads(made.stdout)
    assert doc["pruned"] == [] and "Read-only file system" in doc["prune_failed"], doc
    assert text.exit_code == 0 and "retention FAILED (" in text.stdout, text.output
    assert "'opsctl backup prune' applies it" in text.stdout and "Traceback" not in text.output, text.output
    # what it did remove before a failure is said (breaker 34 F3): the one made just before
    # goes, the read-only one stays
    assert "; pruned 1;" in text.stdout and f"could not remove 1 ({first}: deleting" in text.stdout, text.output
    assert f"retention removed 1 backup(s) ({doc['id']})" in text.stdout, text.output  # named, not only counted
    listed = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]
    assert doc["id"] not in [b["id"] for b in listed] and first in [b["id"] for b in listed], listed
    # `backup prune` itself names what it could not delete, and where
    with read_only(repo / first):
        refused = runner.invoke(app, ["backup", "prune", "--env", env, "--yes"])
    assert refused.exit_code == 1, refused.output
    assert f"deleting {first}/manifest.json from the backup repository {repo}: Read-only file system" \
        in refused.output, refused.output
    # with the folder writable again, the next retention run removes what it could not
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--yes", "--json"]))
    assert first in pruned["removed"], pruned


def test_a_verify_that_cannot_keep_its_verdict_still_gives_it(seeded, runner, tmp_path, monkeypatch):
    env, repo = _env(tmp_path, monkeypatch, seeded)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    with read_only(repo / made):
        passed = runner.invoke(app, ["backup", "verify", made, "--env", env, "--json"])
        said = runner.invoke(app, ["backup", "verify", made, "--env", env])
        (repo / made / "db.dump.zst").stat()  # read, not written
    assert passed.exit_code == 0, passed.output
    doc = json.loads(passed.stdout)
    assert doc["ok"] is True and "Read-only file system" in doc["not_recorded"], doc
    assert said.exit_code == 0 and "the verdict was NOT recorded in the repository" in said.stdout, said.output
    listed = {b["id"]: b for b in ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]}
    assert listed[made]["verified"] is False, listed[made]  # nothing claims what was not kept
    assert ok(runner.invoke(app, ["backup", "verify", made, "--env", env, "--json"]))["not_recorded"] is None
    listed = {b["id"]: b for b in ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]}
    assert listed[made]["verified"] is True, listed[made]


def test_the_hourly_redis_snapshot_says_when_its_retention_failed(seeded, s3, runner, tmp_path, monkeypatch):
    """Breaker 34 F6: redis-snapshot@1 has no prune step, so a retention run failing after its
    snapshot left the step ok and the run "succeeded", every hour. Version 2 sends a warning
    naming the failure; the run still succeeds (the snapshot is made and verified)."""
    import shutil
    from pathlib import Path

    repo = tmp_path / "repo"
    # a kubernetes environment's runs are mirrored to its backup bucket: moto's, made here
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{repo}", aws={"endpoint_url": s3.endpoint_url},
                   backup={"repository": f"file://{repo}", "retention": {"keep_last": 1}},
                   buckets={"backups": s3.make_bucket("hourly")})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    shutil.copytree(Path(__file__).resolve().parents[2] / "runbooks", tmp_path / "ops" / "runbooks")
    first = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "redis", "--json"]))["id"]
    with read_only(repo / first):
        result = runner.invoke(app, ["runbook", "run", "redis-snapshot", "--env", env, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    steps = {s["id"]: s for s in doc["steps"]}
    assert doc["status"] == "succeeded" and steps["retention-alert"]["status"] == "ok", doc["steps"]
    message = steps["retention-alert"]["outputs"]["message"]
    assert "the retention run after it FAILED (" in message and first in message, message
