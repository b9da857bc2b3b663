"""Per-API-key limits kept in Redis, so every worker process (blue and green alike) shares them.

Three limits, each 0 = off: requests per minute (a moving one-minute window, from the
`limits` library, so a burst across a minute boundary cannot reach twice the limit), uploads in flight
at once (a counter held for the life of a request carrying audio), and audio seconds per
UTC day (checked and charged atomically by a Lua script before the model runs, refunded if
the transcription does not happen). Exceeding one answers 429 with a Retry-After header.
Without WORKER_REDIS_URL the limits are off. If Redis is down, requests are let through
(the limits protect capacity; they must not take the service down with them) and /readyz
reports Redis as failing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from . import metrics
from .errors import APIError

log = logging.getLogger("transcription_worker")

_CHARGE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, tostring(used)} end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return {1, tostring(used)}
"""


def _seconds_to_utc_midnight(now: float) -> int:
    return int(86400 - now % 86400) + 1


class Limits:
    def __init__(self, url: str | None, rpm: int, concurrent_uploads: int, daily_audio_seconds: int):
        self.redis = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2) if url else None
        self.rpm, self.uploads, self.daily = rpm, concurrent_uploads, daily_audio_seconds
        self._charge = self.redis.register_script(_CHARGE) if self.redis else None
        self._per_minute = RateLimitItemPerMinute(rpm) if rpm else None
        self._window = MovingWindowRateLimiter(RedisStorage(
            "async+" + url, implementation="redispy", key_prefix="worker:rpm", socket_timeout=2,
            socket_connect_timeout=2)) if url and rpm else None

    async def ping(self) -> bool:
        return bool(self.redis and await self.redis.ping())

    async def close(self) -> None:
        if self.redis:
            await self.redis.aclose()

    async def check_rate(self, key_id: str) -> None:
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
        if not (self.redis and self.uploads):
            yield
            return
        name = f"worker:uploads:{key_id}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(name).expire(name, 3600).execute()
        except RedisError as exc:
            log.warning("upload limit skipped, redis unavailable: %s", exc)
            yield
            return
        try:
            if count > self.uploads:
                metrics.RATE_LIMITED.labels("concurrent_uploads").inc()
                raise APIError(429, f"at most {self.uploads} uploads at once per API key",
                               code="concurrent_uploads_exceeded", retry_after=1)
            yield
        finally:
            with contextlib.suppress(RedisError):
                await self.redis.decr(name)

    def _day_key(self, key_id: str) -> str:
        return f"worker:audio:{key_id}:{time.strftime('%Y%m%d', time.gmtime())}"

    async def charge_audio(self, key_id: str, seconds: float) -> None:
        if not (self.redis and self.daily):
            return
        try:
            ok, used = await self._charge(keys=[self._day_key(key_id)], args=[seconds, self.daily])
        except RedisError as exc:
            log.warning("audio limit skipped, redis unavailable: %s", exc)
            return
        if not int(ok):
            metrics.RATE_LIMITED.labels("daily_audio_seconds").inc()
            raise APIError(429, f"daily audio limit of {self.daily} s reached for this API key"
                           f" ({float(used):.0f} s used, this file is {seconds:.0f} s)",
                           code="daily_audio_limit_exceeded",
                           retry_after=_seconds_to_utc_midnight(time.time()))

    async def refund_audio(self, key_id: str, seconds: float) -> None:
        if self.redis and self.daily:
            with contextlib.suppress(RedisError):
                await self.redis.incrbyfloat(self._day_key(key_id), -seconds)
