"""A repository volume that fills up during `backup create`: one line naming the repository
and what to do (exit 1, not "unexpected ... --debug"), nothing of the stopped backup left
behind, the backups made before untouched, and the next backup whole once space is freed.

The volume is a real tmpfs of its own, filled with a file to leave a chosen number of bytes
free, so the disk runs out in each stage in turn: the start record, the dump, the manifest, the
start record marked done. Mounting needs root (CI runs as root); elsewhere the test is skipped.
"""

from __future__ import annotations

import json

import pytest

from backup_support import KEY, ok, one_line_error, side_env
from opsctl.cli import app
from tests.volumes import fill

pytestmark = pytest.mark.slow

PAGE = 4096


def _names(repo) -> dict[str, int | None]:
    """Every file (its size) and folder (None) under `repo`: an empty folder left behind is
    listed as a foreign one by the next `backup create`."""
    return {str(p.relative_to(repo)): p.stat().st_size if p.is_file() else None for p in repo.rglob("*")}


def test_a_full_repository_volume_stops_the_backup_in_one_line_at_every_stage(small_volume, seeded, runner, tmp_path,
                                                                               monkeypatch):
    volume, repo = small_volume, small_volume / "repo"
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{repo}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    first = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    made = {n: s for n, s in _names(repo).items() if n.startswith(first + "/") and s is not None}
    assert {n.split("/", 1)[1] for n in made} >= {"db.dump.zst", "manifest.json"}, made
    # the space the backup took, page by page: leave less than that, in steps, so each stage runs out
    needed = sum(-(-s // PAGE) * PAGE for s in made.values())
    before = _names(repo)
    index = -(-before["opsctl-catalog.json"] // PAGE) * PAGE  # rewritten beside itself at the end
    stopped_at, second = [], None
    for leave in [0, PAGE, needed // 4, needed // 2] + list(range(needed - 3 * PAGE, needed + index + 8 * PAGE, PAGE)):
        fill(volume, leave)
        result = runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"])
        if result.exit_code == 0:
            second = json.loads(result.stdout)["id"]
            break
        line = one_line_error(result, 1, f"into the backup repository {repo}", "No space left on device",
                              "free space on that volume")
        assert "unexpected" not in line and "--debug" not in line, line
        stopped_at.append(line.split("writing ", 1)[1].split(" into", 1)[0].split("/")[-1])
        assert _names(repo) == before, f"leaving {leave} bytes free left a part of the stopped backup behind"
    assert second, f"no backup fitted in {leave} bytes, where the first took {needed} (stopped at {stopped_at})"
    # the start record, the dump, the manifest, then the start record marked done after it
    assert stopped_at[0] == "in-progress.json" and "db.dump.zst" in stopped_at, stopped_at
    assert stopped_at[-2:] == ["manifest.json", "in-progress.json"], stopped_at
    (volume / "filler").unlink()
    listed = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]
    assert sorted(b["id"] for b in listed) == sorted([first, second]), listed
    for backup_id in (first, second):
        verified = runner.invoke(app, ["backup", "verify", backup_id, "--env", env])
        assert verified.exit_code == 0, verified.output


def test_a_full_or_read_only_repository_is_listed_though_its_index_cannot_be_rebuilt(small_volume, seeded, runner,
                                                                                      tmp_path, monkeypatch):
    """Breaker 33 B2: `backup list`, a read, rebuilds a missing index and failed when the
    volume could not take it (full, or mounted read-only as on a restore host), naming only
    `opsctl-catalog.json.partial`. The index is a cache: the listing comes from the manifests
    all the same, with a warning, and the repository is left as it was."""
    import subprocess

    repo = small_volume / "repo"
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{repo}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    made = ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
    (repo / "opsctl-catalog.json").unlink()
    fill(small_volume)
    before = _names(repo)
    for state in ("full", "read-only"):
        if state == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(small_volume)], check=True)
        result = runner.invoke(app, ["backup", "list", "--env", env, "--json"])
        assert result.exit_code == 0, (state, result.output)
        assert [b["id"] for b in json.loads(result.stdout)["backups"]] == [made], result.stdout
        assert "the catalog index was not updated" in result.stderr, result.stderr
        assert _names(repo) == before, state
    subprocess.run(["mount", "-o", "remount,rw", str(small_volume)], check=True)


def test_prune_frees_a_full_repository_volume(small_volume, seeded, runner, tmp_path, monkeypatch):
    """Breaker 33 B1: prune first rewrote each doomed backup's start record, which a full
    volume refused, so the command that frees the space could not run. The start record
    create left keeps the folder opsctl's while it is deleted: prune goes on without it."""
    repo = small_volume / "repo"
    env = side_env(tmp_path / "ops", monkeypatch, seeded, f"file://{repo}")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", KEY)
    ids = [ok(runner.invoke(app, ["backup", "create", "--env", env, "--type", "db", "--json"]))["id"]
           for _ in range(3)]
    fill(small_volume)
    result = runner.invoke(app, ["backup", "prune", "--env", env, "--keep-last", "1", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["removed"]) == sorted(ids[:2]), result.stdout
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == [ids[2]]
    (small_volume / "filler").unlink()
    listed = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))["backups"]
    assert [b["id"] for b in listed] == [ids[2]], listed
    assert runner.invoke(app, ["backup", "verify", ids[2], "--env", env]).exit_code == 0
