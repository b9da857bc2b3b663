"""SIGTERM handled as Ctrl-C, for the operations that clean up or save on an interrupt.

CI cancels a job with SIGTERM; a backup must then abort its uploads and a load test save
what it measured, exactly as after Ctrl-C. Only the main thread can take signals, so in a
runbook step's thread the default stays.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only).

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

    def interrupt(*_):
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

    previous = signal.signal(signal.SIGTERM, interrupt)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = hook
