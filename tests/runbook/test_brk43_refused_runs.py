"""A run refused inside a step after its start was journaled (brk42 R16) is listed by
`runbook history` as refused, with the reason, never as "interrupted"."""

from __future__ import annotations

import json

from opsctl.cli import app
from tests.runbook.runbook_support import write_runbook


def test_a_run_refused_in_a_step_is_journaled_as_refused(runner, ops_root):
    write_runbook(ops_root, "gate", 1, """\
        name: gate
        version: 1
        steps:
          - id: ask
            action: approve
            with: {message: "go on?"}
          - id: after
            action: wait
            with: {seconds: 0}
        """)
    run = runner.invoke(app, ["runbook", "run", "gate"])  # no terminal, no --yes: refused at the approval
    line = run.output.strip()
    assert run.exit_code == 2 and len(line.splitlines()) == 1 and "Traceback" not in line, run.output
    runs = json.loads(runner.invoke(app, ["runbook", "history", "--json"]).stdout)
    assert [r["status"] for r in runs] == ["refused"], runs
    records = json.loads(runner.invoke(app, ["runbook", "history", "--run", runs[0]["run_id"], "--json"]).stdout)
    end = [r for r in records if r["type"] == "end"]
    assert end and end[-1]["status"] == "refused" and end[-1]["step"] == "ask" and end[-1]["reason"], records
    table = runner.invoke(app, ["runbook", "history", "--run", runs[0]["run_id"]])
    assert "step ask: " in table.output, table.output
