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
