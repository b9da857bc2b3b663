"""SIGTERM handled as Ctrl-C, for the operations that clean up or save on an interrupt.

CI cancels a job with SIGTERM; a backup must then abort its uploads and a load test save
what it measured, exactly as after Ctrl-C. Only the main thread can take signals, so in a
runbook step's thread the default stays.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
