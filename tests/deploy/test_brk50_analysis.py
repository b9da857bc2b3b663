"""Breaker 50 G2 and G5: the deploy's transcription check judges what it is answered.

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
