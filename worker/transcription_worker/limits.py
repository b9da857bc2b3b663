"""Per-API-key limits kept in Redis, so every worker process (blue and green alike) shares them.

Three limits, each 0 = off: requests per minute (a moving one-minute window, from the
`limits` library, so a burst across a minute boundary cannot reach twice the limit), uploads in flight
at once (a lease per request carrying audio, held and renewed for the life of the request,
in a sorted set of lease deadlines: the standard Redis counting semaphore, so the slot of
a worker killed mid-upload frees itself when its lease runs out), and audio seconds per
UTC day (checked and charged atomically by a Lua script before the model runs, refunded if
the transcription does not happen). Exceeding one answers 429 with a Retry-After header.
Without WORKER_REDIS_URL the limits are off. If Redis is down, requests are let through
(the limits protect capacity; they must not take the service down with them) and /readyz
reports Redis as failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from . import metrics, units
from .errors import APIError

log = logging.getLogger("transcription_worker")

# refund an upload's unreceived bytes once: KEYS[1] the upload's charge record (_CHARGE),
# KEYS[2] its refund-once marker; ARGV[1] the bytes to give back, ARGV[2] the marker's TTL in
# seconds. What is given back is at most what was charged, to the day it was charged, and
# nothing when nothing was (breaker 46 F1: a worker with the limit on refunded an upload a
# worker without it had created, uncharged, and the key's counter went below zero)
_REFUND_ONCE = """
local charged = redis.call('GET', KEYS[1])
if not charged then return false end
local sep = string.find(charged, '|', 1, true)
local amount = math.min(tonumber(ARGV[1]), tonumber(string.sub(charged, sep + 1)))
if amount <= 0 then return false end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return redis.call('INCRBYFLOAT', string.sub(charged, 1, sep - 1), -amount)
end
return false
"""

# KEYS[1] the day's byte counter, KEYS[2] the upload's charge record: what was charged to
# which day, so a create that never became an upload gives back exactly that (_REFUND_CHARGE)
_CHARGE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, tostring(used)} end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
redis.call('SET', KEYS[2], KEYS[1] .. '|' .. ARGV[1], 'EX', 172800)
return {1, tostring(used)}
"""

# KEYS[1] the day's audio-seconds counter: _CHARGE without a charge record (a job's seconds are
# given back by the request that charged them, which knows what it charged)
_CHARGE_AUDIO = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, tostring(used)} end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return {1, tostring(used)}
"""

# KEYS[1] an upload's charge record, KEYS[2] its refund-once marker (shared with _REFUND_ONCE):
# give back what _CHARGE recorded, once; nothing when nothing was charged
_REFUND_CHARGE = """
local charged = redis.call('GET', KEYS[1])
if not charged then return false end
redis.call('DEL', KEYS[1])
local sep = string.find(charged, '|', 1, true)
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('INCRBYFLOAT', string.sub(charged, 1, sep - 1), -tonumber(string.sub(charged, sep + 1)))
end
return false
"""


# Counting semaphore: KEYS[1] is a sorted set holder -> lease deadline (ms, Redis' clock, so
# workers' clocks need not agree). Expired leases are dropped first; a holder gets a lease only
# while fewer than ARGV[1] live ones exist (1), else the answer is minus the milliseconds until
# the first lease ends on its own (what waiting helps). Each lease expires on its own, so no
# request can extend another's, and the set itself expires after the longest lease: its TTL is
# only ever lengthened (breaker 57 F5: a lease shorter than those held, after the upload expiry
# was lowered or from the other color of a deploy, cut the set's TTL to its own, and the set
# vanished with every longer lease in it: a key of limit 3 then held 7 open uploads).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return -math.max(1, tonumber(first[2]) - now)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1])) end
return 1
"""


def _seconds_to_utc_midnight(now: float) -> int:
    return int(86400 - now % 86400) + 1


