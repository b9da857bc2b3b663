"""The health history on a full volume (breaker 33 B4): a sweep's line that did not fit was
left half-written, the next sweep's line was appended to it, and both were unreadable; the
error said "a file operation". A line is now written whole or not at all, and the error
names the file."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from opsctl.errors import OperationFailed
from opsctl.health.model import CheckResult, Status, SweepResult
from opsctl.health.schedule import append_history
from tests.volumes import fill


def _sweep(note: str) -> SweepResult:
    return SweepResult("ci", dt.datetime.now(dt.timezone.utc), 1.0,
                       [CheckResult("wal archive", "backup", Status.CRITICAL, note)])


def test_a_line_that_does_not_fit_leaves_the_history_as_it_was(small_volume):
    history = small_volume / "health" / "history.jsonl"
    append_history(history, _sweep("first"), [])
    before = history.read_bytes()
    filler = fill(small_volume, leave=4096)  # room for part of a line, not all of it
    with pytest.raises(OperationFailed, match=f"^writing {history}: No space left on device"):
        append_history(history, _sweep("x" * 20000), [])
    assert history.read_bytes() == before
    filler.unlink()
    append_history(history, _sweep("after"), [])
    notes = [json.loads(line)["checks"][0]["message"] for line in history.read_text().splitlines()]
    assert notes == ["first", "after"], notes


def test_a_history_that_does_not_fit_never_hides_the_verdict_nor_stops_the_monitor(small_volume, local_platform,
                                                                                  runner, monkeypatch):
    """Breaker 34 F1, F2: `health --history FILE` on a full volume exited 1 (a Nagios WARNING)
    over a CRITICAL sweep, printing nothing of it; `--mode continuous` ended after its first
    sweep, so nothing paged after that. The verdict stands, printed, with its own exit code;
    the monitor goes on sweeping, and says once that its history is not being written."""
    from opsctl.cli import app

    monkeypatch.chdir(local_platform.root)
    local_platform.up()
    history = small_volume / "history.jsonl"
    history.touch()  # empty: no page of its own a line could still fit in
    filler = fill(small_volume)

    once = runner.invoke(app, ["health", "--check", "redis", "--history", str(history), "--json"])
    doc = json.loads(once.stdout)
    assert once.exit_code == doc["code"] and doc["checks"][0]["name"] == "redis", once.output
    said = " ".join(once.stderr.split())
    assert f"the sweep's history line was not written (writing {history}: No space left on device)" in said, said

    report = small_volume / "health.xml"
    watched = runner.invoke(app, ["health", "--mode", "continuous", "--interval", "0.2", "--iterations", "3",
                                  "--check", "redis", "--history", str(history), "--junit", str(report), "--json"])
    assert watched.exit_code in (0, 1, 2), watched.output
    assert watched.stdout.count('"checks"') == 3, watched.stdout  # all three sweeps, none cut short
    assert watched.stderr.count("history line was not written") == 1, watched.stderr  # said once
    # the JUnit report too (breaker 35 F2: the monitor ended on it after its first sweep, exit 1)
    assert watched.stderr.count("the JUnit report was not written") == 1, watched.stderr
    assert not report.exists()
    assert history.read_bytes() == b""
    filler.unlink()
    # a folder given for the history is refused suggesting a JSON-lines file, not a report.xml
    folder = runner.invoke(app, ["health", "--check", "redis", "--history", str(small_volume)])
    assert folder.exit_code == 2 and f"such as {small_volume / 'history.jsonl'}" in folder.output, folder.output
