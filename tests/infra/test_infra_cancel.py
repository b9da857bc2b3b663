"""Ctrl-C or SIGTERM during `opsctl infra up/destroy/refresh/preview` cancels pulumi the way
pulumi's own Ctrl-C does (reviewer 39 R7: on SIGTERM opsctl died at once, exit 143, and the
pulumi child, its output pipe closed, died mid-update, leaving pending operations and a lock).

A stand-in `pulumi` (the real CLI is not installable here) waits in its operation like a
long update, and on SIGINT reports the operations in flight as they finish, on its output,
before saving and exiting, as pulumi does; a second SIGINT stops it at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

STAND_IN = """#!{python}
import signal, sys, time
record = {record!r}
def note(what):
    with open(record, "a") as f:
        f.write(what + "\\n")
args = [a for a in sys.argv[1:] if a != "--non-interactive"]
if args[:1] == ["version"]:
    print("v{version}")
    sys.exit(0)
if args[:1] == ["config"] and "set" not in args and "set-all" not in args:
    print("{{}}")
    sys.exit(0)
if args[:1] not in (["up"], ["destroy"], ["refresh"], ["preview"]):
    sys.exit(0)
interrupts = []
signal.signal(signal.SIGINT, lambda *_: interrupts.append(1))
signal.signal(signal.SIGTERM, lambda *_: note("sigterm"))
note("started " + args[0])
deadline = time.time() + 120
while not interrupts and time.time() < deadline:
    time.sleep(0.05)
if not interrupts:
    note("never interrupted")
    sys.exit(3)
note("cancelling")
try:
    for i in range(30):  # the operations in flight finishing, reported on its output
        print("finished operation %d" % i, flush=True)
        time.sleep(0.05)
        if len(interrupts) > 1:
            note("stopped at once")
            sys.exit(255)
except BrokenPipeError:
    note("output pipe closed")
    sys.exit(1)
note("saved")
print("error: update canceled", file=sys.stderr, flush=True)
sys.exit(255)
"""


@pytest.fixture
def stand_in(tmp_path):
    from importlib.metadata import version

    (tmp_path / "bin").mkdir()
    record = tmp_path / "record.txt"
    cli = tmp_path / "bin" / "pulumi"
    cli.write_text(STAND_IN.format(python=sys.executable, record=str(record), version=version("pulumi")))
    cli.chmod(0o755)
    return tmp_path, record


def _start(tmp_path: Path, record: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "PULUMI_HOME": str(tmp_path / "home"),
           "CI": "true"}
    env.pop("PULUMI_BACKEND_URL", None)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "opsctl"), "--root", str(REPO), "infra", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # not in any terminal's group: only opsctl gets the signal
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (record.exists() and "started" in record.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
@pytest.mark.parametrize("args", [["up", "--env", "staging", "--yes"], ["destroy", "--env", "staging", "--yes"]],
                         ids=["up", "destroy"])
def test_an_interrupt_cancels_pulumi_and_waits_for_it(stand_in, sig, args):
    tmp_path, record = stand_in
    proc = _start(tmp_path, record, *args)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    notes = record.read_text().splitlines()
    assert notes == [f"started {args[0]}", "cancelling", "saved"], notes  # cancelled, its output read to the end
    assert proc.returncode == 130, (proc.returncode, err)
    errors = [line for line in err.splitlines() if line.startswith("opsctl: error:")]
    assert errors == [f"opsctl: error: pulumi {args[0]} of stack 'staging' cancelled; operations in flight "
                      "finished and the state is saved"], err
    assert f"cancelling pulumi {args[0]} of stack 'staging'" in err and "Traceback" not in err
    assert not out.strip()


def test_a_second_interrupt_stops_pulumi_at_once(stand_in):
    tmp_path, record = stand_in
    proc = _start(tmp_path, record, "up", "--env", "staging", "--yes")
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while "cancelling" not in record.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (record.read_text(), proc.communicate())
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert record.read_text().splitlines() == ["started up", "cancelling", "stopped at once"]
    assert proc.returncode == 130, (proc.returncode, err)
    assert "stopped at once; resources being changed may be pending" in err and "Traceback" not in err


def test_run_cancellable_returns_or_raises_what_the_work_did():
    """Without an interrupt it is the work itself: its value, or its exception unchanged."""
    from opsctl.infra.cancel import run_cancellable

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run_cancellable(lambda: 42, "work") == 42
    with pytest.raises(ZeroDivisionError):
        run_cancellable(lambda: 1 / 0, "work")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back
