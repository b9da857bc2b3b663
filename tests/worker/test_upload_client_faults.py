"""What clients do wrong, and what a store failure does at the wrong instant, on the Uploads API.

- Bad JSON is the client's 400, never the store's 503 or a 500: text no UTF-8 holds (a lone
  surrogate such as "\\ud800" is valid JSON), in any field and in `part_ids`; a body nested
  past Python's recursion limit.
- A client whose connection drops mid-part (the case a resumable upload exists for) is no
  server error: no traceback logged, no 5xx counted for deploy analysis to hold against a
  release (recorded as 499, nginx's "client closed request").
- A part over WORKER_MAX_PART_MB is refused even when it fits the multipart slack.
- A PostgreSQL error at the instant an idempotent create records the limits' decision gives
  the bytes back: the client's retry creates the upload, charged once (it was charged twice
  and then refused for the rest of the UTC day).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time

import httpx
import psycopg
import pytest
import redis

from test_upload_breaks import _own_worker  # noqa: E402
from worker_helpers import drop_mid_part  # noqa: E402
from worker_support import start_worker, stop_worker, wait_until  # noqa: E402
from opsctl import httpclient

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
SPEC = {"filename": "a.wav", "bytes": 20 * MIB, "mime_type": "audio/wav", "purpose": "t"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def w(model_dir, postgres, s3, redis_server, tmp_path_factory):
    env, _bucket, _dburl = _own_worker(model_dir, postgres, s3, redis_server, "clientfaults",
                                       WORKER_MAX_PART_MB="6")
    log = tmp_path_factory.mktemp("clientfaults") / "w.log"
    proc, url = start_worker(env, log)
    try:
        wait_until(url, proc, log, ready=False)
        yield url, log
    finally:
        stop_worker(proc)


def _upload(url) -> str:
    r = httpclient.post(f"{url}/v1/uploads", json=SPEC, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _server_errors(url: str, log) -> tuple[list[str], list[str]]:
    scraped = httpclient.get(f"{url}/metrics", timeout=10).text
    fives = [ln for ln in scraped.splitlines() if ln.startswith("worker_requests_total") and 'status="5' in ln]
    unhandled = [ln[:200] for ln in log.read_text(errors="replace").splitlines() if "unhandled" in ln]
    return fives, unhandled


def test_bad_json_is_a_client_error(w):
    url, log = w
    up = _upload(url)
    nested = b"[" * 200_000 + b"]" * 200_000
    cases = {
        "filename": ("/v1/uploads", b'{"filename": "a\\ud800.wav", "bytes": 6291456, "mime_type": "audio/wav",'
                                    b' "purpose": "t"}'),
        "purpose": ("/v1/uploads", b'{"filename": "a.wav", "bytes": 6291456, "mime_type": "audio/wav",'
                                   b' "purpose": "\\udfff"}'),
        "part_ids": (f"/v1/uploads/{up}/complete", b'{"part_ids": ["part_\\ud800"]}'),
        "a key": ("/v1/uploads", b'{"\\ud800": 1, "filename": "a.wav"}'),
        "nested create": ("/v1/uploads", nested),
        "nested complete": (f"/v1/uploads/{up}/complete", b'{"part_ids": ' + nested + b"}"),
    }
    with httpx.Client(base_url=url, timeout=60) as http:  # one kept-alive connection throughout
        for name, (path, body) in cases.items():
            r = http.post(path, headers=JSON, content=body)
            assert r.status_code == 400, (name, r.status_code, r.text)
            assert r.json()["error"]["code"] == "invalid_json" and "retry-after" not in r.headers, (name, r.text)
    assert _server_errors(url, log) == ([], [])


def test_a_lone_surrogate_in_any_stored_text_field_is_400_naming_it():
    from transcription_worker.errors import APIError
    from transcription_worker.uploads import no_control

    assert no_control("é ü 語", "filename") == "é ü 語"
    with pytest.raises(APIError) as refused:
        no_control("a\ud800b", "prompt", lines=True)
    assert refused.value.status == 400 and refused.value.param == "prompt"


def test_a_filename_with_a_bidirectional_override_is_refused_and_nothing_is_made(w):
    """Breaker 57: a filename holding U+202E (right-to-left override) was stored and echoed in
    GET and in the file's `filename`, where "\u202e3pm.exe" reads "exe.mp3". Overrides,
    embeddings and isolates are refused in a stored name (400 naming `filename`); a prompt's
    text may hold them, and a right-to-left mark (U+200F) stays a name's character."""
    from transcription_worker.uploads import no_control

    url, log = w
    for bad in ("\u202e3pm.exe", "ep\u2066isode.mp3", "a\u202ab.wav", "ep\u2028forged.mp3", "ep\U000e0041.mp3"):
        r = httpclient.post(f"{url}/v1/uploads", json={**SPEC, "filename": bad}, timeout=60)
        assert r.status_code == 400, (bad, r.text)
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "filename") and "control" in error["message"]
    named = httpclient.post(f"{url}/v1/uploads", json={**SPEC, "filename": "\u05e4\u05e8\u05e7\u200f.mp3"}, timeout=60)
    assert named.status_code == 200 and named.json()["filename"] == "\u05e4\u05e8\u05e7\u200f.mp3", named.text
    assert no_control("\u202eright to left\u202c", "prompt", lines=True) == "\u202eright to left\u202c"
    assert _server_errors(url, log) == ([], [])


