"""/v1/uploads: a holder that stalled past its claim's lease (issue 26 review).

Two worker processes share PostgreSQL, Redis and the bucket; each reaches S3 through a
forwarder that can hold a request (upload_s3hold.py). Worker A's complete or cancel is held
at an S3 call and A frozen (SIGSTOP: its claim renewer stops too) until its claim lapses;
worker B takes the upload over, as designed. When A runs again, what it does in S3 must not
change how B ended the upload: each claim assembles into a key of its own, the file is the
key `end_upload` recorded, and a holder whose end fails deletes its own key alone.

On the same two workers (they enforce the open-upload lease and the day's upload bytes): an
end the database recorded but Redis never heard of (the worker killed in between) is made
good by the retried complete or cancel, the refund once per upload; a presigned upload's
cancel gives back only the bytes never PUT, once its URLs expired; a mime_type that is no
media type is refused at create;
a job whose file changed in S3 after it was made fails and stores no transcript; the end
statement of a worker version before claims fails while a claim holds the upload, and the
holder makes good what that version's S3 work did; and what a
stalled complete killed after its late assembly leaves is removed by the keeper's sweep (the
last test: it kills worker A).
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx
import psycopg
import pytest

from test_upload_breaks import _create, _own_worker  # noqa: E402
from upload_s3hold import S3Hold  # noqa: E402
from worker_helpers import padded, send_part  # noqa: E402
from worker_support import start_worker, stop_worker, wait_until  # noqa: E402
from opsctl import httpclient

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def _redis_url(redis_server):
    return f"redis://127.0.0.1:{redis_server.port}/5"


@pytest.fixture(scope="module")
def pair(model_dir, postgres, s3, redis_server, tmp_path_factory):
    """Workers A and B (claim lease 1.5 s) on one database and bucket, each behind its forwarder."""
    tmp = tmp_path_factory.mktemp("fences")
    env, bucket, dburl = _own_worker(model_dir, postgres, s3, redis_server, "fence",
                                     WORKER_JOB_LEASE_SECONDS="1.5", WORKER_RATE_LIMIT_OPEN_UPLOADS="50",
                                     WORKER_RATE_LIMIT_DAILY_UPLOAD_MB="100000", WORKER_PART_MEMORY_MB="11")
    env["WORKER_REDIS_URL"] = _redis_url(redis_server)  # a Redis database of their own: the
    # anonymous key's day counter and open-upload leases are not other tests' (nor theirs these)
    fa, fb = S3Hold(s3.port), S3Hold(s3.port)
    # the keeper's sweep of ended uploads' stray keys is off here (its listing refused), so what
    # these tests see is the holders' own doing; the sweep's test turns it on for B
    fa.sweep, fb.sweep = fa.refuse(_sweep_listing), fb.refuse(_sweep_listing)
    pa, ua = start_worker({**env, "WORKER_S3_ENDPOINT_URL": fa.url}, tmp / "a.log")
    pb, ub = start_worker({**env, "WORKER_S3_ENDPOINT_URL": fb.url}, tmp / "b.log")
    try:
        wait_until(ua, pa, tmp / "a.log", ready=False)
        wait_until(ub, pb, tmp / "b.log", ready=False)
        yield bucket, dburl, (fa, pa, ua), (fb, pb, ub)
    finally:
        for f in (fa, fb):
            f.close()
        if pa.poll() is None:
            os.kill(pa.pid, signal.SIGCONT)
        stop_worker(pa)
        stop_worker(pb)


def _sweep_listing(kind, path):
    """The sweep's listing of all of audio/uploads/ (a holder lists its own upload's keys)."""
    return kind == "GET" and re.search(r"[?&]prefix=audio%2Fuploads%2F(&|$)", path) is not None


def _post(out, name, url, path, body):
    def run():
        with httpx.Client(base_url=url, timeout=90) as c:
            try:
                out[name] = c.post(path, json=body)
            except httpx.TransportError as exc:  # its worker was killed
                out[name] = exc
    t = threading.Thread(target=run)
    t.start()
    return t


def _freeze_until_lapsed(pa, dburl, upload_id):
    """SIGSTOP A, then wait (polling the row) until its claim has lapsed."""
    os.kill(pa.pid, signal.SIGSTOP)
    with psycopg.connect(dburl, autocommit=True) as conn:
        while conn.execute("SELECT claim_until > clock_timestamp() FROM uploads WHERE id = %s",
                           (upload_id,)).fetchone()[0]:
            time.sleep(0.1)


def _row(dburl, upload_id):
    with psycopg.connect(dburl) as conn:
        return conn.execute("SELECT status, file_key FROM uploads WHERE id = %s", (upload_id,)).fetchone()


def _keys(s3, bucket, upload_id):
    return [o["Key"] for o in s3.client().list_objects_v2(
        Bucket=bucket, Prefix=f"audio/uploads/{upload_id}").get("Contents", [])]


def _stall_a(pair, up_id, part_ids, out):
    """A's complete held at CreateMultipartUpload, then A frozen until its claim lapsed."""
    _, dburl, (fa, pa, ua), _ = pair
    create = fa.hold("CreateMultipartUpload")
    ta = _post(out, "a", ua, f"/v1/uploads/{up_id}/complete", {"part_ids": part_ids})
    assert create.arrived.wait(30), fa.log
    _freeze_until_lapsed(pa, dburl, up_id)
    return create, ta


