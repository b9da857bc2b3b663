"""One line stays one line (tester P9, P10).

P9: `opsctl local logs` split a log line wherever str.splitlines() or a text file's universal
newlines do (CR, VT, FF, FS, GS, RS, NEL, U+2028, U+2029), so a line holding them was shown as
several: a forged log line, and `-n` counted wrong. Only "\\n" ends a line now (a CRLF ending
is dropped as a whole), and `output.visible` shows the rest as escapes; `-f` alike, which also
showed a line written in two pieces as two lines.

P10: a `--set` value holding a newline (`model_path=$'/a\\nWORKER_API_KEY_HASHES='`) was taken,
and the dry run printed the forged variable on a line of its own; any control character in a
worker setting is refused now, by the deploy and its dry run alike (one line, exit 2).
"""

from __future__ import annotations

import locale
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from opsctl.cli import app
from opsctl.deploy.model import Release
from opsctl.output import visible
from tests.deploy.test_deploy_input import drivers  # noqa: F401 (a fixture)

# what str.splitlines() ends a line at, "\n" aside
SPLITLINES = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def test_splitlines_breaks_are_exactly_the_ones_listed():
    """The list above is str.splitlines()' own (so the next test covers all of it)."""
    breaks = [chr(c) for c in range(sys.maxunicode + 1) if len(f"a{chr(c)}b".splitlines()) == 2]
    assert sorted(breaks) == sorted(SPLITLINES + ["\n"])


def test_visible_escapes_every_line_break_and_control_but_newline_and_tab():
    """Every C0/C1 control, DEL, every line and paragraph separator (categories Cc, Zl, Zp)
    and every break str.splitlines() knows is shown as a printable ASCII escape; U+2028 and
    U+2029 reached the terminal as they were (a line break to many a viewer)."""
    wanted = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp")}
    wanted |= set(SPLITLINES)
    wanted -= {"\n", "\t"}
    kept = {c: visible(c) for c in sorted(wanted) if not (visible(c).isascii() and visible(c).isprintable())}
    assert kept == {}, kept
    assert visible("\u2028") == "\\u2028" and visible("\u2029") == "\\u2029" and visible("\x85") == "\\x85"
    assert visible("a\tb\nc") == "a\tb\nc"  # tab and newline stay as they are


@pytest.fixture
def root(ops_root) -> Path:
    """An ops root with the starter opsctl.yaml as the current directory: enough for `local logs`."""
    return ops_root


def _router_log(root: Path) -> Path:
    from opsctl.config import load_project
    from opsctl.local.platform import log_path

    log = log_path(load_project(root), "router")
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


FORGED = "A\x0bB\x1cC\x85D\u2028E\u2029F\x0cG\x1dH\x1eI"
FORGED_SHOWN = "A\\x0bB\\x1cC\\x85D\\u2028E\\u2029F\\x0cG\\x1dH\\x1eI"


