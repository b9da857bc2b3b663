"""HTTP probes: the router, each worker color's `/readyz`, and the checks in opsctl.yaml.

Gatus's behaviour where it has one: redirects followed unless a check says
`follow_redirects: false`; the body read only for a `[BODY]` condition, and at most
`max_body_bytes` of it.

A probe fails on its conditions (Gatus syntax) and warns when it answers slower than
`thresholds.response_time_ms`. A connection that opens but never answers is cut at the
check's timeout: that is the hung endpoint the sweep must not wait for.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import time

from opsctl.health.conditions import parse
from opsctl.health.model import CheckResult, Status
from opsctl.redact import credentials, redact

READY = ["[STATUS] == 200", "[BODY].status == ready"]
_client = None
_lock = threading.Lock()


def client():
    """One client per process: building one loads the CA bundle (~20 ms of CPU), which at a
    1 s interval was most of a sweep's cost. No keep-alive, so every probe opens a fresh
    connection, as a user's request would."""
    global _client
    import httpx

    with _lock:
        if _client is None:
            _client = httpx.Client(follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0))
        return _client


DEFAULT_MAX_BODY = 1024 * 1024  # bytes of a response body read at most (health.max_body_bytes)


def probe(url: str, conditions: list[str], timeout: float, slow_ms: float,
          method: str = "GET", failing: Status = Status.CRITICAL, follow_redirects: bool = True,
          max_body: int = DEFAULT_MAX_BODY) -> CheckResult:
    """One HTTP check. Redirects are followed by default, as Gatus does (the conditions then
    judge the final answer); `follow_redirects=False` judges the redirect itself. The body
    is read only when a condition looks at `[BODY]`, and never more than `max_body` bytes:
    a larger body fails the check without being read whole. Connection failures say why:
    certificate expired (with its date), certificate not trusted, connection refused, name
    not resolved. Every failure, whatever its cause, has the status `failing` (the check's
    severity)."""
    import httpx

    parsed = [parse(c) for c in conditions]
    needs_body = any(c.placeholder == "BODY" for c in parsed)
    began = time.perf_counter()
    status_code, body, connected, error, read = None, None, False, "", 0
    exchange = _Exchange(timeout)
    try:
        with client().stream(method, url, timeout=httpx.Timeout(timeout), follow_redirects=follow_redirects,
                             extensions={"trace": exchange.trace}) as resp:
            connected, status_code = True, resp.status_code
            if needs_body:
                raw, read, error = _read_capped(resp, max_body, exchange)
                if not error:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode(resp.encoding or "utf-8", errors="replace")
            # otherwise leaving the block closes the connection with the body unread
    except _DeadlinePassed:
        error, connected = exchange.expired_error(), True
    except httpx.TimeoutException:
        error = exchange.expired_error() if exchange.expired else f"no answer within {timeout:g}s"
        connected = True
    except httpx.TooManyRedirects:
        error = "too many redirects"
        connected = True
    except httpx.HTTPError as exc:
        if exchange.expired:  # the watchdog cut the connection: the read fails with some error
            error, connected = exchange.expired_error(), True
        elif exchange.connected:
            error, connected = _why_broken(exc, exchange), True
        else:
            error = _why_not_connected(exc)
    finally:
        exchange.finish()
    elapsed = (time.perf_counter() - began) * 1000
    details = {"target": redact(url, keep_path=True), "http_status": status_code}
    if needs_body:
        details["body_bytes_read"] = read
    if error:  # every way a check fails reports the check's own severity (a redirect loop, a
        # timeout, a refused connection of a `severity: warning` check is a WARNING)
        return CheckResult("", "http", failing, error, round(elapsed, 1), "ms", details=details)
    failed = [shown for ok, shown in (c.evaluate(status_code, elapsed, body, connected) for c in parsed) if not ok]
    if failed:
        return CheckResult("", "http", failing, "failed: " + "; ".join(failed), round(elapsed, 1), "ms",
                           details=details)
    timed = any(c.placeholder == "RESPONSE_TIME" for c in parsed)
    if not timed and elapsed > slow_ms:
        return CheckResult("", "http", Status.WARNING, f"answered in {elapsed:.0f} ms, above {slow_ms:g} ms",
                           round(elapsed, 1), "ms", details=details)
    return CheckResult("", "http", Status.OK, f"HTTP {status_code} in {elapsed:.0f} ms", round(elapsed, 1), "ms",
                       details=details)