def test_a_stalled_complete_does_not_overwrite_the_file_another_complete_recorded(pair, s3):
    bucket, dburl, (fa, pa, ua), (fb, pb, ub) = pair
    a_file, b_file = b"\2" * (256 * 1024), b"\3" * (256 * 1024)  # one part each: a file of A's, one of B's
    out = {}
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, len(a_file))
        pa2, pb2 = (send_part(http, up["id"], d).json()["id"] for d in (a_file, b_file))
    create_a, ta = _stall_a(pair, up["id"], [pa2], out)
    cmu_b = fb.hold("CompleteMultipartUpload")
    tb = _post(out, "b", ub, f"/v1/uploads/{up['id']}/complete", {"part_ids": [pb2]})
    assert cmu_b.arrived.wait(30), fb.log  # B took the claim over and copied its parts
    cmu_a = fa.hold("CompleteMultipartUpload")
    os.kill(pa.pid, signal.SIGCONT)
    create_a.release.set()
    assert cmu_a.arrived.wait(30), fa.log  # A, no longer the claim's owner, copied its parts too
    cmu_b.release.set()
    tb.join()
    assert out["b"].status_code == 200 and out["b"].json()["status"] == "completed", out["b"].text
    cmu_a.release.set()
    ta.join()
    assert out["a"].status_code == 409, out["a"].text  # told it was taken over
    status, key = _row(dburl, up["id"])
    assert status == "completed"
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b_file
    assert _keys(s3, bucket, up["id"]) == [key]  # A deleted what it assembled


def test_a_complete_stalled_in_its_md5_read_back_is_told_it_was_taken_over(pair, s3):
    """Breaker 26 F2: A's complete stalled (SIGSTOP) while reading its assembled file back for
    the client's md5; B's retry took the upload over, cleared A's attempt and completed. A's read
    then found its key gone (NoSuchKey) and answered 503 `store_unavailable`, a 5xx counted
    against a release, where the assembly's own failures after a takeover answer 409. Now 409."""
    import hashlib

    bucket, dburl, (fa, pa, ua), (fb, pb, ub) = pair
    data = b"\4" * (256 * 1024)
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    out = {}
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, len(data))
        part = send_part(http, up["id"], data).json()["id"]
    read = fa.hold("GET", lambda kind, path: kind == "GET" and f"uploads/{up['id']}" in path and "prefix=" not in path)
    ta = _post(out, "a", ua, f"/v1/uploads/{up['id']}/complete", {"part_ids": [part], "md5": md5})
    assert read.arrived.wait(30), fa.log  # A assembled, and is reading the file back
    _freeze_until_lapsed(pa, dburl, up["id"])
    tb = _post(out, "b", ub, f"/v1/uploads/{up['id']}/complete", {"part_ids": [part], "md5": md5})
    tb.join()
    assert out["b"].status_code == 200 and out["b"].json()["status"] == "completed", out["b"].text
    os.kill(pa.pid, signal.SIGCONT)
    read.release.set()
    ta.join()
    assert out["a"].status_code == 409 and out["a"].json()["error"]["code"] == "upload_busy", out["a"].text
    status, key = _row(dburl, up["id"])
    assert status == "completed" and s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert _keys(s3, bucket, up["id"]) == [key]


def test_a_stalled_complete_leaves_nothing_behind_a_cancel(pair, s3):
    bucket, dburl, (fa, pa, ua), (fb, pb, ub) = pair
    out = {}
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, 256 * 1024)
        ids = [send_part(http, up["id"], b"\5" * (256 * 1024)).json()["id"]]
    create_a, ta = _stall_a(pair, up["id"], ids, out)
    delete_b = fb.hold("DeleteObjects")
    tb = _post(out, "b", ub, f"/v1/uploads/{up['id']}/cancel", {})
    assert delete_b.arrived.wait(30), fb.log  # B's cancel took over, is deleting the parts
    cmu_a = fa.hold("CompleteMultipartUpload")
    os.kill(pa.pid, signal.SIGCONT)
    create_a.release.set()
    assert cmu_a.arrived.wait(30), fa.log
    delete_b.release.set()
    tb.join()
    assert out["b"].status_code == 200 and out["b"].json()["status"] == "cancelled", out["b"].text
    cmu_a.release.set()
    ta.join()
    assert out["a"].status_code == 409, out["a"].text
    assert _keys(s3, bucket, up["id"]) == [], "a cancelled upload left an object in the bucket"


