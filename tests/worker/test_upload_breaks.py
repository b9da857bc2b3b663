"""/v1/uploads under failure and races (issue 26, BREAKER26's cases): a worker killed while a
part is on its way to S3 or while S3 assembles the file, complete racing cancel, a part
re-sent with other bytes, the day's byte quota after a cancel, presigned parts bigger than
declared; and (session 8) completes and cancels waiting on a slow S3 holding no database
connection."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import threading
import time

import httpx
import psycopg
import pytest
from worker_helpers import AWS_ENV, BIN, send_part
from worker_support import start_worker, stop_worker, wait_until, worker_env
from opsctl import httpclient

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def _create(http, size, **over):
    spec = {"filename": "a.wav", "bytes": size, "mime_type": "audio/wav", "purpose": "transcription"}
    r = http.post("/v1/uploads", json={**spec, **over})
    assert r.status_code == 200, r.text
    return r.json()


def _mpu(s3, bucket, upload_id):
    return s3.list_multipart_uploads(Bucket=bucket, Prefix=f"audio/uploads/{upload_id}").get("Uploads", [])


def _objects(s3, bucket, upload_id):
    """The upload's file and its part objects (under `audio/upload-parts/<id>/`)."""
    return [o["Key"] for prefix in (f"audio/uploads/{upload_id}", f"audio/upload-parts/{upload_id}/")
            for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def _swallow(fn):
    try:
        fn()
    except Exception:
        pass


def _own_worker(model_dir, postgres, s3, redis_server, name, **extra):
    """A worker environment of its own (bucket, database) so it can be killed."""
    os.environ.update(AWS_ENV)
    suffix = secrets.token_hex(4)
    bucket = f"{name}-{suffix}"
    s3.client().create_bucket(Bucket=bucket)
    dburl = postgres.make_database(f"{name}_{suffix}")
    env = worker_env(model_dir, WORKER_DATABASE_URL=dburl, WORKER_S3_ENDPOINT_URL=s3.endpoint_url,
                     WORKER_S3_BUCKET=bucket, WORKER_REDIS_URL=redis_server.url, **extra)
    assert subprocess.run([str(BIN), "migrate"], env=env, capture_output=True).returncode == 0
    return env, bucket, dburl


def _claimed(dburl, claim="completing"):
    """A `wait_for` for `_kill_while_s3_hangs`: a complete (or cancel, or the keeper's expiry)
    has claimed an upload, so it has reached its S3 calls (made with no connection held)."""
    def waiting():
        with psycopg.connect(dburl) as conn:
            return conn.execute("SELECT 1 FROM uploads WHERE claim = %s AND claim_until > now()",
                                (claim,)).fetchone()
    return waiting


def _kill_while_s3_hangs(s3, proc, request, wait_for):
    """Freeze S3, start `request` in a thread, wait until `wait_for()` (the request reached
    its S3 calls), SIGKILL the worker, thaw S3."""
    os.kill(s3.pid, signal.SIGSTOP)
    try:
        t = threading.Thread(target=lambda: _swallow(request))
        t.start()
        deadline = time.monotonic() + 30
        while not wait_for():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    finally:
        os.kill(s3.pid, signal.SIGCONT)
    t.join()


def _file_key(dburl, upload_id):
    """The S3 key its complete recorded as the upload's file."""
    with psycopg.connect(dburl) as conn:
        return conn.execute("SELECT file_key FROM uploads WHERE id = %s", (upload_id,)).fetchone()[0]


def test_worker_killed_mid_part_then_mid_complete_and_retried(model_dir, postgres, s3, redis_server, tmp_path):
    """(4) The worker dies while a part is on its way to S3: its claim (no ETag) is not shown,
    not counted against the declared bytes, and a re-send of the part takes it over. (5) Then
    it dies while complete waits on S3: the retried complete on the restarted worker answers
    completed, and the bucket holds the file alone (no part object, no multipart upload)."""
    env, bucket, dburl = _own_worker(model_dir, postgres, s3, redis_server, "w2k", WORKER_JOB_LEASE_SECONDS="1.5")
    first, last = b"\1" * (5 * MIB), b"\2" * MIB
    proc, url = start_worker(env, tmp_path / "w.log")
    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)
        with httpx.Client(base_url=url, timeout=60) as http:
            up = _create(http, len(first) + len(last))
            p1 = send_part(http, up["id"], first).json()["id"]

            def claimed():
                with psycopg.connect(dburl) as conn:
                    return conn.execute("SELECT 1 FROM upload_parts WHERE upload_id = %s AND part_number = 2",
                                        (up["id"],)).fetchone()

            _kill_while_s3_hangs(s3, proc, lambda: send_part(http, up["id"], last), claimed)
        proc, url = start_worker(env, tmp_path / "w2.log")
        wait_until(url, proc, tmp_path / "w2.log", ready=False)
        with httpx.Client(base_url=url, timeout=60) as http:
            assert [p["id"] for p in http.get(f"/v1/uploads/{up['id']}").json()["parts"]] == [p1]
            r = send_part(http, up["id"], last)
            assert r.status_code == 200, r.text
            p2 = r.json()["id"]
            assert [p["id"] for p in http.get(f"/v1/uploads/{up['id']}").json()["parts"]] == [p1, p2]
            # (5) the worker dies while complete waits on S3; the client's retried complete on
            # the restarted worker answers completed, and the bucket holds the file alone
            _kill_while_s3_hangs(s3, proc, lambda: http.post(f"/v1/uploads/{up['id']}/complete",
                                                             json={"part_ids": [p1, p2]}), _claimed(dburl))
        proc, url = start_worker(env, tmp_path / "w3.log")
        wait_until(url, proc, tmp_path / "w3.log", ready=False)
        with httpx.Client(base_url=url, timeout=60) as http:
            r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [p1, p2]})
            assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        key = _file_key(dburl, up["id"])  # the retry's claim assembled into its own key
        assert key.startswith(f"audio/uploads/{up['id']}")
        assert _objects(s3.client(), bucket, up["id"]) == [key] and _mpu(s3.client(), bucket, up["id"]) == []
        assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == first + last
    finally:
        stop_worker(proc)


