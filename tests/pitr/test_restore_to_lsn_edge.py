"""Issue 22 review (breaker 10 B2, breaker 11): `--to-lsn` up to the window's end LSN (the last
byte of its last segment, which verify-chain shows as `to_lsn`) passed the plan, unpacked and
replayed, then failed with exit 1 "recovery replayed all archived WAL without reaching LSN":
recovery stops only at a record that starts at or after the target. Now a target after the
last archived record is exit 2 before any work, naming the last record's LSN, which restores."""
from __future__ import annotations

import json
import re

from test_restore_swap import _base_backup  # noqa: E402


def test_a_target_lsn_after_the_last_archived_record_is_refused_naming_the_last_one(pitr, runner):
    from opsctl.local import postgres as pg

    _base_backup(pitr, runner)
    pitr.sql("insert into events(note) select 'archived' from generate_series(1, 30)")
    pitr.wait_archived()
    checked = pitr.cli(runner, "backup", "verify-chain", "--json")
    end = json.loads(checked.stdout)["windows"][-1]["to_lsn"]
    r = pitr.cli(runner, "restore", "--to-lsn", end, "--beside")
    assert r.exit_code == 2 and "after the last archived WAL record" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    last = re.search(r"choose an LSN up to (\S+);", r.output).group(1)
    ok = pitr.cli(runner, "restore", "--to-lsn", last, "--beside", "--json")
    assert ok.exit_code == 0, ok.output
    pg.stop(json.loads(ok.stdout)["pid"])
    assert json.loads(ok.stdout)["tables"]["public.events"] == pitr.sql("select count(*) from events")[0][0]