def test_a_stalled_cancel_does_not_delete_the_file_a_complete_then_recorded(pair, s3):
    bucket, dburl, (fa, pa, ua), (fb, pb, ub) = pair
    data = b"\7" * (256 * 1024)
    out = {}
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, len(data))
        ids = [send_part(http, up["id"], data).json()["id"]]
    # the cancel's listing of its upload's keys (the keeper's sweep lists all of audio/uploads/)
    listing = fa.hold("ListMultipartUploads", lambda kind, path: kind == "ListMultipartUploads" and up["id"] in path)
    ta = _post(out, "a", ua, f"/v1/uploads/{up['id']}/cancel", {})
    assert listing.arrived.wait(30), fa.log
    _freeze_until_lapsed(pa, dburl, up["id"])
    with httpx.Client(base_url=ub, timeout=60) as http:
        r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": ids})
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    os.kill(pa.pid, signal.SIGCONT)
    listing.release.set()
    ta.join()
    assert out["a"].status_code == 409, out["a"].text
    status, key = _row(dburl, up["id"])
    assert status == "completed" and _keys(s3, bucket, up["id"]) == [key]
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data


def _ledger(redis_server):
    """(the anonymous key's open-upload lease set, today's upload bytes in MiB) reader."""
    import redis

    client = redis.Redis.from_url(_redis_url(redis_server))
    day = time.strftime("%Y%m%d", time.gmtime())
    return (lambda up_id: client.zscore("worker:open-uploads:anonymous", up_id),
            lambda: float(client.get(f"worker:upload-bytes:anonymous:{day}") or 0) / MIB)


def test_an_end_redis_never_heard_of_is_made_good_by_the_retry_once(pair, redis_server):
    """The row says completed / cancelled but the worker died before Redis heard (made here
    by ending the row in the database): the retried complete frees the lease; the retried
    cancel (still 400: it ended) frees it and refunds the 19 MiB never received, once."""
    bucket, dburl, _, (fb, pb, ub) = pair
    lease, used = _ledger(redis_server)
    with httpx.Client(base_url=ub, timeout=60) as http, psycopg.connect(dburl, autocommit=True) as conn:
        done = _create(http, MIB)
        part = send_part(http, done["id"], b"\x11" * MIB).json()["id"]
        big = _create(http, 20 * MIB)
        assert send_part(http, big["id"], b"\x12" * MIB).status_code == 200
        for up, status in ((done, "completed"), (big, "cancelled")):
            conn.execute("UPDATE uploads SET status = %s, file_id = %s WHERE id = %s",
                         (status, f"file-{up['id']}" if status == "completed" else None, up["id"]))
            assert lease(up["id"]) is not None
        before = used()
        r = http.post(f"/v1/uploads/{done['id']}/complete", json={"part_ids": [part]})
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        for _ in range(2):
            r = http.post(f"/v1/uploads/{big['id']}/cancel")
            assert r.status_code == 400 and r.json()["error"]["code"] == "upload_not_pending", r.text
        assert lease(done["id"]) is None and lease(big["id"]) is None
        assert used() == before - 19


