"""The bounded work queue in front of the model, and the asynchronous job runner.

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
from .model import Options, Transcriber, decode

log = logging.getLogger("transcription_worker")


class QueueFull(APIError):
    """Counted here, once, wherever the refusal is decided (before or after the upload)."""

    def __init__(self, retry_after: int):
        metrics.QUEUE_REJECTED.inc()
        super().__init__(429, "the transcription queue is full; retry later",
                         code="queue_full", retry_after=retry_after)


class Slot:
    """A reserved place in the queue: `submit` it exactly once, or `release` it."""

    def __init__(self, queue: "WorkQueue"):
        self._queue, self._used = queue, False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        self._used = True
        future = self._queue._executor.submit(self._queue._run, fn, *args)
        # cancelled before it started (its caller went away): give the place back
        future.add_done_callback(lambda f: f.cancelled() and self._queue._leave(started=False))
        return future

    def release(self) -> None:
        if not self._used:
            self._used = True
            self._queue._leave(started=False)


class WorkQueue:
    def __init__(self, workers: int, queue_size: int):
        self.workers, self.capacity = workers, workers + queue_size
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="transcribe")
        self._lock = threading.Lock()
        self._waiting = self._running = 0
        self._avg_seconds = 5.0  # moving average of one transcription, for Retry-After

    def reserve(self) -> Slot:
        with self._lock:
            if self._waiting + self._running >= self.capacity:
                raise QueueFull(self.retry_after())
            self._waiting += 1
            metrics.QUEUE_DEPTH.set(self._waiting)
        return Slot(self)

    def has_room(self) -> bool:
        return self.room() > 0

    def room(self) -> int:
        return self.capacity - self._waiting - self._running

    def try_reserve(self) -> Slot | None:
        """A slot if there is room, else None (not a refusal of a client: nothing is counted)."""
        with self._lock:
            if self._waiting + self._running >= self.capacity:
                return None
            self._waiting += 1
            metrics.QUEUE_DEPTH.set(self._waiting)
        return Slot(self)

    def retry_after(self) -> int:
        return max(1, math.ceil(self._avg_seconds * (self._waiting + 1) / self.workers))

    def _leave(self, started: bool) -> None:
        with self._lock:
            if started:
                self._running -= 1
            else:
                self._waiting -= 1
            metrics.QUEUE_DEPTH.set(self._waiting)
            metrics.IN_PROGRESS.set(self._running)

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
        self._executor.shutdown(wait=True)


def transcribe_audio(transcriber: Transcriber, audio, options: Options, source: str) -> dict:
    """Run the model and record its throughput (runs on a queue thread). Jobs, and sync audio
    of at least WORKER_BATCHED_MIN_SECONDS, take the batched pipeline."""
    seconds = len(audio) / 16_000
    batched = transcriber.batched_for(seconds, source)
    started = time.perf_counter()
    result = transcriber.transcribe(audio, options, batched=batched)
    elapsed = time.perf_counter() - started
    metrics.TRANSCRIPTIONS.labels("batched" if batched else "sequential").inc()
    metrics.AUDIO_SECONDS.labels(source).inc(seconds)
    metrics.TRANSCRIPTION_SECONDS.observe(elapsed)
    if seconds > 0:
        metrics.REALTIME_FACTOR.observe(elapsed / seconds)
    return result


def run_job(state: Any, job_id: str, audio_key: str, sha256: str, options: Options,
            bypass_store: bool = False) -> None:
    """Process one queued job: fetch its audio from S3, transcribe, store the transcript
    (in the shared transcript store, or on the job row alone when `bypass_store`: a
    `Cache-Control: no-cache` job neither reads nor feeds the store)."""
    db, store = state.db, state.store
    try:
        if not db.mark_running(job_id, state.owner):
            log.warning("job was adopted by another worker; leaving it", extra={"job_id": job_id})
            return
        audio = decode(store.get(audio_key), state.settings.max_audio_seconds)
        result = transcribe_audio(state.transcriber, audio, options, "job")
        if bypass_store:
            db.finish_job(job_id, state.owner, result=result)
        else:
            db.save_transcript(sha256, options.cache_key(state.transcriber.name),
                               state.transcriber.name, result)
            db.finish_job(job_id, state.owner)
        metrics.JOBS.labels("succeeded").inc()
        log.info("job succeeded", extra={"job_id": job_id, "duration": result["duration"]})
    except Exception as exc:
        metrics.JOBS.labels("failed").inc()
        log.exception("job failed", extra={"job_id": job_id})
        try:
            db.finish_job(job_id, state.owner, error=f"{type(exc).__name__}: {exc}"[:500])
        except Exception:
            log.exception("could not record the failure of job", extra={"job_id": job_id})
