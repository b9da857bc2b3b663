"""/v1/uploads parts as S3 clients send them (issue 26 review): byte-identical parts (long
silence) deduplicated into one part id that `complete` lists more than once, parts sent in
reverse order and in parallel, an assembly interrupted at either step of S3's work and
retried, cancel leaving no object, a create retried with its Idempotency-Key, and the audio
backup leaving part objects out. Parts are 5 MiB (S3's minimum for all but the last) and few."""

from __future__ import annotations

import hashlib
import threading

import pytest
from worker_helpers import send_part
from opsctl import httpclient

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def _create(http, size, headers=None, **over):
    spec = {"filename": "a.wav", "bytes": size, "mime_type": "audio/wav", "purpose": "transcription"}
    r = http.post("/v1/uploads", json={**spec, **over}, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


def _keys(worker, upload_id):
    """Every object of the upload: its file and its part objects (`audio/upload-parts/<id>/`)."""
    pager = worker.s3.get_paginator("list_objects_v2")
    return sorted(o["Key"] for prefix in (f"audio/uploads/{upload_id}", f"audio/upload-parts/{upload_id}/")
                  for p in pager.paginate(Bucket=worker.bucket, Prefix=prefix) for o in p.get("Contents", []))


def _open_mpus(worker, upload_id):
    return worker.s3.list_multipart_uploads(Bucket=worker.bucket,
                                            Prefix=f"audio/uploads/{upload_id}").get("Uploads", [])


def _file(worker, upload_id):
    return worker.s3.get_object(Bucket=worker.bucket, Key=f"audio/uploads/{upload_id}")["Body"].read()


def test_identical_parts_complete_with_one_part_id_listed_twice(http, worker):
    """Ten MiB of silence then a tail: both silent parts are one part id (stored once), and
    complete takes [silence, silence, tail] into the right 11 MiB; nothing else is left."""
    silence, tail = b"\0" * (5 * MIB), b"\1" * MIB
    up = _create(http, 2 * len(silence) + len(tail))
    first = send_part(http, up["id"], silence).json()["id"]
    second = send_part(http, up["id"], silence).json()["id"]
    assert second == first  # deduplicated: one part, one object
    last = send_part(http, up["id"], tail).json()["id"]
    assert len(http.get(f"/v1/uploads/{up['id']}").json()["parts"]) == 2
    expected = silence + silence + tail
    r = http.post(f"/v1/uploads/{up['id']}/complete",
                  json={"part_ids": [first, second, last], "md5": hashlib.md5(expected).hexdigest()})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    assert _file(worker, up["id"]) == expected
    assert _keys(worker, up["id"]) == [f"audio/uploads/{up['id']}"]  # part objects deleted
    assert _open_mpus(worker, up["id"]) == []


def test_parts_sent_in_reverse_and_in_parallel_complete_into_the_right_bytes(http, worker):
    """Three parts sent last-first, two at once (as S3 transfer managers and the OpenAI SDK
    do; the fixture key may send 2 bodies at once), the first one twice at the same time
    (one part): complete in the file's order
    assembles the file; one listed twice in another order
    is taken too (a repeated id), and a small part anywhere but last is still refused."""
    a, b, c = b"\x0a" * (5 * MIB), b"\x0b" * (5 * MIB), b"\x0c" * MIB
    up = _create(http, len(a) + len(b) + len(c))
    answers: list[tuple[bytes, int, str]] = []

    def send(data):
        r = send_part(http, up["id"], data)
        answers.append((data[:1], r.status_code, r.json().get("id") or r.text))

    for wave in ((c, b), (a, a)):
        threads = [threading.Thread(target=send, args=(d,)) for d in wave]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [code for _, code, _ in answers] == [200] * 4, answers
    ids = {first: part for first, _, part in answers}
    assert sorted(part for first, _, part in answers if first == b"\x0a") == [ids[b"\x0a"]] * 2  # one part
    assert len(ids) == 3 and len(http.get(f"/v1/uploads/{up['id']}").json()["parts"]) == 3
    small_first = [ids[b"\x0c"], ids[b"\x0a"], ids[b"\x0b"]]
    r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": small_first})
    assert r.status_code == 400 and r.json()["error"]["code"] == "part_too_small", r.text
    r = http.post(f"/v1/uploads/{up['id']}/complete",
                  json={"part_ids": [ids[b"\x0a"], ids[b"\x0b"], ids[b"\x0c"]]})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    assert _file(worker, up["id"]) == a + b + c
    assert _keys(worker, up["id"]) == [f"audio/uploads/{up['id']}"]

    again = _create(http, 2 * len(b) + len(a) + len(c))  # b, a, b, c: a part id repeated, not adjacent
    sent = {d[:1]: send_part(http, again["id"], d).json()["id"] for d in (c, a, b)}
    r = http.post(f"/v1/uploads/{again['id']}/complete",
                  json={"part_ids": [sent[b"\x0b"], sent[b"\x0a"], sent[b"\x0b"], sent[b"\x0c"]]})
    assert r.status_code == 200, r.text
    assert _file(worker, again["id"]) == b + a + b + c


def test_parallel_parts_count_in_flight_against_twice_the_bytes_and_the_key_s_slots(http, worker, s3):
    """Parts on their way to S3 count: with S3 frozen, a 5 MiB upload holding one 5 MiB part
    and a second in flight refuses a third (413: twice the declared bytes would be passed),
    and a part is a request carrying audio, so the key's 2 concurrent-upload slots (both
    held by parts in flight) refuse a third body at once (429 concurrent_uploads_exceeded)."""
    import os
    import signal
    import time

    import httpx
    import psycopg

    up, other = _create(http, 5 * MIB), _create(http, MIB)
    assert send_part(http, up["id"], b"\x51" * (5 * MIB)).status_code == 200
    out = {}

    def in_flight(upload_id, n):
        with psycopg.connect(worker.database_url) as conn:
            return conn.execute("SELECT count(*) FROM upload_parts WHERE upload_id = %s AND etag IS NULL",
                                (upload_id,)).fetchone()[0] == n

    def send(name, upload_id, data):
        with httpx.Client(base_url=worker.url, timeout=120, headers=dict(http.headers)) as c:
            out[name] = send_part(c, upload_id, data)

    os.kill(s3.pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=send, args=("b", up["id"], b"\x52" * (5 * MIB))),
                   threading.Thread(target=send, args=("o", other["id"], b"\x54" * MIB))]
        deadline = time.monotonic() + 30
        for t, (upload_id, n) in zip(threads, ((up["id"], 1), (other["id"], 1))):
            t.start()
            while not in_flight(upload_id, n):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with httpx.Client(base_url=worker.url, timeout=20, headers=dict(http.headers)) as c:
            third = send_part(c, up["id"], b"\x53" * (5 * MIB))
        assert third.status_code == 429 and third.json()["error"]["code"] == "concurrent_uploads_exceeded", third.text
    finally:
        os.kill(s3.pid, signal.SIGCONT)
    for t in threads:
        t.join()
    assert out["b"].status_code == 200 and out["o"].status_code == 200, (out["b"].text, out["o"].text)
    # the same, one body at a time: a part claimed but not yet stored counts too
    with psycopg.connect(worker.database_url) as conn:  # B's claim as if its PUT were still running
        conn.execute("UPDATE upload_parts SET etag = NULL WHERE id = %s", (out["b"].json()["id"],))
    r = send_part(http, up["id"], b"\x53" * (5 * MIB))
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large", r.text
    sizes = [o["Size"] for o in worker.s3.list_objects_v2(Bucket=worker.bucket, Prefix=f"audio/upload-parts/{up['id']}/")
             .get("Contents", [])]
    assert sum(sizes) <= 2 * 5 * MIB, sizes


