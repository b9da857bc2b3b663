"""The worker's own `/metrics`: error rate, p95 transcription latency and queue depth.

Counters only mean something as rates, so this check does what Prometheus's `rate()` does:
it keeps the previous sample (in the ops root's `.opsctl/health/samples/`, so it works from
cron too) and judges the increase since, per series, counting a restarted worker from zero.
The first sweep only takes the baseline. The expressions match the rendered alert rules
(HighErrorRate over the /v1/ routes, SlowResponses, QueueBacklog).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from opsctl.files import write_json
from opsctl.health.checks.http import bounded_request
from opsctl.health.model import CheckResult, Judge, Status

TRANSCRIBE_ROUTE = "/v1/audio/transcriptions"
API_PREFIX = "/v1/"  # the API's routes; probes (/healthz, /readyz) and /metrics are not traffic
SAMPLE_VERSION = 2  # a sample kept by an older opsctl (totals, no series) is no baseline


def _read_sample(text: str) -> dict:
    """The series this check needs, from Prometheus text format: `requests` ("METHOD ROUTE
    STATUS" -> count) on the API's routes, `buckets` ("METHOD STATUS LE" -> count) of the
    transcription route's latency, `start` (process_start_time_seconds: which process counted
    them), queue depth and model state. Kept per series so `increase` can tell a restart."""
    from prometheus_client.parser import text_string_to_metric_families

    sample = {"version": SAMPLE_VERSION, "start": None, "requests": {}, "buckets": {}, "queue_depth": None,
              "model_loaded": None}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            counted = s.name == "worker_requests_total" or s.name == "worker_request_duration_seconds_bucket"
            if counted and not (math.isfinite(s.value) and s.value >= 0):  # a counter is a finite count
                raise ValueError(f"counter {s.name} {labels} is {s.value}, no count")
            if s.name == "worker_requests_total" and labels.get("route", "").startswith(API_PREFIX):
                key = f"{labels.get('method', '')} {labels['route']} {labels.get('status', '')}"
                sample["requests"][key] = sample["requests"].get(key, 0.0) + s.value
            elif s.name == "worker_request_duration_seconds_bucket" and labels.get("route") == TRANSCRIBE_ROUTE:
                key = f"{labels.get('method', '')} {labels.get('status', '')} {labels['le']}"
                sample["buckets"][key] = sample["buckets"].get(key, 0.0) + s.value
            elif s.name == "process_start_time_seconds":
                sample["start"] = s.value
            elif s.name == "worker_queue_depth":
                sample["queue_depth"] = (sample["queue_depth"] or 0) + s.value
            elif s.name == "worker_model_loaded":
                sample["model_loaded"] = s.value
    return sample


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """histogram_quantile(): linear interpolation inside the bucket holding the rank."""
    bounds = sorted((float(le), count) for le, count in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def _series_increase(cur: dict[str, float], prev: dict[str, float]) -> dict[str, float]:
    """Per series, Prometheus's increase() over two samples: the difference, or the whole value
    when the series fell (its counter restarted) or is new since `prev`."""
    return {k: v - prev[k] if k in prev and v >= prev[k] else v for k, v in cur.items()}


def _a_sample(doc: object) -> bool:
    """Whether `doc` (a kept sample, read back) has the shape _read_sample gives: a damaged or
    edited file is no baseline, never a check that fails to run."""
    def counts(part: object) -> bool:
        return isinstance(part, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for k, v in part.items())

    return (isinstance(doc, dict) and doc.get("version") == SAMPLE_VERSION and counts(doc.get("requests"))
            and counts(doc.get("buckets")) and all(" " in k for k in doc["buckets"])
            and (doc.get("start") is None or isinstance(doc.get("start"), (int, float)))
            and isinstance(doc.get("t"), (int, float)))


def increase(cur: dict, prev: dict | None) -> dict | None:
    """The window since `prev`: {"requests", "errors" (5xx), "buckets" (le -> count),
    "restarted"}; None when `prev` is no baseline (none, or kept by an older opsctl).

    Counted per series, as Prometheus's rate() does, and a new process (its
    process_start_time_seconds changed: a color's port is reused by the next deploy) counts
    from zero. Breaker 53 F1: totals over every route were subtracted, one process's from
    another's, so a clean deploy's start-up /readyz 503s read as a 32 % error rate, and a
    process with fewer 5xx than the one before it could show a failing worker as 0 %."""
    if not _a_sample(prev):  # none, an older opsctl's, or a file edited or damaged since
        return None
    restarted = cur["start"] is not None and prev.get("start") is not None and cur["start"] != prev["start"]
    requests = _series_increase(cur["requests"], {} if restarted else prev["requests"])
    buckets: dict[str, float] = {}
    for key, count in _series_increase(cur["buckets"], {} if restarted else prev["buckets"]).items():
        le = key.rsplit(" ", 1)[1]
        buckets[le] = buckets.get(le, 0.0) + count
    return {"requests": sum(requests.values()), "restarted": restarted, "buckets": buckets,
            "errors": sum(n for key, n in requests.items() if key.rsplit(" ", 1)[1].startswith("5"))}


def unread(exc: Exception, api_key: str | None, key_env: str) -> str:
    """Why a worker's /metrics was not read, for a person: the exception's kind, or the HTTP
    status, and for 401/403 the variable (`key_env`) whose API key to set or fix (breaker 19
    F5: "HTTPStatusError" alone left a key-protected worker's checks unread and unexplained)."""
    import httpx

    if not isinstance(exc, httpx.HTTPStatusError):
        return type(exc).__name__
    code = exc.response.status_code
    if code in (401, 403):
        return (f"HTTP {code}: the worker refused the API key in ${key_env}" if api_key else
                f"HTTP {code}: the worker requires an API key; set ${key_env}")
    return f"HTTP {code}"


def worker_metrics(base_url: str, timeout: float, t, samples_dir: Path, api_key: str | None = None,
                   key_env: str = "OPSCTL_WORKER_API_KEY") -> CheckResult:
    """Read `base_url`/metrics and judge the worker since the previous sample (kept in
    `samples_dir`): error rate in % of the API's requests (/v1/ routes: probes and /metrics are
    not traffic; CRITICAL above thresholds.error_rate_percent), p95 transcription time and
    queue depth (WARNING). `timeout` in seconds. With API keys on,
    the worker's main port serves /metrics only to a caller with a key: `api_key` (read
    from the variable `key_env`) is sent as `Authorization: Bearer` when given."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        resp = bounded_request("GET", f"{base_url}/metrics", timeout=timeout, headers=headers)
        resp.raise_for_status()
        cur = _read_sample(resp.text)
    except httpx.HTTPError as exc:
        return CheckResult("", "metrics", Status.CRITICAL, f"cannot read /metrics ({unread(exc, api_key, key_env)})")
    except ValueError as exc:
        return CheckResult("", "metrics", Status.UNKNOWN, f"/metrics is not Prometheus text: {exc}")
    cur["t"] = time.time()
    store = samples_dir / f"{hashlib.sha1(base_url.encode()).hexdigest()[:16]}.json"
    try:
        prev = json.loads(store.read_text())
    except (OSError, ValueError):
        prev = None
    write_json(store, cur, indent=None, private=True)  # a full disk: one line naming it, no temporary left

    judge = Judge()
    depth = cur["queue_depth"]
    judge.over("queue depth", depth, t.queue_depth)
    if cur["model_loaded"] == 0:
        judge.add(Status.WARNING, "model not loaded")
    window = increase(cur, prev)
    details = {"queue_depth": depth, "window_s": None, "requests": None, "error_rate_percent": None,
               "p95_ms": None}
    if window is None:
        return CheckResult("", "metrics", judge.status(),
                           judge.message("baseline taken; error rate and p95 from the next sweep"),
                           None, "%", details=details)
    rate = 100.0 * window["errors"] / window["requests"] if window["requests"] else 0.0
    p95 = quantile(0.95, window["buckets"])
    p95_ms = None if p95 is None else round(p95 * 1000, 1)
    details.update(window_s=round(cur["t"] - prev["t"], 1), requests=int(window["requests"]),
                   error_rate_percent=round(rate, 2), p95_ms=p95_ms)
    judge.over("error rate", round(rate, 2), t.error_rate_percent, "%", Status.CRITICAL)
    judge.over("p95 transcription", p95_ms, t.response_time_ms, " ms")
    details["restarted"] = window["restarted"]
    ok = (f"{rate:.1f}% errors over {int(window['requests'])} API requests in {details['window_s']:g}s"
          + (" (the worker restarted since the last sweep: counted from its start)" if window["restarted"] else "")
          + (f", p95 {p95_ms:.0f} ms" if p95_ms is not None else "") + f", queue {depth or 0:g}")
    return CheckResult("", "metrics", judge.status(), judge.message(ok), round(rate, 2), "%", details=details)
