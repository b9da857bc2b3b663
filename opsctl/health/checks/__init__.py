"""Which checks an environment gets, each bound to its endpoint, thresholds and timeout.

| check                  | kind       | CRITICAL when                         | WARNING when (thresholds.*)          |
|------------------------|------------|---------------------------------------|--------------------------------------|
| router, worker-<color> | http       | no answer, not 200/ready, conditions  | slower than response_time_ms         |
| postgres               | postgres   | cannot query                          | latency, connections_percent, long   |
|                        |            |                                       | queries, locks_waiting, lag          |
| redis                  | redis      | cannot ping                           | latency, memory_percent, failed save |
| s3                     | s3         | a bucket or the canary fails          | canary slower than response_time_ms  |
| metrics-<color>        | metrics    | error_rate_percent exceeded (5xx of   | p95 transcription, queue_depth       |
|                        |            | the /v1/ routes since the last sweep) |                                      |
| uploads                | uploads    |                                       | incomplete uploads pile up (health.  |
|                        |            |                                       | uploads: count, oldest age)          |
| kubernetes             | kubernetes | no pod ready, no GPU allocatable      | some pods not ready, recent restarts |
| host (local only)      | host       | disk_percent exceeded                 | cpu_percent, memory_percent          |
| backup age             | backup     | older than backup_age_hours           |                                      |
| standby (local, built) | backup     | the dr standby is not running, was    | it runs without streaming            |
|                        |            | promoted outside opsctl, or follows   |                                      |
|                        |            | another cluster than the primary's    |                                      |
| wal archive [<server>] | backup     | archive lag above dr.rpo, segments    | archive_command fails within the RPO,|
|                        |            | waiting with no archiver, mode off    | the archiver stuck (stopped, idle)   |
| heartbeat <name>       | heartbeat  | the expected event did not happen     |                                      |

Extra http checks come from `health.http` in opsctl.yaml. A check whose endpoint is not
configured is UNKNOWN, saying which setting is missing, rather than silently left out.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from dataclasses import dataclass
from typing import Callable

from opsctl.errors import UsageError
from opsctl.health.model import CheckResult, Status


@dataclass
class Check:
    """One planned check: its name, kind, timeout in seconds, and `run(timeout) -> CheckResult`."""
    name: str
    kind: str
    timeout: float
    run: Callable[[float], CheckResult]


def _missing(what: str) -> Callable[[float], CheckResult]:
    return lambda _timeout: CheckResult("", "", Status.UNKNOWN, f"not configured: {what}")


def _all(project, env, ep) -> list[tuple[str, str, Callable[[float], CheckResult], float | None]]:
    from opsctl.health.checks import backup, datastores, heartbeat, host, http, kubernetes, metrics, s3, uploads

    t, hs = env.thresholds, env.health
    slow = t.response_time_ms
    out: list = []
    router = f"{ep.router_url.rstrip('/')}/readyz" if ep.router_url else None
    cap = hs.max_body_bytes
    out.append(("router", "http", functools.partial(http.probe, router, http.READY, slow_ms=slow, max_body=cap)
                if router else _missing("router_url"), None))
    for color, base in sorted(ep.workers.items()):
        out.append((f"worker-{color}", "http", functools.partial(http.probe, f"{base}/readyz", http.READY,
                                                                 slow_ms=slow, max_body=cap), None))
    for check in hs.http:
        failing = Status.CRITICAL if check.severity == "critical" else Status.WARNING
        out.append((check.name, "http", functools.partial(
            http.probe, check.url, check.conditions, slow_ms=slow, method=check.method, failing=failing,
            follow_redirects=check.follow_redirects, max_body=check.max_body_bytes or cap), check.timeout))
    out.append(("postgres", "postgres", (lambda to: datastores.postgres(ep.database_url, to, t))
                if ep.database_url else _missing(f"${env.database.url_env}"), None))
    out.append(("redis", "redis", (lambda to: datastores.redis(ep.redis_url, to, t))
                if ep.redis_url else _missing(f"${env.redis.url_env}"), None))
    out.append(("s3", "s3", lambda to: s3.s3(ep, to, slow), None))
    samples = project.state_dir / "health" / "samples"
    for color, base in sorted(ep.workers.items()):
        out.append((f"metrics-{color}", "metrics",
                    functools.partial(metrics.worker_metrics, base, t=t, samples_dir=samples,
                                      api_key=os.environ.get(env.deploy.api_key_env) or None,
                                      key_env=env.deploy.api_key_env), None))
    if ep.workers:  # database-wide gauges: one check, the active color read first
        bases = [ep.workers[c] for c in sorted(ep.workers, key=lambda c: c != ep.active_color)]
        out.append(("uploads", "uploads", functools.partial(
            uploads.incomplete_uploads, bases, limits=hs.uploads,
            api_key=os.environ.get(env.deploy.api_key_env) or None, key_env=env.deploy.api_key_env), None))
    if env.platform == "kubernetes":
        out.append(("kubernetes", "kubernetes",
                    lambda to: kubernetes.kubernetes(env.kubernetes, env.worker.gpu, to, scale_to_zero=(
                        env.worker.autoscaling.enabled and env.worker.autoscaling.min_replicas == 0)), None))
    else:
        out.append(("host", "host", lambda to: host.host(project.root, to, t), None))
    # the backup capability's default repository when opsctl.yaml names none
    repository = env.backup.repository or f"s3://{ep.backup_bucket}/opsctl"

    def backup_key():  # loaded as the backup commands load it: an encrypted catalog is authenticated
        from opsctl.backup import keys

        return keys.load(project, env, required=False)

    out.append(("backup age", "backup", lambda _to: backup.backup_age(repository, project.root, ep,
                                                                       t.backup_age_hours, backup_key), None))
    if env.platform == "local":  # WAL archiving (opsctl.pitr): commits at risk against dr.rpo
        from opsctl.pitr.health import TIMEOUT_S, archive_lag

        # its own default timeout: it lists the WAL since the newest base backup (health.timeouts
        # "wal archive" or "backup" still set it)
        own = hs.timeouts.get("wal archive") or hs.timeouts.get("backup") or TIMEOUT_S
        out.append(("wal archive", "backup", lambda to: archive_lag(project, env, to), own))
        from opsctl.local import state as st
        from opsctl.pitr import standby

        # a `dr standby` was built, or a failover promoted it and left none (standby_health warns)
        if (standby.COMPONENT in st.load(st.folder_for(project.root)).components
                or standby.unprotected_since(project, env) is not None):
            from opsctl.pitr.health import standby_health

            out.append(("standby", "backup", lambda _to: standby_health(project, env), None))
    for name in sorted(env.backup.archive_servers):  # self-managed servers whose WAL opsctl archives
        from opsctl.pitr.health import server_archive_lag

        out.append((f"wal archive {name}", "backup", lambda _to, _n=name: server_archive_lag(env, _n), None))
    for hb in hs.heartbeats:
        if hb.source == "backup":
            last = lambda _hb=hb: backup.newest_backup(repository, project.root, ep, backup_key)[0]
        else:
            last = lambda _hb=hb: heartbeat.last_beat(project.state_dir, _hb.name)
        out.append((f"heartbeat {hb.name}", "heartbeat",
                    lambda _to, _hb=hb, _last=last: heartbeat.judge(_hb.name, _hb.cron, _hb.grace_minutes, _last()), None))
    return out


# every check name and kind some environment has (the table above): which of them one has
# depends on its platform and on what runs (host or kubernetes, workers, a standby)
STANDARD = [("router", "http"), ("worker-*", "http"), ("postgres", "postgres"), ("redis", "redis"), ("s3", "s3"),
            ("metrics-*", "metrics"), ("uploads", "uploads"), ("kubernetes", "kubernetes"), ("host", "host"),
            ("backup age", "backup"), ("standby", "backup"), ("wal archive*", "backup"), ("heartbeat *", "heartbeat")]


def plan(project, env, endpoints, only: list[str] | None = None, skip: list[str] | None = None) -> list[Check]:
    """The environment's checks, filtered by name or kind patterns (`--check`, `--skip`, then
    health.skip). UsageError for a `--check` pattern matching no check of the environment, a
    `--skip` pattern matching no check any environment has (a typo: a check of another
    platform, `host` on Kubernetes, skips nothing here, so one runbook runs on every
    platform; breaker 43 S2), and for filters that leave no check at all (a sweep of nothing
    would pass)."""
    hs = env.health
    candidates = _all(project, env, endpoints)

    def matches(pattern: str, name: str, kind: str) -> bool:
        return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(kind, pattern)

    def standard(pattern: str) -> bool:  # a check name or kind of some platform (glob against glob: its text)
        return any(fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(kind, pattern) or fnmatch.fnmatch(pattern, name)
                   for name, kind in STANDARD)

    known = ", ".join(f"'{n}'" for n, *_ in candidates)
    for flag, patterns in (("--check", only or []), ("--skip", skip or [])):
        for pattern in patterns:
            if any(matches(pattern, n, k) for n, k, *_ in candidates) or (flag == "--skip" and standard(pattern)):
                continue
            raise UsageError(f"{flag} {pattern!r} matches no check of '{env.name}'; checks: {known}")
    chosen = []
    for name, kind, run, own_timeout in candidates:
        if only and not any(matches(p, name, kind) for p in only):
            continue
        if any(matches(p, name, kind) for p in [*(skip or []), *hs.skip]):
            continue
        timeout = own_timeout or hs.timeouts.get(name) or hs.timeouts.get(kind) or hs.timeout
        chosen.append(Check(name, kind, timeout, run))
    if candidates and not chosen:
        # a sweep of nothing said "OK (0 checks)", exit 0: a gate passing on nothing (breaker 41 Q4)
        said = " ".join([*(f"--check {p!r}" for p in only or []), *(f"--skip {p!r}" for p in skip or [])])
        raise UsageError(f"{said or 'health.skip in opsctl.yaml'} leave{'s' if not said else ''} no check of "
                         f"'{env.name}' to run; checks: {known}")
    return chosen

