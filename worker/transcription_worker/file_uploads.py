"""OpenAI-compatible Uploads API: large recordings in parts, each part its own S3 object.

    POST /v1/uploads                  {filename, bytes, mime_type, purpose} -> upload (pending)
         (an `Idempotency-Key` header: a retried create answers the upload the first made)
    POST /v1/uploads/{id}/parts       multipart field `data`              -> upload.part
    POST /v1/uploads/{id}/complete    {part_ids: [...], md5?}             -> upload (completed, file)
    POST /v1/uploads/{id}/cancel                                          -> upload (cancelled)
    POST /v1/uploads with "presign": true (and "part_size", default 8 MiB) -> upload with
         part_urls: presigned S3 PutObject URLs the client PUTs its parts to; GET and complete
         then list them in S3, and complete takes their ids as for any upload
    GET  /v1/uploads/{id}             the upload and the parts that arrived (to resume)

Shapes follow OpenAI's Uploads API (create an upload, add parts, complete it into a file).
Each part is stored as its own object, `{prefix}upload-parts/{upload_id}/{part_id}` (nothing
from the client reaches a key; a prefix no completed file shares, so a bucket lifecycle rule
expires what a crash left there; uploads made before it keep `{prefix}uploads/{upload_id}.parts/`,
the row's `parts_prefix` says which), sent with its SHA-256 for S3 to check; a part whose
SHA-256 this upload already holds is not stored again: the first part's id is returned. Parts
may arrive in any order and in parallel. `complete` takes any list of the upload's part ids,
in the file's order, an id repeated if its bytes repeat (long silence), as long as their
sizes add up to `bytes` and every part but the last holds at least 5 MiB (S3's minimum): it
makes an S3 multipart upload at its claim attempt's own key (`{prefix}uploads/{upload_id}`
for the first, `...{upload_id}-{n}` for the n-th: `_attempt_key`) and fills it with
UploadPartCopy of the listed part objects (server-side: no byte passes through the worker),
completes it, records that key as the file (`file_key`), then deletes the part objects.
Every holder first aborts the multipart uploads earlier attempts left open and deletes the
objects at their keys (`_clear_older_attempts`), and one whose end fails (it stalled past
its lease; another took over) deletes its own key alone: a stale holder never writes or
deletes the file another recorded. A complete retried after its worker died redoes the
assembly (the parts are still there); a finished assembly an earlier worker version left
unrecorded at `{prefix}uploads/{upload_id}` is recognised by its part list's fingerprint
(metadata `parts`) and recorded.
With the optional `md5`, the completed object is read back once, in 1 MiB pieces, for its MD5
and SHA-256; without it nothing is read back (each part was already checked by S3 against
its SHA-256), and the file's SHA-256 (the job's audio identity) is computed by the first job
made from it, which reads the file anyway. A job is made with `POST /v1/jobs` and `file_id`.
Rows live in PostgreSQL (`uploads`, `upload_parts`); each upload is private to its API key.
A part is admitted before a byte of its body is read (the worker's part memory, one key's
share of it, then the key's parts per minute, which only an admitted part spends), and its
body must keep arriving at a minimum rate (`_paced`).

No request and no keeper task holds a pooled database connection or a row lock across an S3
call. Ending an upload is three steps: a short transaction claims it (`claim`: completing,
cancelling or expiring, with an owner and a lease: WORKER_JOB_LEASE_SECONDS, at most 15 s), the S3 work
runs with no connection held while a thread renews the lease, and a second short
transaction ends it (`Database.end_upload`, only while the claim is still its owner's). A
complete or cancel finding another's live claim waits for it (polling, no connection held)
up to 30 s, then answers 409 `upload_busy` with Retry-After; parts are refused while a claim
is live; a claim whose worker died lapses and the next complete, cancel or expiry takes it
over (the fingerprint above makes a retried complete safe).
An upload not completed within WORKER_UPLOAD_EXPIRY_SECONDS (an hour, as OpenAI's) has its
part objects, any multipart upload and any object an unfinished complete assembled deleted
by the job keeper, then is marked `expired` (`abort_expired`: retried until S3 answers),
counted in `worker_uploads_expired_total`; each keeper tick also sets the gauges
`worker_uploads_incomplete` and `worker_uploads_oldest_incomplete_age_seconds` from the
database (`count_incomplete`), for the health check that warns when uploads pile up. The
keeper also removes what stale holders left at an ended upload's attempt keys (an object
that is not its recorded file, an open multipart upload: `sweep_orphans`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from . import metrics, units
from .db import PartsTooLarge
from .errors import APIError, shown, shown_all
from .uploads import no_control, too_large

log = logging.getLogger("transcription_worker")
MIB = units.MIB
S3_MIN_PART = 5 * MIB  # S3's smallest part but the last
router = APIRouter(prefix="/v1/uploads")


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value else None


def upload_body(row: dict, parts: list[dict] | None = None) -> dict[str, Any]:
    """An upload row as OpenAI's Upload object (epoch seconds; `file` once completed), with
    `parts` when given."""
    body: dict[str, Any] = {
        "id": row["id"], "object": "upload", "bytes": row["bytes"], "created_at": _ts(row["created_at"]),
        "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
        "expires_at": _ts(row["expires_at"]), "file": None,
    }
    if row["status"] == "completed":
        body["file"] = {"id": row["file_id"], "object": "file", "bytes": row["bytes"],
                        "created_at": _ts(row["completed_at"]), "filename": row["filename"],
                        "purpose": row["purpose"]}
    if parts is not None:
        body["parts"] = [part_body(p) for p in parts]
    return body


def part_body(part: dict) -> dict[str, Any]:
    """A part row as OpenAI's UploadPart object, plus its `bytes` and `sha256`. A part PUT to a
    presigned URL was never hashed here: its `sha256` is null and its S3 `etag` is given
    instead (its row keeps a placeholder, `s3:<n>:<etag>`, for the per-upload uniqueness the
    worker's own parts dedupe by; breaker 19 F6: the placeholder was shown as a SHA-256)."""
    body = {"id": part["id"], "object": "upload.part", "created_at": _ts(part["created_at"]),
            "upload_id": part["upload_id"], "bytes": part["bytes"], "sha256": part["sha256"]}
    if part["sha256"].startswith("s3:"):
        body["sha256"], body["etag"] = None, part["etag"]
    return body


async def _context(request: Request) -> tuple[Any, str, Any]:
    from .api import _admit, _db, _jobs_enabled

    state = request.app.state.worker
    _jobs_enabled(state)
    key_id = await _admit(request)
    return state, key_id, _db


async def _json(request: Request) -> dict:
    """The request's JSON object, or 400 `invalid_json`: not JSON, not an object, nested past
    Python's recursion limit (RecursionError, not a ValueError), or holding text no UTF-8 can
    carry (a lone surrogate such as "\\ud800" is valid JSON, RFC 8259 section 8.2, but
    PostgreSQL, S3 and every later encode refuse it)."""
    try:
        body = await request.json()
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the body holds text that is not valid Unicode (a lone surrogate escape)",
                       code="invalid_json") from None
    except (ValueError, RecursionError):
        raise APIError(400, "the body must be a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    return body


async def _pending(state: Any, db: Any, upload_id: str, key_id: str) -> dict:
    """The caller's upload (404 otherwise); one past `expires_at` reads as expired even
    before the keeper has aborted it."""
    row = await db(state.db.get_upload, upload_id, key_id) if _possible_id(upload_id) else None
    if row is None:
        raise APIError(404, f"no upload {shown(upload_id)}", param="upload_id", code="upload_not_found")
    if row["status"] == "pending" and row["expires_at"] <= datetime.now(timezone.utc):
        row = {**row, "status": "expired"}
    return row


# RFC 9110 media-type: type "/" subtype *( OWS ";" OWS token "=" ( token / quoted-string ) ),
# here only audio/* and video/*, printable ASCII alone (it becomes the file's Content-Type in
# S3: CR/LF or non-ASCII would be refused there at every complete). A regex of the RFC's
# grammar: email.headerregistry and werkzeug parse leniently (they accept and drop junk).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"(?:audio|video)/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[ !#-\[\]-~]*\"))*",
                         re.IGNORECASE)


