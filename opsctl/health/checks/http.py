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
    try:
        with client().stream(method, url, timeout=httpx.Timeout(timeout), follow_redirects=follow_redirects) as resp:
            connected, status_code = True, resp.status_code
            if needs_body:
                raw, read, error = _read_capped(resp, max_body)
                if not error:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode(resp.encoding or "utf-8", errors="replace")
            # otherwise leaving the block closes the connection with the body unread
    except httpx.TimeoutException:
        error = f"no answer within {timeout:g}s"
        connected = True
    except httpx.TooManyRedirects:
        error = "too many redirects"
        connected = True
    except httpx.HTTPError as exc:
        error = why_not_connected(exc)
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


def _read_capped(resp, cap: int) -> tuple[bytes, int, str]:
    """(body, bytes read, error): stops reading as soon as the body is known to pass `cap`."""
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return b"", 0, f"response body of {int(declared):,} bytes is over the {cap:,}-byte cap (max_body_bytes)"
    chunks, read = [], 0
    for chunk in resp.iter_bytes(chunk_size=64 * 1024):
        read += len(chunk)
        if read > cap:
            return b"", read, f"response body is over the {cap:,}-byte cap (max_body_bytes); not read further"
        chunks.append(chunk)
    return b"".join(chunks), read, ""


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def why_not_connected(exc) -> str:
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
