"""HTTP probes: the router, each worker color's `/readyz`, and the checks in opsctl.yaml.

A probe fails on its conditions (Gatus syntax) and warns when it answers slower than
`thresholds.response_time_ms`. A connection that opens but never answers is cut at the
check's timeout: that is the hung endpoint the sweep must not wait for.
"""

from __future__ import annotations

import threading
import time

from opsctl.health.conditions import parse
from opsctl.health.model import CheckResult, Status
from opsctl.redact import redact

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


def probe(url: str, conditions: list[str], timeout: float, slow_ms: float,
          method: str = "GET", failing: Status = Status.CRITICAL) -> CheckResult:
    import httpx

    parsed = [parse(c) for c in conditions]
    began = time.perf_counter()
    status_code, body, connected, error = None, None, False, ""
    try:
        resp = client().request(method, url, timeout=httpx.Timeout(timeout))
        connected, status_code = True, resp.status_code
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
    except httpx.TimeoutException:
        error = f"no answer within {timeout:g}s"
        connected = True
    except httpx.HTTPError as exc:
        error = f"cannot connect ({type(exc).__name__})"
    elapsed = (time.perf_counter() - began) * 1000
    details = {"target": redact(url, keep_path=True), "http_status": status_code}
    if error:
        return CheckResult("", "http", Status.CRITICAL, error, round(elapsed, 1), "ms", details=details)
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