def test_killed_mid_complete_never_retried_leaves_nothing(model_dir, postgres, s3, redis_server, tmp_path):
    """(5) A worker dies while complete waits on S3 and the client never comes back. The kill
    lands at complete's first S3 call; what a kill later in the assembly leaves (the assembled
    object, never recorded, and a multipart upload still open) is added with the worker's own
    storage calls. Expiry deletes
    all of it, part objects included (the bucket is listed), and /metrics counts it. A part
    PUT at a presigned URL after its upload completed is swept once the URL has expired.
    (Expiry 6 s, one 1 MiB part: what must happen before `up` expires takes about a second.)"""
    env, bucket, dburl = _own_worker(model_dir, postgres, s3, redis_server, "w2e",
                                 WORKER_UPLOAD_EXPIRY_SECONDS="6", WORKER_JOB_LEASE_SECONDS="1.5")
    client = s3.client()
    proc, url = start_worker(env, tmp_path / "w.log")
    last = b"\2" * MIB
    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)
        with httpx.Client(base_url=url, timeout=60) as http:
            # a presigned upload completed, then its part URL PUT again (complete cannot stop a URL)
            pre = _create(http, MIB, presign=True, part_size=5 * MIB)
            url1 = pre["part_urls"][0]["url"]
            assert httpclient.put(url1, content=last, timeout=60).status_code == 200
            pre_parts = [p["id"] for p in http.get(f"/v1/uploads/{pre['id']}").json()["parts"]]
            assert http.post(f"/v1/uploads/{pre['id']}/complete", json={"part_ids": pre_parts}).status_code == 200
            assert httpclient.put(url1, content=last, timeout=60).status_code == 200
            assert len(_objects(client, bucket, pre["id"])) == 2  # the file and a stray part
            up = _create(http, len(last))
            ids = [send_part(http, up["id"], last).json()["id"]]
            _kill_while_s3_hangs(s3, proc, lambda: http.post(f"/v1/uploads/{up['id']}/complete",
                                                             json={"part_ids": ids}), _claimed(dburl))
        from transcription_worker.storage import AudioStore

        store = AudioStore(bucket, env["WORKER_S3_ENDPOINT_URL"])
        key = store.upload_key(up["id"])
        store.assemble(key, "audio/wav", [store.part_key(store.parts_prefix(up["id"]), p) for p in ids],
                       {"parts": "unrecorded"})
        client.create_multipart_upload(Bucket=bucket, Key=key)
        assert len(_objects(client, bucket, up["id"])) == 2 and len(_mpu(client, bucket, up["id"])) == 1  # part, file
        proc, url = start_worker(env, tmp_path / "w2.log")
        wait_until(url, proc, tmp_path / "w2.log", ready=False)
        deadline = time.monotonic() + 60
        while (status := httpclient.get(f"{url}/v1/uploads/{up['id']}").json()["status"]) == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert status == "expired"
        deadline = time.monotonic() + 30  # the keeper marks it expired, then cleans S3
        while keys := _objects(client, bucket, up["id"]):
            assert time.monotonic() < deadline, f"an expired upload left {keys} in the bucket"
            time.sleep(0.2)
        assert _mpu(client, bucket, up["id"]) == []
        while (keys := _objects(client, bucket, pre["id"])) != [f"audio/uploads/{pre['id']}"]:
            assert time.monotonic() < deadline, f"a stray presigned part was never swept: {keys}"
            time.sleep(0.2)
        assert re.search(r"^worker_uploads_assembled_deleted_total 1\.0$", httpclient.get(f"{url}/metrics").text, re.M)
        assert re.search(r"^worker_uploads_expired_total 1\.0$", httpclient.get(f"{url}/metrics").text, re.M)
    finally:
        stop_worker(proc)


