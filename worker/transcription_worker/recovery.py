"""Jobs outlive the worker process that accepted them: leases, heartbeats and adoption.

A job belongs to the worker process that queued it (`jobs.owner`), which renews the job's
`heartbeat_at` every third of a lease while the job is queued or running. A process that
dies without draining its queue (SIGKILL, the OOM killer, a lost node) stops renewing;
once the lease has run out, a live worker adopts the job as soon as its own queue has room
(`FOR UPDATE SKIP LOCKED`: exactly one worker gets each job) and runs it from the audio in
S3. A worker that only stalled past its lease finds its job adopted and leaves it alone, and
a transcript is stored once whoever finishes first, so a job runs at least once and its
result is written once. A job whose workers died `max_attempts` times while running it
fails instead of being adopted again: audio that kills a worker must not kill them all.

A job accepted while none of its worker's model threads is idle is made without an owner (the
backlog, up to WORKER_JOB_BACKLOG jobs): keepers take it like an orphan, oldest first, as soon
as one of their model threads is idle: at once when a transcription of theirs ends (`nudge`),
else at their next tick; one that has waited `patience` seconds takes a free queue place. A
batch of podcast episodes posted at once is accepted, not refused; sync requests keep the
queue's places. A worker told to stop (SIGTERM, SIGINT) takes nothing more at once
(`stop_adopting`), while its in-flight requests finish.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from . import metrics
from .jobs import run_job
from .model import Options

log = logging.getLogger("transcription_worker")


def instance_id() -> str:
    """This process, as job rows name their owner (host, pid, and a nonce for pid reuse)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


class JobKeeper:
    """The background thread that renews this worker's leases and adopts orphaned jobs."""

    def __init__(self, state: Any, lease: float, max_attempts: int, patience: float = 60):
        self.state, self.lease, self.max_attempts, self.patience = state, lease, max_attempts, patience
        self.adopting = True  # off while the worker drains its queue on SIGTERM; renewals go on
        self._stop = threading.Event()
        self._room = threading.Event()  # `nudge`: a model slot freed, adopt without waiting for a tick
        self._thread = threading.Thread(target=self._loop, name="job-keeper", daemon=True)

    def start(self) -> None:
        """Start the keeper's daemon thread (a tick every third of the lease)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current tick (waits up to 10 s)."""
        self._stop.set()
        self._room.set()
        self._thread.join(timeout=10)

    def stop_adopting(self) -> None:
        """Take on no more jobs (the worker is stopping); leases of what it holds are still
        renewed while that drains."""
        self.adopting = False

    def nudge(self) -> None:
        """Room freed in the queue: adopt waiting jobs (the backlog, orphans) now, not at the
        next tick. Called from a queue thread; returns at once."""
        self._room.set()

    def _loop(self) -> None:
        next_tick = time.monotonic() + self.lease / 3
        while True:
            nudged = self._room.wait(max(0.0, next_tick - time.monotonic()))
            self._room.clear()
            if self._stop.is_set():
                return
            try:
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.lease / 3
                    self.tick()
                elif nudged:
                    self.adopt()
            except Exception as exc:  # the database may be away for a while: try again next tick
                log.warning("job keeper: %s", exc)

    def tick(self) -> int:
        """Renew this worker's leases, then adopt waiting jobs while the queue has room."""
        state = self.state
        state.db.renew_leases(state.owner)
        if state.store is not None:
            from .file_uploads import count_incomplete, start_expiry

            start_expiry(state)  # its own thread: S3 waits never hold up the renewals above
            count_incomplete(state)
        return self.adopt()

    def adopt(self) -> int:
        """Take waiting jobs (the backlog's, and orphans whose lease ran out), oldest first,
        while a model thread is idle; returns how many. Only into idle threads: the queue's
        places stay for requests whose clients wait on the connection (breaker 31 F2: filling
        every freed place from a backlog of hundreds answered each sync request 429 until the
        backlog was gone), and a job waits no longer in this process's queue than in the
        backlog, where any worker may take it."""
        state = self.state
        if not self.adopting or state.transcriber is None or state.store is None:
            return 0  # draining, or cannot run jobs yet: leave them to a worker that can
        adopted = 0
        while (room := state.queue.idle()) > 0:
            jobs = state.db.adopt_orphans(state.owner, self.lease, room)
            if not jobs:
                break
            for job in jobs:
                adopted += self._take(job)
        # with every thread busy, one job that has waited `patience` seconds takes a free queue
        # place, one per call: steady sync traffic cannot hold the backlog back without end
        # (breaker 32 G2), nor can a backlog of old jobs take every place from sync requests
        if state.queue.idle() == 0 and state.queue.room() > 0:
            for job in state.db.adopt_orphans(state.owner, self.lease, 1, waited=self.patience):
                adopted += self._take(job)
        return adopted

    def _take(self, job: dict) -> int:
        job_id = str(job["id"])
        if job["attempts"] >= self.max_attempts:
            times = "once" if job["attempts"] == 1 else f"{job['attempts']} times"
            error = (f"abandoned: the worker running this job stopped {times} without"
                     " finishing (killed, out of memory?); resubmit it if the audio is sound")
            self.state.db.finish_job(job_id, self.state.owner, error=error, error_code="job_abandoned")
            metrics.JOBS.labels("abandoned").inc()
            log.error("job abandoned", extra={"job_id": job_id, "attempts": job["attempts"]})
            return 0
        slot = self.state.queue.try_reserve()
        if slot is None:  # an HTTP request took the room meanwhile: another tick, or worker, runs it
            self.state.db.release_job(job_id, self.state.owner)
            return 0
        slot.submit(run_job, self.state, job_id, job["audio_key"], job["audio_sha256"],
                    Options(**job["options"]), job["bypass_store"])
        if job["previous_owner"] is None:  # from the backlog: accepted while no thread was idle
            log.info("job taken from the backlog", extra={"job_id": job_id})
            return 1
        metrics.JOBS.labels("adopted").inc()
        log.warning("adopted a job whose worker stopped", extra={"job_id": job_id, "from": job["previous_owner"],
                                                                  "attempts": job["attempts"]})
        return 1