def test_a_cancelled_presigned_upload_gives_back_only_what_never_landed_once_its_urls_expired(pair, redis_server, s3):
    """A presigned upload's URLs stay valid after its cancel or its expiry: nothing is given
    back then, neither bytes nor its open-upload lease (a client PUT every part after a
    cancel: all 200, and they must not land uncharged beyond the day's quota nor beyond the
    key's unfinished uploads); once the URLs have expired (made so here in the
    database) the keeper's sweep counts what landed, before the end and after it, gives back
    only the rest, and deletes the part objects."""
    bucket, dburl, _, (fb, pb, ub) = pair
    lease, used = _ledger(redis_server)
    with httpx.Client(base_url=ub, timeout=60) as http:
        before = used()
        partly = _create(http, 10 * MIB, presign=True, part_size=5 * MIB)
        part = partly["part_urls"][0]  # one of the two parts PUT, then cancelled
        assert httpclient.put(part["url"], content=b"\1" * part["bytes"], timeout=60).status_code == 200
        assert http.post(f"/v1/uploads/{partly['id']}/cancel").json()["status"] == "cancelled"
        late = _create(http, 10 * MIB, presign=True, part_size=5 * MIB)  # cancelled at once,
        assert http.post(f"/v1/uploads/{late['id']}/cancel").json()["status"] == "cancelled"
        for part in late["part_urls"]:  # then every part PUT at its still-valid URL
            assert httpclient.put(part["url"], content=b"\2" * part["bytes"], timeout=60).status_code == 200
        lapsed = _create(http, 10 * MIB, presign=True, part_size=5 * MIB)  # expired by the keeper
    with psycopg.connect(dburl, autocommit=True) as conn:
        def ended(up_id):
            return conn.execute("SELECT status FROM uploads WHERE id = %s", (up_id,)).fetchone()[0] != "pending"
        conn.execute("UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = %s", (lapsed["id"],))
        _wait_for("expired", lambda: ended(lapsed["id"]), 30)
        part = lapsed["part_urls"][1]  # its URLs signed for an hour: a part PUT after its expiry
        assert httpclient.put(part["url"], content=b"\3" * part["bytes"], timeout=60).status_code == 200
        assert used() == before + 30  # nothing given back while the URLs can still deliver
        # and each still holds its open-upload lease: its URLs still take parts (a cancel freed
        # it, so a key could keep more uploads going than WORKER_RATE_LIMIT_OPEN_UPLOADS)
        assert all(lease(u["id"]) is not None for u in (partly, late, lapsed))
        ids = (partly["id"], late["id"], lapsed["id"])
        conn.execute("UPDATE uploads SET expires_at = now() - interval '1 hour' WHERE id = ANY(%s)", (list(ids),))
        _wait_for("all swept", lambda: conn.execute("SELECT bool_and(parts_swept) FROM uploads WHERE id ="
                                                    " ANY(%s)", (list(ids),)).fetchone()[0], 30)
    assert used() == before + 20  # the 10 MiB never PUT came back; the 20 that landed stay charged
    assert all(lease(up_id) is None for up_id in ids)  # URLs dead: the leases are free
    assert not [o for up_id in ids for o in s3.client().list_objects_v2(
        Bucket=bucket, Prefix=f"audio/upload-parts/{up_id}/").get("Contents", [])]


@pytest.mark.parametrize("mime", ["audio/mpeg\r\nx-amz-meta-evil: 1", "audio/" + "x" * 200, "audio/mpég"])
def test_a_mime_type_that_is_no_media_type_is_refused_at_create(pair, mime):
    ub = pair[3][2]
    r = httpclient.post(f"{ub}/v1/uploads", json={"filename": "a.mp3", "bytes": MIB, "mime_type": mime,
                                            "purpose": "transcription"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "mime_type", r.text


def test_a_resend_failing_in_s3_does_not_undo_the_first_send(pair):
    """A part re-sent while its first send is on its way to S3 (the client timed out), the
    re-send's PUT failing: the re-send is told S3 failed (503 audio_store_unavailable, not the
    job store), and the first send, landing after, is recorded."""
    bucket, dburl, _, (fb, pb, ub) = pair
    part = b"\x42" * (5 * MIB)
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, 6 * MIB)
        held, out = fb.hold("PUT"), {}
        t = threading.Thread(target=lambda: out.setdefault("first", send_part(
            httpx.Client(base_url=ub, timeout=60), up["id"], part)))
        t.start()
        assert held.arrived.wait(30)
        fb.fail("PUT", 4)  # botocore: 1 attempt + 3 retries
        resend = send_part(http, up["id"], part)
        assert resend.status_code == 503 and resend.json()["error"]["code"] == "audio_store_unavailable", resend.text
        held.release.set()
        t.join()
        assert out["first"].status_code == 200, out["first"].text
        listed = http.get(f"/v1/uploads/{up['id']}").json()
        assert listed["status"] == "pending" and [p["bytes"] for p in listed["parts"]] == [5 * MIB], listed


def test_a_part_over_the_part_limit_is_413_naming_the_data_field(pair):
    """Refused on its Content-Length alone (sent here without the body)."""
    import json
    import socket
    from urllib.parse import urlparse

    ub = pair[3][2]
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, 6 * MIB)
    where = urlparse(ub)
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/uploads/{up['id']}/parts HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data;"
                     f" boundary=b\r\nContent-Length: {2 ** 40}\r\n\r\n".encode())
        answer = b""
        while b"}}" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    error = json.loads(body[body.index(b"{"):])["error"]
    assert head.startswith(b"HTTP/1.1 413") and error["param"] == "data", answer
    assert error["message"].startswith("the part is larger than"), answer


