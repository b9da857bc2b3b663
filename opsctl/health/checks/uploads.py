"""Incomplete uploads piling up (issue 26): the worker's `worker_uploads_incomplete` and
`worker_uploads_oldest_incomplete_age_seconds` gauges, from its `/metrics`.

Both gauges are database-wide (every worker reports the same figures, refreshed by its job
keeper), so one check reads the workers in turn (the active color first) and judges the
largest figures read. WARNING when more uploads than `health.uploads.incomplete` are open,
or the oldest is older than `health.uploads.oldest_incomplete_seconds` (the worker aborts
uploads after WORKER_UPLOAD_EXPIRY_SECONDS, an hour by default: an older one means that
expiry is not running). UNKNOWN when no worker answers (the metrics checks say why) or none
exports the gauges (a worker older than uploads).
"""

from __future__ import annotations

from opsctl.health.checks.http import bounded_request
from opsctl.health.checks.metrics import unread
from opsctl.health.model import CheckResult, Judge, Status

INCOMPLETE = "worker_uploads_incomplete"
OLDEST_AGE = "worker_uploads_oldest_incomplete_age_seconds"


def read_gauges(text: str) -> dict[str, float]:
    """The two upload gauges found in Prometheus text `text` (largest sample of each).
    Raises ValueError when the text is not Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (INCOMPLETE, OLDEST_AGE):
                found[s.name] = max(found.get(s.name, s.value), s.value)
    return found


def incomplete_uploads(workers: list[str], timeout: float, limits, api_key: str | None = None,
                       key_env: str = "OPSCTL_WORKER_API_KEY") -> CheckResult:
    """Judge the largest upload gauges read from the workers' `/metrics` (base URLs `workers`,
    each read within `timeout` seconds; `api_key`, from the variable `key_env`, sent as a
    Bearer token): a worker whose
    keeper lags reports older figures, so the largest is the one to trust. `limits` is
    opsctl.yaml's `health.uploads`. Value: open uploads (count)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    problems, read = [], []
    for base in workers:
        try:
            resp = bounded_request("GET", f"{base}/metrics", timeout=timeout, headers=headers)
            resp.raise_for_status()
            gauges = read_gauges(resp.text)
        except (httpx.HTTPError, ValueError) as exc:
            problems.append(f"{base}: {unread(exc, api_key, key_env)}")
            continue
        if INCOMPLETE not in gauges:
            problems.append(f"{base}: no {INCOMPLETE} (a worker older than uploads)")
            continue
        read.append((base, gauges[INCOMPLETE], gauges.get(OLDEST_AGE, 0.0)))
    if read:
        count = max(c for _, c, _ in read)
        oldest = max(o for _, _, o in read)
        base = max(read, key=lambda r: (r[1], r[2]))[0]
        judge = Judge()
        judge.over("incomplete uploads", count, limits.incomplete)
        judge.over("oldest incomplete upload", round(oldest), limits.oldest_incomplete_seconds, " s")
        ok = f"{count:g} incomplete upload(s)" + (f", oldest {oldest:.0f} s" if count else "")
        message = judge.message(ok)
        if judge.status() != Status.OK:
            message += " (the worker aborts uploads after WORKER_UPLOAD_EXPIRY_SECONDS; see its log and S3)"
        return CheckResult("", "uploads", judge.status(), message, count, "uploads",
                           details={"incomplete": count, "oldest_incomplete_age_seconds": oldest, "worker": base,
                                    "workers_read": len(read)})
    if not workers:
        return CheckResult("", "uploads", Status.UNKNOWN, "no worker to read upload figures from")
    return CheckResult("", "uploads", Status.UNKNOWN, "no upload figures read: " + "; ".join(problems))
