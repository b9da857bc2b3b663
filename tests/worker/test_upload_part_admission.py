"""/v1/uploads parts: what a part may hold before its body arrives (breaker 19 F3, F4).

The part memory (WORKER_PART_MEMORY_MB) is reserved from a part's Content-Length before a byte
is read. One API key may hold only its share of it (WORKER_PART_MEMORY_KEY_PERCENT), so a key
whose parts stall leaves room for other keys; a part's body must keep arriving
(WORKER_PART_MIN_RATE_KBPS over any WORKER_PART_BODY_TIMEOUT_SECONDS), or it is 408 and its
memory freed, however it trickles and whatever it sent before; and a part refused by another check spends none of the
key's parts per minute. Each test runs a worker of its own (uploads need no model) with raw
sockets for the parts whose bodies stop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import selectors
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest
import redis
from test_upload_breaks import _create, _own_worker
from worker_helpers import send_part
from worker_support import start_worker, stop_worker, wait_until
from opsctl import httpclient

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@contextlib.contextmanager
def _worker(model_dir, postgres, s3, redis_server, tmp_path, keys: int, **settings):
    """A worker of its own with `keys` API keys and `settings`; yields (url, keys)."""
    tokens = [f"sk-test-{secrets.token_hex(16)}" for _ in range(keys)]
    env, _, _ = _own_worker(model_dir, postgres, s3, redis_server, "admit",
                            WORKER_API_KEY_HASHES=",".join(hashlib.sha256(k.encode()).hexdigest() for k in tokens),
                            **settings)
    proc, url = start_worker(env, tmp_path / "w.log")
    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)
        yield url, tokens
    finally:
        stop_worker(proc)


def _readable(socks: list[socket.socket], seconds: float) -> list[socket.socket]:
    """Those of `socks` with something to read (an answer or a close) within `seconds`.
    A selector (epoll here), not select.select: a pytest worker late in a long suite can hold
    file descriptors above select's FD_SETSIZE (1024), which select refuses with ValueError."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        return [key.fileobj for key, _ in selector.select(seconds)]


def _metric(url: str, key: str, name: str, **labels: str) -> float:
    """One sample of the worker's /metrics (Prometheus text, read with prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpclient.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _metric_reaches(url: str, key: str, name: str, value: float, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _metric(url, key, name) == value:
            return True
        time.sleep(0.1)
    return False


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def _stalled_part(url: str, key: str, upload_id: str, size: int, sent: int) -> tuple[socket.socket, bytes]:
    """A part request declaring `size` bytes of data whose body stops after the form's head and
    `sent` bytes of data: its socket, left open for the caller, and the rest of its body."""
    boundary = "b" + secrets.token_hex(8)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"part\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    where = urlparse(url)
    sock = socket.create_connection((where.hostname, where.port), timeout=30)
    sock.sendall((f"POST /v1/uploads/{upload_id}/parts HTTP/1.1\r\nHost: {where.netloc}\r\n"
                  f"Authorization: Bearer {key}\r\nContent-Length: {len(head) + size + len(tail)}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + head
                 + b"\7" * sent)
    return sock, b"\7" * (size - sent) + tail


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """The HTTP answer on `sock`: status, headers (lower-case names), JSON body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-answer: {data!r}"
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


def _openai_error(body: dict, code: str) -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], body
    assert err["code"] == code, body
    return err


def test_one_key_cannot_hold_the_whole_part_memory(model_dir, postgres, s3, redis_server, tmp_path):
    """WORKER_PART_MEMORY_MB=8 (a key's share: 4 MiB). Key A opens two 3 MiB parts whose bodies
    stall: one is held, the other is 429 `concurrent_uploads_exceeded` at once (A would pass its
    share). Key B's 3 MiB part is then taken while A's stalled part still holds its 3 MiB:
    A alone no longer keeps every other key's parts out with 503 `server_busy`."""
    with _worker(model_dir, postgres, s3, redis_server, tmp_path, keys=2,
                 WORKER_PART_MEMORY_MB="8") as (url, (a, b)):
        with _client(url, a) as ca, _client(url, b) as cb:
            up_a, up_b = _create(ca, 9 * MIB), _create(cb, 3 * MIB)
            stalled = [_stalled_part(url, a, up_a["id"], 3 * MIB, 1)[0] for _ in range(2)]
            try:
                ready = _readable(stalled, 10)
                assert len(ready) == 1, "neither or both of A's stalled parts were answered"
                status, headers, body = _answer(ready[0])
                assert status == 429 and headers["retry-after"] == "2", body
                _openai_error(body, "concurrent_uploads_exceeded")
                assert "WORKER_PART_MEMORY_KEY_PERCENT" in body["error"]["message"]
                r = send_part(cb, up_b["id"], b"\2" * (3 * MIB))  # A still holds its other 3 MiB
                assert r.status_code == 200, r.text
                assert [p["bytes"] for p in cb.get(f"/v1/uploads/{up_b['id']}").json()["parts"]] == [3 * MIB]
            finally:
                for sock in stalled:
                    sock.close()