def test_a_complete_interrupted_in_s3_is_retried_into_the_right_file(http, worker):
    """What a complete whose worker died leaves in S3, made here with the worker's own storage
    calls: (1) an assembly half-made (its multipart upload open, one part copied), (2) a
    finished assembly of another part list that was never recorded, (3) a finished one of the
    same list (with a later redo's multipart upload left open). A retried complete aborts (1),
    redoes (2) in the order it asks for, records (3), and leaves only the file each time."""
    from transcription_worker.storage import AudioStore

    a, b = b"\x2a" * (5 * MIB), b"\x2b" * (5 * MIB)
    up = _create(http, len(a) + len(b))
    pa, pb = (send_part(http, up["id"], d).json()["id"] for d in (a, b))
    store = AudioStore(worker.bucket, worker.env["WORKER_S3_ENDPOINT_URL"])
    key = f"audio/uploads/{up['id']}"
    parts = store.parts_prefix(up["id"])
    half = worker.s3.create_multipart_upload(Bucket=worker.bucket, Key=key)["UploadId"]
    worker.s3.upload_part_copy(Bucket=worker.bucket, Key=key, UploadId=half, PartNumber=1,
                               CopySource={"Bucket": worker.bucket, "Key": store.part_key(parts, pa)})
    r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [pb, pa]})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    assert _file(worker, up["id"]) == b + a
    assert _open_mpus(worker, up["id"]) == [] and _keys(worker, up["id"]) == [key]

    up = _create(http, len(a) + len(b))
    pa, pb = (send_part(http, up["id"], d).json()["id"] for d in (a, b))
    key, parts = f"audio/uploads/{up['id']}", store.parts_prefix(up["id"])
    store.assemble(key, "audio/wav", [store.part_key(parts, pa), store.part_key(parts, pb)],
                   {"parts": "an earlier complete's list"})
    r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [pb, pa]})
    assert r.status_code == 200, r.text
    assert _file(worker, up["id"]) == b + a  # not the unrecorded a + b
    assert _keys(worker, up["id"]) == [key] and _open_mpus(worker, up["id"]) == []

    # (3) the same list finished and its part objects partly deleted, never recorded: the
    # object's `parts` fingerprint (SHA-256 of the ids, one a line) says it is this list's
    up = _create(http, len(a) + len(b))
    pa, pb = (send_part(http, up["id"], d).json()["id"] for d in (a, b))
    key, parts = f"audio/uploads/{up['id']}", store.parts_prefix(up["id"])
    store.assemble(key, "audio/wav", [store.part_key(parts, pb), store.part_key(parts, pa)],
                   {"parts": hashlib.sha256(f"{pb}\n{pa}".encode()).hexdigest()})
    store.delete(store.part_key(parts, pb))
    worker.s3.create_multipart_upload(Bucket=worker.bucket, Key=key)  # a later redo, killed too
    r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [pb, pa]})
    assert r.status_code == 200, r.text
    assert _file(worker, up["id"]) == b + a and _keys(worker, up["id"]) == [key]
    assert _open_mpus(worker, up["id"]) == []


