"""The HTTP check's timeout is a total deadline on the whole exchange (connect + headers +
body), not a per-read timeout: an endpoint that trickles its body or its headers is cut when
the deadline passes, its connection closed, and no probe thread left running (issue 25 §5.1).

No timing assertions: the tests wait a bounded time for facts (the server saw its connection
closed, the probe's thread ended) and assert on those facts and on bytes sent."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import yaml

from opsctl.config import load_project
from opsctl.health import monitor
from opsctl.health.checks import http
from opsctl.health.model import Status

BOUND = 15.0  # seconds a test waits at most for a fact (far above any timeout used here)


class Trickler:
    """A raw-socket endpoint that reads the request, then sends `head` at once and `drip`
    bytes one by one, one every `pace` seconds, until the client closes the connection."""

    def __init__(self, head: bytes, drip: bytes, pace: float = 0.3, repeat: bool = True):
        self.head, self.drip, self.pace, self.repeat = head, drip, pace, repeat
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = 0                  # connections this server saw closed by the client
        self.sent_after_close: list[int] = []
        self.sent = 0
        self._seen = threading.Condition()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._seen:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(self.head)
            self.sent += len(self.head)
            while not self._stop.is_set():
                for byte in self.drip:
                    conn.sendall(bytes([byte]))
                    self.sent += 1
                    if self._stop.wait(self.pace):
                        return
                    # a peer that shut its side down shows as readable with b"" (or a reset)
                    conn.setblocking(False)
                    try:
                        if conn.recv(1) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    finally:
                        conn.setblocking(True)
                if not self.repeat:
                    break
        except OSError:
            with self._seen:
                self.closed += 1
                self._seen.notify_all()
        finally:
            conn.close()

    def wait_closed(self, count: int = 1) -> bool:
        with self._seen:
            return self._seen.wait_for(lambda: self.closed >= count, timeout=BOUND)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
# a chunked body sent one byte at a time: "1\r\nx\r\n" per chunk, never the final 0-chunk
BODY_DRIP = b"1\r\n \r\n"


@pytest.fixture
def trickle_body():
    srv = Trickler(CHUNKED, BODY_DRIP)
    yield srv
    srv.close()


@pytest.fixture
def trickle_headers():
    srv = Trickler(b"HTTP/1.1 200 OK\r\n", b"X-Pad: y\r\n")
    yield srv
    srv.close()


def _probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("health:")]


def _client_sockets_to(port: int) -> list:
    """This process's open TCP sockets connected to `port` (the probe's side)."""
    import psutil

    return [c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port]


def _probe_in_thread(url, conditions, timeout):
    """Run http.probe on a thread of its own, as a sweep does; returns (thread, result slot)."""
    slot: list = []
    thread = threading.Thread(target=lambda: slot.append(http.probe(url, conditions, timeout=timeout,
                                                                    slow_ms=60_000)),
                              name="health:test-probe", daemon=True)
    thread.start()
    return thread, slot


@pytest.mark.parametrize("endpoint, conditions", [
    ("trickle_body", ["[BODY].status == ready"]),     # body at 1 byte per 0.3 s
    ("trickle_headers", ["[STATUS] == 200"]),         # header lines forever
])
def test_a_trickling_endpoint_is_cut_at_the_total_deadline(request, endpoint, conditions):
    srv = request.getfixturevalue(endpoint)
    thread, slot = _probe_in_thread(srv.url, conditions, timeout=1)
    thread.join(BOUND)
    assert not thread.is_alive(), f"the probe still runs; the server sent {srv.sent:,} bytes so far"
    result = slot[0]
    assert result.status == Status.CRITICAL
    assert "total deadline" in result.message and "cannot connect" not in result.message, result.message
    assert srv.wait_closed(), "the server never saw its connection closed"
    sent = srv.sent
    assert not _probe_threads(), [t.name for t in _probe_threads()]
    assert _client_sockets_to(srv.port) == []
    # the probe is gone for good: nothing more is sent on a connection nobody reads
    assert srv.wait_closed(srv.connections) and srv.sent == sent


def test_continuous_sweeps_leave_no_thread_and_no_connection_behind(tmp_path, trickle_body):
    """Each sweep of a check that never completes: "no result" reported, and by the next sweep
    its connection is closed and its thread gone (before the fix, one of each leaked per sweep)."""
    (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
        "platform": "kubernetes", "health": {"http": [
            {"name": "slow-body", "url": trickle_body.url, "conditions": ["[BODY].status == ready"],
             "timeout": 1}]}}}}))
    project = load_project(tmp_path)
    for sweep in range(1, 4):
        result = monitor.once(project, project.env("ci"), only=["slow-body"])
        assert result.results[0].status == Status.CRITICAL, result.results[0].message
        assert trickle_body.wait_closed(sweep), f"sweep {sweep}: the connection is still open"
        deadline = time.monotonic() + BOUND
        while _probe_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _probe_threads(), f"sweep {sweep}: {[t.name for t in _probe_threads()]}"
        assert _client_sockets_to(trickle_body.port) == [], f"sweep {sweep}"
    assert trickle_body.connections == trickle_body.closed == 3


def test_huge_response_headers_are_named_as_such_not_as_a_failed_connection():
    big = Trickler(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"y" * (400 * 1024) + b"\r\n", b"", repeat=False)
    try:
        result = http.probe(big.url, ["[STATUS] == 200"], timeout=10, slow_ms=60_000)
    finally:
        big.close()
    assert result.status == Status.CRITICAL
    assert "response headers too large" in result.message, result.message
    assert "cannot connect" not in result.message


def test_a_connection_dropped_before_the_answer_is_not_called_a_failed_connection():
    """Same kind: anything that breaks after the connection opened says so, not "cannot connect"."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer_and_drop():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-")
        conn.close()

    threading.Thread(target=answer_and_drop, daemon=True).start()
    try:
        result = http.probe(f"http://127.0.0.1:{srv.getsockname()[1]}/", ["[STATUS] == 200"], timeout=10,
                            slow_ms=60_000)
    finally:
        srv.close()
    assert result.status == Status.CRITICAL
    assert "cannot connect" not in result.message and "waiting for the response headers" in result.message, \
        result.message
