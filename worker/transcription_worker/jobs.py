"""The asynchronous job runner: what a queue thread does with a transcription or a job.

`transcribe_audio` runs the model on decoded audio and records its metrics (the path of
synchronous requests and jobs alike); `run_job` takes one queued job from its row and its
audio in S3 to a stored transcript. Both run on WorkQueue threads (workqueue.py); the
job's lease is renewed meanwhile by the JobKeeper (recovery.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import metrics
from .interrupt import BudgetExceeded, ClientGone, Interrupt, Stopped
from .model import Options, Transcriber, decode

log = logging.getLogger("transcription_worker")


def transcribe_audio(transcriber: Transcriber, audio, options: Options, source: str,
                     interrupt: Interrupt | None = None) -> dict:
    """Run the model on `audio` (16 kHz float32 samples) and return the verbose_json result;
    records audio seconds (by `source`: "sync" or "job"), wall time and the real-time factor.
    Runs on a queue thread. Jobs, and sync audio of at least WORKER_BATCHED_MIN_SECONDS, take
    the batched pipeline. `interrupt` (default: the audio's time budget alone) stops it early:
    ClientGone or BudgetExceeded is raised, counted in worker_transcriptions_stopped_total."""
    seconds = len(audio) / 16_000
    batched = transcriber.batched_for(seconds, source)
    if interrupt is None:
        interrupt = Interrupt(transcriber.budget(seconds))
    started = time.perf_counter()
    try:
        result = transcriber.transcribe(audio, options, batched=batched, interrupt=interrupt)
    except Stopped as exc:
        reason = "client_gone" if isinstance(exc, ClientGone) else "budget"
        metrics.TRANSCRIPTIONS_STOPPED.labels(reason).inc()
        log.warning("transcription stopped", extra={"reason": reason, "audio_seconds": round(seconds, 1),
                                                    "after_seconds": round(time.perf_counter() - started, 1)})
        raise
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
    `Cache-Control: no-cache` job neither reads nor feeds the store), under the SHA-256 of the
    bytes downloaded; a job whose audio no longer has the SHA-256 it was made with fails,
    nothing stored (a /v1/uploads file is keyed by upload, not by content). Never raises: a
    failure is recorded on the job row as its error; a job adopted meanwhile by another
    worker is left to it."""
    db, store = state.db, state.store
    try:
        if not db.mark_running(job_id, state.owner):
            log.warning("job was adopted by another worker; leaving it", extra={"job_id": job_id})
            return
        source, got_sha, _ = store.download(audio_key)  # on disk: a 2 GB upload never sits in memory
        with source:
            if got_sha != sha256:  # the object changed since the job was made: its transcript
                # would be stored under another recording's SHA-256 (the store is shared)
                raise ValueError(f"the audio at {audio_key} is not the audio this job was made for"
                                 f" (SHA-256 {got_sha[:12]}..., expected {sha256[:12]}...); create the job again")
            audio = decode(source, state.settings.max_audio_seconds)
        result = transcribe_audio(state.transcriber, audio, options, "job")
        if bypass_store:
            db.finish_job(job_id, state.owner, result=result)
        else:
            batched = state.transcriber.batched_for(len(audio) / 16_000, "job")  # as transcribe_audio chose
            db.save_transcript(got_sha, state.transcriber.store_key(options, batched), state.transcriber.name, result)
            db.finish_job(job_id, state.owner)
        metrics.JOBS.labels("succeeded").inc()
        log.info("job succeeded", extra={"job_id": job_id, "duration": result["duration"]})
    except Exception as exc:
        metrics.JOBS.labels("failed").inc()
        # a stopped transcription is said as the sync route says it, a warning without a
        # traceback (breaker 31 F8, 32 G4); anything else with its exception's name
        stopped = isinstance(exc, BudgetExceeded)
        if stopped:
            log.warning("job failed: %s", exc, extra={"job_id": job_id})
        else:
            log.exception("job failed", extra={"job_id": job_id})
        try:
            db.finish_job(job_id, state.owner, error=(str(exc) if stopped else f"{type(exc).__name__}: {exc}")[:500],
                          error_code="transcription_budget_exceeded" if stopped else None)
        except Exception:
            log.exception("could not record the failure of job", extra={"job_id": job_id})