def test_complete_racing_cancel_one_wins(http, worker, api_key):
    """(6) complete and cancel sent together: exactly one wins, the loser is a 400 saying the
    upload's status, and S3 matches the database."""
    for n in range(3):  # 6 requests each: under the fixture key's 20 a minute
        first, last = bytes([140 + n]) * (5 * MIB), bytes([150 + n]) * MIB
        up = _create(http, len(first) + len(last))
        sent = [send_part(http, up["id"], d) for d in (first, last)]
        assert [r.status_code for r in sent] == [200, 200], sent[-1].text
        ids = [r.json()["id"] for r in sent]
        out = {}

        def call(path, body, up=up):
            with httpx.Client(base_url=worker.url, timeout=120,
                              headers={"Authorization": f"Bearer {api_key}"}) as c:
                out[path] = c.post(f"/v1/uploads/{up['id']}/{path}", json=body)

        ts = [threading.Thread(target=call, args=("complete", {"part_ids": ids})),
              threading.Thread(target=call, args=("cancel", {}))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        status = http.get(f"/v1/uploads/{up['id']}").json()["status"]
        assert status in ("completed", "cancelled")
        winner = "complete" if status == "completed" else "cancel"
        loser = "cancel" if winner == "complete" else "complete"
        assert out[winner].status_code == 200 and out[winner].json()["status"] == status, out[winner].text
        err = out[loser].json()["error"]
        assert out[loser].status_code == 400 and err["code"] == "upload_not_pending", out[loser].text
        assert f"is {status}" in err["message"] and "retry-after" not in out[loser].headers
        assert bool(_objects(worker.s3, worker.bucket, up["id"])) == (status == "completed")
        assert _mpu(worker.s3, worker.bucket, up["id"]) == []


def test_a_part_resent_with_other_bytes_can_be_left_out(http, worker):
    """(3) Part 2 sent with wrong bytes, then the right ones: the upload is not stuck; the
    client completes with the parts it chooses, and the unused one is dropped."""
    first, wrong, right = b"\x61" * (5 * MIB), b"\x62" * MIB, b"\x63" * MIB
    up = _create(http, len(first) + len(right))
    p1 = send_part(http, up["id"], first).json()["id"]
    assert send_part(http, up["id"], wrong).status_code == 200
    r = send_part(http, up["id"], right)
    assert r.status_code == 200, r.text
    r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [p1, r.json()["id"]]})
    assert r.status_code == 200, r.text
    body = worker.s3.get_object(Bucket=worker.bucket, Key=f"audio/uploads/{up['id']}")["Body"].read()
    assert body == first + right