def bounded_request(method: str, url: str, *, timeout: float, max_body: int = 16 * 1024 * 1024, **kwargs):
    """One HTTP exchange (connect, request, headers, body) that ends within `timeout` seconds
    in total, whatever the server does: httpx's own timeouts are per operation, so a server
    trickling one byte per read would never trip them (the same watchdog as `probe`).
    `kwargs` go to httpx (json, content, headers, follow_redirects). Returns the
    httpx.Response with its body read (at most `max_body` bytes). Raises httpx.TimeoutException
    when the deadline passes, httpx.HTTPError for other transport errors, ValueError for a
    body over `max_body`. Used by every outbound call of the health area (alert sinks,
    operation events, Alertmanager silences, the /metrics reads) and by the deploy analysis."""
    import httpx

    exchange = _Exchange(timeout)
    kwargs.setdefault("follow_redirects", False)
    try:
        with client().stream(method, url, timeout=httpx.Timeout(timeout), extensions={"trace": exchange.trace},
                             **kwargs) as resp:
            raw, _read, error = _read_capped(resp, max_body, exchange)
            if error:
                raise ValueError(error)
            resp._content = raw  # the body as read: resp.text / resp.json() work after the stream closed
            return resp
    except _DeadlinePassed:
        raise httpx.ReadTimeout(exchange.expired_error()) from None
    except httpx.HTTPError as exc:
        if exchange.expired:
            raise httpx.ReadTimeout(exchange.expired_error()) from exc
        raise
    finally:
        exchange.finish()


def _read_capped(resp, cap: int, exchange: "_Exchange | None" = None) -> tuple[bytes, int, str]:
    """(body, bytes read, error): stops reading as soon as the body is known to pass `cap`, or
    (raising _DeadlinePassed) once the exchange's total deadline has passed."""
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return b"", 0, f"response body of {int(declared):,} bytes is over the {cap:,}-byte cap (max_body_bytes)"
    chunks, read = [], 0
    for chunk in resp.iter_bytes(chunk_size=64 * 1024):
        read += len(chunk)
        if exchange is not None:
            exchange.read = read
            if exchange.passed():
                raise _DeadlinePassed
        if read > cap:
            return b"", read, f"response body is over the {cap:,}-byte cap (max_body_bytes); not read further"
        chunks.append(chunk)
    return b"".join(chunks), read, ""


class _DeadlinePassed(Exception):
    """The exchange's total deadline passed between two chunks of the body."""


