"""The run journal on a full volume (breaker 33 B9): a step's record that did not fit was left
half-written, a resumed run's records were appended to that half line, and reading stopped
there: `history` showed the resumed run unfinished and a second --resume repeated steps that
had run. A record is now written whole or not at all, and a line a crash cut short is passed
over, not the end of the journal."""

from __future__ import annotations

import json

from opsctl.cli import app
from opsctl.runbook import journal
from tests.runbook.runbook_support import run_runbook
from tests.runbook.runbook_support import write_runbook

# step one fills the volume the first time (dd stops at ENOSPC) and prints 10 KB: its record fits only in
# part, in the journal file's last page (a tmpfs gives out no new page)
FILLS = """\
    name: fills
    version: 1
    description: fills its volume, then needs a record bigger than the room left
    steps:
      - id: one
        action: shell
        with:
          command: >-
            if [ -e one.txt ]; then echo ran >> one.txt; else echo ran > one.txt;
            dd if=/dev/zero of=filler bs=4k 2>/dev/null; fi; yes x | tr -d '\\n' | head -c 10000
      - id: two
        action: shell
        with: {command: "echo ran >> two.txt"}
    """


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_a_record_that_does_not_fit_leaves_no_half_line_and_the_run_resumes_whole(runner, small_volume, monkeypatch):
    root = small_volume
    (root / "opsctl.yaml").write_text("version: 1\nenvironments: {local: {platform: local}}\n")
    monkeypatch.chdir(root)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    write_runbook(root, "fills", 1, FILLS)

    full = runner.invoke(app, ["runbook", "run", "fills"])
    (path,) = journal.runs_dir(root).glob("*.jsonl")
    assert full.exit_code == 1, full.output
    assert f"writing {path}: No space left on device" in full.output and "Traceback" not in full.output, full.output
    # the error starts a line of its own after the step table (breaker 35 F5: Rich ended the
    # table without a newline where stderr is no terminal, and the error was glued to it)
    assert [ln for ln in full.stderr.splitlines() if ln.startswith("opsctl: error: run ")], full.stderr
    # what ran unrecorded, and how to go on (breaker 34 F9: "run it again" read as a new run)
    assert f"run {path.stem} stopped" in full.output and "step 'one' ended (ok) but is not recorded" in full.output
    assert f"'opsctl runbook run fills --resume {path.stem}' goes on from there and runs 'one' again" in full.output
    records = [json.loads(line) for line in _lines(path)]  # every line whole: none cut off
    assert [r["type"] for r in records][:1] == ["run"] and ("step", "one") not in [
        (r["type"], r.get("id")) for r in records], records

    (root / "filler").unlink()
    resumed = run_runbook(runner, "fills", "--resume", path.stem)
    assert resumed["status"] == "succeeded", resumed
    # the record of step one was lost with the disk space, so it ran again (at least once, as
    # a killed step does); step two once
    assert (root / "one.txt").read_text() == "ran\nran\n" and (root / "two.txt").read_text() == "ran\n"
    assert all(json.loads(line) for line in _lines(path))
    history = json.loads(runner.invoke(app, ["runbook", "history", "--json"]).stdout)
    assert [(h["run_id"], h["status"]) for h in history] == [(path.stem, "succeeded")], history


def test_a_line_a_crash_cut_short_is_passed_over_and_the_next_record_stands_alone(tmp_path):
    """Power lost mid-write leaves a last line without its end: the next record starts a line
    of its own, and reading passes over the cut one instead of stopping there."""
    j = journal.Journal(journal.runs_dir(tmp_path) / "20261202T000000-abcdef.jsonl", mask=lambda v: v)
    j.write("run", runbook="r", version=1, env="local", hash="sha256:x", params={})
    with open(j.path, "a") as handle:
        handle.write('{"type": "step", "id": "one", "sta')  # the crash
    j.write("resume", from_step="one")
    j.write("end", status="succeeded")
    types = [r["type"] for r in journal.read(tmp_path, j.path.stem)]
    assert types == ["run", "resume", "end"], types
    assert journal.summary(j.path.stem, journal.read(tmp_path, j.path.stem))["status"] == "succeeded"


