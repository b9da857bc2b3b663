"""Breaker 36 F3: after an in-place restore to 'latest' (its timeline switch at a segment
boundary), PostgreSQL left the new timeline's first bytes without a WAL summary, and every
`backup base --auto` failed with three lines of pg_basebackup's text, the nightly runbook
with it, until a person took a full base backup. --auto now takes the full one and says why;
--incremental says, in one line, to take a full one."""

from __future__ import annotations

import json


def test_after_a_restore_to_latest_auto_takes_a_full_base_backup_and_incremental_says_why(pitr, runner):
    assert pitr.cli(runner, "backup", "base").exit_code == 0
    pitr.sql("create table if not exists t (id serial, note text)")
    pitr.sql("insert into t(note) values ('a')")
    restored = pitr.cli(runner, "restore", "--to-time", "latest", "--yes")
    assert restored.exit_code == 0, restored.output

    # 'latest' switches the live server's segment first, so the switch point is a segment's start
    inc = pitr.cli(runner, "backup", "base", "--incremental")
    (line,) = [ln for ln in inc.output.splitlines() if ln.strip()]
    assert inc.exit_code == 1 and line.startswith("opsctl: error: the server has no WAL summary of timeline"), inc.output
    assert "take a full one with 'opsctl backup base'" in line, line

    auto = pitr.cli(runner, "backup", "base", "--auto", "--json")
    assert auto.exit_code == 0, auto.output
    assert json.loads(auto.stdout)["kind"] == "full", auto.stdout
    assert "base backup kind auto: full, since the server has no WAL summary" in auto.output, auto.output
    again = pitr.cli(runner, "backup", "base", "--incremental", "--json")  # the full one is a parent
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["parent"] == json.loads(auto.stdout)["id"]