def test_a_client_dropping_mid_part_is_no_server_error(w):
    url, log = w
    up = _upload(url)
    drop_mid_part(url, None, up, b"a" * (5 * MIB))
    # wait for the series itself: "499" alone also turns up in other figures (bytes, seconds)
    series = re.compile(r'worker_requests_total\{[^}]*route="/v1/uploads/\{upload_id\}/parts"[^}]*status="499"')
    deadline = time.monotonic() + 30
    while not series.search(httpclient.get(f"{url}/metrics", timeout=10).text):
        assert time.monotonic() < deadline, "the dropped part was never counted as 499 (client closed request)"
        time.sleep(0.2)
    assert _server_errors(url, log) == ([], [])
    again = httpclient.get(f"{url}/v1/uploads/{up}", timeout=30).json()  # nothing stored: resume from here
    assert again["status"] == "pending" and not again.get("parts")


def test_a_part_over_the_part_cap_is_refused_even_within_the_form_slack(w):
    url, _ = w
    up = _upload(url)
    r = httpclient.post(f"{url}/v1/uploads/{up}/parts", files={"data": ("p", b"b" * (6 * MIB + 40 * 1024))}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["param"] == "data", r.text
    assert not httpclient.get(f"{url}/v1/uploads/{up}", timeout=30).json().get("parts")
    ok = httpclient.post(f"{url}/v1/uploads/{up}/parts", files={"data": ("p", b"c" * (6 * MIB))}, timeout=60)
    assert ok.status_code == 200, ok.text  # the cap itself is allowed


# a store failure at one instant: the first 'creating' -> decided UPDATE fails as a PostgreSQL
# restart ends a session (SQLSTATE 57P01, admin_shutdown)
_FAIL_ONCE = """
CREATE SEQUENCE decide_failures;
CREATE FUNCTION fail_first_decision() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF OLD.claim = 'creating' AND NEW.claim IS NULL AND nextval('decide_failures') = 1 THEN
    RAISE EXCEPTION 'terminating connection due to administrator command' USING ERRCODE = '57P01';
  END IF;
  RETURN NEW;
END $f$;
CREATE TRIGGER fail_first_decision BEFORE UPDATE ON uploads FOR EACH ROW EXECUTE FUNCTION fail_first_decision();
"""


def test_a_store_error_while_a_create_is_decided_charges_its_bytes_once(model_dir, postgres, s3, redis_server,
                                                                        tmp_path):
    key = f"sk-test-{secrets.token_hex(16)}"
    env, _bucket, dburl = _own_worker(model_dir, postgres, s3, redis_server, "decidefails",
                                      WORKER_API_KEY_HASHES=hashlib.sha256(key.encode()).hexdigest(),
                                      WORKER_RATE_LIMIT_DAILY_UPLOAD_MB="12", WORKER_JOB_LEASE_SECONDS="6")
    env["WORKER_REDIS_URL"] = f"redis://127.0.0.1:{redis_server.port}/8"
    limits = redis.Redis.from_url(env["WORKER_REDIS_URL"])
    limits.flushdb()
    with psycopg.connect(dburl, autocommit=True) as conn:
        conn.execute(_FAIL_ONCE)
    proc, url = start_worker(env, tmp_path / "w.log")

    def day_mib() -> float:
        return sum(float(limits.get(k)) for k in limits.keys("worker:upload-bytes:*")) / MIB

    try:
        wait_until(url, proc, tmp_path / "w.log", ready=False)
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"episode-{secrets.token_hex(4)}"}
        spec = {**SPEC, "filename": "episode.mp3", "bytes": 10 * MIB, "mime_type": "audio/mpeg"}
        first = httpclient.post(f"{url}/v1/uploads", headers=headers, json=spec, timeout=60)
        assert first.status_code == 503, first.text  # the outage, as the client sees it
        assert day_mib() == 0  # the create was undone: nothing charged for it
        time.sleep(int(first.headers.get("retry-after", "5")))
        retry = httpclient.post(f"{url}/v1/uploads", headers=headers, json=spec, timeout=60)
        assert retry.status_code == 200, retry.text
        assert day_mib() == 10  # charged once
        with psycopg.connect(dburl) as conn:
            assert conn.execute("SELECT count(*) FROM uploads").fetchone()[0] == 1
    finally:
        stop_worker(proc)