def test_parts_past_the_worker_part_memory_are_503_with_retry_after(pair):
    """WORKER_PART_MEMORY_MB=11: a 5 MiB part held on its way to S3, a 7 MiB part sent
    meanwhile is refused before its body is read; sent again once the first is stored, taken."""
    bucket, dburl, _, (fb, pb, ub) = pair
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, 12 * MIB)
        held, out = fb.hold("PUT"), {}
        t = threading.Thread(target=lambda: out.setdefault("first", send_part(
            httpx.Client(base_url=ub, timeout=60), up["id"], b"\x51" * (5 * MIB))))
        t.start()
        assert held.arrived.wait(30)
        busy = send_part(http, up["id"], b"\x52" * (7 * MIB))
        held.release.set()
        t.join()
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy", busy.text
        assert busy.headers["Retry-After"] == "2" and out["first"].status_code == 200
        assert send_part(http, up["id"], b"\x52" * (7 * MIB)).status_code == 200


def _wait_for(what, check, timeout=30):
    """Poll `check()` (a cheap read) until it is true."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {timeout}s"
        time.sleep(0.1)


def test_a_job_whose_uploaded_file_changed_in_s3_fails_and_stores_no_transcript(pair, s3):
    """A /v1/uploads file is keyed by upload, not by content: the object at its key is replaced
    after the job was made from it (POST /v1/jobs read and hashed it) and before the job's own
    download (held at the forwarder). The job fails, saying so, and nothing reaches the shared
    transcript store, under either recording's SHA-256 (issue 26 review: store poisoning)."""
    import hashlib

    bucket, dburl, _, (fb, pb, ub) = pair
    made_for, replaced_by = padded("hello", 200), padded("hello", 700)
    _wait_for("ready (model loaded)", lambda: httpclient.get(f"{ub}/readyz", timeout=5).status_code == 200, 120)
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, len(made_for))
        part = send_part(http, up["id"], made_for).json()["id"]
        done = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [part]}).json()
        key = _row(dburl, up["id"])[1]
        gets = []

        def the_jobs_download(kind, path):  # the second GET of the file; the first is POST /v1/jobs's
            if kind == "GET" and path.split("?")[0].endswith("/" + key):
                gets.append(path)
                return len(gets) == 2
            return False

        download = fb.hold("GET", the_jobs_download)
        r = http.post("/v1/jobs", data={"file_id": done["file"]["id"]})
        assert r.status_code == 202 and r.json()["audio_sha256"] == hashlib.sha256(made_for).hexdigest(), r.text
        assert download.arrived.wait(30), fb.log
        s3.client().put_object(Bucket=bucket, Key=key, Body=replaced_by)
        download.release.set()
        with psycopg.connect(dburl, autocommit=True) as conn:
            _wait_for("finished", lambda: conn.execute("SELECT status IN ('succeeded', 'failed') FROM jobs"
                                                       " WHERE id = %s", (r.json()["id"],)).fetchone()[0], 120)
            stored = conn.execute("SELECT count(*) FROM transcripts WHERE audio_sha256 = ANY(%s)",
                                  ([hashlib.sha256(a).hexdigest() for a in (made_for, replaced_by)],)).fetchone()[0]
        job = http.get(f"/v1/jobs/{r.json()['id']}").json()
    assert job["status"] == "failed" and "not the audio this job was made for" in job["error"]["message"], job
    assert stored == 0


# What a worker of the version before claims did to cancel an upload (commit 43dde30:
# Database.locked_upload, _drop_s3, Database.set_status): lock the row, delete in S3 what it
# knows of the upload (multipart uploads and the object at `s3_key`, part objects under
# `{s3_key}.parts/`), then end it in the same transaction; it knows no claim columns.
_LOCK_BEFORE_CLAIMS = "SELECT * FROM uploads WHERE id = %s FOR NO KEY UPDATE"
_END_BEFORE_CLAIMS = ("UPDATE uploads SET status = %s, file_id = %s, sha256 = %s, complete_request = %s,"
                      " completed_at = CASE WHEN %s = 'completed' THEN now() END WHERE id = %s RETURNING *")


def _cancel_before_claims(dburl, store, upload_id, between=lambda: None):
    """A cancel of the version before claims, in its order: lock the row, drop in S3 what it
    knows of the upload, `between()`, then its end statement, which the fence refuses while
    another's claim was live (55P03): its transaction rolls back."""
    key = f"audio/uploads/{upload_id}"
    with psycopg.connect(dburl) as conn:
        assert conn.execute(_LOCK_BEFORE_CLAIMS, (upload_id,)).fetchone() is not None
        store.abort_multiparts(key)
        store.delete_prefix(f"{key}.parts/")
        if store.size_of(key) is not None:
            store.delete(key)
        between()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(_END_BEFORE_CLAIMS, ("cancelled", None, None, None, "cancelled", upload_id))
        conn.rollback()