def test_a_trickling_part_is_408_and_frees_its_memory(model_dir, postgres, s3, redis_server, tmp_path):
    """A part's body must keep arriving (here 1 s of grace: WORKER_PART_BODY_TIMEOUT_SECONDS=1,
    and a minimum rate so high a byte earns nothing). A client that sends one byte now and
    then (which keeps any idle timeout from firing) gets 408 `request_timeout` in OpenAI's shape
    and its connection closed; nothing is stored, and the 3 MiB it held of the 4 MiB part memory
    are free again: the same part sent whole is then taken."""
    with _worker(model_dir, postgres, s3, redis_server, tmp_path, keys=1, WORKER_PART_MEMORY_MB="4",
                 WORKER_PART_BODY_TIMEOUT_SECONDS="1", WORKER_PART_MIN_RATE_KBPS="1048576") as (url, (key,)):
        with _client(url, key) as http:
            up = _create(http, 3 * MIB)
            sock, _ = _stalled_part(url, key, up["id"], 3 * MIB, 1024)
            try:
                give_up = time.monotonic() + 15
                while not _readable([sock], 0.25):  # a byte every 0.25 s until answered
                    assert time.monotonic() < give_up, "the trickling part was never cut off"
                    sock.sendall(b"\7")
                status, headers, body = _answer(sock)
                try:  # the worker closed the connection (a reset when our bytes were still unread there)
                    assert sock.recv(1) == b""
                except ConnectionResetError:
                    pass
            finally:
                sock.close()
            assert status == 408 and headers["connection"] == "close", body
            err = _openai_error(body, "request_timeout")
            assert err["param"] == "data" and err["type"] == "invalid_request_error"
            assert http.get(f"/v1/uploads/{up['id']}").json()["parts"] == []  # nothing stored
            assert _metric(url, key, "worker_upload_parts_refused_total", reason="too_slow") == 1
            assert _metric(url, key, "worker_upload_part_memory_bytes") == 0  # given back
            r = send_part(http, up["id"], b"\3" * (3 * MIB))
            assert r.status_code == 200, r.text


def test_bytes_sent_up_front_buy_no_stall(model_dir, postgres, s3, redis_server, tmp_path):
    """Breaker 21 F1: under time earned per byte (mod_reqtimeout's MinRate), 2 MiB sent at once
    bought 9 minutes of stall with the part's whole Content-Length reserved. Now each window of
    WORKER_PART_BODY_TIMEOUT_SECONDS must bring WORKER_PART_MIN_RATE_KBPS's worth: bytes sent up
    front fill one window, and the part is 408 once a later one falls short."""
    with _worker(model_dir, postgres, s3, redis_server, tmp_path, keys=1,
                 WORKER_PART_BODY_TIMEOUT_SECONDS="1", WORKER_PART_MIN_RATE_KBPS="64") as (url, (key,)):
        with _client(url, key) as http:
            up = _create(http, 3 * MIB)
            sock, _ = _stalled_part(url, key, up["id"], 3 * MIB, 2 * MIB)  # 32 s earned per byte
            try:
                give_up = time.monotonic() + 15
                while not _readable([sock], 0.25):  # then a byte every 0.25 s
                    assert time.monotonic() < give_up, "the stalled part was never cut off"
                    sock.sendall(b"\7")
                status, _, body = _answer(sock)
            finally:
                sock.close()
            assert status == 408, body
            _openai_error(body, "request_timeout")
            assert http.get(f"/v1/uploads/{up['id']}").json()["parts"] == []