THREE = """\
    name: three
    version: 1
    description: three shell steps that count their runs
    steps:
      - id: one
        action: shell
        with: {command: "echo ran >> one.txt"}
      - id: two
        action: shell
        with: {command: "echo ran >> two.txt; test -e go"}
      - id: three
        action: shell
        with: {command: "echo ran >> three.txt"}
    """

# lines a hand edit, a damaged disk or another program leave: each once made `runbook history`
# fail for every run, or --resume, with "unexpected KeyError/TypeError/UnicodeDecodeError"
DAMAGED = [b'{"type": "end"}', b'{"type": "run"}', b'{"type": "step"}', b'{"type": "step", "id": ["two"], "status": "ok"}',
           b'{"type": "run", "runbook": 5, "version": "x", "env": [1], "time": 7, "params": "p"}',
           b'{"type": "step", "id": "two", "status": "ok", "outputs": NaN}', b"\xff\xfe", b'{"type": "end", "status": 1}',
           b'{"type": "run", "runbook": "three", "version": true, "env": "local", "time": "t", "hash": "h", "params": {}}']


def test_damaged_journal_lines_are_passed_over_by_history_and_resume(runner, ops_root):
    """Breaker 34 F8: a record with a `type` but without the fields its readers use (or of
    other types), bytes that are not UTF-8, NaN: each is passed over as a cut line is."""
    write_runbook(ops_root, "three", 1, THREE)
    failed = run_runbook(runner, "three", exit_code=1)  # step two fails until `go` exists
    path = journal.runs_dir(ops_root) / f"{failed['run_id']}.jsonl"
    with open(path, "ab") as handle:
        handle.write(b"\n".join(DAMAGED) + b"\n")

    history = runner.invoke(app, ["runbook", "history", "--json"])
    assert history.exit_code == 0, history.output
    assert [(h["run_id"], h["status"]) for h in json.loads(history.stdout)] == [(failed["run_id"], "failed")]
    shown = runner.invoke(app, ["runbook", "history", "--run", failed["run_id"], "--json"])
    assert shown.exit_code == 0 and "NaN" not in shown.stdout, shown.output
    json.loads(shown.stdout)  # one JSON document
    # and for people: one row per record, at 80 columns, never a Python dict's repr
    text = runner.invoke(app, ["runbook", "history", "--run", failed["run_id"]], env={"COLUMNS": "80"})
    assert text.exit_code == 0 and "{'type'" not in text.stdout, text.output
    assert "three@1 on local, parameters {}" in " ".join(text.stdout.split()), text.stdout
    assert all(len(line) <= 80 for line in text.stdout.splitlines()), text.stdout

    (ops_root / "go").touch()
    resumed = run_runbook(runner, "three", "--resume", failed["run_id"])
    assert [(s["id"], s["status"]) for s in resumed["steps"]] == [("one", "done-before"), ("two", "ok"),
                                                                  ("three", "ok")], resumed["steps"]
    assert (ops_root / "one.txt").read_text() == "ran\n"  # not run again: its record was read past the damage


def test_a_journal_whose_start_record_is_unreadable_is_refused_for_resume_saying_why(runner, ops_root):
    write_runbook(ops_root, "three", 1, THREE)
    failed = run_runbook(runner, "three", exit_code=1)
    path = journal.runs_dir(ops_root) / f"{failed['run_id']}.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(lines[0][:40] + b"\n" + b"\n".join(lines[1:]))  # the start record cut short
    refused = runner.invoke(app, ["runbook", "run", "three", "--resume", failed["run_id"]])
    assert refused.exit_code == 2, refused.output
    assert f"run {failed['run_id']}'s journal ({path}) has no readable start record" in refused.output, refused.output
    assert "start a new run" in refused.output and "Traceback" not in refused.output