def test_a_cancel_by_a_worker_version_before_claims_does_not_overrule_the_holder(pair, s3):
    """Blue-green: both colors share the database and the bucket, and a worker of the version
    before claims cancels an upload B's complete holds (its statements and S3 calls, in its
    order). Its end fails while the claim is live, so B's end is the one recorded; what its S3
    work did at `s3_key` (the only key it knows, B's first attempt's) B makes good: a file S3
    had assembled for B, deleted before B's end, is made again; a multipart upload it aborted
    before B's CompleteMultipartUpload is assembled again. Once a claim has lapsed (its worker
    died), that version's end statement ends the upload and clears the claim."""
    from transcription_worker.storage import AudioStore

    bucket, dburl, _, (fb, pb, ub) = pair
    store = AudioStore(bucket, s3.endpoint_url)
    data = b"\x21" * (256 * 1024)
    with httpx.Client(base_url=ub, timeout=60) as http:
        assembled, open_, lapsed = (_create(http, len(data)) for _ in range(3))
        parts = {up["id"]: send_part(http, up["id"], data).json()["id"] for up in (assembled, open_)}
    for up, answer in ((assembled, True), (open_, False)):
        out = {}
        cmu = fb.hold("CompleteMultipartUpload", answer=answer,
                      match=lambda kind, path, i=up["id"]: kind == "CompleteMultipartUpload" and i in path)
        tb = _post(out, "b", ub, f"/v1/uploads/{up['id']}/complete", {"part_ids": [parts[up["id"]]]})
        assert cmu.arrived.wait(30), fb.log  # B holds a live claim; its assembly done or open
        _cancel_before_claims(dburl, store, up["id"], between=cmu.release.set)  # B's end waits on the lock
        tb.join()
        assert out["b"].status_code == 200 and out["b"].json()["status"] == "completed", out["b"].text
        key = f"audio/uploads/{up['id']}"
        assert _row(dburl, up["id"]) == ("completed", key)
        assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data
    with psycopg.connect(dburl, autocommit=True) as conn:
        conn.execute("UPDATE uploads SET claim = 'completing', claim_owner = 'a dead worker',"
                     " claim_until = now() - interval '1 second' WHERE id = %s", (lapsed["id"],))
        assert conn.execute(_END_BEFORE_CLAIMS, ("cancelled", None, None, None, "cancelled",
                                                 lapsed["id"])).fetchone() is not None
        assert conn.execute("SELECT status, claim, claim_owner, claim_until FROM uploads WHERE id = %s",
                            (lapsed["id"],)).fetchone() == ("cancelled", None, None, None)


def test_what_a_stalled_complete_killed_after_its_late_assembly_left_is_swept(pair, s3):
    """A's complete stalls past its claim (held at CreateMultipartUpload, A frozen); B takes the
    upload over and completes it into its own attempt key; A resumes, assembles into its key,
    and is killed (SIGKILL) once S3 has completed its multipart upload, before its failed end
    could delete it: an object no upload records. A multipart upload left open at another of
    the upload's keys (what a holder killed before its CompleteMultipartUpload leaves: made
    with S3's own call) is stale too. The keeper's sweep removes both, keeps the recorded file,
    and leaves alone another upload's assembly whose holder (B, its claim live) has not yet
    recorded it. Runs last: worker A is gone after it."""
    bucket, dburl, (fa, pa, ua), (fb, pb, ub) = pair
    a_file, b_file, size = b"\x32" * (256 * 1024), b"\x33" * (256 * 1024), 256 * 1024
    out = {}
    with httpx.Client(base_url=ub, timeout=60) as http:
        up, busy = _create(http, size), _create(http, size)
        pa2, pb2 = (send_part(http, up["id"], d).json()["id"] for d in (a_file, b_file))
        busy_part = send_part(http, busy["id"], b"\x34" * size).json()["id"]
    # B at work on `busy`: S3 has its assembly, B has not yet heard (nor recorded it)
    busy_cmu = fb.hold("CompleteMultipartUpload", answer=True,
                       match=lambda kind, path: kind == "CompleteMultipartUpload" and busy["id"] in path)
    tbusy = _post(out, "busy", ub, f"/v1/uploads/{busy['id']}/complete", {"part_ids": [busy_part]})
    assert busy_cmu.arrived.wait(30), fb.log
    create_a, ta = _stall_a(pair, up["id"], [pa2], out)
    cmu_b = fb.hold("CompleteMultipartUpload", match=lambda kind, path: kind == "CompleteMultipartUpload"
                    and up["id"] in path)
    tb = _post(out, "b", ub, f"/v1/uploads/{up['id']}/complete", {"part_ids": [pb2]})
    assert cmu_b.arrived.wait(30), fb.log  # B took the claim over and copied its parts
    cmu_a = fa.hold("CompleteMultipartUpload", answer=True)
    os.kill(pa.pid, signal.SIGCONT)
    create_a.release.set()
    assert cmu_a.arrived.wait(30), fa.log
    pa.kill()
    pa.wait()
    cmu_a.release.set()
    ta.join()
    a_key = f"audio/uploads/{up['id']}"  # A held the first claim: attempt 1's key
    # S3 completed A's multipart upload at its key, and A died before its end: an orphan, for real
    assert cmu_a.status == 200 and f"/{a_key}?" in [p for k, p in fa.log if k == "CompleteMultipartUpload"][-1]
    cmu_b.release.set()
    tb.join()
    assert out["b"].status_code == 200 and out["b"].json()["status"] == "completed", out["b"].text
    status, file_key = _row(dburl, up["id"])
    assert status == "completed" and file_key == f"{a_key}-2"
    s3.client().create_multipart_upload(Bucket=bucket, Key=f"{a_key}-9")
    assert sorted(_keys(s3, bucket, up["id"])) == [a_key, file_key]
    fb.allow(fb.sweep)  # B's keeper sweeps from now on

    def uploads_open():
        return s3.client().list_multipart_uploads(Bucket=bucket, Prefix=a_key).get("Uploads", [])

    _wait_for("swept", lambda: _keys(s3, bucket, up["id"]) == [file_key] and not uploads_open())
    scraped = httpclient.get(ub + "/metrics", timeout=10).text  # counted, by kind (earlier tests' strays too)
    for kind in ("object", "multipart"):
        swept = re.search(rf'^worker_uploads_swept_total{{kind="{kind}"}} (\S+)$', scraped, re.M)
        assert swept and float(swept.group(1)) >= 1, scraped
    assert s3.client().get_object(Bucket=bucket, Key=file_key)["Body"].read() == b_file
    busy_keys = _keys(s3, bucket, busy["id"])
    busy_cmu.release.set()
    tbusy.join()
    assert busy_keys == [_row(dburl, busy["id"])[1]], busy_keys  # its assembly was not swept
    assert out["busy"].status_code == 200 and out["busy"].json()["status"] == "completed", out["busy"].text