def test_cancel_leaves_no_object_of_the_upload(http, worker):
    """Parts are objects while an upload is pending; cancel deletes them all."""
    up = _create(http, 6 * MIB)
    send_part(http, up["id"], b"\x31" * (5 * MIB))
    assert len(_keys(worker, up["id"])) == 1
    assert http.post(f"/v1/uploads/{up['id']}/cancel").json()["status"] == "cancelled"
    assert _keys(worker, up["id"]) == [] and _open_mpus(worker, up["id"]) == []


def test_a_create_retried_with_its_idempotency_key_is_the_same_upload(http, worker):
    """A create whose answer was lost, retried with the same Idempotency-Key, answers the same
    upload (no second one); the key reused for another upload is 422; complete retried
    answers the completed upload."""
    key = {"Idempotency-Key": "create-1"}
    first = _create(http, MIB, headers=key)
    again = _create(http, MIB, headers=key)
    assert again["id"] == first["id"] and again["status"] == "pending"
    r = http.post("/v1/uploads", headers=key, json={"filename": "a.wav", "bytes": 2 * MIB,
                                                    "mime_type": "audio/wav", "purpose": "transcription"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused", r.text
    part = send_part(http, first["id"], b"\x41" * MIB).json()["id"]
    done = [http.post(f"/v1/uploads/{first['id']}/complete", json={"part_ids": [part]},
                      headers={"Idempotency-Key": "complete-1"}) for _ in range(2)]
    assert [r.status_code for r in done] == [200, 200]
    assert done[0].json()["file"]["id"] == done[1].json()["file"]["id"]


def test_an_idempotency_key_reused_for_a_presigned_create_with_another_part_size_is_422(http, worker):
    """A presigned create retried with its Idempotency-Key answers the first's part URLs; the
    key reused with another part_size (other part URLs), or without presign, is 422."""
    key = {"Idempotency-Key": "presign-1"}
    first = _create(http, 6 * MIB, headers=key, presign=True, part_size=5 * MIB)
    again = _create(http, 6 * MIB, headers=key, presign=True, part_size=5 * MIB)
    assert again["id"] == first["id"]
    assert [p["bytes"] for p in again["part_urls"]] == [p["bytes"] for p in first["part_urls"]] == [5 * MIB, MIB]
    spec = {"filename": "a.wav", "bytes": 6 * MIB, "mime_type": "audio/wav", "purpose": "transcription"}
    for over in ({"presign": True, "part_size": 6 * MIB}, {"presign": True}, {}):
        r = http.post("/v1/uploads", headers=key, json={**spec, **over})
        assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused", (over, r.text)


def test_a_second_complete_with_other_part_ids_or_md5_is_409(http, worker):
    """Only the complete that completed an upload, retried as it was, is answered 200: another
    part list, or an md5 the first did not give, is 409 `upload_already_completed` (the file
    is what the first made; a 200 would tell the client its list was assembled)."""
    a, b = b"\x43" * MIB, b"\x44" * MIB
    up = _create(http, MIB)
    pa, pb = (send_part(http, up["id"], d).json()["id"] for d in (a, b))
    first = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [pa]})
    assert first.status_code == 200, first.text
    for body in ({"part_ids": [pb]}, {"part_ids": [pa], "md5": hashlib.md5(a).hexdigest()},
                 {"part_ids": ["part_nonexistent"]}):
        r = http.post(f"/v1/uploads/{up['id']}/complete", json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "upload_already_completed", (body, r.text)
    again = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [pa]})
    assert again.status_code == 200 and again.json()["file"] == first.json()["file"], again.text
    assert _file(worker, up["id"]) == a