def test_cancel_md5_mismatch_and_expiry_give_back_bytes_never_received(model_dir, postgres, s3, redis_server,
                                                                        tmp_path):
    """(8) 15 MiB a day: a 10 MiB upload made of one 5 MiB part listed twice, its complete
    cancelled by an md5 mismatch, gives back the 5 MiB never received (as a cancel does), so
    10 MiB are left; a 10 MiB upload cancelled after 1 MiB leaves 9 MiB for today; one left
    to expire after 1 MiB gives back its 8 unreceived MiB too, once, though the worker is
    killed while the expiry waits on S3 (frozen): the restarted worker's expiry deletes its
    part objects (nothing is left in the bucket) and marks it expired."""
    env, bucket, dburl = _own_worker(model_dir, postgres, s3, redis_server, "w2q",
                                 WORKER_RATE_LIMIT_DAILY_UPLOAD_MB="15", WORKER_UPLOAD_EXPIRY_SECONDS="4",
                                 WORKER_JOB_LEASE_SECONDS="1.5")
    proc, url = start_worker(env, tmp_path / "w.log")
    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)
        with httpx.Client(base_url=url, timeout=60) as http:
            spec = {"filename": "a.wav", "mime_type": "audio/wav", "purpose": "t"}
            up = _create(http, 10 * MIB)
            p = send_part(http, up["id"], b"\3" * (5 * MIB)).json()["id"]
            r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [p, p], "md5": "0" * 32})
            assert r.status_code == 400 and r.json()["error"]["code"] == "checksum_mismatch", r.text
            r = http.post("/v1/uploads", json={**spec, "bytes": 10 * MIB + 1})
            assert r.status_code == 429, "more than the 10 MiB left after the md5 mismatch"
            up = _create(http, 10 * MIB)  # 5 of 15 used: the 5 MiB never received came back
            assert send_part(http, up["id"], b"\1" * MIB).status_code == 200
            assert http.post(f"/v1/uploads/{up['id']}/cancel").status_code == 200
            assert http.post("/v1/uploads", json={**spec, "bytes": 9 * MIB + 1}).status_code == 429
            up = _create(http, 9 * MIB)  # 5 + 1 + 9: the day is full
            assert send_part(http, up["id"], b"\2" * MIB).status_code == 200
            r = http.post("/v1/uploads", json={**spec, "bytes": MIB})
            assert r.status_code == 429, r.text
        # the keeper's expiry has claimed the upload and waits on frozen S3: the worker is killed there
        _kill_while_s3_hangs(s3, proc, lambda: None, _claimed(dburl, "expiring"))
        proc, url = start_worker(env, tmp_path / "w2.log")
        wait_until(url, proc, tmp_path / "w2.log", ready=False)
        with httpx.Client(base_url=url, timeout=60) as http:
            deadline = time.monotonic() + 60  # expiry gives back the 8 MiB never received
            while (r := http.post("/v1/uploads", json={**spec, "bytes": 8 * MIB})).status_code != 200:
                assert time.monotonic() < deadline, r.text
                time.sleep(0.5)
            with psycopg.connect(dburl) as conn:
                assert conn.execute("SELECT status FROM uploads WHERE id = %s", (up["id"],)).fetchone()[0] == "expired"
            assert _objects(s3.client(), bucket, up["id"]) == []
            assert http.post("/v1/uploads", json={**spec, "bytes": 1}).status_code == 429  # refunded once
    finally:
        stop_worker(proc)


