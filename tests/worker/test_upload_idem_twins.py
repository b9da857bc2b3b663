"""Concurrent twins of an idempotent create (same Idempotency-Key, a client retrying before
the first answer came) get the same upload, even when the key may hold one open upload
(issue 26 review: each twin took an open-upload lease before the first had inserted its
row, and all but one were told 429)."""
from __future__ import annotations

import hashlib
import secrets
import threading

import httpx
import psycopg
import pytest

from test_upload_breaks import _own_worker  # noqa: E402
from worker_support import start_worker, stop_worker, wait_until  # noqa: E402
from opsctl import httpclient

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def limited(model_dir, postgres, s3, redis_server, tmp_path_factory):
    """One worker whose keys may each hold one open upload and 12 MiB a day: (url, three keys,
    its database)."""
    keys = [f"sk-test-{secrets.token_hex(16)}" for _ in range(3)]
    env, bucket, dburl = _own_worker(model_dir, postgres, s3, redis_server, "twins",
                                     WORKER_API_KEY_HASHES=",".join(hashlib.sha256(k.encode()).hexdigest()
                                                                    for k in keys),
                                     WORKER_RATE_LIMIT_OPEN_UPLOADS="1", WORKER_RATE_LIMIT_DAILY_UPLOAD_MB="12")
    log = tmp_path_factory.mktemp("twins") / "w.log"
    proc, url = start_worker(env, log)
    try:
        wait_until(url, proc, log, ready=False)
        yield url, keys, dburl
    finally:
        stop_worker(proc)


def test_concurrent_twins_of_an_idempotent_create_get_the_same_upload(limited):
    url, (key, _, _), _ = limited
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
    other = httpclient.post(f"{url}/v1/uploads", headers={"Authorization": f"Bearer {key}"},
                       json={"filename": "b.wav", "bytes": MIB, "mime_type": "audio/wav", "purpose": "t"})
    assert other.status_code == 429, other.text


def test_twins_of_an_idempotent_create_the_limits_refuse_all_get_the_refusal(limited):
    """The key holds its one open upload (or asks for more than its day's bytes): every twin
    of an idempotent create is refused, none answered an upload the limits then refused (it
    read 404 after, or 500 when a twin's re-read found the row gone), and no row is left."""
    url, (_, *keys), dburl = limited
    with psycopg.connect(dburl) as conn:
        rows_before = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
    spec = {"filename": "a.wav", "bytes": 6 * MIB, "mime_type": "audio/wav", "purpose": "t"}
    held = httpclient.post(f"{url}/v1/uploads", headers={"Authorization": f"Bearer {keys[0]}"}, json=spec)
    assert held.status_code == 200, held.text  # this key's one open upload
    answers = []
    for key, body, code in [(keys[0], spec, "concurrent_uploads_exceeded")] * 3 + [
            (keys[1], {**spec, "bytes": 13 * MIB}, "daily_upload_limit_exceeded")] * 2:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"twin-{secrets.token_hex(4)}"}
        out, start = [], threading.Barrier(8)

        def call():
            with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
                start.wait()
                out.append(c.post("/v1/uploads", json=body))
        ts = [threading.Thread(target=call) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        answers += [(r.status_code, r.json().get("id") or r.json()["error"]["code"], code) for r in out]
    assert all(s == 429 and got == code for s, got, code in answers), [a for a in answers if a[1] != a[2]]
    with psycopg.connect(dburl) as conn:
        assert conn.execute("SELECT count(*) FROM uploads").fetchone()[0] == rows_before + 1  # the held one


def test_a_create_whose_worker_died_deciding_the_limits_is_made_anew_by_its_retry(limited):
    """A row left claimed 'creating' by a worker that died before the limits decided (its
    claim lapsed) is no upload: the retried create drops it and makes the upload itself."""
    url, (_, _, key), dburl = limited
    idem = f"dead-{secrets.token_hex(4)}"
    with psycopg.connect(dburl, autocommit=True) as conn:
        conn.execute("INSERT INTO uploads (id, api_key_id, filename, bytes, mime_type, purpose, status, s3_key,"
                     " idempotency_key, claim, claim_owner, claim_until, expires_at) VALUES ('upload_' || md5(%s),"
                     " %s, 'a.wav', 10, 'audio/wav', 't', 'pending', 'x', %s, 'creating', 'gone/1/x',"
                     " now() - interval '1 second', now() + interval '1 hour')",
                     (idem, hashlib.sha256(key.encode()).hexdigest()[:12], idem))  # the key's id
        dead = conn.execute("SELECT id FROM uploads WHERE idempotency_key = %s", (idem,)).fetchone()[0]
    r = httpclient.post(f"{url}/v1/uploads", headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem},
                   json={"filename": "a.wav", "bytes": 10, "mime_type": "audio/wav", "purpose": "t"})
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["id"] != dead, r.text
    got = httpclient.get(f"{url}/v1/uploads/{r.json()['id']}", headers={"Authorization": f"Bearer {key}"})
    assert got.status_code == 200, got.text
