"""Breaker 51 H4: a symbolic link where a repository's `pitr` folder belongs made `backup list`
fail (exit 1) and list none of the healthy logical backups, while `backup create` called the
same link foreign and went on. The list now lists them and says why no point-in-time window
shows; the link itself is never followed (verify-chain and base refuse it, as before)."""

from __future__ import annotations

import pytest

from backup_support import keyed_file_repo, ok
from opsctl.cli import app


def test_a_linked_pitr_folder_leaves_the_logical_backups_listed(seeded, runner, tmp_path, monkeypatch):
    env, repo, (made,) = keyed_file_repo(runner, seeded, tmp_path, monkeypatch, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / "pitr").symlink_to(elsewhere)
    doc = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))
    assert [b["id"] for b in doc["backups"]] == [made]
    assert "symbolic link" in doc["pitr"]["note"] and doc["pitr"]["windows"] == [], doc["pitr"]
    shown = runner.invoke(app, ["backup", "list", "--env", env])
    # the note wraps between words where the path's length puts it (a longer temporary folder)
    assert shown.exit_code == 0 and made in shown.stdout and "symbolic link" in " ".join(shown.output.split()), \
        shown.output


def test_an_unreadable_pitr_folder_leaves_the_logical_backups_listed(seeded, runner, tmp_path, monkeypatch):
    """Breaker 52 K7: a pitr folder opsctl's user can't read failed the whole list (exit 1).
    The suite runs as root, whom file modes don't stop, so the refusal is the kernel's answer
    (EACCES) given in the process to whatever opens a folder named pitr."""
    import errno
    import os

    env, repo, (made,) = keyed_file_repo(runner, seeded, tmp_path, monkeypatch, 1)
    (repo / "pitr").mkdir()
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if os.fspath(path) == "pitr" or os.fspath(path).endswith("/pitr"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    doc = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))
    assert [b["id"] for b in doc["backups"]] == [made]
    assert "can't be read" in doc["pitr"]["note"] and "Permission denied" in doc["pitr"]["note"], doc["pitr"]


@pytest.mark.parametrize("linked", ["pitr/7300000000000000001", "pitr/7300000000000000001/wal",
                                    "pitr/7300000000000000001/base/20261203T000000Z-aaaa"])
def test_a_link_deeper_in_pitr_is_named_by_the_list(seeded, runner, tmp_path, monkeypatch, linked):
    """Breaker 52 K8: a link at pitr/<sysid> or pitr/<sysid>/wal hid the chain without a word:
    `backup list` showed no note, verify-chain said "nothing under pitr/"."""
    env, repo, (made,) = keyed_file_repo(runner, seeded, tmp_path, monkeypatch, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / linked).parent.mkdir(parents=True, exist_ok=True)
    (repo / linked).symlink_to(elsewhere)
    doc = ok(runner.invoke(app, ["backup", "list", "--env", env, "--json"]))
    assert [b["id"] for b in doc["backups"]] == [made]
    note = (doc["pitr"] or {}).get("note") or ""
    assert f"{linked} stands where a folder belongs" in note, doc["pitr"]