def test_a_control_character_in_any_stored_text_field_is_400_naming_it(pair):
    """A NUL (PostgreSQL keeps none in text, nor \\u0000 in jsonb) or another control character
    in a field an upload or a job stores is the client's error, 400 naming the field, never
    the store's 503 with Retry-After; and a value the database refuses as invalid input
    (SQLSTATE class 22) is answered 400 too, without Retry-After."""
    import asyncio

    from transcription_worker.api import _db
    from transcription_worker.errors import APIError

    bucket, dburl, _, (fb, pb, ub) = pair
    spec = {"filename": "a.wav", "bytes": MIB, "mime_type": "audio/wav", "purpose": "transcription"}
    with httpx.Client(base_url=ub, timeout=60) as http:
        for field, value in (("filename", "a\0b.wav"), ("purpose", "t\0"), ("filename", "a\x1bb"),
                             ("purpose", "x\x7f")):
            for headers in ({}, {"Idempotency-Key": f"nul-{field}-{len(value)}-{time.monotonic_ns()}"}):
                r = http.post("/v1/uploads", headers=headers, json={**spec, field: value})
                assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
                assert "retry-after" not in r.headers
        # an id with a NUL in the path is an unknown upload (404), not the store's error
        assert http.get("/v1/uploads/upload_%00").status_code == 404
        for path in ("parts", "complete", "cancel"):
            r = http.post(f"/v1/uploads/upload_%00x/{path}", json={"part_ids": ["p"]})
            assert r.status_code in (400, 404) and "retry-after" not in r.headers, r.text
        _wait_for("ready (model loaded)", lambda: httpclient.get(f"{ub}/readyz", timeout=5).status_code == 200, 120)
        for field, value in (("prompt", "a\0b"), ("file_id", "file-\0"), ("model", "whisper\0")):
            r = http.post("/v1/jobs", data={field: value, **({} if field == "file_id" else {"file_id": "file-x"})})
            assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    with psycopg.connect(dburl) as conn:
        with pytest.raises(APIError) as refused:
            asyncio.run(_db(conn.execute, "SELECT %s::text", ("a\0b",)))
    assert refused.value.status == 400 and "Retry-After" not in refused.value.headers, vars(refused.value)


