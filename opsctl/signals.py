"""SIGTERM and SIGHUP handled as Ctrl-C, for the operations that clean up or save on an interrupt.

CI cancels a job with SIGTERM, and a dropped SSH session sends SIGHUP; a backup must then
abort its uploads, a restore drop its scratch copy and a load test save what it measured,
exactly as after Ctrl-C (breaker 42 R7: SIGHUP ended a restore with exit 129, no line said,
its scratch database and decrypted dump left behind). Only the main thread can take signals,
which is why runbook steps run there (opsctl.runbook.engine); in any other thread these
helpers leave the block as it is.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

# the signals that end an operation as Ctrl-C does: SIGTERM (a CI cancel), SIGHUP (the
# terminal or SSH session went away); SIGINT is Python's own KeyboardInterrupt already
AS_INTERRUPT = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


_LISTENERS: list = []  # callbacks (signum) told of each interrupt opsctl's handlers take


@contextmanager
def noticing(callback) -> Iterator[None]:
    """Within the block, `callback(signum)` is called for each Ctrl-C, SIGTERM or SIGHUP that a
    handler of opsctl's takes (`arrived`), whichever one is installed then: this module's, a
    load test's counter, infra's forwarder. The runbook engine tells by it an interrupt from
    outside from its own step timeout (breaker 66 G5: a Ctrl-C near a step's timeout was taken
    for the timeout, retried, and its handlers paged)."""
    _LISTENERS.append(callback)
    try:
        yield
    finally:
        _LISTENERS.remove(callback)


def arrived(signum: int) -> None:
    """Called by every interrupt handler opsctl installs, as it takes `signum` (`noticing`)."""
    for callback in list(_LISTENERS):
        callback(signum)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does (main
    thread only); each is told to `noticing`'s callbacks.

    Python runs a signal handler between any two bytecodes, finalizers (`__del__`) included;
    an interrupt raised inside one cannot propagate: Python printed "Exception ignored in ...
    KeyboardInterrupt" with a traceback and the work went on as if never cancelled (breaker
    37 G8: a client's ConnectionPool.__del__ as a backup finished). Within the block such an
    interrupt is taken by `sys.unraisablehook` and delivered again to the main thread
    (`_thread.interrupt_main` of SIGTERM, this block's handler, from a thread of its own), out
    of the finalizer, where it propagates as any Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        arrived(signum)
        raise KeyboardInterrupt

    hook = sys.unraisablehook

    def unraisable(info) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            # a moment later, from another thread: called here, the interrupt would be raised inside
            # this hook (a new thread's start waits, and a waiting main thread takes signals)
            # as SIGTERM, whose handler is this block's own: a SIGINT Python does not handle (a
            # job started in the background, an xdist worker) would make interrupt_main a no-op
            again = threading.Timer(0.02, _thread.interrupt_main, args=(signal.SIGTERM,))
            again.daemon = True
            again.start()
        else:
            hook(info)

    # SIGHUP ignored (`nohup opsctl ...`) stays ignored: that run was meant to outlive its terminal
    # SIGINT too while it has Python's own handler (the same KeyboardInterrupt, `noticing` told)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, *AS_INTERRUPT)
                if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN
                and (sig != signal.SIGINT or signal.getsignal(sig) is signal.default_int_handler)}
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = hook


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP are held: the block runs to its end, and
    KeyboardInterrupt is raised after it if one came. For the few statements that put live
    data back as it was (a restore's swap undone), which an interrupt must not cut in two
    (breaker 42 R1). Main thread only; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    # an ignored signal (SIGINT of a job started in the background) stays ignored
    sigs = [s for s in (signal.SIGINT, *AS_INTERRUPT) if signal.getsignal(s) is not signal.SIG_IGN]

    def hold(signum, _frame) -> None:
        came.append(signum)
        arrived(signum)

    previous = {sig: signal.signal(sig, hold) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if came:
        raise KeyboardInterrupt


def dies_with_parent(cmd: list[str]) -> list[str]:
    """`cmd` run so that the kernel sends it SIGTERM when this process dies (Linux
    PR_SET_PDEATHSIG, through util-linux's `setpriv --pdeathsig`): a tool this process drives
    (pg_restore) stops when opsctl is killed outright (kill -9, the OOM killer), instead of
    writing on into a copy nobody will use (breaker 54 F9). Elsewhere, or without a setpriv
    that knows the option, `cmd` as it is (the next run's clean-up still drops that copy).

    Not `preexec_fn`: Python documents it as unsafe with threads, and backups run threads."""
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


@lru_cache(maxsize=1)
def _setpriv() -> str | None:
    import shutil
    import subprocess

    found = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if found is None:
        return None
    try:
        ok = subprocess.run([found, "--pdeathsig", "TERM", "--", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return found if ok else None