class _Exchange:
    """The total deadline of one probe: connect + request + response headers + body must all
    end within `timeout` seconds (httpx's own timeouts are per operation, so an endpoint
    trickling a byte per read, or sending header lines forever, would never trip them).

    httpx's request extension "trace" (documented in httpx's "Request Extensions") reports each
    connection the request opens; a watchdog timer shuts that socket down when the deadline
    passes, which makes the blocked read in the probe's thread fail at once. So no thread and
    no socket outlives its check, whichever phase the endpoint stalls in (name resolution
    aside: getaddrinfo cannot be interrupted; it is bounded by the resolver's own timeout). `finish()` cancels
    and joins the watchdog, so the probe leaves no thread behind either."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.expired = False
        self.connected = False
        self.phase = "connecting"
        self.read = 0
        self._sockets: list[socket.socket] = []
        self._guard = threading.Lock()
        self._watchdog = threading.Timer(timeout, self._expire)
        self._watchdog.name = "health:http-deadline"
        self._watchdog.daemon = True
        self._watchdog.start()

    def trace(self, event: str, info: dict) -> None:
        """httpcore trace callback (event names as in httpcore's _sync/connection.py, http11.py)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            try:  # a duplicate of the descriptor: it still reaches the connection once TLS has
                # wrapped (and detached) the socket object httpcore first handed out
                own = socket.fromfd(sock.fileno(), sock.family, sock.type) if sock is not None else None
            except (OSError, AttributeError):
                own = None
            with self._guard:
                if own is not None:
                    self._sockets.append(own)
                    if self.expired:
                        _cut(own)
        elif event.endswith(".started"):
            # connected (TCP and, for https, TLS) once the request starts going out
            self.connected = self.connected or event.endswith("send_request_headers.started")
            self.phase = {"http11.send_request_headers.started": "sending the request",
                          "http11.receive_response_headers.started": "waiting for the response headers",
                          "http11.receive_response_body.started": "reading the body"}.get(event, self.phase)
        # never raise here: httpcore would lose track of a just-opened stream; a cut socket
        # makes the next send or receive fail, and httpcore then closes the connection

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self.deadline

    def _expire(self) -> None:
        with self._guard:
            self.expired = True
            for sock in self._sockets:
                _cut(sock)

    def expired_error(self) -> str:
        self.expired = True
        return (f"no complete answer within {self.timeout:g}s (total deadline passed while {self.phase}"
                + (f", {self.read:,} body bytes read" if self.read else "") + "; connection closed)")

    def finish(self) -> None:
        self._watchdog.cancel()
        if self._watchdog is not threading.current_thread():
            self._watchdog.join()
        with self._guard:
            for sock in self._sockets:  # the duplicates only; httpcore closed its own
                sock.close()
            self._sockets.clear()


def _cut(sock: socket.socket) -> None:
    """Shut a socket down from another thread: a recv blocked on it returns at once (close()
    alone would not wake it on Linux); the probe's own `with` block then closes it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the probe


def _why_broken(exc, exchange: "_Exchange") -> str:
    """What went wrong after the connection opened (it did connect: never "cannot connect")."""
    text = credentials(str(exc))[:160]
    if "receive buffer too long" in str(exc).lower():  # h11's words for an over-long head
        return (f"response headers too large (over {_max_header_bytes():,} bytes without their end); "
                "connection closed")
    for cause in _causes(exc):
        if isinstance(cause, (ConnectionResetError, BrokenPipeError)):
            return f"connection reset while {exchange.phase}"
    if isinstance(exc, getattr(__import__("httpx"), "RemoteProtocolError")):
        return f"invalid HTTP answer while {exchange.phase}: {text}"
    return f"connection broken while {exchange.phase} ({type(exc).__name__}: {text})"


def _max_header_bytes() -> int:
    """httpcore's cap on an incomplete HTTP/1.1 event (the response head): 100 KiB in 1.0."""
    try:
        from httpcore._sync.http11 import HTTP11Connection
        return HTTP11Connection.MAX_INCOMPLETE_EVENT_SIZE
    except (ImportError, AttributeError):
        return 100 * 1024


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _why_not_connected(exc) -> str:
    """What stopped a request before any answer, in words an operator acts on."""
    try:
        target = exc.request.url
        host, port = target.host, target.port or (443 if target.scheme == "https" else 80)
    except (AttributeError, RuntimeError):
        host, port = "the host", None
    where = f"{host}:{port}" if port else host
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            # an expired certificate is named as such whatever else is wrong with it (OpenSSL
            # reports an untrusted issuer first): its date is what the operator must act on
            expires = _certificate_expiry(host, port)
            if cause.verify_code == 10 or (expires and expires < dt.datetime.now(dt.timezone.utc)):
                return f"certificate of {host} expired" + (
                    f" on {expires:%Y-%m-%d %H:%M:%S} UTC" if expires else "")
            return f"certificate of {host} not trusted: {cause.verify_message or cause.reason}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake with {where} failed: {cause.reason or cause}"
        if isinstance(cause, socket.gaierror):
            return f"name not resolved: {host}"
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(cause, (ConnectionResetError, BrokenPipeError)):
            return f"connection to {where} reset"
    return f"cannot connect to {where} ({type(exc).__name__}: {credentials(str(exc))[:160]})"


def _certificate_expiry(host: str, port: int | None) -> dt.datetime | None:
    """The served certificate's notAfter (UTC), fetched again without verifying it."""
    from cryptography import x509

    try:
        pem = ssl.get_server_certificate((host, port or 443), timeout=5)
        cert = x509.load_pem_x509_certificate(pem.encode())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc
