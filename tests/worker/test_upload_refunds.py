"""Breaker 46 F1: refunds of an upload's unreceived bytes follow its charge record, whatever the
refunding worker's own settings. During a blue-green deploy that turns the daily upload limit
on, a worker with the limit refunded uploads a worker without it had created (never charged):
the key's day counter went below zero and the limit was bypassed; the reverse case lost the
refund. Two workers' Limits over one real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as redis_sync

from opsctl.local import procs
from opsctl.local import redis as rd
from transcription_worker.limits import Limits

MIB = 1024 * 1024


@pytest.fixture
def redis_url(tmp_path):
    port = procs.free_port()
    pid = rd.start(tmp_path / "redis", port, tmp_path / "redis.log")
    yield rd.url(port)
    rd.stop(pid, port, keep=False)


def _used(url: str, key_id: str) -> float:
    value = redis_sync.Redis.from_url(url).get(f"worker:upload-bytes:{key_id}:{time.strftime('%Y%m%d', time.gmtime())}")
    return float(value or 0)


def test_refunds_follow_the_charge_record_not_the_refunding_workers_settings(redis_url):
    limited = Limits(redis_url, 0, 0, 0, open_uploads=3, daily_upload_mb=60)
    unlimited = Limits(redis_url, 0, 0, 0)
    key = "k1"

    async def scenario() -> None:
        await unlimited.open_upload(key, "made-unlimited", 3600, 20 * MIB)  # charges nothing
        await limited.open_upload(key, "made-limited", 3600, 10 * MIB)      # charges 10 MiB

    asyncio.run(scenario())
    assert _used(redis_url, key) == 10 * MIB
    # an uncharged upload cancelled on the limited worker gives nothing back (it took 20 MiB before)
    limited.refund_upload_bytes_sync(key, 20 * MIB, upload_id="made-unlimited")
    assert _used(redis_url, key) == 10 * MIB
    # a charged one expired by the unlimited worker's keeper is refunded (it was lost before), once
    unlimited.refund_upload_bytes_sync(key, 4 * MIB, upload_id="made-limited")
    assert _used(redis_url, key) == 6 * MIB
    unlimited.refund_upload_bytes_sync(key, 4 * MIB, upload_id="made-limited")
    assert _used(redis_url, key) == 6 * MIB
    # never more than was charged
    limited2 = Limits(redis_url, 0, 0, 0, daily_upload_mb=60)
    asyncio.run(limited2.open_upload(key, "small", 3600, 1 * MIB))
    limited2.refund_upload_bytes_sync(key, 50 * MIB, upload_id="small")
    assert _used(redis_url, key) == 6 * MIB


def test_a_shorter_upload_lease_never_shortens_the_longer_ones_held(redis_url):
    """Breaker 57 F5: each new open-upload lease set the TTL of the key's whole lease set to
    its own length. After the upload expiry was lowered (or from the other color of a deploy,
    sharing Redis), the set expired with the short lease and forgot the hour-long ones: a key
    of limit 3 held 7 open uploads. The refusal's Retry-After is the time until the key's
    oldest lease ends on its own, the only wait that frees a slot (F6: it said 60 s, and the
    openai SDK waited two minutes for nothing)."""
    from transcription_worker.errors import APIError

    hour, short = Limits(redis_url, 0, 0, 0, open_uploads=3), Limits(redis_url, 0, 0, 0, open_uploads=3)
    store = redis_sync.Redis.from_url(redis_url)
    waits = []

    async def refused(limits: Limits, upload_id: str, seconds: float) -> None:
        with pytest.raises(APIError) as answer:
            await limits.open_upload("k", upload_id, seconds, MIB)
        assert answer.value.status == 429
        waits.append(int(answer.value.headers["Retry-After"]))

    async def scenario() -> None:  # one event loop: a client's connections belong to the loop they were made on
        await hour.open_upload("k", "u1", 3600, MIB)
        await hour.open_upload("k", "u2", 3600, MIB)
        await short.open_upload("k", "u3", 1, MIB)  # the lowered expiry: 1 s
        assert store.pttl("worker:open-uploads:k") > 3_500_000
        await asyncio.sleep(1.5)  # the short lease has ended; the set and its two hour-long leases have not
        assert store.zscore("worker:open-uploads:k", "u1") and store.zscore("worker:open-uploads:k", "u2")
        await short.open_upload("k", "u4", 1, MIB)  # the third slot, free again
        await refused(short, "u5", 1)
        await asyncio.sleep(1.5)
        await short.open_upload("k", "u6", 3600, MIB)
        await refused(short, "u7", 3600)

    asyncio.run(scenario())
    assert 0 < waits[0] <= 2, waits  # u4's lease ends first, within its second
    assert 3500 < waits[1] <= 3600, waits  # then the oldest hour-long one: the wait that frees a slot
