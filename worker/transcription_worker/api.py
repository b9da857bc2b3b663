"""The /v1 API: OpenAI's transcription endpoint and the asynchronous jobs.

Every request is authenticated and rate-limited before its body is read. Both paths answer
identical audio (same SHA-256, same options) from the stored transcript when PostgreSQL is
configured; the synchronous path also stores what it transcribes, best effort. A request
with `Cache-Control: no-cache` (an authenticated one, when keys are on: every /v1 request
is) bypasses the store: the model always runs, and nothing it produces is written to the
store (a job keeps its transcript on its own row). Deploy analysis and load tests use it,
so what they judge is the model's work, never a cached answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from . import metrics
from .db import FileGone
from .errors import APIError, shown
from .formats import FORMATS, MEDIA_TYPES, render
from .interrupt import ClientGone, Interrupt, Stopped
from .jobs import run_job, transcribe_audio
from .model import AudioDecodeError, AudioTooLong, decode
from .uploads import Upload, no_control, read_upload
from .workqueue import QueueFull

log = logging.getLogger("transcription_worker")
router = APIRouter(prefix="/v1")
_UPLOAD_DOC = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
        "language": {"type": "string"}, "prompt": {"type": "string"},
        "temperature": {"type": "number"},
        "response_format": {"type": "string", "enum": list(FORMATS)}}}}}}}


def _state(request: Request) -> Any:
    return request.app.state.worker


def authenticate(request: Request) -> str:
    """The caller's key id (a prefix of the key's hash), or 'anonymous' when keys are off."""
    settings = _state(request).settings
    if not settings.api_key_hashes:
        key_id = "anonymous"
    else:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key_id = settings.key_id_for(token.strip()) if scheme.lower() == "bearer" else None
        if key_id is None:
            raise APIError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    request.state.key_id = key_id
    return key_id


async def _admit(request: Request) -> str:
    key_id = authenticate(request)
    await _state(request).limits.check_rate(key_id)
    return key_id


def _require_model(state: Any) -> None:
    if state.transcriber is None:
        raise APIError(503, "the model is still loading", code="model_loading", retry_after=5)


def bypasses_store(request: Request) -> bool:
    """True when the request carries the `no-cache` directive of `Cache-Control` (RFC 9111
    5.2.1.4: the response must not be served from a cache without being made anew)."""
    directives = request.headers.get("cache-control", "")
    return any(d.split("=", 1)[0].strip().lower() == "no-cache" for d in directives.split(","))


async def _decode(request: Request, data, param: str = "file"):
    """The audio of `data` (bytes or a file), decoded; 413 `audio_too_long` or 400
    `invalid_audio` naming `param`, the form field the audio came from (`file`, or `file_id`
    for a completed upload)."""
    limit = _state(request).settings.max_audio_seconds
    try:
        return await run_in_threadpool(decode, data, limit)
    except AudioTooLong as exc:
        raise APIError(413, str(exc), param=param, code="audio_too_long") from None
    except AudioDecodeError as exc:
        raise APIError(400, str(exc), param=param, code="invalid_audio") from None


async def _stored_transcript(state: Any, upload: Upload, batched: bool) -> dict | None:
    if state.db is None:
        return None
    try:
        found = await run_in_threadpool(state.db.find_transcript, upload.sha256,
                                        state.transcriber.store_key(upload.options, batched))
    except Exception as exc:  # dedup is an optimisation; never fail a request over it
        log.warning("transcript lookup failed: %s", exc)
        return None
    if found:
        metrics.DEDUP_HITS.inc()
    return found


def _respond(result: dict, fmt: str) -> Any:
    body = render(result, fmt)
    if isinstance(body, str):
        return PlainTextResponse(body, media_type=MEDIA_TYPES[fmt])
    return JSONResponse(body)


@router.post("/audio/transcriptions", openapi_extra=_UPLOAD_DOC)
async def create_transcription(request: Request):
    """OpenAI-compatible synchronous transcription."""
    state = _state(request)
    key_id = await _admit(request)
    _require_model(state)
    if not state.queue.has_room():  # refuse before taking the upload
        raise QueueFull(state.queue.retry_after())
    bypass = bypasses_store(request)
    async with state.limits.upload_slot(key_id):
        upload = await read_upload(request, state.settings.max_upload_bytes)
        audio = await _decode(request, upload.data)
        seconds = len(audio) / 16_000
        batched = state.transcriber.batched_for(seconds, "sync")
        stored = None if bypass else await _stored_transcript(state, upload, batched)
        if stored:
            return _respond(stored, upload.response_format)
        slot = state.queue.reserve()
        try:
            charged = await state.limits.charge_audio(key_id, seconds)
        except BaseException:
            slot.release()
            raise
        try:
            result = await _transcribed(request, slot, state.transcriber, audio, upload.options)
        except Stopped as exc:  # once the model ran (to its budget, or until its client left) seconds stay charged
            if charged and not exc.ran:
                await state.limits.refund_audio(key_id, seconds)
            raise _stopped_answer(exc) from None
        except BaseException:
            if charged:
                await state.limits.refund_audio(key_id, seconds)
            raise
    if state.db is not None and not bypass:
        try:
            await run_in_threadpool(state.db.save_transcript, upload.sha256,
                                    state.transcriber.store_key(upload.options, batched),
                                    state.transcriber.name, result)
        except Exception as exc:
            log.warning("could not store transcript: %s", exc)
    return _respond(result, upload.response_format)


WATCH_SECONDS = 0.5  # how often a waiting sync request looks whether its client is still there


async def _transcribed(request: Request, slot: Any, transcriber: Any, audio: Any, options: Any) -> dict:
    """The verbose_json result of `audio` from a model thread (`slot`), stopped when nobody
    will read it: the client closed the connection (looked at every WATCH_SECONDS: a
    transcription not started yet gives its place back at once, a running one stops before its
    next model call) or it ran past its time budget (`Transcriber.budget`): raises ClientGone
    or BudgetExceeded then (breaker 29 F5; `_stopped_answer` words them)."""
    interrupt = Interrupt(transcriber.budget(len(audio) / 16_000))
    future = slot.submit(transcribe_audio, transcriber, audio, options, "sync", interrupt)
    waiting = asyncio.wrap_future(future)
    try:
        while not (await asyncio.wait({waiting}, timeout=WATCH_SECONDS))[0]:
            if await request.is_disconnected():
                interrupt.cancel()
                # not started yet: its place in the queue goes back at once, and nothing ran
                raise ClientGone("the client closed the connection before its transcript was ready",
                                 ran=not future.cancel())
        return waiting.result()
    finally:
        if not waiting.done():  # the client left, or this request was itself cancelled: stop the work
            interrupt.cancel()
            future.cancel()
            # what the thread raises is consumed here, never logged as "never retrieved"
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())


def _stopped_answer(exc: Stopped) -> APIError:
    """ClientGone: 499 `client_disconnected`, which nobody reads (it is for the access log and
    deploy analysis, never a 500). BudgetExceeded: 422 `transcription_budget_exceeded`, without
    Retry-After: the same audio sent again would loop again."""
    if isinstance(exc, ClientGone):
        return APIError(499, str(exc), code="client_disconnected")
    return APIError(422, str(exc), code="transcription_budget_exceeded")


async def _backlog_room(state: Any) -> None:
    """Raise QueueFull (429, Retry-After) when WORKER_JOB_BACKLOG jobs already wait unowned
    (breaker 29 F11: a twelfth job posted at once was refused while jobs persist anyway)."""
    if await _db(state.db.backlog) >= state.settings.job_backlog:
        raise QueueFull(state.queue.retry_after())


def _job_body(job: dict, fmt: str = "verbose_json") -> dict:
    ts = lambda v: int(v.timestamp()) if v else None  # noqa: E731
    result = job.get("result")
    return {
        "id": str(job["id"]), "object": "transcription.job", "status": job["status"],
        "created_at": ts(job["created_at"]), "started_at": ts(job["started_at"]),
        "completed_at": ts(job["completed_at"]), "audio_sha256": job["audio_sha256"],
        "audio_bytes": job["audio_bytes"], "duration": job["duration"],
        "deduplicated": job["deduplicated"], "idempotency_key": job["idempotency_key"],
        "options": job["options"],
        "error": {"message": job["error"], "code": job.get("error_code")} if job["error"] else None,
        "result": render(result, fmt) if result else None,
    }


def _jobs_enabled(state: Any) -> None:
    if state.db is None or state.store is None:
        raise APIError(503, "asynchronous jobs need WORKER_DATABASE_URL and WORKER_S3_BUCKET",
                       code="jobs_disabled")


async def _db(fn, *args, **kwargs):
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except (APIError, FileGone):
        raise
    except (psycopg.DataError, UnicodeEncodeError) as exc:
        # a value the database cannot hold (SQLSTATE class 22, e.g. a NUL in text; or text no
        # UTF-8 holds, a lone surrogate psycopg cannot encode): the request's fault, which no
        # retry mends; fields are checked before
        log.warning("database refused a value: %s", exc)
        raise APIError(400, "the request holds a value the job store cannot keep (a control character?)",
                       code="invalid_value") from None
    except Exception as exc:
        log.warning("database/storage call failed: %s", exc)
        raise APIError(503, "the job store is unavailable; retry later", code="store_unavailable",
                       retry_after=5) from None


def _file_not_found(file_id: str) -> APIError:
    return APIError(404, f"no completed upload with file id {shown(file_id)}", param="file_id",
                    code="file_not_found")


@contextlib.asynccontextmanager
async def _reading(state: Any, upload_id: str):
    """While the block runs, renew the mark `upload_by_file` set on the upload (every third of
    WORKER_JOB_LEASE_SECONDS, for a lease): the keeper deletes no file a request is reading to
    make a job of, however long its download and decoding take; a worker that dies lets the
    mark lapse (breaker 47 F4)."""
    lease = state.settings.job_lease_seconds

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if not await run_in_threadpool(state.db.hold_upload_file, upload_id, lease):
                    return  # being deleted (the mark lapsed): `create_job` answers 404
            except Exception as exc:  # the database away: the next renewal tries again
                log.warning("could not renew the mark on an upload being read: %s", exc,
                            extra={"upload_id": upload_id})

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()


@router.post("/jobs", status_code=202, openapi_extra=_UPLOAD_DOC)
async def create_job(request: Request):
    """Queue a transcription; the audio goes to S3 and a row to PostgreSQL."""
    state = _state(request)
    _jobs_enabled(state)
    key_id = await _admit(request)
    _require_model(state)
    idem = no_control(request.headers.get("idempotency-key"), "Idempotency-Key") or None
    if idem and len(idem) > 255:
        raise APIError(400, "Idempotency-Key is longer than 255 characters",
                       param="Idempotency-Key", code="invalid_value")
    bypass = bypasses_store(request)
    async with state.limits.upload_slot(key_id), contextlib.AsyncExitStack() as reading:
        upload = await read_upload(request, state.settings.max_upload_bytes, "verbose_json",
                                   allow_file_id=True)
        key, size, upload_id = None, len(upload.data), None
        if upload.file_id:  # a completed /v1/uploads file: already in the bucket
            # marked read from here to the job row (`create_job`): never deleted under this request
            done = await _db(state.db.upload_by_file, upload.file_id, key_id, state.settings.job_lease_seconds)
            if done is None:
                raise _file_not_found(upload.file_id)
            upload_id = done["id"]
            await reading.enter_async_context(_reading(state, upload_id))
            key = done["file_key"] or done["s3_key"]  # file_key: the key its complete recorded
            await state.limits.check_audio_left(key_id)  # a used-up day is refused before the download
            # into a temporary file, not memory (up to WORKER_MAX_UPLOAD_TOTAL_MB), hashed on the way
            source, upload.sha256, size = await _db(state.store.download, key)
            if not done["sha256"]:  # completed without md5: nothing had read the file yet
                await _db(state.db.set_upload_sha256, done["id"], upload.sha256)
            try:
                audio = await _decode(request, source, param="file_id")
            finally:
                source.close()
        else:
            audio = await _decode(request, upload.data)
        seconds = len(audio) / 16_000
        del audio  # the job decodes again from S3: nothing but the slot is held while queued
        if idem:
            existing = await _db(state.db.find_by_idempotency_key, key_id, idem)
            if existing:
                return _replay(existing, upload)
        batched = state.transcriber.batched_for(seconds, "job")  # the path the job will take
        stored = None if bypass else await _stored_transcript(state, upload, batched)
        # a job starts now on an idle model thread, or waits in PostgreSQL: the queue's places are
        # for sync requests, whose clients wait on the connection (breaker 32 G3: a burst of jobs
        # took every place and each sync request was 429 until they had run)
        slot = None if stored else state.queue.try_reserve(idle_only=True)
        if not stored and slot is None:
            await _backlog_room(state)
        charged = False  # only what was charged is given back: a 429 refusal charged nothing
        try:
            if not stored:
                charged = await state.limits.charge_audio(key_id, seconds)
            if key is None:
                key = state.store.key_for(upload.sha256, upload.filename)
                await _db(state.store.put, key, upload.data, upload.content_type)
            options = upload.options
            try:
                job, created = await _db(
                    state.db.create_job, api_key_id=key_id, idempotency_key=idem,
                    sha256=upload.sha256, audio_key=key, audio_bytes=size,
                    duration=round(seconds, 3), options=options.__dict__,
                    options_key=state.transcriber.store_key(options, batched), done=bool(stored),
                    worker=state.settings.color, owner=state.owner if slot else None,
                    request_hash=upload.fingerprint(), bypass_store=bypass,
                    upload_id=upload_id, hold=state.settings.job_lease_seconds)
            except FileGone:  # its mark lapsed and the keeper is deleting it: no job, as for an unknown id
                raise _file_not_found(upload.file_id or "") from None
        except BaseException:
            if slot:
                slot.release()
            if charged:
                await state.limits.refund_audio(key_id, seconds)
            raise
        if not created:  # a concurrent twin with the same Idempotency-Key won the insert
            if slot:
                slot.release()
            if charged:
                await state.limits.refund_audio(key_id, seconds)
            return _replay(job, upload)
        metrics.JOBS.labels("deduplicated" if stored else "created").inc()
        if slot:
            slot.submit(run_job, state, str(job["id"]), key, upload.sha256, options, bypass)
        elif not stored:
            metrics.JOBS.labels("backlogged").inc()
            state.keeper.nudge()  # room may have freed since try_reserve
    log.info("job created", extra={"job_id": str(job["id"]), "deduplicated": bool(stored),
                                   "key_id": key_id})
    return JSONResponse(_job_body(job), status_code=200 if stored else 202,
                        headers={"Location": f"/v1/jobs/{job['id']}"})


def _replay(job: dict, upload: Upload) -> JSONResponse:
    """The first job made with this Idempotency-Key, if this request is the same request.

    A key reused with a request that differs in anything that changes the result (audio,
    model, response_format, language, prompt, temperature, timestamp granularities) is
    refused with 422, as the IETF Idempotency-Key draft (draft-ietf-httpapi-idempotency-key-
    header, section 2.7) and Stripe do. Rows made before the request was fingerprinted are
    compared on the audio alone.
    """
    same = (job["request_hash"] == upload.fingerprint() if job.get("request_hash")
            else job["audio_sha256"] == upload.sha256)
    if not same:
        raise APIError(422, "this Idempotency-Key was already used for a different request"
                       " (another file or other options); use a new key for a new request",
                       param="Idempotency-Key", code="idempotency_key_reused")
    return JSONResponse(_job_body(job), status_code=200,
                        headers={"Idempotent-Replayed": "true", "Location": f"/v1/jobs/{job['id']}"})


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request, response_format: str = "verbose_json"):
    """A job's status and, once it succeeded, its transcript in `response_format`."""
    state = _state(request)
    _jobs_enabled(state)
    key_id = await _admit(request)
    if response_format not in FORMATS:
        raise APIError(400, f"unknown response_format '{shown(response_format)}'; use one of "
                       + ", ".join(FORMATS), param="response_format", code="invalid_value")
    job = await _db(state.db.get_job, job_id, key_id)
    if job is None:
        raise APIError(404, f"no job {shown(job_id)}", param="job_id", code="job_not_found")
    return _job_body(job, response_format)