def test_a_create_retried_after_expiry_answers_expired_without_part_urls(pair):
    """A create retried with its Idempotency-Key once the upload is past `expires_at` (the
    keeper not yet at it, or done) answers what GET answers, expired, and a presigned one
    gets no fresh part URLs."""
    bucket, dburl, _, (fb, pb, ub) = pair
    spec = {"filename": "a.wav", "bytes": 6 * MIB, "mime_type": "audio/wav", "purpose": "t"}
    with httpx.Client(base_url=ub, timeout=60) as http, psycopg.connect(dburl, autocommit=True) as conn:
        for body in (spec, {**spec, "presign": True, "part_size": 5 * MIB}):
            headers = {"Idempotency-Key": f"late-{time.monotonic_ns()}"}
            first = http.post("/v1/uploads", headers=headers, json=body).json()
            assert first["status"] == "pending" and ("part_urls" in first) == ("presign" in body)
            conn.execute("UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = %s", (first["id"],))
            again = http.post("/v1/uploads", headers=headers, json=body)
            got = http.get(f"/v1/uploads/{first['id']}").json()
            assert again.status_code == 200 and again.json()["id"] == first["id"], again.text
            assert again.json()["status"] == got["status"] == "expired", (again.text, got)
            assert "part_urls" not in again.json()


def test_an_expiry_waiting_on_s3_does_not_stop_the_workers_job_heartbeats(pair):
    """The keeper's expiry of an upload waits on S3 (its ListMultipartUploads held at the
    forwarder): the worker's job leases are still renewed every third of the lease (its job
    stays its own, not adopted by the other worker as a dead one's), as they are while the
    sweep of ended uploads lists S3."""
    import json
    import uuid

    bucket, dburl, (fa, pa, ua), (fb, pb, ub) = pair
    with httpx.Client(base_url=ub, timeout=60) as http:
        up = _create(http, MIB)

    def listing(kind, path):
        return kind == "ListMultipartUploads" and up["id"] in path
    holds = [fa.hold("ListMultipartUploads", listing), fb.hold("ListMultipartUploads", listing)]
    job = str(uuid.uuid4())
    try:
        with psycopg.connect(dburl, autocommit=True) as conn:
            conn.execute("UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = %s", (up["id"],))
            _wait_for("the expiry held in S3", lambda: any(h.arrived.is_set() for h in holds), 30)
            # the keeper holding the expiry: its worker's owner is its claim's, less the nonce
            owner = conn.execute("SELECT claim_owner FROM uploads WHERE id = %s", (up["id"],)).fetchone()[0]
            owner = owner.rsplit("/", 1)[0]
            # a job that worker runs, its heartbeat set 30 s ahead (no other worker adopts it
            # meanwhile, however loaded the machine): a renewal sets it to now()
            conn.execute("INSERT INTO jobs (id, api_key_id, status, audio_sha256, audio_key, audio_bytes, duration,"
                         " options, options_key, owner, heartbeat_at, attempts, started_at)"
                         " VALUES (%s, 'anonymous', 'running', %s, 'audio/none.wav', 1, 1, %s, 'k', %s,"
                         " now() + interval '30 seconds', 1, now())", (job, "0" * 64, json.dumps({}), owner))
            ahead = conn.execute("SELECT heartbeat_at FROM jobs WHERE id = %s", (job,)).fetchone()[0]

            def renewed():
                row = conn.execute("SELECT heartbeat_at < %s - interval '20 seconds', owner, status FROM jobs"
                                   " WHERE id = %s", (ahead, job)).fetchone()
                assert row[1:] == (owner, "running"), row
                return row[0]
            _wait_for("the job's heartbeat renewed while the expiry waits on S3", renewed, 5)
            assert not any(h.release.is_set() for h in holds)  # still held meanwhile
    finally:
        for f, h in zip((fa, fb), holds):
            h.release.set()
            if h in f.holds:
                f.holds.remove(h)
        with psycopg.connect(dburl, autocommit=True) as conn:
            conn.execute("DELETE FROM jobs WHERE id = %s", (job,))
    _wait_for("the upload expired", lambda: _row(dburl, up["id"])[0] == "expired", 30)


def test_a_create_its_worker_left_undecided_is_dropped_not_expired(pair):
    """A row its worker left claimed 'creating' (it died before the limits decided) is no
    upload: the keeper deletes it (no refund of bytes it may never have charged), where an
    expiry would have given back its bytes and shown it as an expired upload."""
    bucket, dburl, _, _ = pair
    with psycopg.connect(dburl, autocommit=True) as conn:
        up_id = "upload_" + "d" * 32
        conn.execute("INSERT INTO uploads (id, api_key_id, filename, bytes, mime_type, purpose, status, s3_key,"
                     " idempotency_key, claim, claim_owner, claim_until, expires_at) VALUES (%s, 'anonymous',"
                     " 'a.wav', 10, 'audio/wav', 't', 'pending', 'x', 'undecided', 'creating', 'gone/1/x',"
                     " now() - interval '1 second', now() - interval '1 second')", (up_id,))
        _wait_for("dropped", lambda: conn.execute("SELECT status FROM uploads WHERE id = %s",
                                                  (up_id,)).fetchone() is None, 10)