def test_presigned_part_urls_sign_their_content_length(http, worker):
    """(7) Each presigned part URL is SigV4-signed with its part's exact Content-Length, so S3
    refuses any other body size (SignatureDoesNotMatch). moto does not check signatures, so
    the test checks what is signed; a body of the declared size is taken."""
    from urllib.parse import parse_qs, urlparse

    pre = _create(http, 6 * MIB, presign=True, part_size=5 * MIB)
    assert [p["bytes"] for p in pre["part_urls"]] == [5 * MIB, MIB]
    for part in pre["part_urls"]:
        qs = parse_qs(urlparse(part["url"]).query)
        assert qs["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        assert "content-length" in qs["X-Amz-SignedHeaders"][0].split(";")
    r = httpclient.put(pre["part_urls"][1]["url"], content=b"\2" * MIB, timeout=60)
    assert r.status_code == 200, r.text


def test_completes_waiting_on_slow_s3_hold_no_database_connection(http, worker, s3):
    """Ten completes of one upload sent at once while S3 hangs (frozen), as clients retrying a
    slow complete do, and two cancels of it: none holds a pooled PostgreSQL connection while
    it waits (the worker's pool holds 9: WORKER_CONCURRENCY 1 + 8), so requests that need the
    database are still answered (a GET of another upload and of this one, a create), not 503.
    Once S3 runs again, one complete assembles the file and every complete (the same request)
    answers it; the cancels, which waited for it, answer that it is completed."""
    up, other = _create(http, MIB), _create(http, MIB)
    part = send_part(http, up["id"], b"\x91" * MIB).json()["id"]
    answers: list[httpx.Response] = []

    def call(path, body):
        with httpx.Client(base_url=worker.url, timeout=120, headers=dict(http.headers)) as c:
            answers.append(c.post(f"/v1/uploads/{up['id']}/{path}", json=body))

    os.kill(s3.pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=call, args=("complete", {"part_ids": [part]})) for _ in range(10)]
        threads[0].start()
        deadline = time.monotonic() + 30
        while not _claimed(worker.database_url)():  # the first complete reached S3
            assert time.monotonic() < deadline
            time.sleep(0.05)
        threads += [threading.Thread(target=call, args=("cancel", {})) for _ in range(2)]
        for t in threads[1:]:
            t.start()
        time.sleep(1)  # the other requests arrive (a wait, not an assertion: the answers below are)
        seen = [http.get(f"/v1/uploads/{other['id']}"), http.get(f"/v1/uploads/{up['id']}"),
                http.post("/v1/uploads", json={"filename": "b.wav", "bytes": MIB, "mime_type": "audio/wav",
                                               "purpose": "transcription"})]
    finally:
        os.kill(s3.pid, signal.SIGCONT)
    for t in threads:
        t.join()
    assert [r.status_code for r in seen] == [200, 200, 200], [r.text for r in seen]
    assert seen[1].json()["status"] == "pending"  # completing reads as pending until it is done
    completes = [r for r in answers if r.request.url.path.endswith("/complete")]
    assert [r.status_code for r in completes] == [200] * 10, [r.text for r in completes]
    assert len({r.json()["file"]["id"] for r in completes}) == 1
    for r in answers:
        if r.request.url.path.endswith("/cancel"):
            assert r.status_code == 400 and "is completed" in r.json()["error"]["message"], r.text
    key = f"audio/uploads/{up['id']}"
    assert _objects(worker.s3, worker.bucket, up["id"]) == [key] and _mpu(worker.s3, worker.bucket, up["id"]) == []
    assert worker.s3.get_object(Bucket=worker.bucket, Key=key)["Body"].read() == b"\x91" * MIB