class Limits:
    """The per-key limits of one worker process over the shared Redis at `url` (None: all off).
    Each limit given as 0 is off; refusals raise APIError 429 with Retry-After; a Redis
    error lets the request through (logged)."""

    def __init__(self, url: str | None, rpm: int, concurrent_uploads: int, daily_audio_seconds: int,
                 upload_lease_seconds: float = 60, open_uploads: int = 0, parts_per_minute: int = 0,
                 daily_upload_mb: int = 0):
        self.redis = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2) if url else None
        self._url = url
        self.rpm, self.uploads, self.daily = rpm, concurrent_uploads, daily_audio_seconds
        self.lease_ms = max(1, int(upload_lease_seconds * 1000))
        self._charge = self.redis.register_script(_CHARGE) if self.redis else None
        self._charge_audio = self.redis.register_script(_CHARGE_AUDIO) if self.redis else None
        self._acquire = self.redis.register_script(_ACQUIRE) if self.redis else None
        self._renew = self.redis.register_script(_RENEW) if self.redis else None
        self.open_uploads, self.parts_per_minute, self.daily_upload_mb = (
            open_uploads, parts_per_minute, daily_upload_mb)
        self._per_minute = RateLimitItemPerMinute(rpm) if rpm else None
        self._parts_item = RateLimitItemPerMinute(parts_per_minute, namespace="PARTS") if parts_per_minute else None
        self._window = MovingWindowRateLimiter(RedisStorage(
            "async+" + url, implementation="redispy", key_prefix="worker:rpm", socket_timeout=2,
            socket_connect_timeout=2)) if url and (rpm or parts_per_minute) else None

    async def ping(self) -> bool:
        """True when Redis answers (False when limits are off); raises when it is unreachable."""
        return bool(self.redis and await self.redis.ping())

    async def close(self) -> None:
        """Close the Redis connections."""
        if self.redis:
            await self.redis.aclose()

    async def check_parts_rate(self, key_id: str) -> None:
        """Count one /v1/uploads part against the key's parts per minute (a moving window, like
        requests); 429 `rate_limit_exceeded` when over. A hit is never given back, so the parts
        handler calls it last, once every other check has admitted the part: a part refused
        for another reason (429, 503, a bad request) spends nothing."""
        if not (self._window and self._parts_item):
            return
        try:
            if await self._window.hit(self._parts_item, key_id):
                return
            reset_at = (await self._window.get_window_stats(self._parts_item, key_id)).reset_time
        except RedisError as exc:
            log.warning("parts limit skipped, redis unavailable: %s", exc)
            return
        metrics.RATE_LIMITED.labels("parts_per_minute").inc()
        raise APIError(429, f"at most {self.parts_per_minute} upload parts per minute per API key",
                       code="rate_limit_exceeded", retry_after=max(1, int(reset_at - time.time()) + 1))

    async def open_upload(self, key_id: str, upload_id: str, seconds: float, size: int) -> None:
        """Count a new /v1/uploads upload against the key's open uploads (a lease that ends at
        the upload's expiry, or when it is completed or cancelled) and its bytes per UTC day."""
        if not self.redis:
            return
        try:
            if self.open_uploads:
                got = await self._acquire(keys=[f"worker:open-uploads:{key_id}"],
                                          args=[self.open_uploads, int(seconds * 1000), upload_id])
                if int(got) <= 0:  # a slot frees itself only when the key's oldest upload expires
                    metrics.RATE_LIMITED.labels("open_uploads").inc()
                    raise APIError(429, f"at most {self.open_uploads} unfinished uploads per API key;"
                                   " complete or cancel one (a cancelled presigned upload counts until its"
                                   " part URLs expire)", code="concurrent_uploads_exceeded",
                                   retry_after=math.ceil(-int(got) / 1000))
            if self.daily_upload_mb:
                day = f"worker:upload-bytes:{key_id}:{time.strftime('%Y%m%d', time.gmtime())}"
                ok, used = await self._charge(keys=[day, f"worker:upload-charged:{upload_id}"],
                                              args=[size, self.daily_upload_mb * 1024 * 1024])
                if not int(ok):
                    await self.close_upload(key_id, upload_id)
                    metrics.RATE_LIMITED.labels("daily_upload_bytes").inc()
                    raise APIError(429, f"daily upload limit of {self._upload_refusal(float(used), size)}"
                                   " (WORKER_RATE_LIMIT_DAILY_UPLOAD_MB)", code="daily_upload_limit_exceeded",
                                   retry_after=_seconds_to_utc_midnight(time.time()))
        except RedisError as exc:
            log.warning("upload limits skipped, redis unavailable: %s", exc)

    def _upload_refusal(self, used: float, size: int) -> str:
        """What the daily upload limit refused: "60 MiB for this API key: 44 MiB used today, and
        this upload's 20 MiB is more than the 16 MiB left", each figure shown against the one
        it is held against (`units.mib_against`), so the used bytes never read as the limit
        when under it, nor the upload as fitting in what is left."""
        limit = self.daily_upload_mb * units.MIB
        used_shown, limit_shown = units.mib_against(used, limit)
        size_shown, left_shown = units.mib_against(size, max(0.0, limit - used), limit_is_set=False)
        return (f"{limit_shown} for this API key: {used_shown} used today, and this upload's {size_shown}"
                f" is more than the {left_shown} left")

    async def refund_upload_bytes(self, key_id: str, size: int, day: float | None = None,
                                  upload_id: str | None = None) -> None:
        """Give back `size` bytes `open_upload` charged to the UTC day of `day` (epoch seconds;
        None: today): an upload never created after all, or the bytes a cancelled or expired
        upload never received. With `upload_id`, at most once per upload (a marker set in the
        same Lua script, kept two days): a retried cancel or a taken-over end refunds nothing more."""
        if self.redis and size > 0 and (upload_id is not None or self.daily_upload_mb):
            with contextlib.suppress(RedisError):
                if upload_id is None:
                    await self.redis.incrbyfloat(self._bytes_day_key(key_id, day), -int(size))
                else:  # by its charge record, whatever this worker's own settings (another may have charged it)
                    await self.redis.eval(_REFUND_ONCE, 2, f"worker:upload-charged:{upload_id}",
                                          f"worker:upload-refunded:{upload_id}", int(size), 2 * 86400)

    async def refund_charge(self, upload_id: str) -> None:
        """Give back the bytes `open_upload` charged for `upload_id`, exactly, once, and nothing
        when it charged none (limits off, Redis away then, or refused): for a create that never
        became an upload (its row dropped while 'creating'), whichever worker drops it."""
        if self.redis:
            with contextlib.suppress(RedisError):
                await self.redis.eval(_REFUND_CHARGE, 2, f"worker:upload-charged:{upload_id}",
                                      f"worker:upload-refunded:{upload_id}", 2 * 86400)

    def refund_charge_sync(self, upload_id: str) -> None:
        """`refund_charge` for a thread without an event loop (the job keeper)."""
        if self._url:
            import redis

            with contextlib.suppress(RedisError), redis.Redis.from_url(
                    self._url, socket_timeout=2, socket_connect_timeout=2) as client:
                client.eval(_REFUND_CHARGE, 2, f"worker:upload-charged:{upload_id}",
                            f"worker:upload-refunded:{upload_id}", 2 * 86400)

    def refund_upload_bytes_sync(self, key_id: str, size: int, day: float | None = None,
                                 upload_id: str | None = None) -> None:
        """`refund_upload_bytes` for a thread without an event loop (the job keeper's expiry, a
        cancel's S3 thread)."""
        if self._url and size > 0 and (upload_id is not None or self.daily_upload_mb):
            import redis

            with contextlib.suppress(RedisError), redis.Redis.from_url(
                    self._url, socket_timeout=2, socket_connect_timeout=2) as client:
                if upload_id is None:
                    client.incrbyfloat(self._bytes_day_key(key_id, day), -int(size))
                else:
                    client.eval(_REFUND_ONCE, 2, f"worker:upload-charged:{upload_id}",
                                f"worker:upload-refunded:{upload_id}", int(size), 2 * 86400)

    def close_upload_sync(self, key_id: str, upload_id: str) -> None:
        """`close_upload` for a thread without an event loop."""
        if self._url:  # whatever this worker's settings: another may have taken the lease
            import redis

            with contextlib.suppress(RedisError), redis.Redis.from_url(
                    self._url, socket_timeout=2, socket_connect_timeout=2) as client:
                client.zrem(f"worker:open-uploads:{key_id}", upload_id)

    @staticmethod
    def _bytes_day_key(key_id: str, day: float | None) -> str:
        return f"worker:upload-bytes:{key_id}:{time.strftime('%Y%m%d', time.gmtime(day))}"

    async def close_upload(self, key_id: str, upload_id: str) -> None:
        """Free the open-upload lease of `upload_id` (completed, cancelled or never created)."""
        if self.redis:  # whatever this worker's settings: another may have taken the lease
            with contextlib.suppress(RedisError):
                await self.redis.zrem(f"worker:open-uploads:{key_id}", upload_id)

    async def check_rate(self, key_id: str) -> None:
        """Count one request against the key's requests per minute; 429 `rate_limit_exceeded`
        when over."""
        if not (self._window and self._per_minute):
            return
        try:
            if await self._window.hit(self._per_minute, key_id):
                return
            reset_at = (await self._window.get_window_stats(self._per_minute, key_id)).reset_time
        except RedisError as exc:
            log.warning("rate limit skipped, redis unavailable: %s", exc)
            return
        metrics.RATE_LIMITED.labels("requests_per_minute").inc()
        raise APIError(429, f"rate limit of {self.rpm} requests per minute reached for this"
                       " API key", code="rate_limit_exceeded",
                       retry_after=max(1, int(reset_at - time.time()) + 1))

    @contextlib.asynccontextmanager
    async def upload_slot(self, key_id: str) -> AsyncIterator[None]:
        """Hold one of the key's concurrent-upload slots for the body of the `async with`.

        The slot is a lease renewed every third of `upload_lease_seconds` while held and
        removed on exit; if this process dies, the lease simply runs out.
        """
        if not (self.redis and self.uploads):
            yield
            return
        name, holder = f"worker:uploads:{key_id}", uuid.uuid4().hex
        try:
            got = await self._acquire(keys=[name], args=[self.uploads, self.lease_ms, holder])
        except RedisError as exc:
            log.warning("upload limit skipped, redis unavailable: %s", exc)
            yield
            return
        if int(got) <= 0:
            metrics.RATE_LIMITED.labels("concurrent_uploads").inc()
            raise APIError(429, f"at most {self.uploads} uploads at once per API key",
                           code="concurrent_uploads_exceeded", retry_after=1)
        renewer = asyncio.create_task(self._keep(name, holder))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(RedisError):
                await self.redis.zrem(name, holder)

    async def _keep(self, name: str, holder: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self._renew(keys=[name], args=[self.lease_ms, holder])
            except RedisError as exc:  # keep trying: the lease outlives a short outage
                log.warning("could not renew an upload lease: %s", exc)

    def _day_key(self, key_id: str) -> str:
        return f"worker:audio:{key_id}:{time.strftime('%Y%m%d', time.gmtime())}"

    async def charge_audio(self, key_id: str, seconds: float) -> bool:
        """Charge `seconds` of audio to the key's UTC day, atomically; 429
        `daily_audio_limit_exceeded` (nothing charged) when it would pass the limit. Returns
        whether it charged (False: no limit, or Redis away): only a charge is ever refunded
        (refund_audio), never a refusal nor a skipped charge."""
        if not (self.redis and self.daily):
            return False
        try:
            ok, used = await self._charge_audio(keys=[self._day_key(key_id)], args=[seconds, self.daily])
        except RedisError as exc:
            log.warning("audio limit skipped, redis unavailable: %s", exc)
            return False
        if int(ok):
            return True
        used = float(used)
        file_shown, left_shown = units.seconds_against(seconds, max(0.0, self.daily - used),
                                                           limit_is_set=False)
        raise self._audio_refused(used, f"; this file's {file_shown} is more than the {left_shown} left")

    async def check_audio_left(self, key_id: str) -> None:
        """429 `daily_audio_limit_exceeded` when the key's UTC day is used up already, before a
        file is fetched and decoded only to be refused (breaker 19/21 F3: a key at its limit made
        the worker download and decode a 4-hour file per refused job). Whether a file fits in
        what is left still needs its duration: `charge_audio` decides that."""
        if not (self.redis and self.daily):
            return
        try:
            used = float(await self.redis.get(self._day_key(key_id)) or 0)
        except RedisError:
            return  # fail open, as charge_audio does
        if used >= self.daily:
            raise self._audio_refused(used)

    def _audio_refused(self, used: float, why: str = "") -> APIError:
        """The 429 of the daily audio limit (counted in worker_rate_limited_total), `used`
        seconds of the day spent (never reading as the limit when under it:
        `units.seconds_against`), `why` what would pass it."""
        metrics.RATE_LIMITED.labels("daily_audio_seconds").inc()
        used_shown, limit_shown = units.seconds_against(used, self.daily)
        return APIError(429, f"daily audio limit of {limit_shown} reached for this API key ({used_shown} used{why})",
                        code="daily_audio_limit_exceeded", retry_after=_seconds_to_utc_midnight(time.time()))

    async def refund_audio(self, key_id: str, seconds: float) -> None:
        """Give back `seconds` charged for a transcription that did not happen."""
        if self.redis and self.daily:
            with contextlib.suppress(RedisError):
                await self.redis.incrbyfloat(self._day_key(key_id), -seconds)