def test_the_audio_backup_leaves_upload_part_objects_out(http, worker):
    """opsctl's audio backup copies completed objects only: a pending upload's part objects
    are not in its inventory; the completed file is."""
    from opsctl.backup.files import inventory

    up = _create(http, MIB)
    part = send_part(http, up["id"], b"\x51" * MIB).json()["id"]
    (part_key,) = _keys(worker, up["id"])
    listed = {o["key"] for o in inventory(worker.s3, worker.bucket)}
    assert part_key.startswith(f"audio/upload-parts/{up['id']}/") and part_key not in listed
    http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [part]})
    assert f"audio/uploads/{up['id']}" in {o["key"] for o in inventory(worker.s3, worker.bucket)}
    # an upload made before parts had a prefix of their own keeps them beside its file's key
    old = f"audio/uploads/upload_{'e' * 32}.parts/part_{'e' * 32}"
    worker.s3.put_object(Bucket=worker.bucket, Key=old, Body=b"\x52")
    assert old not in {o["key"] for o in inventory(worker.s3, worker.bucket)}
    worker.s3.delete_object(Bucket=worker.bucket, Key=old)


def test_a_part_landing_after_its_upload_was_cancelled_is_deleted(http, worker, s3, api_key):
    """S3 frozen while a part is on its way and a cancel has claimed the upload: once S3 runs
    again, the cancel ends the upload and the part, landing while it is claimed or after, is
    deleted by its own request (400 `upload_not_pending`): no object is left."""
    import os
    import signal
    import time

    import httpx
    import psycopg

    up = _create(http, 6 * MIB)
    out = {}

    def call(name, fn):
        with httpx.Client(base_url=worker.url, timeout=120,
                          headers={"Authorization": f"Bearer {api_key}"}) as c:
            out[name] = fn(c)

    def seen(sql, params=()):
        with psycopg.connect(worker.database_url) as conn:
            return conn.execute(sql, params or None).fetchone()

    def part(c):
        return send_part(c, up["id"], b"\x61" * MIB)

    def cancel(c):
        return c.post(f"/v1/uploads/{up['id']}/cancel")

    os.kill(s3.pid, signal.SIGSTOP)
    threads = []
    try:
        threads.append(threading.Thread(target=call, args=("part", part)))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while not seen("SELECT 1 FROM upload_parts WHERE upload_id = %s AND etag IS NULL", (up["id"],)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        threads.append(threading.Thread(target=call, args=("cancel", cancel)))
        threads[-1].start()
        while not seen("SELECT 1 FROM uploads WHERE id = %s AND claim = 'cancelling'", (up["id"],)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(s3.pid, signal.SIGCONT)
    for t in threads:
        t.join()
    assert out["cancel"].status_code == 200 and out["cancel"].json()["status"] == "cancelled"
    assert out["part"].status_code == 400 and out["part"].json()["error"]["code"] == "upload_not_pending"
    assert _keys(worker, up["id"]) == [] and _open_mpus(worker, up["id"]) == []


def test_presigned_parts_put_last_first_complete_in_the_files_order(http, worker):
    """`presign: true` keeps its contract with parts as objects: the client PUTs part 2 before
    part 1 at their URLs; GET lists them by part number and complete takes their ids."""

    a, b = b"\x71" * (5 * MIB), b"\x72" * MIB
    up = _create(http, len(a) + len(b), presign=True, part_size=5 * MIB)
    urls = [p["url"] for p in up["part_urls"]]
    assert httpclient.put(urls[1], content=b, timeout=60).status_code == 200
    assert httpclient.put(urls[0], content=a, timeout=60).status_code == 200
    parts = http.get(f"/v1/uploads/{up['id']}").json()["parts"]
    assert [p["bytes"] for p in parts] == [len(a), len(b)]
    r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": [p["id"] for p in parts]})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    assert _file(worker, up["id"]) == a + b and _keys(worker, up["id"]) == [f"audio/uploads/{up['id']}"]


def test_an_upload_of_the_previous_version_is_refused_parts_and_cancelled_cleanly(http, worker):
    """An upload the previous worker version made (one S3 multipart upload opened at create,
    its id on the row) takes no part and no complete here (400), and cancel aborts its S3
    multipart upload."""
    import psycopg

    up = _create(http, 6 * MIB)
    key = f"audio/uploads/{up['id']}"
    mpu = worker.s3.create_multipart_upload(Bucket=worker.bucket, Key=key)["UploadId"]
    worker.s3.upload_part(Bucket=worker.bucket, Key=key, UploadId=mpu, PartNumber=1, Body=b"\x81" * MIB)
    with psycopg.connect(worker.database_url) as conn:
        conn.execute("UPDATE uploads SET s3_upload_id = %s WHERE id = %s", (mpu, up["id"]))
    r = send_part(http, up["id"], b"\x82" * MIB)
    assert r.status_code == 400 and "earlier worker version" in r.json()["error"]["message"], r.text
    r = http.post(f"/v1/uploads/{up['id']}/complete", json={"part_ids": ["part_" + "0" * 32]})
    assert r.status_code == 400 and "earlier worker version" in r.json()["error"]["message"], r.text
    assert http.post(f"/v1/uploads/{up['id']}/cancel").json()["status"] == "cancelled"
    assert _open_mpus(worker, up["id"]) == [] and _keys(worker, up["id"]) == []