def test_a_slow_but_steady_part_earns_its_time_and_is_taken(model_dir, postgres, s3, redis_server, tmp_path):
    """A part's body is held to a minimum rate per window (here 64 KiB in each 1 s), so a
    client on a slow link sending steadily well past the first window is never cut off,
    whatever the part's size."""
    with _worker(model_dir, postgres, s3, redis_server, tmp_path, keys=1,
                 WORKER_PART_BODY_TIMEOUT_SECONDS="1", WORKER_PART_MIN_RATE_KBPS="64") as (url, (key,)):
        with _client(url, key) as http:
            up = _create(http, 3 * MIB)
            sock, rest = _stalled_part(url, key, up["id"], 3 * MIB, 0)
            try:
                for i in range(0, len(rest), 64 * 1024):  # 256 KiB/s, four times the rate: about 12 s
                    sock.sendall(rest[i:i + 64 * 1024])
                    time.sleep(0.25)
                status, _, body = _answer(sock)
            finally:
                sock.close()
            assert status == 200, body
            assert [p["bytes"] for p in http.get(f"/v1/uploads/{up['id']}").json()["parts"]] == [3 * MIB]


def _trickle(socks: list[socket.socket], seconds: float) -> dict[socket.socket, tuple]:
    """Send 600 bytes every 0.25 s (2.4 KiB/s) on each of `socks` until it is answered or
    `seconds` pass; {socket: its answer} for those answered."""
    answered: dict[socket.socket, tuple] = {}
    give_up = time.monotonic() + seconds
    while len(answered) < len(socks) and time.monotonic() < give_up:
        for sock in _readable([s for s in socks if s not in answered], 0.25):
            answered[sock] = _answer(sock)
        for sock in socks:
            if sock not in answered:
                try:
                    sock.sendall(b"\7" * 600)
                except OSError:  # closed by the worker as it answered: read next round
                    pass
    return answered


def test_parts_trickling_in_a_full_part_memory_are_shed_for_a_part_that_waits(
        model_dir, postgres, s3, redis_server, tmp_path):
    """Breaker 21 F1: keys A and B each held a part trickling just above the 1 KiB/s floor,
    together the whole part memory, and every other key's part was 503 `server_busy` for as long
    as they liked (hours at 64 MiB parts). Now C's part waits its turn for room, and while it
    waits the floor rises with the part memory held (mod_qos's QS_SrvMinDataRate) to
    WORKER_PART_BUSY_RATE_KBPS: one of A's and B's is 408 within a window (Retry-After: come
    back later), and C's part is taken. Nobody waiting, parts trickling in a memory more than
    half held are never cut (breaker 23 F4: two slow clients shed each other in turn)."""
    from concurrent.futures import ThreadPoolExecutor

    with _worker(model_dir, postgres, s3, redis_server, tmp_path, keys=3, WORKER_PART_MEMORY_MB="8",
                 WORKER_PART_BODY_TIMEOUT_SECONDS="3", WORKER_PART_MIN_RATE_KBPS="1",
                 WORKER_PART_BUSY_RATE_KBPS="256") as (url, (a, b, c)):
        with _client(url, a) as ca, _client(url, b) as cb, _client(url, c) as cc:
            up_a, up_b, up_c = _create(ca, 8 * MIB), _create(cb, 8 * MIB), _create(cc, 3 * MIB)
            # each declares just under half the part memory (its Content-Length counts the form too)
            half = 4 * MIB - 4096
            held = [_stalled_part(url, k, u["id"], half, 0)[0] for k, u in ((a, up_a), (b, up_b))]
            try:
                # all of it held, nobody waiting: trickling at 2.4 KiB/s they go on, window after window
                assert _trickle(held, 7) == {}, "parts trickling above the floor were cut with nobody waiting"
                full = _metric(url, c, "worker_upload_part_memory_bytes")
                assert 2 * half <= full <= 8 * MIB, full  # what the two reserved, before a byte
                assert _metric(url, c, "worker_upload_part_memory_budget_bytes") == 8 * MIB
                with ThreadPoolExecutor(2) as pool:
                    waiting = pool.submit(send_part, cc, up_c["id"], b"\4" * (3 * MIB))
                    seen = pool.submit(_metric_reaches, url, c, "worker_upload_parts_waiting", 1)
                    answers = _trickle(held, 15)
                    r = waiting.result(timeout=30)
                    assert seen.result(timeout=30), "the waiting part never showed in /metrics"
                assert r.status_code == 200, r.text  # it waited for room, and got it
                assert _metric(url, c, "worker_upload_parts_refused_total", reason="shed") == 1
                assert _metric(url, c, "worker_upload_parts_waiting") == 0
                # shed until there is room: one of them, and the other goes on
                assert len(answers) == 1, "parts trickling in a full part memory were not shed"
                ((status, headers, body),) = answers.values()
                assert status == 408 and headers["retry-after"] == "3", (headers, body)
                err = _openai_error(body, "request_timeout")
                assert "WORKER_PART_BUSY_RATE_KBPS (256 KiB/s" in err["message"], err
            finally:
                for sock in held:
                    sock.close()


