"""A request the run itself began as it stopped is not a request the target left unanswered.

Locust stops a user waiting between tasks by killing its greenlet. When the wait ends in the
same instant, the user begins its next task before the kill lands, and the kill then cut a
request (or a job flow) that had only just begun: a healthy target was judged "1 of 12
still in flight at the end" with a 20 s stop timeout (CI, stop 29). Each test builds that
instant exactly: the user's wait ends (an Event set) and the kill is queued right behind it,
as `Runner.stop_users` queues it; the greenlet runs first, the kill second.
"""

from __future__ import annotations

import http.server
import sys
import threading
import time

import pytest

from opsctl.loadtest import inflight
from opsctl.loadtest.latencies import Recorder
from opsctl.loadtest.runner import import_locust

# locust is imported as opsctl imports it (unpatched, opsctl.loadtest.runner.import_locust),
# never at collection: its default gevent monkey-patching would break the rest of the suite
import_locust()
import gevent  # noqa: E402
import gevent.event  # noqa: E402
from locust import FastHttpUser, constant, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.event import Events  # noqa: E402

LOADTESTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "loadtests"


class _Slow(http.server.BaseHTTPRequestHandler):
    """Answers every request after 0.5 s: a request is still in flight when the kill lands."""

    protocol_version = "HTTP/1.1"

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(0.5)
        body = b'{"id": "j1", "status": "succeeded", "text": "hello"}'
        self.send_response(202 if self.path == "/v1/jobs" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_a):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client the kill dropped mid-answer is this test's point, not a server fault."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def target():
    server = _Server(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class Probe(FastHttpUser):
    wait_time = constant(0)

    @task
    def nothing(self) -> None:
        pass


def _user(cls, host: str):
    inflight.install()
    cls = type(cls.__name__, (cls,), {"host": host})
    env = Environment(user_classes=[cls], events=Events(), host=host)
    return cls(env), Recorder().attach(env.events)


def _killed(work, *, as_it_wakes: bool) -> None:
    """Run `work` in a greenlet and kill it: `as_it_wakes` queues the kill in the instant the
    greenlet's wait ends (the race), otherwise once it is inside its request for 0.2 s."""
    woken = gevent.event.Event()
    user = gevent.spawn(lambda: (woken.wait(), work()))
    gevent.sleep(0)  # the user is waiting between tasks
    woken.set()
    if not as_it_wakes:
        gevent.sleep(0.2)
    user.kill(block=True, timeout=10)
    assert user.dead


def test_a_request_begun_as_the_stop_lands_is_not_counted(target):
    user, recorder = _user(Probe, target)
    _killed(lambda: user.client.post("/v1/audio/transcriptions", data=b"x", name="/v1/audio/transcriptions [short]"),
            as_it_wakes=True)
    assert recorder.entries == {}


def test_a_request_in_flight_when_killed_still_counts_as_in_flight(target):
    user, recorder = _user(Probe, target)
    _killed(lambda: user.client.post("/v1/audio/transcriptions", data=b"x", name="/v1/audio/transcriptions [short]"),
            as_it_wakes=False)
    total = recorder.total()
    assert (total.requests, total.failures, total.in_flight) == (1, 1, 1)


@pytest.mark.parametrize("module, cls, flow, as_it_wakes", [
    ("transcription", "TranscriptionUser", "job_short", True),
    ("transcription", "TranscriptionUser", "job_short", False),
    ("uploads", "ChunkedUploadUser", "chunked_upload", True),
])
def test_a_flow_begun_as_the_stop_lands_is_not_reported(target, monkeypatch, module, cls, flow, as_it_wakes):
    """The shipped users report a whole flow as one JOB entry (`JOB short submit→done`, the
    chunked upload's create→done): a flow the stop cut as it began is no flow; one cut in
    flight is a failed one."""
    monkeypatch.syspath_prepend(str(LOADTESTS))
    user, recorder = _user(getattr(__import__(module), cls), target)
    _killed(getattr(user, flow), as_it_wakes=as_it_wakes)
    if as_it_wakes:
        assert recorder.entries == {}
    else:
        job = recorder.entry("JOB", "short submit→done")
        assert (job.requests, job.failures, job.in_flight) == (1, 1, 1)
