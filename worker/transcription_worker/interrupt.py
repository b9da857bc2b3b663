"""Stopping a running transcription: its client left, or it ran past its time budget.

A transcription's cost is bounded by nothing but its audio's length: unintelligible speech,
reversed speech or the wrong `language` makes Whisper loop to its token limit on every window,
and the sequential loop then runs its whole temperature ladder (breaker 29 F5: 20 s of
reversed speech took 125 s of both cores, 93 s of it ran for more than 9 minutes, and a
client that gave up left it holding the model while its retries queued the same work).

CTranslate2 offers no way to stop a decode midway, so a running transcription is checked
before each call into the model (`Checked`): an encode, one decode of a 30 s window at one
temperature, or one batch of the batched pipeline — a few seconds on a CPU. The check reads
the Interrupt of the thread it runs on (`running`), so one shared model serves transcriptions
with their own interrupts on several threads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

from . import units


class Stopped(Exception):
    """A transcription stopped before its end; `reason` says why, for a person; `ran`: whether
    the model had started on it (False: it was taken out of the queue before)."""

    def __init__(self, reason: str, ran: bool = True):
        super().__init__(reason)
        self.reason, self.ran = reason, ran


class ClientGone(Stopped):
    """Its client closed the connection: nobody is waiting for the transcript."""


class BudgetExceeded(Stopped):
    """It ran longer than its budget (`Interrupt.budget` seconds of model time)."""


class Interrupt:
    """What may stop one transcription early: `cancel` (its client left), or its budget of
    `budget` seconds (None: unlimited) counted from `start` (when a model thread takes it up:
    time waiting in the queue is not counted). Thread-safe: `cancel` is called from the
    event loop while the model thread calls `check`."""

    def __init__(self, budget: float | None = None):
        self.budget = budget
        self._deadline: float | None = None
        self._gone = threading.Event()

    def start(self) -> None:
        """Start the budget's clock (a second call restarts it)."""
        self._deadline = None if self.budget is None else time.monotonic() + self.budget

    def cancel(self) -> None:
        """The client left: the transcription stops at its next check."""
        self._gone.set()

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` was called."""
        return self._gone.is_set()

    def check(self) -> None:
        """Raise ClientGone after `cancel`, BudgetExceeded past the budget; else nothing."""
        if self._gone.is_set():
            raise ClientGone("the client closed the connection before its transcript was ready")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise BudgetExceeded(f"the transcription ran past its time budget of {units.seconds(self.budget)} and was "
                                 "stopped: the audio may be unintelligible, or not in the language given")


_local = threading.local()


@contextlib.contextmanager
def running(interrupt: Interrupt | None) -> Iterator[None]:
    """Make `interrupt` (started here) the one this thread's model calls check, for the block."""
    before = getattr(_local, "interrupt", None)
    if interrupt is not None:
        interrupt.start()
    _local.interrupt = interrupt
    try:
        yield
    finally:
        _local.interrupt = before


def check() -> None:
    """Check this thread's Interrupt, if one is running (see `running`)."""
    interrupt = getattr(_local, "interrupt", None)
    if interrupt is not None:
        interrupt.check()


class Checked:
    """A CTranslate2 Whisper model whose calls that run it (`STEPS`) first `check()` this
    thread's Interrupt; every other attribute is the model's own. faster-whisper reaches the
    model only by attribute (`WhisperModel.model`), so it is swapped in there."""

    STEPS = frozenset({"encode", "generate", "detect_language", "align"})

    def __init__(self, model: Any):
        self._model = model

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._model, name)
        if name not in self.STEPS:
            return attr

        def step(*args: Any, **kwargs: Any) -> Any:
            check()
            return attr(*args, **kwargs)

        return step