@router.post("")
async def create_upload(request: Request):
    """Start an upload of `bytes` bytes (at most WORKER_MAX_UPLOAD_TOTAL_MB) of audio."""
    state, key_id, db = await _context(request)
    body = await _json(request)
    settings = state.settings
    filename, size = body.get("filename"), body.get("bytes")
    mime, purpose = body.get("mime_type"), body.get("purpose")
    if not isinstance(filename, str) or not filename.strip() or len(filename) > 255:
        raise APIError(400, "filename must be a non-empty string of at most 255 characters",
                       param="filename", code="invalid_value")
    no_control(filename, "filename")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise APIError(400, "bytes must be a positive integer", param="bytes", code="invalid_value")
    if size > settings.max_upload_total_bytes:
        shown, limit_shown = units.mib_against(size, settings.max_upload_total_bytes)
        raise APIError(413, f"an upload may hold at most {limit_shown} (WORKER_MAX_UPLOAD_TOTAL_MB,"
                       f" {settings.max_upload_total_bytes} bytes); this one is {shown} ({size} bytes)",
                       param="bytes", code="file_too_large")
    if not isinstance(mime, str) or len(mime) > 127 or not _MEDIA_TYPE.fullmatch(mime):
        raise APIError(400, "mime_type must be an audio (or video) media type of at most 127 characters,"
                       " e.g. audio/mpeg or audio/ogg; codecs=opus", param="mime_type", code="invalid_value")
    if not isinstance(purpose, str) or not purpose.strip():
        raise APIError(400, "purpose is required (e.g. \"transcription\")", param="purpose",
                       code="invalid_value")
    no_control(purpose, "purpose")
    if len(purpose) > 255:
        raise APIError(400, "purpose must be at most 255 characters", param="purpose", code="invalid_value")
    presign = body.get("presign", False)
    if not isinstance(presign, bool):
        raise APIError(400, "presign must be true or false", param="presign", code="invalid_value")
    part_size = body.get("part_size", 8 * MIB)
    if presign:
        if (not isinstance(part_size, int) or isinstance(part_size, bool)
                or not S3_MIN_PART <= part_size <= settings.max_part_bytes):
            raise APIError(400, f"part_size must be between {units.mib_limit(S3_MIN_PART)} (S3's minimum) and"
                           f" {units.mib_limit(settings.max_part_bytes)} (WORKER_MAX_PART_MB)", param="part_size",
                           code="invalid_value")
        if -(-size // part_size) > 10_000:
            raise APIError(400, "S3 takes at most 10,000 parts: raise part_size", param="part_size",
                           code="invalid_value")
    idem = no_control(request.headers.get("idempotency-key"), "Idempotency-Key") or None
    if idem and len(idem) > 255:
        raise APIError(400, "Idempotency-Key is longer than 255 characters",
                       param="Idempotency-Key", code="invalid_value")
    spec = (filename, size, mime, purpose, presign, part_size)
    fields = {"api_key_id": key_id, "filename": filename, "bytes": size, "mime_type": mime, "purpose": purpose,
              "status": "pending", "presigned": presign, "part_size": part_size if presign else None,
              "idempotency_key": idem}
    if idem:
        return await _create_once(state, db, key_id, idem, fields, spec)
    upload_id = f"upload_{secrets.token_hex(16)}"
    fields = _new_upload(state, upload_id, fields)
    await state.limits.open_upload(key_id, upload_id, settings.upload_expiry_seconds, size)
    row = None
    try:
        row = await db(state.db.create_upload, fields, settings.upload_expiry_seconds)
    finally:  # failed: no lease, no bytes charged left behind (S3 holds nothing for it yet)
        if row is None:
            await state.limits.close_upload(key_id, upload_id)
            await state.limits.refund_charge(upload_id)
    return await _created(state, db, row, part_size)


def _new_upload(state: Any, upload_id: str, fields: dict) -> dict:
    return {"id": upload_id, **fields, "s3_key": state.store.upload_key(upload_id),
            "parts_prefix": state.store.parts_prefix(upload_id)}


async def _create_once(state: Any, db: Any, key_id: str, idem: str, fields: dict, spec: tuple) -> dict[str, Any]:
    """An idempotent create (an Idempotency-Key): concurrent twins (a client retrying before
    the first answer came) all get one upload, or all the limits' refusal, never an upload the
    limits then refused. The first inserts the row claimed 'creating' (no part, no URL, no
    answer for it while so), then takes the limits (`open_upload`), then clears the claim
    (`creation_decided`) or, refused, deletes the row. A twin finding the row waits while the
    claim lives (polling, no connection held) and answers it once decided; finding it gone (the
    limits refused it) it tries the create itself, and the limits refuse it in turn unless they
    have room now. A 'creating' claim that lapsed is a dead worker's: its row is dropped and
    the lease and bytes its create took are given back (exactly what was charged, once:
    Limits.refund_charge), as they are when the store fails while deciding."""
    settings, lease = state.settings, _lease(state)
    deadline = time.monotonic() + _WAIT_SECONDS
    while True:
        row = await db(state.db.upload_by_idempotency_key, key_id, idem)
        if row is not None:
            _same_create(row, *spec)
            if row["claim"] != "creating" or row["status"] != "pending":
                return await _created(state, db, row, spec[-1])
            if row["claim_until"] <= datetime.now(timezone.utc):  # its worker died deciding:
                if await db(state.db.drop_creating, row["id"]):  # drop it, any lease and bytes it took
                    await state.limits.close_upload(key_id, row["id"])
                    await state.limits.refund_charge(row["id"])
                continue
            if time.monotonic() >= deadline:
                raise APIError(409, "a create with this Idempotency-Key is still at work; retry",
                               param="Idempotency-Key", code="upload_busy", retry_after=5)
            await asyncio.sleep(_POLL_SECONDS / 5)
            continue
        upload_id, owner = f"upload_{secrets.token_hex(16)}", f"{state.owner}/{secrets.token_hex(8)}"
        row = await db(state.db.create_upload, {**_new_upload(state, upload_id, fields), "claim": "creating",
                                                "claim_owner": owner}, settings.upload_expiry_seconds, lease)
        if row is None:  # a twin inserted first: read it
            continue
        try:
            await state.limits.open_upload(key_id, upload_id, settings.upload_expiry_seconds, spec[1])
        except BaseException:
            await db(state.db.drop_creating, upload_id, owner)
            raise
        try:
            row = await db(state.db.creation_decided, upload_id, owner)
        except BaseException:  # the store failed deciding (a restart, a failover): undo the
            # create if it is still ours to undo; else its claim lapses and whoever drops it
            # gives the lease and the bytes back (refund_charge: exactly once)
            with contextlib.suppress(Exception):
                if await db(state.db.drop_creating, upload_id, owner):
                    await state.limits.close_upload(key_id, upload_id)
                    await state.limits.refund_charge(upload_id)
            raise
        if row is not None:
            return await _created(state, db, row, spec[-1])
        # stalled past the claim (a twin dropped the row as a dead worker's and gave the
        # limits back, or will): nothing more to give back here than what refund_charge allows
        await state.limits.close_upload(key_id, upload_id)
        await state.limits.refund_charge(upload_id)


def _same_create(row: dict, filename: str, size: int, mime: str, purpose: str, presign: bool,
                 part_size: int) -> None:
    """422 when an Idempotency-Key is reused for another upload (as for jobs: IETF draft, Stripe):
    every field of the create body that changes its answer is compared (for a presigned upload
    its `part_size`, which cuts its part URLs; rows made before it was kept: not compared)."""
    kept = row.get("part_size")
    if (row["filename"], row["bytes"], row["mime_type"], row["purpose"], row["presigned"]) != (
            filename, size, mime, purpose, presign) or (presign and kept is not None and kept != part_size):
        raise APIError(422, "this Idempotency-Key was used for another upload; use a new key",
                       param="Idempotency-Key", code="idempotency_key_reused")


async def _created(state: Any, db: Any, row: dict, part_size: int) -> dict[str, Any]:
    """The answer to a create: the upload, and for a presigned one its part URLs (made anew
    for a retried create, from the part size it asked for), valid until the upload expires.
    A retried create is answered what GET answers (one past `expires_at` reads as expired,
    `_locked_status`), and URLs are made only while the upload is pending: never for an
    ended or expired one."""
    row = _locked_status(row, row["id"])
    body = upload_body(row)
    if row["presigned"] and row["status"] == "pending":
        size, part_size = row["bytes"], row.get("part_size") or part_size
        sizes = [min(part_size, size - n * part_size) for n in range(-(-size // part_size))]
        left = (row["expires_at"] - datetime.now(timezone.utc)).total_seconds()
        urls = await db(state.store.presign_part_puts, _parts_prefix(state.store, row), sizes, max(1, int(left)))
        body["part_urls"] = [{"part_number": n, "url": url, "bytes": b}
                             for n, (url, b) in enumerate(zip(urls, sizes), start=1)]
    return body


async def _sync_presigned(state: Any, db: Any, row: dict) -> None:
    """A presigned upload's parts are where the client PUT them: list them in S3."""
    if row["presigned"] and row["status"] == "pending":
        parts = await db(state.store.presigned_parts, _parts_prefix(state.store, row))
        await db(state.db.record_s3_parts, row["id"], parts)


def _legacy(row: dict) -> None:
    """An upload an earlier worker version made (one S3 multipart upload, parts by arrival)
    takes no new parts and no complete here; it may be cancelled or left to expire."""
    if row["s3_upload_id"]:
        raise APIError(400, f"upload {row['id']} was made by an earlier worker version; cancel it"
                       " and start a new upload", param="upload_id", code="upload_not_pending")


@router.post("/{upload_id}/parts")
async def add_part(upload_id: str, request: Request):
    """Add one part (form field `data`, at most WORKER_MAX_PART_MB; every part but the last at
    least 5 MiB, S3's minimum). A part this upload already holds is answered with its id.

    A part is admitted before a byte of its body is read: a multipart body, then one of the
    key's concurrent-upload slots, then its place in the part memory (`_part_memory`), and last
    the key's parts per minute, so a part another check refuses spends none of that budget.
    Its body must then keep arriving (`_paced`), or it is 408 and nothing is stored."""
    state, key_id, db = await _context(request)
    row = await _pending(state, db, upload_id, key_id)
    if row["status"] != "pending":
        raise APIError(400, f"upload {upload_id} is {row['status']}; parts go to pending uploads",
                       param="upload_id", code="upload_not_pending")
    if row["presigned"]:
        raise APIError(400, "this upload takes its parts at its presigned S3 URLs",
                       param="upload_id", code="upload_presigned")
    _legacy(row)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise APIError(400, "send the part as multipart/form-data with its bytes in the field `data`",
                       param="data", code="missing_data")
    # a part is a request carrying audio: it holds one of the key's concurrent-upload slots
    # (WORKER_RATE_LIMIT_CONCURRENT_UPLOADS) from its body's first byte to its S3 PUT, as a
    # transcription or job upload does, so parts sent at once are bounded like any upload
    async with state.limits.upload_slot(key_id), _part_memory(state, request, key_id) as release:
        await state.limits.check_parts_rate(key_id)  # last: only an admitted part counts
        return await _receive_part(state, db, request, upload_id, row, release)


# part bodies held right now, in bytes, by API key (this process; the event loop's thread alone)
_PARTS_IN_MEMORY: dict[str, int] = {}
# parts waiting for room in the part memory, in arrival order (`_room`): (token, bytes, key)
_WAITING: list[tuple[object, int, str]] = []
# when each key last had a part admitted (event loop time): room goes to the waiter of the key
# served longest ago, so keys that hold and keys that queue beside them cannot keep one out
_SERVED: dict[str, float] = {}
ROOM_WAIT_SECONDS = 10.0  # how long a part waits for room before 503 `server_busy`


def _held() -> int:
    """Bytes of part bodies held now, all keys together. Also read at scrape time from the
    scraper's thread: list() copies the values in one step under the GIL."""
    return sum(list(_PARTS_IN_MEMORY.values()))


metrics.PART_MEMORY.set_function(_held)
metrics.PARTS_WAITING.set_function(lambda: len(_WAITING))
# parts that may wait for room at once (beyond it 503 at once): each holds a connection and what
# the server buffered of its body outside the part memory, and each wait checks the line
# (breaker 24: 1,000 waiters, 153 MiB; 4,000, the worker's CPU at 62 %)
ROOM_QUEUE = 64


def _fits(size: int, budget: int) -> bool:
    """Whether a part of `size` bytes fits in the part memory now (one arriving when none is
    held always does, so a part larger than the budget still goes through alone)."""
    held = _held()
    return not held or held + size <= budget


def _first_in_line() -> tuple[object, int, str] | None:
    """The waiting part next in line: of the key whose last part was admitted longest ago (or
    never), the earliest. First come first served alone let four keys lock a fifth out: two
    holding, two queueing parts beside them, the queue's head was always theirs (breaker 24)."""
    if not _WAITING:
        return None
    return min(enumerate(_WAITING), key=lambda w: (_SERVED.get(w[1][2], 0.0), w[0]))[1]


def _pressed(budget: int) -> bool:
    """Whether a part waits for room that it does not have: the first in line does not fit."""
    first = _first_in_line()
    return first is not None and not _fits(first[1], budget)


async def _room(size: int, budget: int, key_id: str) -> None:
    """Wait, at most ROOM_WAIT_SECONDS, until a part of `size` bytes fits and it is first in
    line (`_first_in_line`: a holder sending its next part the instant one is answered does not
    jump the queue, breaker 23 F2); 503 `server_busy` then. While the first in line lacks room
    the rate floor rises (`_rate_floor`), so parts trickling in the memory make room, no more
    of them than it needs."""
    loop = asyncio.get_running_loop()
    me = (object(), size, key_id)
    _WAITING.append(me)
    deadline = loop.time() + ROOM_WAIT_SECONDS
    try:
        while not (_first_in_line() is me and _fits(size, budget)):
            if loop.time() >= deadline:
                raise _busy(f"this worker is receiving {units.mib_limit(budget)} of parts already and none made room"
                            f" within {units.seconds(ROOM_WAIT_SECONDS)}")
            await asyncio.sleep(0.05)
    finally:
        _WAITING.remove(me)


def _busy(why: str) -> APIError:
    """503 `server_busy`, Retry-After 2; the connection closed (the part's body, unread, is not
    read only to be thrown away: breaker 24)."""
    metrics.PARTS_REFUSED.labels("server_busy").inc()
    return APIError(503, f"{why}; send the part again shortly", code="server_busy", retry_after=2,
                    headers={"Connection": "close"})


def _share_refusal(mine: int, size: int, share: int) -> APIError:
    """429 `concurrent_uploads_exceeded`: the key's own parts in flight (`mine` bytes) hold its
    `share`, so this part of `size` bytes does not fit beside them (shown so that the part
    reads as larger than what is left: `units.mib_against`)."""
    metrics.RATE_LIMITED.labels("part_memory").inc()
    mine_shown, share_shown = units.mib_against(mine, share)
    size_shown, left_shown = units.mib_against(size, max(0, share - mine), limit_is_set=False)
    return APIError(429, f"this API key has {mine_shown} of parts on their way to this worker or waiting for"
                    f" room already, and may have {share_shown} (WORKER_PART_MEMORY_KEY_PERCENT of"
                    f" WORKER_PART_MEMORY_MB): this part's {size_shown} does not fit in the {left_shown} left;"
                    " send the part again once one of them is answered",
                    code="concurrent_uploads_exceeded", retry_after=2, headers={"Connection": "close"})


@contextlib.asynccontextmanager
async def _part_memory(state: Any, request: Request, key_id: str) -> AsyncIterator[Any]:
    """Hold the part's size (its Content-Length, at most WORKER_MAX_PART_MB; that limit
    without one, or with a chunked body whatever Content-Length says) against the part bodies
    this worker may hold in memory at once, before a byte is read, until the part is answered.
    A part is held whole (hashed, then PUT) and may be 64 MiB, so parts in parallel add up
    (issue 26).

    Two rules: one API key holds at most WORKER_PART_MEMORY_KEY_PERCENT of it, its parts held
    and waiting together (beyond it 429 `concurrent_uploads_exceeded` at once: the key's own
    parts are the cause), so a key with slow or stalled parts leaves the rest to other keys;
    and all keys together hold at most WORKER_PART_MEMORY_MB: a part that does not fit waits
    its turn for room (`_room`: the key served longest ago goes first; up to ROOM_WAIT_SECONDS,
    then 503 `server_busy`), and while it waits slow parts are shed (`_rate_floor`). A part
    arriving when its key holds and awaits nothing passes the share, and one
    arriving when the worker holds nothing passes the budget, so a part larger than either
    still goes through alone. Without API keys every caller is one key and the share does not
    apply. Both refusals say Retry-After 2. Yields a function that gives the memory back
    early (a part shed to make room gives it back the moment it is cut: `_paced`)."""
    settings = state.settings
    length = request.headers.get("content-length", "")
    # a chunked body is framed by its chunks, not by a Content-Length sent beside it (RFC 9112
    # 6.3): reserving that number let a part hold any size unreserved (breaker 23 F1)
    framed = length.isdigit() and "transfer-encoding" not in request.headers
    size = min(int(length), settings.max_part_bytes) if framed else settings.max_part_bytes
    budget = settings.part_memory_mb * MIB
    share = budget * settings.part_memory_key_percent // 100
    keyed = bool(settings.api_key_hashes)
    # the key's parts held and waiting count against its share: a waiter the share would refuse
    # once let in pressed the floor (an honest slow part was shed for it: breaker 24)
    mine = _PARTS_IN_MEMORY.get(key_id, 0) + sum(w[1] for w in _WAITING if w[2] == key_id)
    if keyed and mine and mine + size > share:
        raise _share_refusal(mine, size, share)
    if _WAITING or not _fits(size, budget):
        if len(_WAITING) >= ROOM_QUEUE:
            raise _busy(f"this worker is receiving {units.mib_limit(budget)} of parts already and {ROOM_QUEUE} more wait")
        await _room(size, budget, key_id)
    mine = _PARTS_IN_MEMORY.get(key_id, 0)
    _PARTS_IN_MEMORY[key_id] = mine + size
    _SERVED[key_id] = asyncio.get_running_loop().time()
    held = [size]

    def release() -> None:
        if held:
            _PARTS_IN_MEMORY[key_id] -= held.pop()
            if not _PARTS_IN_MEMORY[key_id]:
                del _PARTS_IN_MEMORY[key_id]

    try:
        yield release
    finally:
        release()


def _rate_floor(settings: Any) -> float:
    """The rate, in bytes per second, a part's body must keep now: WORKER_PART_MIN_RATE_KBPS,
    and, while a part waits for room it does not have (`_pressed`), rising with the part
    memory held from half held to WORKER_PART_BUSY_RATE_KBPS when all is held (as Apache
    mod_qos's QS_SrvMinDataRate raises its minimum with the connections). Parts trickling just
    above the floor could otherwise hold the whole part memory for hours, two keys' shares
    locking every other key out (breaker 21 F1); slow parts nobody waits for are never cut
    (two slow clients at 62 % shed each other in turn when the load alone raised the floor:
    breaker 23 F4)."""
    low = settings.part_min_rate_kbps * 1024
    budget = settings.part_memory_mb * MIB
    if not _pressed(budget):
        return low
    high = max(settings.part_busy_rate_kbps * 1024, low)
    held = _held() / budget
    return low + (high - low) * min(1.0, max(0.0, held - 0.5) * 2)


class _Cut(TimeoutError):
    """A part's body fell short of `rate` (bytes per second) over a window."""

    def __init__(self, rate: float):
        super().__init__(rate)
        self.rate = rate


async def _paced(stream: AsyncIterator[bytes], window: float, rate: Any,
                 on_cut: Any) -> AsyncIterator[bytes]:
    """`stream`'s chunks while the body keeps arriving: every `rate()` x `window` bytes received
    buy `window` seconds from the moment they are in; TimeoutError when a window passes short of
    them (the first window is the grace of the first bytes): `_Cut`, after `on_cut()` (the
    part's memory given back at once: two parts whose windows end together are not both shed
    for one that waits). `rate` is asked at each chunk and at the window's end (the floor
    rises while a part waits for room: `_rate_floor`). A part's memory is held from
    before its first byte, so a client that stalls, or sends a byte now and then (which keeps
    any idle timeout, the router's or a proxy's, from firing), would otherwise hold it for as
    long as it likes; a client sending steadily faster than `rate` is never cut off whatever
    the part's size, and bytes sent up front buy one window, not a stall of their own length
    (breaker 21 F1: time earned per byte, as Apache's mod_reqtimeout MinRate earns it, let
    2 MiB buy 9 minutes). Constant work per chunk."""
    loop = asyncio.get_running_loop()
    # the body is read by a task of its own into a one-chunk queue: a window that ends while a
    # read waits must not cancel it (that would end the request's body stream), where a wait on
    # the queue may be given up and taken again
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for chunk in stream:
                await queue.put(chunk)
        except Exception as exc:  # a client gone (ClientDisconnect): raised where it is read
            await queue.put(exc)
            return
        await queue.put(_END)

    pumping = asyncio.ensure_future(pump())
    mark, got = loop.time(), 0
    try:
        while True:
            left = mark + window - loop.time()
            if left <= 0:
                floor = rate()  # asked again at the end: it may have fallen (breaker 23 F3)
                if got < floor * window:
                    on_cut()
                    raise _Cut(floor)
                mark, got, left = loop.time(), 0, window
            try:
                async with asyncio.timeout(left):
                    item = await queue.get()
            except TimeoutError:
                continue  # the window ended: judged above
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            got += len(item)
            if got >= rate() * window:  # a window's worth is in: the next window starts now
                mark, got = loop.time(), 0
            yield item
    finally:
        pumping.cancel()


_END = object()  # `_paced`'s end of the body


async def _receive_part(state: Any, db: Any, request: Request, upload_id: str, row: dict,
                        release: Any) -> dict[str, Any]:
    """Read a part's body (paced by `_paced`: else 408 `request_timeout`, the connection closed
    and nothing stored), claim it (`Database.claim_part`) and PUT it to S3."""
    s = state.settings
    # Starlette's parser, told to keep the part in memory: it is read whole right after (to
    # hash it and hand it to S3), so spooling it to a temporary file past 1 MiB (the default,
    # one thread hop per 64 KiB written) only cost time. BodyLimit caps it at the part limit.
    body = _paced(request.stream(), s.part_body_timeout_seconds, lambda: _rate_floor(s), release)
    parser = MultiPartParser(request.headers, body, max_files=1, max_fields=4)
    parser.spool_max_size = s.max_part_bytes + 1024 * 1024
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise APIError(400, f"the part's form could not be read: {exc.message}", param="data",
                       code="invalid_value") from None
    except _Cut as exc:
        floor = exc.rate / 1024
        shed = floor > s.part_min_rate_kbps  # cut to make room for a part that waits: come back later
        metrics.PARTS_REFUSED.labels("shed" if shed else "too_slow").inc()
        now = units.against(floor, s.part_min_rate_kbps)[0]  # over the minimum: never reads as it
        busy = (f", and while other parts wait for this worker's part memory, over half held, up to"
                f" WORKER_PART_BUSY_RATE_KBPS ({s.part_busy_rate_kbps:g} KiB/s; {now} KiB/s now)") if shed else ""
        raise APIError(408, f"the part's body stopped arriving: it must keep coming at WORKER_PART_MIN_RATE_KBPS"
                       f" ({s.part_min_rate_kbps:g} KiB/s) or more over any WORKER_PART_BODY_TIMEOUT_SECONDS"
                       f" ({units.seconds_limit(s.part_body_timeout_seconds)}){busy}; nothing was stored, send the part"
                       " again (on a slow link one part at a time: parts in parallel divide it)",
                       param="data", code="request_timeout", headers={"Connection": "close"},
                       retry_after=int(s.part_body_timeout_seconds) if shed else None) from None
    try:
        part = form.get("data")
        if not isinstance(part, UploadFile):
            raise APIError(400, "a multipart `data` field with the part's bytes is required",
                           param="data", code="missing_data")
        data = await part.read()
    finally:
        await form.close()
    if not data:
        raise APIError(400, "the part is empty", param="data", code="invalid_value")
    if len(data) > state.settings.max_part_bytes:  # BodyLimit leaves room for the form around it
        raise too_large(state.settings.max_part_bytes, part=True, size=len(data))
    digest = await run_in_threadpool(hashlib.sha256, data)  # off the event loop: other parts keep flowing
    try:
        claimed, new = await run_in_threadpool(state.db.claim_part, upload_id, f"part_{secrets.token_hex(16)}",
                                               digest.hexdigest(), len(data))
    except LookupError as exc:  # ended, or being ended (completing, cancelling)
        raise APIError(400, f"upload {upload_id} is {exc}; parts go to pending uploads",
                       param="upload_id", code="upload_not_pending") from None
    except PartsTooLarge as exc:  # exact byte counts: the limit is the declared size, or twice it
        why = (f"is larger than the {exc.declared} bytes the upload was created for" if len(data) > exc.declared
               else f"would take the upload's parts ({exc.held} bytes held, parts on their way counted) past"
                    f" {2 * exc.declared} bytes, twice the {exc.declared} it was created for (each byte may be"
                    " sent twice)")
        raise APIError(413, f"this part of {len(data)} bytes {why}; start a new upload with the file's real size",
                       param="data", code="file_too_large") from None
    except Exception as exc:  # the database is away: the same 503 as every store call (api._db)
        log.warning("database call failed: %s", exc)
        raise APIError(503, "the job store is unavailable; retry later", code="store_unavailable",
                       retry_after=5) from None
    if not new:
        return part_body(claimed)
    key = state.store.part_key(_parts_prefix(state.store, row), claimed["id"])
    # a failed PUT leaves the claim unfinished (etag NULL): never listed nor counted, and a
    # re-send of the same bytes takes it over
    try:
        etag = await run_in_threadpool(state.store.put_checked, key, data,
                                       base64.b64encode(digest.digest()).decode())
    except Exception as exc:  # not stored: the claim no longer counts against the upload's bytes,
        # unless this re-send took over a claim whose first send may still land (it records it;
        # else the claim stops counting once it is WORKER's in-flight window old)
        if not claimed.get("taken_over"):
            await db(state.db.release_claim, claimed)
        log.warning("a part's S3 PUT failed: %s", exc, extra={"upload_id": upload_id})
        raise APIError(503, "the audio store (S3) did not take the part; send it again later",
                       code="audio_store_unavailable", retry_after=5) from None
    if not await db(state.db.stored_part, claimed["id"], etag):
        # the upload ended (complete, cancel, expiry) while this part was on its way, and
        # cleared its part objects before this one landed: clear it too
        await db(state.store.delete, key)
        raise APIError(400, f"upload {upload_id} ended while the part was sent; parts go to pending"
                       " uploads", param="upload_id", code="upload_not_pending")
    return part_body(claimed)


@router.post("/{upload_id}/complete")
async def complete_upload(upload_id: str, request: Request):
    """Assemble the listed parts into one file; their bytes must add up to the upload's
    `bytes`, and `md5` (hex), if given, must match the whole file. A short transaction claims
    the upload ('completing'), S3 assembles with no database connection held, a second short
    transaction records the result (`_claimed`); exactly one of complete, cancel and expiry
    ends a pending upload."""
    state, key_id, db = await _context(request)
    body = await _json(request)
    part_ids = body.get("part_ids")
    if not isinstance(part_ids, list) or not part_ids or not all(isinstance(p, str) for p in part_ids):
        raise APIError(400, "part_ids must be a non-empty list of part ids", param="part_ids",
                       code="invalid_value")
    md5 = body.get("md5")
    if md5 is not None and not (isinstance(md5, str) and re.fullmatch(r"[0-9a-fA-F]{32}", md5)):
        raise APIError(400, "md5 must be the file's MD5 as 32 hex digits", param="md5",
                       code="invalid_value")
    if len(part_ids) > 10_000:
        raise APIError(400, "a file is made of at most 10,000 parts (S3's limit)", param="part_ids",
                       code="invalid_value")
    row = await _pending(state, db, upload_id, key_id)
    await _sync_presigned(state, db, row)  # S3's listing, before any claim or lock
    request_fp = _complete_request(part_ids, md5)

    def decide(conn: Any, row: dict | None, owner: str) -> tuple[Any, Any]:
        row = _locked_status(row, upload_id)
        if row["status"] == "completed":
            # a retried complete is answered as the first was; another list or md5 would be
            # answered a file it does not describe (rows completed before this was kept: any)
            if row.get("complete_request") not in (None, request_fp):
                raise APIError(409, f"upload {upload_id} was completed with other part_ids or another"
                               " md5; its file is as that complete made it", param="part_ids",
                               code="upload_already_completed")
            return None, (row, None)
        if row["status"] != "pending":
            raise _not_pending(row)
        _legacy(row)
        stored = {p["id"]: p for p in state.db.parts(upload_id, conn)}
        _check_parts(row, part_ids, stored)
        sources = [_part_object(state.store, row, stored[p]) for p in part_ids]
        return ("completing", owner, _lease(state)), (_attempted(row), sources)

    row, sources, owner = await _claimed(state, db, upload_id, key_id, decide)
    if sources is None:  # completed before, by this same request (its worker may have died
        await state.limits.close_upload(key_id, upload_id)  # before Redis heard: free the lease)
        return upload_body(row)
    row = await db(_assemble, state, row, owner, sources, part_ids, md5, request_fp)
    if row["status"] == "cancelled":  # the md5 did not match: cancelled, and the object deleted
        await _ended_unfinished(state, key_id, row, row["stored"])
        raise APIError(400, "the assembled file does not match its md5 checksum; the upload is"
                       " cancelled, start a new one", param="md5", code="checksum_mismatch")
    await state.limits.close_upload(key_id, upload_id)
    log.info("upload completed", extra={"upload_id": upload_id, "bytes": row["bytes"], "key_id": key_id})
    return upload_body(row)


def _check_parts(row: dict, part_ids: list[str], stored: dict[str, dict]) -> None:
    """400 unless `part_ids` are this upload's stored parts, adding up to its `bytes`, every
    one but the last at least 5 MiB (S3's minimum part)."""
    unknown = [p for p in part_ids if p not in stored]
    if unknown:
        raise APIError(400, f"unknown part ids for this upload: {shown_all(unknown)}; list the ids the parts were"
                       " answered with (GET /v1/uploads/{id} lists them)", param="part_ids", code="invalid_value")
    total = sum(stored[p]["bytes"] for p in part_ids)
    if total != row["bytes"]:
        raise APIError(400, f"the parts hold {total} bytes; the upload was created for {row['bytes']}",
                       param="part_ids", code="invalid_value")
    small = [p for p in part_ids[:-1] if stored[p]["bytes"] < S3_MIN_PART]
    if small:
        raise APIError(400, f"every part but the last must hold at least {units.mib_limit(S3_MIN_PART)} (S3's minimum);"
                       f" {small[0]} holds {stored[small[0]]['bytes']} bytes", param="part_ids",
                       code="part_too_small")


def _lease(state: Any) -> float:
    """Seconds a claim on an upload holds unless renewed: WORKER_JOB_LEASE_SECONDS (as a job's),
    at most 15, so a complete retried after its worker died is taken over within the 30 s a
    request waits for a claim (`_claimed`) and answered, not told 409. Renewed every third."""
    return min(float(state.settings.job_lease_seconds), 15.0)


_WAIT_SECONDS = 30.0  # how long a complete or cancel waits for another's claim before 409
_POLL_SECONDS = 0.25


async def _claimed(state: Any, db: Any, upload_id: str, key_id: str, decide: Any) -> tuple[Any, ...]:
    """Claim an upload for this request: `decide(conn, row, owner)` runs in a short transaction
    under the row lock (`Database.claim_upload`) and returns (claim or None, value); returns
    (*value, owner). While another live claim holds the upload (a complete, cancel or expiry
    at work) this waits, polling with no connection held, up to _WAIT_SECONDS, then answers
    409 `upload_busy` with Retry-After; a lapsed claim (its worker died) is taken over."""
    if not _possible_id(upload_id):
        raise APIError(404, f"no upload {shown(upload_id)}", param="upload_id", code="upload_not_found")
    owner = f"{state.owner}/{secrets.token_hex(8)}"
    deadline = time.monotonic() + _WAIT_SECONDS

    def busy_or(conn: Any, row: dict | None) -> tuple[Any, Any]:
        # an expiry's claim is not waited for: the upload is past `expires_at` (`decide` says so)
        if row is not None and row["claimed"] and row["status"] == "pending" and row["claim"] != "expiring":
            return None, _BUSY
        return decide(conn, row, owner)

    while True:
        value = await db(state.db.claim_upload, upload_id, key_id, busy_or)
        if value is not _BUSY:
            return (*value, owner)
        if time.monotonic() >= deadline:
            raise APIError(409, f"upload {upload_id} is being completed or cancelled by another request;"
                           " retry, or GET it to see how it ended", param="upload_id", code="upload_busy",
                           retry_after=5)
        await asyncio.sleep(_POLL_SECONDS)


_BUSY = object()


@contextlib.contextmanager
def _holding(state: Any, upload_id: str, owner: str) -> Iterator[None]:
    """While the block runs (S3 work, no connection held), renew `owner`'s claim on the upload
    every third of the lease from a thread (one short statement each), so a live holder is
    never taken over; a dead one stops renewing and its claim lapses. On an exception the
    claim is given up at once, so a retry need not wait for the lease."""
    stop, lease = threading.Event(), _lease(state)

    def renew() -> None:
        while not stop.wait(lease / 3):
            try:
                if not state.db.renew_upload_claim(upload_id, owner, lease):
                    return
            except Exception as exc:  # the database away: the next renewal tries again
                log.warning("could not renew an upload's claim: %s", exc, extra={"upload_id": upload_id})

    renewer = threading.Thread(target=renew, name=f"claim-{upload_id}", daemon=True)
    renewer.start()
    try:
        yield
    except BaseException:
        try:
            state.db.drop_upload_claim(upload_id, owner)
        except Exception as exc:  # the claim lapses on its own
            log.warning("could not give up an upload's claim: %s", exc, extra={"upload_id": upload_id})
        raise
    finally:
        stop.set()


def _attempted(row: dict) -> dict:
    """The row as the claim being made leaves it: its `claim_attempt` one up (the holder's)."""
    return {**row, "claim_attempt": int(row["claim_attempt"]) + 1}


def _attempt_key(row: dict, attempt: int) -> str:
    """Where the complete of claim attempt `attempt` assembles: `s3_key` for the first,
    `{s3_key}-{attempt}` after. Each claim its own key: a holder that stalled past its lease
    (another took the upload over) never writes the key another's complete records."""
    return row["s3_key"] if attempt <= 1 else f"{row['s3_key']}-{attempt}"


def _clear_older_attempts(store: Any, row: dict, attempt: int) -> bool:
    """What the claims before attempt `attempt` may have left: abort their open multipart
    uploads first (a stalled holder's CompleteMultipartUpload then fails with NoSuchUpload),
    then delete the objects at their keys (one that completed before the abort). Never a later
    attempt's key (a later claim took this one over: its key may be the recorded file), nor a
    recorded file (a pending upload has none). True when an object was deleted."""
    base = row["s3_key"]
    older = re.compile(re.escape(base) + r"(?:-([0-9]+))?")

    def is_older(key: str, upto: int) -> bool:
        m = older.fullmatch(key)
        return bool(m) and int(m.group(1) or 1) < upto and key != row.get("file_key")

    # open multipart uploads at this attempt's own key too: only an earlier worker version
    # (which assembled at s3_key, attempt 1's key) left one there
    for mpu in store.multiparts(base):
        if is_older(mpu["Key"], attempt + 1):
            store.abort_multipart(mpu["Key"], mpu["UploadId"])
    deleted = False
    for obj in store.objects(base):
        if is_older(obj["Key"], attempt):
            store.delete(obj["Key"])
            deleted = True
    return deleted


def _still_holds(state: Any, row: dict, owner: str) -> bool:
    """Whether `owner` still holds its claim on the upload (renewing it): False once another
    took it over (this holder stalled past the lease) or it ended."""
    try:
        return bool(state.db.renew_upload_claim(row["id"], owner, _lease(state)))
    except Exception:  # the database away: assume held; end_upload decides
        return True


def _assemble(state: Any, row: dict, owner: str, sources: list[str], part_ids: list[str],
              md5: str | None, request_fp: str) -> dict:
    """The S3 work of a claimed complete (a thread, no database connection held across it):
    the upload's row as `end_upload` left it (completed, or cancelled on an md5 mismatch).

    The listed part objects are assembled into this claim attempt's own key (`_attempt_key`),
    after what earlier attempts left is cleared (`_clear_older_attempts`); `end_upload` records
    that key as the file, and only then are the part objects deleted (a kill before leaves them
    for a retried complete; a kill after, to the bucket's lifecycle rule). A holder that lost
    its claim meanwhile deletes what it assembled (its own key alone) and answers 409."""
    store, upload_id, attempt = state.store, row["id"], int(row["claim_attempt"])
    key = _attempt_key(row, attempt)
    with _holding(state, upload_id, owner):
        _clear_older_attempts(store, row, attempt)
        # attempt 1 assembles at s3_key, where an earlier worker version did: a finished
        # assembly of this same part list it left unrecorded (its `parts` fingerprint; its part
        # objects perhaps deleted already) is recorded as it is; anything else is overwritten
        there = store.head(key) if attempt == 1 else None
        try:
            if not (there and there[0] == row["bytes"] and there[1].get("parts") == _fingerprint(part_ids)):
                store.assemble(key, row["mime_type"], sources, {"parts": _fingerprint(part_ids)})
        except ClientError as exc:
            if not _still_holds(state, row, owner):  # the upload was taken over and ended
                raise _taken_over(upload_id) from None
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise APIError(400, "a listed part is no longer in S3 (expired by the bucket's lifecycle"
                               " rule?); cancel the upload and start a new one", param="part_ids",
                               code="invalid_value") from None
            # still this claim's, yet S3 failed the assembly: its multipart upload aborted by a
            # worker of the version before claims (blue-green: its cancel or complete aborts
            # what is open at `s3_key`, attempt 1's key, and its end then fails: the fence; S3
            # answers NoSuchUpload, moto 500), or S3 flaking: assemble once more
            log.warning("an upload's assembly failed while its claim held (aborted by a worker of an"
                        " earlier version?); assembling it again: %s", exc, extra={"upload_id": upload_id})
            store.assemble(key, row["mime_type"], sources, {"parts": _fingerprint(part_ids)})
        sha = None
        if md5:  # the client asked for the whole file to be checked: read it back once
            try:
                sha, actual_md5, size = store.digests(key)
            except Exception:  # noqa: BLE001 - NoSuchKey, or the read cut off mid-body
                # a holder stalled past its lease reads a key the new holder cleared (NoSuchKey):
                # taken over, as in the assembly, not a store failure (breaker 26 F2: 503)
                if not _still_holds(state, row, owner):
                    raise _taken_over(upload_id) from None
                raise
            if md5.lower() != actual_md5 or size != row["bytes"]:
                store.delete(key)
                return _ended(state, row, owner, "cancelled")
        ended = state.db.end_upload(upload_id, owner, "completed", f"file-{secrets.token_hex(12)}", sha,
                                    request_fp, key)
        if ended is None:  # stalled past the lease: another took over; this key is no one's file
            store.delete(key)
            raise _taken_over(upload_id)
        if key == row["s3_key"]:
            _reassemble_if_deleted(store, row, key, sources, part_ids)
    _delete_parts(store, row)  # parts not listed go too
    return ended


def _reassemble_if_deleted(store: Any, row: dict, key: str, sources: list[str], part_ids: list[str]) -> None:
    """After a complete recorded `s3_key` (attempt 1's key) as the file: make it again from the
    part objects (still there: deleted only after this) if it is gone. A worker of the version
    before claims (blue-green: both colors share the database and bucket) knows only that key:
    its cancel or expiry deletes the object there under its row lock, then its end statement
    fails (the fence, migration 11) and this end, which waited on that lock, is recorded. After
    the end no worker of either version touches the key. One HEAD per first-attempt complete."""
    try:
        if store.head(key) is not None:
            return
        log.warning("a completed upload's file was deleted before its end was recorded (a worker of an"
                    " earlier version?); assembling it again", extra={"upload_id": row["id"]})
        store.assemble(key, row["mime_type"], sources, {"parts": _fingerprint(part_ids)})
    except Exception as exc:  # S3 away, or its parts went too (an upload of the earlier layout):
        # the upload is completed either way; a job on a missing file fails saying so
        log.error("could not check or assemble again a completed upload's file: %s", exc,
                  extra={"upload_id": row["id"]})


def _delete_parts(store: Any, row: dict) -> None:
    """Delete an ended upload's part objects (by the one that ended it); a failure is logged:
    the bucket's lifecycle rule expires what is left under upload-parts/."""
    try:
        store.delete_prefix(_parts_prefix(store, row))
    except Exception as exc:
        log.warning("could not delete an ended upload's part objects: %s", exc, extra={"upload_id": row["id"]})


def _taken_over(upload_id: str) -> APIError:
    return APIError(409, f"upload {upload_id} was taken over by another request while this one"
                    " stalled; GET it to see how it ended", param="upload_id", code="upload_busy")


def _ended(state: Any, row: dict, owner: str, status: str, *args: Any) -> dict:
    """`end_upload` of a claimed upload; 409 when the claim was lost (this worker stalled past
    the lease and another took it over): the upload is as that one leaves it."""
    ended = state.db.end_upload(row["id"], owner, status, *args)
    if ended is None:
        raise _taken_over(row["id"])
    if status != "completed":
        _delete_parts(state.store, row)
    return ended


def _not_pending(row: dict) -> APIError:
    return APIError(400, f"upload {row['id']} is {row['status']}", param="upload_id",
                    code="upload_not_pending")


def _possible_id(upload_id: str) -> bool:
    """False for an id no upload can have (a control character: PostgreSQL keeps no NUL in
    text, so looking it up would fail as invalid input): answered 404 like any unknown id."""
    try:
        no_control(upload_id, "upload_id")
    except APIError:
        return False
    return True


def _locked_status(row: dict | None, upload_id: str) -> dict:
    if row is None:
        raise APIError(404, f"no upload {shown(upload_id)}", param="upload_id", code="upload_not_found")
    if row["status"] == "pending" and row["expires_at"] <= datetime.now(timezone.utc):
        return {**row, "status": "expired"}
    return row


def _parts_prefix(store: Any, row: dict) -> str:
    """Where the upload's part objects live: its `parts_prefix`, or for an upload made before
    part objects had a prefix of their own, `{s3_key}.parts/`."""
    return row.get("parts_prefix") or store.legacy_parts_prefix(row["s3_key"])


def _part_object(store: Any, row: dict, part: dict) -> str:
    """The S3 key of a part: by its id when it came through the worker, by its number when
    the client PUT it at a presigned URL."""
    name = f"n{part['part_number']:05d}" if row["presigned"] else part["id"]
    return store.part_key(_parts_prefix(store, row), name)


def _fingerprint(part_ids: list[str]) -> str:
    """What an assembly was made of (S3 metadata `parts` of the object): a retried complete
    recognises its own finished assembly by it."""
    return hashlib.sha256("\n".join(part_ids).encode()).hexdigest()


def _complete_request(part_ids: list[str], md5: str | None) -> str:
    """What a complete asked for (its parts' fingerprint and md5), kept on the completed row."""
    return f"{_fingerprint(part_ids)}:{md5.lower() if md5 else ''}"


def _drop_s3(store: Any, row: dict) -> bool:
    """Delete what an unfinished upload's earlier claims left in S3 before this claim (attempt
    `claim_attempt`) ends it: their multipart uploads and assembled objects (`_clear_older_attempts`),
    and an earlier version's multipart upload; the part objects go once the end is recorded
    (`_ended`). True when an assembled object was deleted."""
    if row["s3_upload_id"]:
        store.abort_multipart(row["s3_key"], row["s3_upload_id"])
    return _clear_older_attempts(store, row, int(row["claim_attempt"]))


def _cancel(state: Any, row: dict, owner: str) -> dict:
    """The S3 work of a claimed cancel (a thread, no connection held): drop what the upload
    holds, then mark it cancelled; returns the row with `stored`."""
    with _holding(state, row["id"], owner):
        _record_presigned(state, row)
        _drop_s3(state.store, row)
        return _ended(state, row, owner, "cancelled")


def _record_presigned(state: Any, row: dict) -> None:
    """A presigned upload ending unfinished: list the parts the client PUT (as GET does), so
    the bytes it never received (`_unreceived`) count what is in S3, not only what was listed."""
    if row["presigned"]:
        state.db.record_s3_parts(row["id"], state.store.presigned_parts(_parts_prefix(state.store, row)))


@router.post("/{upload_id}/cancel")
async def cancel_upload(upload_id: str, request: Request):
    """Delete the upload's part objects, free its lease and give back today's bytes it never
    received (a presigned upload's once its URLs expired: `sweep_presigned`); 400 unless it is
    pending (a complete at work is waited for, as in `_claimed`)."""
    state, key_id, db = await _context(request)

    def decide(conn: Any, row: dict | None, owner: str) -> tuple[Any, Any]:
        if row is not None and row["status"] in ("cancelled", "expired"):
            # ended before (not merely past its expiry): a retried cancel, its worker perhaps
            # killed before Redis heard; the keeper's expiry does Redis before its end
            return None, ({**row, "stored": state.db.stored_bytes(upload_id, conn)}, None)
        row = _locked_status(row, upload_id)
        if row["status"] != "pending":
            raise _not_pending(row)
        return ("cancelling", owner, _lease(state)), (_attempted(row), True)

    row, claimed, owner = await _claimed(state, db, upload_id, key_id, decide)
    if claimed:
        row = await db(_cancel, state, row, owner)
    # free the lease, refund what was never received: once per upload however often retried
    await _ended_unfinished(state, key_id, row, row["stored"])
    if not claimed:
        raise _not_pending(row)
    return upload_body(row)


def _unreceived(row: dict, stored: int) -> int:
    """The bytes an upload that ended without completing never received: what `open_upload`
    charged to its day (`bytes`) less what its parts stored. One rule for every such end
    (cancel, md5 mismatch at complete, expiry)."""
    return int(row["bytes"]) - min(int(stored), int(row["bytes"]))


async def _ended_unfinished(state: Any, key_id: str, row: dict, stored: int) -> None:
    """Free the lease of an upload that ended without completing (cancelled, md5 mismatch)
    and give back the day's bytes it never received (`_unreceived`). A presigned upload keeps
    both until `sweep_presigned`: its URLs can still deliver bytes until they expire, so it is
    still an unfinished upload of its key (a cancel freed its slot while its URLs still took
    parts, so a key could keep more uploads going than its limit)."""
    if row["presigned"]:
        return
    await state.limits.close_upload(key_id, row["id"])
    await state.limits.refund_upload_bytes(key_id, _unreceived(row, stored), row["created_at"].timestamp(),
                                           upload_id=row["id"])


@router.get("/{upload_id}")
async def get_upload(upload_id: str, request: Request):
    """The upload and the parts that arrived, in order: what a client resumes from. An ended
    upload (completed, cancelled, expired) lists none: their objects were deleted when it ended
    (and their rows: `Database.end_upload`), and a client resuming from the list would count
    on parts that are gone (breakers 21, 46 F3)."""
    state, key_id, db = await _context(request)
    row = await _pending(state, db, upload_id, key_id)
    await _sync_presigned(state, db, row)
    if row["status"] != "pending":
        return upload_body(row, [])
    return upload_body(row, await db(state.db.parts, upload_id))


def abort_expired(state: Any, limit: int = 20) -> int:
    """Expire uploads past `expires_at` (run by the job keeper), at most `limit` a tick: claim
    one ('expiring', `Database.claim_expired`: one short statement), delete what it holds in S3
    with no connection held (part objects, any multipart upload, an object a complete that
    never finished assembled), then mark it expired (`end_upload`), then give back the day's
    bytes it never received (`_unreceived`); returns how many were expired. S3 failing gives
    the claim back (the next tick retries); the worker dying leaves it claimed until the lease
    lapses, then any keeper takes it over: nothing is stranded and the refund is made once.
    Then sweeps presigned uploads that ended (`sweep_presigned`) and deletes ended uploads past
    their retention (`sweep_retired`)."""
    aborted, lease = 0, _lease(state)
    try:  # creates whose worker died before the limits decided: no upload; free any lease taken
        for dead in state.db.drop_lapsed_creating(limit):
            state.limits.close_upload_sync(dead["api_key_id"], dead["id"])
            state.limits.refund_charge_sync(dead["id"])  # what its create was charged, if anything
            log.info("a create its worker left undecided is dropped", extra={"upload_id": dead["id"]})
    except Exception as exc:  # the database away: the next pass tries again
        log.warning("could not drop undecided creates: %s", exc)
    for _ in range(limit):
        row = None
        owner = f"{state.owner}/{secrets.token_hex(8)}"
        try:
            row = state.db.claim_expired(owner, lease)
            if row is None:
                break
            with _holding(state, row["id"], owner):
                _record_presigned(state, row)
                deleted = _drop_s3(state.store, row)
                # Redis before the end: a keeper dying after the end leaves nothing to redo it
                # (the refund is once per upload, the lease's removal idempotent)
                if not row["presigned"]:  # a presigned one's: at `sweep_presigned`, URLs expired
                    state.limits.close_upload_sync(row["api_key_id"], row["id"])
                    state.limits.refund_upload_bytes_sync(
                        row["api_key_id"], _unreceived(row, state.db.stored_bytes(row["id"])),
                        row["created_at"].timestamp(), upload_id=row["id"])
                ended = state.db.end_upload(row["id"], owner, "expired")
            if ended is not None:
                _delete_parts(state.store, row)
        except Exception as exc:  # S3 (or the database) away: the next tick retries
            log.warning("could not abort an expired upload: %s", exc,
                        extra={"upload_id": row["id"] if row else None})
            break
        if ended is None:  # stalled past the lease: another keeper took it over and counts it
            continue
        metrics.UPLOADS_EXPIRED.inc()
        aborted += 1
        if deleted:
            metrics.UPLOADS_ASSEMBLED_DELETED.inc()
        log.info("expired upload aborted" + ("; the object an unfinished complete assembled is deleted"
                                             if deleted else ""), extra={"upload_id": row["id"]})
    sweep_presigned(state)
    sweep_retired(state)
    _start_orphan_sweep(state)
    return aborted


def sweep_presigned(state: Any) -> int:
    """Delete the part objects a client PUT at presigned URLs after its upload ended (complete
    and cancel cannot stop a URL), once the URLs have expired and a grace period for a PUT
    begun just before (a quarter of the upload expiry, at most 10 minutes) has passed;
    returns how many uploads were swept. Run by the job keeper, at the end of `abort_expired`.

    A presigned upload that ended unfinished (cancelled, expired, md5 mismatch) has its day's
    bytes given back and its open-upload lease freed here, not at its end: until its URLs
    expire they can still deliver every byte it was charged for. What landed is counted first (the parts listed at its end and
    the objects PUT since, by part number: `record_s3_parts`), and only the bytes that never
    landed (`_unreceived`) are given back, once per upload."""
    grace = min(600.0, float(state.settings.upload_expiry_seconds) / 4)
    swept = 0
    for row in state.db.unswept_presigned(grace):
        prefix = _parts_prefix(state.store, row)
        try:
            if row["status"] != "completed":
                state.db.record_s3_parts(row["id"], state.store.presigned_parts(prefix))
                state.limits.refund_upload_bytes_sync(
                    row["api_key_id"], _unreceived(row, state.db.stored_bytes(row["id"])),
                    row["created_at"].timestamp(), upload_id=row["id"])
                state.limits.close_upload_sync(row["api_key_id"], row["id"])  # its URLs are dead now
            if state.store.delete_prefix(prefix):
                log.info("part objects PUT after the upload ended are deleted", extra={"upload_id": row["id"]})
        except Exception as exc:  # S3 (or the database) away: the next tick tries again
            log.warning("could not sweep a presigned upload's parts: %s", exc, extra={"upload_id": row["id"]})
            continue
        state.db.mark_swept(row["id"])
        swept += 1
    return swept


def sweep_retired(state: Any, limit: int = 20) -> int:
    """Delete uploads that ended more than WORKER_UPLOAD_RETENTION_HOURS ago (0: kept), at most
    `limit` a pass (run by the job keeper, after `sweep_presigned`): each is marked first
    (`Database.claim_retired`: no new job can take its file from then on; one a queued or
    running job reads is not taken), then what it left in S3 is deleted (its file, any claim
    attempt's key or multipart upload, stray part objects), then its row (its part rows with
    it). S3 before the row: a failure leaves the row marked and the next pass tries again, so
    nothing in S3 outlives its row. Returns how many uploads were deleted; each is counted in
    `worker_uploads_retired_total`."""
    hours = float(state.settings.upload_retention_hours)
    if hours <= 0:
        return 0
    store, retired = state.store, 0
    try:
        rows = state.db.claim_retired(hours * 3600, limit)
    except Exception as exc:  # the database away: the next pass tries again
        log.warning("could not find uploads past their retention: %s", exc)
        return 0
    for row in rows:
        try:
            for mpu in store.multiparts(row["s3_key"]):  # a complete killed mid-assembly
                store.abort_multipart(mpu["Key"], mpu["UploadId"])
            # `{prefix}uploads/upload_<id>`: its file, its claim attempts' keys, and the part
            # objects of the earlier layout (`.parts/`); ids are all one length, so no other's
            store.delete_prefix(row["s3_key"])
            store.delete_prefix(_parts_prefix(store, row))  # what the bucket's lifecycle rule has not expired yet
            if not state.db.delete_upload(row["id"]):
                continue
        except Exception as exc:  # S3 or the database away: still marked, the next pass retries
            log.warning("could not delete an upload past its retention: %s", exc, extra={"upload_id": row["id"]})
            continue
        metrics.UPLOADS_RETIRED.inc()
        retired += 1
        log.info("an upload past its retention is deleted", extra={"upload_id": row["id"],
                                                                 "upload_status": row["status"]})
    return retired


_EXPIRY: dict[str, Any] = {"thread": None}  # this process's expiry pass at work, if any


def start_expiry(state: Any) -> bool:
    """Run `abort_expired` (then `sweep_presigned`, `sweep_retired` and the orphan sweep) on a
    thread of its own unless the last pass is still at work; called by the job keeper each tick, so the
    keeper's lease renewals never wait on the expiry's S3 calls: S3 hanging stalls the expiry
    alone (one pass at a time, each at most `abort_expired`'s `limit` uploads). True when a
    pass was started."""
    running = _EXPIRY["thread"]
    if running is not None and running.is_alive():
        return False

    def run() -> None:
        try:
            abort_expired(state)
        except Exception as exc:  # the database away: the next tick's pass tries again
            log.warning("could not expire uploads: %s", exc)

    _EXPIRY["thread"] = threading.Thread(target=run, name="upload-expiry", daemon=True)
    _EXPIRY["thread"].start()
    return True


_ATTEMPT_OBJECT = re.compile(r"(upload_[0-9a-f]{32})(?:-[1-9][0-9]*)?")
# this process's place in the listing, when it sweeps next, the thread sweeping
_ORPHAN_SWEEP: dict[str, Any] = {"after": "", "next": 0.0, "thread": None}


def _start_orphan_sweep(state: Any) -> None:
    """Run `sweep_orphans` on a thread of its own when it is due and none is running, so the
    keeper (lease renewals, expiry claims) never waits on the sweep's S3 listing: S3 hanging
    stalls the sweep alone."""
    running = _ORPHAN_SWEEP["thread"]
    if (running is not None and running.is_alive()) or time.monotonic() < _ORPHAN_SWEEP["next"]:
        return
    _ORPHAN_SWEEP["thread"] = threading.Thread(target=sweep_orphans, args=(state,), name="upload-sweep",
                                               daemon=True)
    _ORPHAN_SWEEP["thread"].start()


def sweep_orphans(state: Any, page: int = 1000) -> int:
    """Delete what holders left in S3 after their upload ended, under `{prefix}uploads/`: an
    object at a claim attempt's key (`_attempt_key`) that is not the upload's recorded file
    (a stalled complete killed between its late CompleteMultipartUpload and its failed end
    leaves one: no one else ever clears an ended upload's keys), and any multipart upload
    still open at one of its keys. Returns how many objects and multipart uploads it removed.

    Only uploads that ended (completed, cancelled, expired) are judged; a pending upload's
    keys are its holders' (a live claim's work in progress), cleared by its own end
    (`_clear_older_attempts`); a key with no upload row is left alone. The recorded file
    (`file_key`, or `s3_key` for uploads completed before it was kept) is never touched. A
    stale holder still at work whose key is deleted or multipart upload aborted is one whose
    end fails anyway (it deletes its key itself); one that lands later is found by a later pass.
    Started by the job keeper (end of `abort_expired`) on a thread of its own
    (`_start_orphan_sweep`), at most once per claim lease, one listing
    page (`page` keys) a pass, carrying on after the last key next pass and from the start once
    the listing ended, so every key is visited however many completed files the bucket holds.
    Each removal is counted in `worker_uploads_swept_total{kind="object"|"multipart"}`."""
    now = time.monotonic()
    if now < _ORPHAN_SWEEP["next"]:
        return 0
    _ORPHAN_SWEEP["next"] = now + _lease(state)
    store, removed = state.store, 0
    prefix = store.uploads_prefix()
    try:
        objects, after = store.objects_page(prefix, _ORPHAN_SWEEP["after"], page)
        found = [("object", o["Key"], None) for o in objects]
        found += [("multipart", u["Key"], u["UploadId"]) for u in store.multiparts(prefix)]
        owners = {}
        for kind, key, mpu in found:
            m = _ATTEMPT_OBJECT.fullmatch(key[len(prefix):])
            if m:
                owners.setdefault(m.group(1), []).append((kind, key, mpu))
        rows = state.db.upload_files(list(owners)) if owners else {}
        for upload_id, keys in owners.items():
            row = rows.get(upload_id)
            if row is None or row["status"] == "pending":
                continue
            base = row["s3_key"]
            for kind, key, mpu in keys:
                if key != base and not (key.startswith(base + "-") and key[len(base) + 1:].isdigit()):
                    continue  # not this upload's own key (another prefix)
                if kind == "multipart":
                    store.abort_multipart(key, mpu)
                elif key != row["file"]:
                    store.delete(key)
                else:
                    continue
                removed += 1
                metrics.UPLOADS_SWEPT.labels(kind).inc()
                log.info(f"an ended upload's stray {'multipart upload' if kind == 'multipart' else 'object'}"
                         " is removed", extra={"upload_id": upload_id, "key": key})
        _ORPHAN_SWEEP["after"] = after  # a failed pass is redone from where it began
    except Exception as exc:  # S3 or the database away: the next pass tries again
        log.warning("could not sweep ended uploads' stray objects: %s", exc)
    return removed


def count_incomplete(state: Any) -> None:
    """Set the incomplete-upload gauges from the database (run by the job keeper each tick)."""
    count, age = state.db.incomplete_uploads()
    metrics.UPLOADS_INCOMPLETE.set(count)
    metrics.UPLOADS_OLDEST_AGE.set(round(age, 3))
