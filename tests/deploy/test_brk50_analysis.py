"""Breakers 50 (G2, G5) and 52 (K2-K5): the deploy's analysis judges what it is answered.

G2: the word error counted only expected words that were missing, so a release whose
transcripts carry Whisper's hallucinated tail ("Thank you." repeated after the speech, the
Amara.org credit) scored 0.00 and was promoted. It is now the standard word error rate,
(substitutions + deletions + insertions) / expected words.
G5: an answer that is 200 but not a JSON object with a string `text` (a maintenance page, a
list, null) raised out of the check ("unexpected JSONDecodeError"): it is a failed check.
Each answer comes from a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from opsctl.deploy import analysis

HALLUCINATED_TAIL = " Thank you." * 40 + " Subtitles by the Amara.org community"


def _expected() -> str:
    return analysis.sample()[1]


@pytest.mark.parametrize("heard", [
    _expected() + HALLUCINATED_TAIL,
    "Lorem ipsum dolor sit amet. " * 20 + _expected(),
    " ".join(reversed(_expected().split())) + " " + _expected(),
    _expected() + " ご視聴ありがとうございました",  # K2: Whisper's Japanese and Russian tails
    _expected() + " Субтитры сделал DimaTorzok" * 3,
    "Ｈｅｌｌｏ ｗｏｒｌｄ" + HALLUCINATED_TAIL,  # full-width letters read as letters
])
def test_words_added_to_the_transcript_count_as_errors(heard):
    assert analysis.word_error(_expected(), heard) >= analysis.MAX_WORD_ERROR


def test_the_right_transcript_scores_zero_whatever_its_case_and_punctuation():
    expected = _expected()
    assert analysis.word_error(expected, expected.upper().replace(".", "")) == 0.0
    assert analysis.word_error(expected, "") == 1.0


class _Answers(BaseHTTPRequestHandler):
    body = b""
    content_type = "application/json"

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    """Start a server answering every POST with (body, content type); yields its base URL setter."""
    servers = []

    def start(body: bytes, content_type: str) -> str:
        handler = type("Answer", (_Answers,), {"body": body, "content_type": content_type})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("body, content_type, said", [
    (json.dumps({"text": _expected() + HALLUCINATED_TAIL}).encode(), "application/json", "word error"),
    (b"<html><h1>Service temporarily unavailable</h1></html>", "text/html", "without a transcript"),
    (b"[]", "application/json", "without a transcript"),
    (b'{"text": null}', "application/json", "without a transcript"),
    (b'{"text": 5}', "application/json", "without a transcript"),
    (b"", "application/json", "(empty body)"),
])
def test_an_answer_that_is_no_transcript_fails_the_check_in_one_line(answering, body, content_type, said):
    verdict = analysis.transcribe_check(answering(body, content_type), {}, timeout=10)
    assert not verdict.ok and said in verdict.detail, verdict.detail
    assert "\n" not in verdict.detail


def test_the_right_answer_passes(answering):
    verdict = analysis.transcribe_check(answering(json.dumps({"text": _expected()}).encode(), "application/json"),
                                        {}, timeout=10)
    assert verdict.ok and "word error 0.00" in verdict.detail, verdict.detail


INF = float("inf")


def _window(buckets_after: dict[float, float], count: float) -> tuple[analysis.Snapshot, analysis.Snapshot]:
    before = analysis.Snapshot(errors=0, transcriptions=0, buckets={le: 0 for le in buckets_after}, store_hits=0)
    return before, analysis.Snapshot(errors=0, transcriptions=count, buckets=buckets_after, store_hits=0)


def test_a_window_whose_latency_cannot_be_read_fails():
    """Breaker 50 (lead): transcriptions counted but no histogram buckets passed on latency."""
    verdict = analysis.judge_window(*_window({}, 6), max_error_pct=5, max_p95_ms=1000)
    assert not verdict.ok and "can't be judged" in verdict.detail, verdict.detail


def test_a_p95_past_the_top_bucket_fails_a_limit_above_that_bucket():
    """histogram_quantile answers the top finite bound (600 s) when the p95 lies past it: a
    limit of 900 s passed every window however slow."""
    slow = {1.0: 0, 600.0: 1, INF: 10}  # nine of ten transcriptions took longer than 600 s
    verdict = analysis.judge_window(*_window(slow, 10), max_error_pct=5, max_p95_ms=900_000)
    assert not verdict.ok and "above 600000 ms" in verdict.detail, verdict.detail
    quick = {1.0: 10, 600.0: 10, INF: 10}
    assert analysis.judge_window(*_window(quick, 10), max_error_pct=5, max_p95_ms=900_000).ok


def test_a_long_transcript_is_shown_short_in_the_verdict(answering):
    """K2: a 20,000-word hallucination became a 300 KB step detail, record and event."""
    body = json.dumps({"text": _expected() + " ご視聴ありがとうございました" * 5000}, ensure_ascii=False).encode()
    verdict = analysis.transcribe_check(answering(body, "application/json"), {}, timeout=10)
    assert not verdict.ok and len(verdict.detail) < 400 and "characters)" in verdict.detail, verdict.detail[:500]


def test_a_window_whose_counters_went_down_or_whose_histogram_disagrees_fails():
    """K3, K4: a worker restarted mid-window gave a negative error rate that passed (or a bare
    ZeroDivisionError); a histogram of +Inf alone gave a p95 of 0 ms; one holding fewer
    observations than were counted, or no +Inf bucket, passed."""
    before = analysis.Snapshot(errors=8, transcriptions=10, buckets={1.0: 10, 600.0: 10, INF: 10}, store_hits=0)
    restarted = analysis.Snapshot(errors=3, transcriptions=30, buckets={1.0: 30, 600.0: 30, INF: 30}, store_hits=0)
    verdict = analysis.judge_window(before, restarted, max_error_pct=1, max_p95_ms=2000)
    assert not verdict.ok and "restarted" in verdict.detail, verdict.detail
    for buckets, count, said in [({INF: 10}, 10, "no finite bucket"), ({1.0: 10}, 10, "no +Inf bucket"),
                                 ({1.0: 3, INF: 3}, 100, "holds 3 of the 100")]:
        verdict = analysis.judge_window(*_window(buckets, count), max_error_pct=5, max_p95_ms=2000)
        assert not verdict.ok and said in verdict.detail, verdict.detail


class _Trickle(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):  # one byte a second: every read succeeds, the answer never ends
            self.wfile.write(b" ")
            self.wfile.flush()
            threading.Event().wait(1)

    def log_message(self, *args):
        pass


def _checked_against(handler, timeout: float) -> analysis.Verdict:
    """transcribe_check against a real server on 127.0.0.1 answering with `handler`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return analysis.transcribe_check(f"http://127.0.0.1:{server.server_port}", {}, timeout=timeout)
    finally:
        server.shutdown()
        server.server_close()


def test_a_check_ends_in_its_timeout_however_slowly_the_answer_trickles():
    """K5: httpx's timeouts are per read: one byte every 2 s held a 3 s check for 38 s, and the
    post-promotion window with it."""
    verdict = _checked_against(_Trickle, timeout=2)
    # ended by its total deadline (the answer would take 1,000 s)
    assert not verdict.ok and "no complete answer within 2s" in verdict.detail, verdict.detail


def test_an_answer_that_inflates_past_the_cap_is_refused(answering):
    """K5: a 0.3 MB gzip answer inflated to 300 MiB in memory."""
    import gzip

    body = gzip.compress(b'{"text": "' + b" " * (64 * 1024 * 1024) + b'"}')
    handler = type("Gzip", (_Answers,), {"body": body, "content_type": "application/json"})

    class Encoded(handler):
        def end_headers(self):
            self.send_header("Content-Encoding", "gzip")
            super().end_headers()

    verdict = _checked_against(Encoded, timeout=30)
    assert not verdict.ok and "cap" in verdict.detail, verdict.detail
