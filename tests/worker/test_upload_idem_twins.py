"""Concurrent twins of an idempotent create (same Idempotency-Key, a client retrying before
the first answer came) get the same upload, even when the key may hold one open upload
(issue 26 review: each twin took an open-upload lease before the first had inserted its
row, and all but one were told 429)."""
from __future__ import annotations

import hashlib
import secrets
import threading

import httpx
import pytest

from test_upload_breaks import _own_worker  # noqa: E402
from worker_support import start_worker, stop_worker, wait_until  # noqa: E402

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def test_concurrent_twins_of_an_idempotent_create_get_the_same_upload(model_dir, postgres, s3, redis_server,
                                                                        tmp_path):
    key = f"sk-test-{secrets.token_hex(16)}"
    env, bucket, dburl = _own_worker(model_dir, postgres, s3, redis_server, "twins",
                                     WORKER_API_KEY_HASHES=hashlib.sha256(key.encode()).hexdigest(),
                                     WORKER_RATE_LIMIT_OPEN_UPLOADS="1")
    proc, url = start_worker(env, tmp_path / "w.log")
    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"create-{secrets.token_hex(4)}"}
        out, start = [], threading.Barrier(4)

        def call():
            with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
                start.wait()
                out.append(c.post("/v1/uploads", json={"filename": "a.wav", "bytes": 6 * MIB,
                                                       "mime_type": "audio/wav", "purpose": "t"}))
        ts = [threading.Thread(target=call) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        answers = [(r.status_code, r.json().get("id") or r.json()["error"]["code"]) for r in out]
        assert [s for s, _ in answers] == [200] * 4 and len({i for _, i in answers}) == 1, answers
        # the key's one open upload is that one: another create is refused until it ends
        other = httpx.post(f"{url}/v1/uploads", headers={"Authorization": f"Bearer {key}"},
                           json={"filename": "b.wav", "bytes": MIB, "mime_type": "audio/wav", "purpose": "t"})
        assert other.status_code == 429, other.text
    finally:
        stop_worker(proc)
