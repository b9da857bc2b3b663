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
    j.write("run", runbook="r", version=1, env="local")
    with open(j.path, "a") as handle:
        handle.write('{"type": "step", "id": "one", "sta')  # the crash
    j.write("resume", from_step="one")
    j.write("end", status="succeeded")
    types = [r["type"] for r in journal.read(tmp_path, j.path.stem)]
    assert types == ["run", "resume", "end"], types
    assert journal.summary(j.path.stem, journal.read(tmp_path, j.path.stem))["status"] == "succeeded"
