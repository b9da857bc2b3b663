"""The bounded work queue in front of the model (what runs on it is in jobs.py).

Transcriptions run on `concurrency` threads that share one WhisperModel. At most
`queue_size` more may wait; a caller that would be one too many gets 429 with a Retry-After
estimated from recent transcription times, so memory stays bounded under any load. A slot is
reserved before any work is done for a request (upload to S3, job row), and released if
that work fails, so a refused request leaves nothing behind.

On shutdown the executor is drained, not cancelled: accepted jobs finish before the process
exits (uvicorn first waits for in-flight HTTP requests, then the app's lifespan calls
`WorkQueue.shutdown`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from . import metrics
from .errors import APIError

log = logging.getLogger("transcription_worker")


class QueueFull(APIError):
    """429 `queue_full` with a Retry-After in seconds; counted in `worker_queue_rejected_total`
    here, once, wherever the refusal is decided (before or after the upload)."""

    def __init__(self, retry_after: int):
        metrics.QUEUE_REJECTED.inc()
        super().__init__(429, "the transcription queue is full; retry later",
                         code="queue_full", retry_after=retry_after)


class Slot:
    """A reserved place in the queue: `submit` it exactly once, or `release` it."""

    def __init__(self, queue: "WorkQueue"):
        self._queue, self._used = queue, False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on a model thread; the future holds its result or exception. A
        future cancelled before it started gives the place back."""
        self._used = True
        future = self._queue._executor.submit(self._queue._run, fn, *args)
        # cancelled before it started (its caller went away): give the place back
        future.add_done_callback(lambda f: f.cancelled() and self._queue._leave(started=False))
        return future

    def release(self) -> None:
        """Give the place back unused (the work it was for failed before `submit`); a no-op
        after `submit` or a first `release`."""
        if not self._used:
            self._used = True
            self._queue._leave(started=False)


class WorkQueue:
    """`workers` model threads and room for `queue_size` more transcriptions waiting; its
    depth and running count are the `worker_queue_depth` and
    `worker_transcriptions_in_progress` gauges."""

    def __init__(self, workers: int, queue_size: int):
        self.workers, self.capacity = workers, workers + queue_size
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="transcribe")
        self._lock = threading.Lock()
        self._waiting = self._running = 0
        self._avg_seconds = 5.0  # moving average of one transcription, for Retry-After
        self.on_room: Callable[[], None] | None = None  # called when a place frees

    def reserve(self) -> Slot:
        """A place in the queue for one request; raises QueueFull (429) when there is none."""
        with self._lock:
            if self._waiting + self._running >= self.capacity:
                raise QueueFull(self.retry_after())
            self._waiting += 1
            metrics.QUEUE_DEPTH.set(self._waiting)
        return Slot(self)

    def has_room(self) -> bool:
        """True while a `reserve` would succeed (checked before reading an upload)."""
        return self.room() > 0

    def room(self) -> int:
        """Places free now: running plus waiting transcriptions below the capacity."""
        return self.capacity - self._waiting - self._running

    def idle(self) -> int:
        """Model threads with nothing to do: none running on them and none waiting for them."""
        return max(0, self.workers - self._waiting - self._running)

    def try_reserve(self, idle_only: bool = False) -> Slot | None:
        """A slot if there is room (`idle_only`: only on a model thread with nothing running or
        waiting for it, so it starts at once), else None (not a refusal of a client: nothing
        is counted)."""
        with self._lock:
            if self._waiting + self._running >= (self.workers if idle_only else self.capacity):
                return None
            self._waiting += 1
            metrics.QUEUE_DEPTH.set(self._waiting)
        return Slot(self)

    def retry_after(self) -> int:
        """Seconds a refused caller should wait: the moving average of one transcription
        times the waiting ones (plus this one), shared by the workers; at least 1."""
        return max(1, math.ceil(self._avg_seconds * (self._waiting + 1) / self.workers))

    def _leave(self, started: bool) -> None:
        with self._lock:
            if started:
                self._running -= 1
            else:
                self._waiting -= 1
            metrics.QUEUE_DEPTH.set(self._waiting)
            metrics.IN_PROGRESS.set(self._running)
        if self.on_room is not None:  # a transcription ended, or a waiting one left: a thread may be idle
            self.on_room()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            self._waiting -= 1
            self._running += 1
            metrics.QUEUE_DEPTH.set(self._waiting)
            metrics.IN_PROGRESS.set(self._running)
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            elapsed = time.perf_counter() - started
            self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * elapsed
            self._leave(started=True)

    def shutdown(self) -> None:
        """Wait for every submitted transcription to finish (SIGTERM drains, never cancels)."""
        self._executor.shutdown(wait=True)
