"""SIGTERM as Ctrl-C (opsctl.signals): what CI's cancel does to an operation."""

from __future__ import annotations

import os
import signal
import time

import pytest

from opsctl.local import procs
from opsctl.signals import sigterm_as_interrupt


def test_sigterm_in_the_block_is_an_interrupt():
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs between bytecodes
            pass
    assert signal.getsignal(signal.SIGTERM) is not None


@pytest.fixture(params=["sigint-handled", "sigint-ignored"])
def sigint(request):
    """Python's Ctrl-C handler, or SIGINT ignored (a job started in the background, an xdist
    worker): the interrupt must come back either way."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler if request.param == "sigint-handled" else signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_inside_a_finalizer_is_delivered_again_not_a_traceback(capsys, sigint):
    """Breaker 37 G8: a SIGTERM landing in a client's ConnectionPool.__del__ as a backup finished
    printed "Exception ignored in ... KeyboardInterrupt" with a traceback, and the cancel was lost."""

    class Pool:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):
                pass

    after = []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        Pool()  # collected at once: the interrupt is raised inside __del__
        for _ in range(100):  # the work goes on (5 s): the interrupt must reach it
            time.sleep(0.05)
        after.append("the work went on")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert after == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_once_the_command_is_over_keeps_its_exit_code(tmp_path, sig):
    """Breaker 38 H13: a restore that had finished and printed its result died by SIGINT
    (returncode -2, no line), the signal landing on the way out, where no handler caught the
    KeyboardInterrupt. The window is played here by the frames after opsctl's main: a signal
    sent there once `version` has printed."""
    import subprocess
    import sys

    code = ("import os, signal, sys, time\n"
            "from opsctl.cli import main\n"
            "sys.argv = ['opsctl', 'version']\n"
            "try:\n"
            "    main()\n"
            "finally:\n"
            f"    os.kill(os.getpid(), {int(sig)})\n"
            "    time.sleep(5)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip() and not done.stderr, done.stderr


def test_running_the_app_in_a_program_keeps_its_signal_handlers(runner):
    """The late handler is the console script's alone: a CliRunner run (this test process)
    must leave SIGINT and SIGTERM as they were."""
    from opsctl.cli import app

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert runner.invoke(app, ["version"]).exit_code == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_tool_started_to_die_with_its_parent_stops_when_the_parent_is_killed(tmp_path):
    """kill -9 of opsctl left its pg_restore running on into a copy nobody would use (breaker
    54 F9): a command wrapped by dies_with_parent gets SIGTERM from the kernel when the
    process that started it dies, however it died."""
    import subprocess
    import sys

    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from opsctl.signals import dies_with_parent\n"
        "child = subprocess.Popen(dies_with_parent(['sleep', '600']))\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n")])
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = int(pidfile.read_text())

        def comm() -> str:
            return open(f"/proc/{child}/comm").read().strip()

        # the PID is known once forked: setpriv sets the death signal, then execs sleep in its
        # own place (read at once on a loaded machine, it was still "setpriv"; killed then, the
        # parent could die before the signal was set)
        while comm() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert comm() == "sleep"  # setpriv ran it in its own place
    finally:  # killed whatever happened: a failed check left it sleeping for ten minutes
        parent.kill()
        parent.wait(timeout=30)

    deadline = time.monotonic() + 30  # procs.alive: a zombie has ended, it waits for init to reap it
    while procs.alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not procs.alive(child), "the child went on after its parent was killed"
