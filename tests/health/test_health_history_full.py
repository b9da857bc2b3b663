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
