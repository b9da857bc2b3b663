"""The retention run after `backup create` never deletes a damaged backup (P11): it asks no
one, and a backup whose verify failed on one object may hold that day's only intact database
dump; it deleted them silently, one summary line saying nothing. It now leaves them and says
so, as it says what it removed: by id, a line each, whole at 80 columns without a TTY, and
in --json (`damaged_kept`, `pruned`). A person's `backup prune` still removes them."""

from __future__ import annotations

import json

import pytest

from backup_support import KEY, flip, ok, one_line_error, rows, side_env
from opsctl.cli import app

pytestmark = pytest.mark.slow


def _env(tmp_path, monkeypatch, seeded, **retention) -> tuple[str, object]:
    repo = tmp_path / "repo"
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{repo}",
                   backup={"repository": f"file://{repo}", "retention": retention})
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    return env, repo


def _damage(runner, env: str, repo, backup_id: str) -> None:
    """`backup verify` fails on a flipped bit and records the backup damaged; the bytes are
    put back after, so the dump is whole and only the recorded verdict says damaged."""
    obj = repo / backup_id / "db.dump.zst"
    original = obj.read_bytes()
    obj.write_bytes(flip(original))
    one_line_error(runner.invoke(app, ["backup", "verify", backup_id, "--env", env]), 1, "marked damaged")
    obj.write_bytes(original)
    assert rows(runner, env)[backup_id]["status"] == "damaged"


def _whole_lines(stdout: str, *ids: str) -> list[str]:
    """The lines of `stdout` naming each id: every one no wider than 80 columns, each id whole
    on one of them."""
    lines = stdout.splitlines()
    for bid in ids:
        assert any(bid in line.split(" ") or f"{bid}," in line.split(" ") for line in lines), (bid, stdout)
    return [line for line in lines if any(bid in line for bid in ids)]


def test_retention_after_create_keeps_a_damaged_backup_and_says_so(seeded, runner, tmp_path, monkeypatch):
    env, repo = _env(tmp_path, monkeypatch, seeded, keep_last=2)
    damaged = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--label", "a", "--json"]))["id"]
    _damage(runner, env, repo, damaged)

    made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--label", "x"])
    assert made.exit_code == 0, made.output
    said = _whole_lines(made.stdout, damaged)
    assert any("retention kept 1 damaged backup(s)" in line for line in made.stdout.splitlines()), made.stdout
    assert all(len(line) <= 80 for line in said), said
    assert "'opsctl backup prune' removes them" in " ".join(made.stdout.split()), made.stdout

    listed = rows(runner, env)
    assert listed[damaged]["status"] == "damaged", listed
    assert (repo / damaged / "db.dump.zst").exists() and (repo / damaged / "manifest.json").exists()

    doc = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    assert doc["damaged_kept"] == [damaged] and doc["pruned"] == [], doc
    assert damaged in rows(runner, env)


def test_retention_after_create_names_what_it_removed(seeded, runner, tmp_path, monkeypatch):
    """The summary said only "pruned 1": which backup went was left to guess."""
    env, repo = _env(tmp_path, monkeypatch, seeded, keep_last=1)
    damaged = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    _damage(runner, env, repo, damaged)
    older = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]

    made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db"])
    assert made.exit_code == 0, made.output
    said = _whole_lines(made.stdout, older, damaged)
    assert all(len(line) <= 80 for line in said), said
    flat = " ".join(made.stdout.split())
    assert f"retention removed 1 backup(s): {older}" in flat, made.stdout
    assert f"retention kept 1 damaged backup(s)" in flat and flat.rstrip().endswith(damaged), made.stdout
    listed = rows(runner, env)
    assert older not in listed and listed[damaged]["status"] == "damaged", listed


def test_a_failed_retention_run_still_names_the_damaged_backups_it_kept(seeded, runner, tmp_path, monkeypatch):
    """A retention run cut short (an old backup's folder read-only) keeps the damaged ones too,
    and says so beside its failure."""
    from tests.volumes import read_only

    env, repo = _env(tmp_path, monkeypatch, seeded, keep_last=1)
    damaged = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    _damage(runner, env, repo, damaged)
    older = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    with read_only(repo / older):
        made = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"])
    assert made.exit_code == 0, made.output
    doc = json.loads(made.stdout)
    assert doc["prune_failed"] and doc["damaged_kept"] == [damaged], doc
    assert rows(runner, env)[damaged]["status"] == "damaged"


def test_backup_prune_still_removes_a_damaged_backup(seeded, runner, tmp_path, monkeypatch):
    """A person's prune removes it, as before (the README's `prune` removes it)."""
    env, repo = _env(tmp_path, monkeypatch, seeded, keep_last=5)
    damaged = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    _damage(runner, env, repo, damaged)
    kept = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))
    assert kept["damaged_kept"] == [damaged], kept

    plan = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--dry-run", "--json"]))
    assert plan["damaged"] == [damaged] and plan["damaged_kept"] == [], plan
    assert damaged in rows(runner, env)
    pruned = ok(runner.invoke(app, ["backup", "prune", "--env", env, "--yes", "--json"]))
    assert pruned["damaged"] == [damaged] and pruned["damaged_kept"] == [] and kept["id"] in pruned["kept"], pruned
    assert damaged not in rows(runner, env) and not (repo / damaged).exists()