def test_a_part_waits_its_turn_and_a_chunked_body_reserves_the_largest_part(
        model_dir, postgres, s3, redis_server, tmp_path):
    """Breaker 23 F1: a part sent with `Transfer-Encoding: chunked` and a small Content-Length
    beside it reserved that number while its chunked body could be any size: the part memory,
    the key share and the load were all bypassed. The HTTP parser (httptools: llhttp) now
    refuses the two together (400, as RFC 9112 6.1 allows: the shape of request smuggling), and
    a chunked body reserves the largest part (WORKER_MAX_PART_MB), as one without a
    Content-Length does. Here key A's chunked part fills the 8 MiB part memory alone; B's part
    waits its turn (it is not refused at once), A's trickle is shed for it, and B's part is taken."""
    from concurrent.futures import ThreadPoolExecutor

    with _worker(model_dir, postgres, s3, redis_server, tmp_path, keys=2, WORKER_PART_MEMORY_MB="8",
                 WORKER_PART_BODY_TIMEOUT_SECONDS="3", WORKER_PART_MIN_RATE_KBPS="1",
                 WORKER_PART_BUSY_RATE_KBPS="256") as (url, (a, b)):
        with _client(url, a) as ca, _client(url, b) as cb:
            up_a, up_b = _create(ca, 8 * MIB), _create(cb, 3 * MIB)
            boundary = "b" + secrets.token_hex(8)
            head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"part\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n").encode()
            where = urlparse(url)

            def chunked_part(extra: str) -> socket.socket:
                sock = socket.create_connection((where.hostname, where.port), timeout=30)
                sock.sendall((f"POST /v1/uploads/{up_a['id']}/parts HTTP/1.1\r\nHost: {where.netloc}\r\n"
                              f"Authorization: Bearer {a}\r\n{extra}Transfer-Encoding: chunked\r\n"
                              f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
                             + f"{len(head):x}\r\n".encode() + head + b"\r\n")
                return sock

            with chunked_part("Content-Length: 10\r\n") as smuggled:
                assert smuggled.recv(4096).startswith(b"HTTP/1.1 400 "), "Content-Length beside chunked was taken"
            sock = chunked_part("")
            try:
                time.sleep(1)  # admitted, holding what it reserved
                with ThreadPoolExecutor(1) as pool:
                    waiting = pool.submit(send_part, cb, up_b["id"], b"\5" * (3 * MIB))
                    answers = {}
                    give_up = time.monotonic() + 15
                    while not answers and time.monotonic() < give_up:  # 600-byte chunks, 2.4 KiB/s
                        if _readable([sock], 0.25):
                            answers[sock] = _answer(sock)
                        else:
                            sock.sendall(b"258\r\n" + b"\7" * 600 + b"\r\n")
                    r = waiting.result(timeout=30)
            finally:
                sock.close()
            assert answers, "the chunked part was never shed: it reserved less than it could hold"
            ((status, _, body),) = answers.values()
            assert status == 408, body
            assert r.status_code == 200, r.text


def test_room_goes_to_the_waiting_key_served_longest_ago(model_dir, postgres, s3, redis_server, tmp_path):
    """Breaker 24: first come, first served let keys that hold the part memory and keys queueing
    parts beside them keep a fifth key out for good: the head of the queue was always theirs.
    Room now goes to the waiting part of the key whose last part was admitted longest ago. Here
    A and B fill the memory, D (served a moment ago) and then C (never served) wait; when A's
    part is done, C's part is taken first, D's after it."""
    from concurrent.futures import ThreadPoolExecutor

    with _worker(model_dir, postgres, s3, redis_server, tmp_path, keys=4, WORKER_PART_MEMORY_MB="8",
                 WORKER_PART_BODY_TIMEOUT_SECONDS="3", WORKER_PART_MIN_RATE_KBPS="1",
                 WORKER_PART_BUSY_RATE_KBPS="1") as (url, (a, b, c, d)):
        with _client(url, a) as ca, _client(url, b) as cb, _client(url, c) as cc, _client(url, d) as cd:
            ups = {k: _create(h, 8 * MIB) for k, h in (("a", ca), ("b", cb), ("c", cc), ("d", cd))}
            assert send_part(cd, ups["d"]["id"], b"\6" * MIB).status_code == 200  # D is served now
            half = 4 * MIB - 4096
            (sa, rest_a), (sb, _) = (_stalled_part(url, k, ups[n]["id"], half, 0) for k, n in ((a, "a"), (b, "b")))
            done: list[str] = []
            sent = 0

            def trickle(seconds: float) -> None:  # A's own body, 2.4 KiB/s; B's, junk it never finishes
                nonlocal sent
                for _ in range(int(seconds / 0.25)):
                    assert not _readable([sa, sb], 0.25), "A or B was answered"
                    sa.sendall(rest_a[sent:sent + 600])
                    sb.sendall(b"\7" * 600)
                    sent += 600

            try:
                trickle(1)  # both admitted: the part memory is full
                with ThreadPoolExecutor(2) as pool:
                    def send(name, http):
                        r = send_part(http, ups[name]["id"], (b"\7" if name == "c" else b"\8") * (3 * MIB))
                        done.append(name)
                        return r
                    later_d = pool.submit(send, "d", cd)
                    trickle(1)  # D waits first
                    later_c = pool.submit(send, "c", cc)
                    trickle(1)  # then C
                    sa.sendall(rest_a[sent:])  # A's part done: room for one of them
                    status, _, body = _answer(sa)
                    assert status == 200, body
                    assert later_c.result(timeout=30).status_code == 200
                    assert later_d.result(timeout=30).status_code == 200
            finally:
                sa.close()
                sb.close()
            assert done == ["c", "d"], done


def test_parts_refused_by_other_checks_spend_no_parts_per_minute(model_dir, postgres, s3, redis_server,
                                                                  tmp_path):
    """Two parts per minute, one part at a time per key. Two parts that are not
    multipart/form-data (400) and three sent while a stalled part holds the key's one slot
    (429 `concurrent_uploads_exceeded`) count nothing: the stalled part, finished, and one
    more part are the minute's two, and both are taken."""
    with _worker(model_dir, postgres, s3, redis_server, tmp_path, keys=1,
                 WORKER_RATE_LIMIT_CONCURRENT_UPLOADS="1",
                 WORKER_RATE_LIMIT_PARTS_PER_MINUTE="2") as (url, (key,)):
        slots = f"worker:uploads:{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        with _client(url, key) as http, redis.Redis.from_url(redis_server.url) as store:
            up = _create(http, 2 * MIB)
            for _ in range(2):
                r = http.post(f"/v1/uploads/{up['id']}/parts", json={"data": "not a form"})
                assert r.status_code == 400, r.text
                _openai_error(r.json(), "missing_data")
            sock, rest = _stalled_part(url, key, up["id"], MIB, MIB // 2)
            try:
                give_up = time.monotonic() + 10
                while store.zcard(slots) != 1:  # the stalled part holds the key's slot
                    assert time.monotonic() < give_up, "the stalled part never took its upload slot"
                    assert not _readable([sock], 0.05), _answer(sock)
                for i in range(3):
                    r = send_part(http, up["id"], bytes([10 + i]) * 1024)
                    assert r.status_code == 429, r.text
                    _openai_error(r.json(), "concurrent_uploads_exceeded")
                sock.sendall(rest)
                status, _, body = _answer(sock)
                assert status == 200, body
            finally:
                sock.close()
            r = send_part(http, up["id"], b"\4" * MIB)
            assert r.status_code == 200, r.text
            assert len(http.get(f"/v1/uploads/{up['id']}").json()["parts"]) == 2