def test_an_unknown_part_id_is_named_cut_short_never_echoed_whole(w):
    """A 100 kB string in part_ids was sent back whole in the 400's message. Now each unknown id
    is cut to 40 characters with its length, at most three are named and the rest counted."""
    url, _log = w
    upload = _upload(url)
    huge = "p" * 100_000
    r = httpclient.post(f"{url}/v1/uploads/{upload}/complete", timeout=60,
                   json={"part_ids": [huge, "part_a", "part_b", "part_c", "part_d"]})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert len(r.content) < 1000 and "(100000 characters)" in message and "and 2 more" in message, message
    assert r.json()["error"]["param"] == "part_ids"


BIG = 500_000  # under Starlette's 1 MB form-field limit


def _ready(url: str) -> None:
    deadline = time.monotonic() + 300
    while httpclient.get(f"{url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the worker never became ready"
        time.sleep(1)


@pytest.mark.parametrize("path, fields, with_file", [
    ("/v1/audio/transcriptions", {"language": "l" * BIG}, True),
    ("/v1/audio/transcriptions", {"response_format": "r" * BIG}, True),
    ("/v1/audio/transcriptions", {"include[]": ["i" * BIG, "j" * BIG, "k" * BIG, "m" * BIG]}, True),
    ("/v1/jobs", {"file_id": "f" * BIG}, False),
    ("/v1/jobs", {"response_format": "r" * BIG}, True),
], ids=["language", "response_format", "include", "file_id", "jobs_response_format"])
def test_a_client_field_is_never_echoed_whole(w, path, fields, with_file):
    """Breaker 11: 500 kB fields came back whole in the 4xx message (1.5 MB for include[]).
    Each echoed value is cut to 40 characters with its length, the rest counted."""
    url, _log = w
    _ready(url)
    files = {"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")} if with_file else None
    r = httpclient.post(f"{url}{path}", data=fields, files=files, timeout=60)
    assert 400 <= r.status_code < 500, r.text[:300]
    assert len(r.content) < 1000 and f"({BIG} characters)" in r.json()["error"]["message"], r.text[:300]


@pytest.mark.parametrize("target", ["/v1/jobs/{long}", "/v1/jobs/job_x?response_format={long}", "/v1/uploads/{long}"])
def test_an_id_in_the_path_or_query_is_never_echoed_whole(w, target):
    url, _log = w
    r = httpclient.get(url + target.format(long="q" * 12_000), timeout=60)
    assert 400 <= r.status_code < 500 and len(r.content) < 1000, (r.status_code, len(r.content))


def test_made_up_http_methods_are_one_metrics_series(w):
    """worker_requests_total{method} took the method as sent: 50 made-up methods were 50 new
    series (label cardinality a client chooses). The HTTP parser (httptools: llhttp) now refuses
    a method it does not know (400) before the app sees it; one it knows that the metric does
    not keep (WebDAV's, say) is counted as method="other"."""
    import socket
    from urllib.parse import urlparse

    url, _log = w
    u = urlparse(url)

    def send(method: str) -> bytes:
        with socket.create_connection((u.hostname, u.port), timeout=10) as s:
            s.sendall(f"{method} /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return s.recv(4096)

    sent = ["X" + secrets.token_hex(20).upper() for _ in range(50)]
    assert all(send(method).startswith(b"HTTP/1.1 400") for method in sent)
    for method in ("PROPFIND", "MKCOL", "SEARCH"):
        assert send(method).startswith(b"HTTP/1.1 "), method
    scraped = httpclient.get(f"{url}/metrics", timeout=10).text
    assert not [m for m in sent + ["PROPFIND", "MKCOL", "SEARCH"] if f'method="{m}"' in scraped]
    assert 'method="other"' in scraped
