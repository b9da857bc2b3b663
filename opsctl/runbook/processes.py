"""Every process a shell step starts ends with the step: before a retry, before the run ends.

A step's command runs in its own process group, but a process can leave that group: a
daemon (`setsid cmd &`, a double fork, `nohup` + `setsid`) starts a new session, and when
its parent exits it is re-parented to init, out of reach of a group kill. So while a
shell step runs, opsctl is a *child subreaper* (Linux `prctl(PR_SET_CHILD_SUBREAPER)`, the
mechanism systemd, tini and docker-init use for the same purpose; see prctl(2)): orphans
of the step are re-parented to opsctl instead of init, so they stay its descendants, where
psutil finds them. The step's processes are recognised three ways, any one suffices:

- descendants of the step's shell (psutil `children(recursive=True)`, captured while the
  step runs and again when it is stopped, so a process whose parent has exited is still
  known);
- processes carrying the step's token in their environment (`OPSCTL_SHELL_STEP`, inherited
  by everything the command starts, re-parented orphans included);
- members of the step's process group or session;
- orphans re-parented to opsctl while the step ran: children of opsctl that were not its
  children when the step started and are not the shell of another running step (a daemon
  that both cleared its environment and lost its parent before a scan is found this way).
  This assumes opsctl starts no other child process while a shell step runs, which holds
  for `runbook run`: its steps run one at a time and the shell step is the only one
  running then.

Stopping: SIGTERM to the group and to each known process, SIGKILL to what is left after
the grace period, each round scanning again for processes started meanwhile; orphans
re-parented to opsctl are reaped (waited for) so no zombie remains. Elsewhere than Linux
(no subreaper) only the process group and the processes still under the shell are reached.

The subreaper flag is set only while at least one shell step runs (a reference count), so
the daemons other parts of opsctl start (pg_ctl, Caddy) keep init as their reaper.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import psutil

TOKEN_VAR = "OPSCTL_SHELL_STEP"
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
SCAN_EVERY = 0.5  # seconds between two scans for descendants while a step runs

_lock = threading.Lock()
_users = 0
_shells: set[int] = set()  # pids of the shells of the steps running now


def _prctl_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def subreaper():
    """opsctl is a child subreaper (Linux) inside this block; yields whether it is."""
    global _users
    with _lock:
        active = _prctl_subreaper(True) if _users == 0 else True
        _users += 1
    try:
        yield active
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _prctl_subreaper(False)


class StepProcesses:
    """The processes of one shell step: `env()` marks them, `scan()` finds them, `stop()`
    ends them all. `proc` is the step's shell (started with start_new_session=True)."""

    def __init__(self):
        self.token = secrets.token_hex(8)
        self.proc: subprocess.Popen | None = None
        self.known: dict[int, psutil.Process] = {}
        self._last_scan = 0.0
        self._before: set[int] = set()

    def env(self, variables: dict) -> dict:
        """`variables` plus the step's token (TOKEN_VAR), by which its processes are found
        even after they left the group and the session."""
        return {**variables, TOKEN_VAR: self.token}

    def starting(self) -> None:
        """Call right before starting the shell: opsctl's children at that moment are not
        the step's."""
        with contextlib.suppress(psutil.Error):
            self._before = {p.pid for p in psutil.Process().children()}

    def started(self, proc: subprocess.Popen) -> None:
        """Call right after starting the shell `proc`: orphans it leaves are re-parented to
        opsctl (a subreaper) and counted as the step's."""
        self.proc = proc
        with _lock:
            _shells.add(proc.pid)

    def finished(self) -> None:
        """Call once the shell has exited (or was stopped): it no longer claims orphans."""
        with _lock:
            _shells.discard(self.proc.pid)

    def scan(self, every: float = 0.0) -> None:
        """Add the step's live processes to `known` (at most once per `every` seconds)."""
        now = time.monotonic()
        if now - self._last_scan < every:
            return
        self._last_scan = now
        found: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            found += psutil.Process(self.proc.pid).children(recursive=True)
        me = os.getpid()
        with _lock:
            shells = set(_shells)
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process().children(recursive=True):  # re-parented orphans included
                if p.pid in self.known or p.pid in shells or p.pid == self.proc.pid:
                    continue
                with contextlib.suppress(psutil.Error, OSError):
                    if (p.ppid() == me and p.pid not in self._before) \
                            or os.getsid(p.pid) == self.proc.pid or p.environ().get(TOKEN_VAR) == self.token:
                        found.append(p)
        for p in found:
            if p.pid != self.proc.pid:
                self.known.setdefault(p.pid, p)

    def _alive(self) -> list[psutil.Process]:
        alive = []
        for pid, p in list(self.known.items()):
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
                    continue
            except psutil.Error:
                pass
            self._reap(p)
            self.known.pop(pid, None)
        return alive

    @staticmethod
    def _reap(p: psutil.Process) -> None:
        """Wait for a process that became opsctl's child (a re-parented orphan), so no
        zombie is left; the step's shell itself is reaped by its Popen."""
        with contextlib.suppress(ChildProcessError, OSError):  # not our child: its parent reaps it
            os.waitpid(p.pid, os.WNOHANG)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # start_new_session: the group id is the shell's pid
        for p in self._alive():
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)  # psutil refuses a pid that was reused meanwhile

    def stop(self, grace: float = 2.0) -> int:
        """SIGTERM every process of the step, SIGKILL what is left after `grace` seconds;
        returns once none runs (or after 5 s more, which only an unkillable D-state process
        would need). Returns how many processes besides the shell were stopped."""
        self.scan()
        stopped = {p.pid for p in self._alive()}
        for sig, wait_for in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            self._signal(sig)
            until = time.monotonic() + wait_for
            while True:
                self.scan()  # a process forked meanwhile (or re-parented) gets the signal too
                alive = self._alive()
                stopped |= {p.pid for p in alive}
                shell_done = self.proc.poll() is not None
                if shell_done and not alive and not _group_alive(self.proc.pid):
                    return len(stopped)
                if time.monotonic() >= until:
                    break
                if alive:
                    self._signal(sig)
                time.sleep(0.05)
        return len(stopped)


def _group_alive(group: int) -> bool:
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == group:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False