def test_logs_end_a_line_at_newline_only(runner, root):
    """`printf 'cr\\rOVER\\n'` in a log was two lines, "cr" and "OVER" (the CR overwrote it on a
    terminal); the line of the other breaks was ten. Each is one line now, its breaks escaped,
    and `-n` counts lines as tail does."""
    _router_log(root).write_bytes(b"first\nsecond\ncr\rOVER\n" + FORGED.encode() + b"\n")
    result = runner.invoke(app, ["local", "logs", "router", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"cr\\rOVER\n{FORGED_SHOWN}\n", repr(result.stdout)
    result = runner.invoke(app, ["local", "logs", "router", "-n", "3"])
    assert result.stdout.split("\n")[0] == "second", repr(result.stdout)


def test_logs_drop_a_crlf_ending_keep_an_unended_last_line_and_decode_as_before(runner, root):
    """A CRLF ending is one line ending (its CR shown as nothing); a CR anywhere else stays and
    is shown. A last line with no newline yet counts, as `tail -n` counts it. A byte the
    locale's encoding can't decode is U+FFFD, as the text reading before gave it."""
    raw = b"dos line\r\nbad \xff byte\r\nmid\rline\r\r\nunended\r"
    _router_log(root).write_bytes(raw)
    result = runner.invoke(app, ["local", "logs", "router", "-n", "4"])
    assert result.exit_code == 0, result.output
    bad = b"bad \xff byte".decode(locale.getpreferredencoding(False), errors="replace")
    assert result.stdout == f"dos line\n{bad}\nmid\\rline\\r\nunended\\r\n", repr(result.stdout)
    assert runner.invoke(app, ["local", "logs", "router", "-n", "1"]).stdout == "unended\\r\n"


class _Lines:
    """A process's stdout read line by line in a thread: `next(timeout)` gives the next line,
    or None when none came in time (a test never hangs on a follow that prints nothing)."""

    def __init__(self, stream):
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def next(self, timeout: float = 20.0) -> str | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


def _append(log: Path, data: bytes) -> None:
    with open(log, "ab") as handle:
        handle.write(data)


def test_follow_ends_a_line_at_newline_only_and_waits_for_a_line_written_in_pieces(root):
    """`local logs -f`: a followed line holding CR or the splitlines() breaks is one line, its
    breaks escaped (it was split as `logs` split it); a line written in two pieces (a flush
    mid-line) is one line, shown when its newline comes (it was shown as two: `half` and
    ` done`), also one unended when following starts."""
    log = _router_log(root)
    log.write_bytes(b"old\nstarted ha")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "opsctl"), "local", "logs", "router", "-f", "-n", "5"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"}, text=True, encoding="utf-8")
    try:
        lines = _Lines(proc.stdout)
        assert lines.next() == "old\n"
        _append(log, b"lf\n")
        assert lines.next() == "started half\n"
        _append(log, b"cr\rOVER\n")
        assert lines.next() == "cr\\rOVER\n"
        _append(log, FORGED.encode() + b"\r\n")
        assert lines.next() == FORGED_SHOWN + "\n"
        _append(log, "two pieces \u00e9".encode()[:-1])  # a flush mid-line, and mid-character
        time.sleep(1.5)  # three polls: the piece is read, and held
        _append(log, "\u00e9".encode()[-1:] + b" done\n")
        assert lines.next() == "two pieces \u00e9 done\n"
        _append(log, b"last\n")
        assert lines.next() == "last\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


KEYS = ["model_path", "model_name", "compute_type"]
BAD = ["/a\nWORKER_API_KEY_HASHES=", "/a\rWORKER_X=1", "a\tb", "a\x1b[2Jb", "a\x00b", "a\x7fb", "a\x85b",
       "a\x9bb", "a\u2028b", "a\u2029b", "a\u202eb", "a\u2066b", "a\x0bb", "a\x1cb"]


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", BAD)
def test_a_setting_holding_a_control_character_is_refused_by_deploy_and_dry_run(runner, drivers, key, value,
                                                                               dry_run):
    """`--set model_path=$'/a\\nWORKER_API_KEY_HASHES=' --dry-run` printed the forged variable on
    a line of its own, and the deploy took it: one line naming the key, the value escaped,
    exit 2, before any driver is built; nothing on stdout."""
    result = runner.invoke(app, ["deploy", "--image", "worker:1.0", "--set", f"{key}={value}",
                                 *(["--dry-run"] * dry_run)])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == "", result.stdout
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in result.output, result.output
    assert line.startswith(f"opsctl: error: --set {key}={value!r} holds the control character"), line
    assert line.isascii() and line.isprintable(), repr(line)  # the value shown escaped, never run
    assert f"WORKER_{key.upper()}" in line
    assert drivers == []


def test_the_whitespace_around_a_setting_is_still_stripped():
    """What a shell's `$(...)` leaves (a newline at the end) is not the value: stripped as a
    space around it always was; only a control character inside it is refused."""
    assert Release.parse("worker:1.0", ["model_path= /models/base\n"]).settings == {"model_path": "/models/base"}
    assert Release.parse("worker:1.0", ["model_name=whisper base é"]).settings == {"model_name": "whisper base é"}
