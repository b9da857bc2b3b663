"""Breaker 34 F7: after `backup.repository` changed, `local up` kept the running archiver,
which went on archiving into the old repository: every `backup base` into the new one waited
out backup.base_wal_wait and blamed an archiver "behind or stuck" that was healthy, and no
base backup there ever became restorable. The archiver is started labelled with the
repository it archives into; `local up` starts it again when the configuration names
another, and `backup base` says at once which repository the running one archives into.

A module of its own: its platform's WAL goes into two repositories in turn."""

from __future__ import annotations

import yaml


def _set_repository(pitr, url: str) -> None:
    path = pitr.root / "opsctl.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["environments"]["local"]["backup"]["repository"] = url
    path.write_text(yaml.safe_dump(doc))


def test_a_changed_repository_is_named_at_once_and_the_archiver_follows_it(pitr, runner):
    from opsctl.pitr import layout
    from opsctl.pitr import local as pitr_local

    old = f"file://{pitr.root / 'repo'}"
    new = f"file://{pitr.root / 'repo-new'}"
    pitr.wait_archived()
    _set_repository(pitr, new)

    base = pitr.cli(runner, "backup", "base")
    assert base.exit_code == 1, base.output
    assert f"the WAL archiver archives into {old}, not {new}; 'opsctl local up' starts it again" in base.output, \
        base.output
    assert "waits in the local queue after" not in base.output  # not after the whole wait, not "stuck"
    assert pitr_local.archiving_into(pitr.state()) == old

    before = pitr_local.archiver_pid(pitr.state())
    pitr.ensure_archiver()  # what `local up` does
    state = pitr.state()
    assert pitr_local.archiver_pid(state) != before and pitr_local.archiving_into(state) == new
    again = pitr.cli(runner, "backup", "base", "--json")
    assert again.exit_code == 0, again.output
    assert pitr.repo().names(layout.wal_prefix(pitr.sysid())), "no WAL archived into the new repository"
