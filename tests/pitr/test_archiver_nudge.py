"""A caller that waits for the local WAL queue to empty (restore --to-time latest, failover, a
base backup waiting for its WAL) nudges the archiver (SIGUSR2), which then drains at once
instead of at the end of its pause. Only an archiver that handles the signal is sent it: an
older one, without the nudge, would die of it."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from opsctl.local import procs
from opsctl.local import state as st
from opsctl.pitr import layout
from opsctl.pitr import local as pitr_local
from opsctl.pitr import restore


def _sleeper(handles: bool) -> subprocess.Popen:
    """A process whose command line names the archiver's module, handling the nudge (it exits
    3 on it) or not (it dies of it); it exits 4 on SIGTERM."""
    code = ("import os, signal, sys, time\n"
            + ("signal.signal(signal.SIGUSR2, lambda *_: os._exit(3))\n" if handles else "")
            + "signal.signal(signal.SIGTERM, lambda *_: os._exit(4))\n"
            + "print('ready', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, pitr_local.HINT], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def _nudged(proc: subprocess.Popen) -> bool:
    """Whether `proc` got the nudge: a SIGTERM sent now comes after it, and Python runs the
    handlers of the signals that have arrived in their numbers' order (SIGUSR2 12, SIGTERM
    15), so the exit code tells which one ended it (without a handler the nudge kills at once)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    proc.stdout.close()
    return code in (3, -signal.SIGUSR2)


@pytest.mark.parametrize("handles", [True, False], ids=["handles", "would-die"])
def test_only_an_archiver_that_handles_the_nudge_is_sent_it(tmp_path, monkeypatch, handles):
    proc = _sleeper(handles)
    monkeypatch.setattr(pitr_local, "archiver_pid", lambda _state: proc.pid)
    assert pitr_local.nudge_archiver(st.LocalState(folder=tmp_path)) is handles
    assert _nudged(proc) is handles


def test_a_process_that_is_no_longer_the_archiver_once_held_is_not_sent_it(tmp_path, monkeypatch):
    """The PID is read, then the process held by a pidfd and checked again: here the pidfile
    names another process by then (the archiver ended and its PID went to this one)."""
    proc = _sleeper(handles=True)
    answers = iter([proc.pid, None])
    monkeypatch.setattr(pitr_local, "archiver_pid", lambda _state: next(answers))
    assert pitr_local.nudge_archiver(st.LocalState(folder=tmp_path)) is False
    assert not _nudged(proc)


def test_no_archiver_no_nudge(tmp_path, monkeypatch):
    monkeypatch.setattr(pitr_local, "archiver_pid", lambda _state: None)
    assert pitr_local.nudge_archiver(st.LocalState(folder=tmp_path)) is False


def _restart_archiver(pitr, interval: float) -> int:
    """The platform's archiver again, pausing `interval` seconds between passes."""
    folder = st.folder_for(pitr.root)
    with st.locked(folder):
        state = st.load(folder)
        pitr_local.stop_archiver(state)
        state.save()
    state = pitr.state()
    log = state.log(pitr_local.COMPONENT)
    started = log.read_text().count(" INFO archiving ")  # each archiver says so once, before its first pass
    pid = procs.spawn([sys.executable, "-m", pitr_local.HINT, "--root", str(pitr.root), "--env", "local",
                       "--data", str(state.data("postgres")), "--queue", str(pitr_local.queue_dir(state)),
                       "--interval", str(interval)], state.log(pitr_local.COMPONENT),
                      pidfile=state.pidfile(pitr_local.COMPONENT), secrets=True)
    deadline = time.monotonic() + 60
    while pitr_local.archiver_pid(pitr.state()) != pid or pitr_local.queued_wal(pitr.state()) \
            or log.read_text().count(" INFO archiving ") == started:  # its first pass is done: it pauses now
        assert time.monotonic() < deadline, "the archiver did not start"
        time.sleep(0.1)
    return pid


def test_latest_waits_for_the_upload_not_for_the_archivers_pause(pitr):
    """An archiver in an hour-long pause: the segment 'latest' switches out is queued behind
    it, and the wait (30 s at most) ends with it in the repository only because the waiter
    woke the archiver, which took the nudge and lives on."""
    pid = _restart_archiver(pitr, interval=3600)
    try:
        segment = pitr.commit_and_queue("behind an archiver that sleeps an hour")
        assert restore._wait_for_queue(pitr.state(), timeout=30) == []
        assert pitr.repo().names(layout.wal_prefix(pitr.sysid()) + segment + ".")  # in the repository
        assert pitr_local.archiver_pid(pitr.state()) == pid
        assert "archived " + segment in pitr.state().log(pitr_local.COMPONENT).read_text()
    finally:
        folder = st.folder_for(pitr.root)
        with st.locked(folder):
            state = st.load(folder)
            pitr_local.stop_archiver(state)
            state.save()
        pitr.ensure_archiver()  # the fixture's own, for the tests after this one



def test_the_pause_works_with_descriptors_above_1024():
    """The archiver's pause waits on its wake pipe with a selector, not select.select, which
    refuses any descriptor above FD_SETSIZE (1024) with ValueError (CI stop 51: a process that
    had opened many files). The pipe here is opened after 1100 others; a nudge still ends a
    60 s pause, and the process exits 0."""
    code = ("import os, resource, signal, sys, time\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            "held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]\n"
            "from opsctl.pitr import archive\n"
            "pause = archive._nudgeable_pause()\n"
            "print('ready', flush=True)\n"
            "pause(60)\n"
            "print('woken', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        proc.send_signal(signal.SIGUSR2)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (0, "woken\n"), err
