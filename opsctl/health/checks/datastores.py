"""PostgreSQL and Redis: connect, time a round trip, and read what each server says of itself.

Both report the round trip as the check's value; the rest (connections, long queries,
waiting locks, replication lag; memory, hit rate, evictions, last save) goes into details,
and any of it past its threshold from opsctl.yaml makes the check WARNING.
"""

from __future__ import annotations

import math
import re
import time

from opsctl.health.model import CheckResult, Judge, Status
from opsctl.redact import scrub

_PG_STATS = """
SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       current_setting('max_connections')::int,
       (SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid()
          AND backend_type = 'client backend' AND now() - query_start > make_interval(secs => %s)),
       (SELECT count(*) FROM pg_locks WHERE NOT granted),
       pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())
            ELSE (SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication) END,
       (SELECT count(*) FROM pg_stat_replication)
"""


def _password(url: str) -> str | None:
    """The password of `scheme://user:password@host…`, even in a URL too malformed to parse."""
    match = re.match(r"^[A-Za-z][\w+.-]*://[^/@:]*:(.+)@", url or "")
    return match[1] if match else None


def postgres(url: str, timeout: float, t) -> CheckResult:
    """Connect to `url`, time `SELECT 1` (ms, the check's value) and read pg_stat_activity,
    pg_locks and replication state; `timeout` in seconds bounds the connection and each query.
    CRITICAL with the driver's first error line (credentials masked) when it cannot query."""
    import psycopg

    began = time.perf_counter()
    try:
        with psycopg.connect(url, connect_timeout=max(1, math.ceil(timeout)),
                             options=f"-c statement_timeout={int(timeout * 1000)}") as conn:
            conn.execute("SELECT 1").fetchone()
            ms = (time.perf_counter() - began) * 1000
            conns, max_conns, long_q, waiting, replica, lag, replicas = conn.execute(
                _PG_STATS, (t.long_query_seconds,)).fetchone()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # libpq repeats a malformed URL, or just its password, word for word
        return CheckResult("", "postgres", Status.CRITICAL, f"cannot query: {scrub(first, _password(url))}")
    judge = Judge()
    used = 100.0 * conns / max_conns
    judge.over("round trip", round(ms, 1), t.response_time_ms, " ms")
    judge.over("connections", round(used, 1), t.connections_percent, "% of max_connections")
    if long_q:
        judge.add(Status.WARNING, f"{long_q} queries running over {t.long_query_seconds:g}s")
    judge.over("locks waiting", waiting, t.locks_waiting)
    judge.over("replication lag", None if lag is None else round(float(lag), 1), t.replication_lag_seconds, " s")
    details = {"connections": conns, "max_connections": max_conns, "long_queries": long_q,
               "locks_waiting": waiting, "replica": replica, "replicas": replicas,
               "replication_lag_s": None if lag is None else round(float(lag), 1)}
    return CheckResult("", "postgres", judge.status(),
                       judge.message(f"query in {ms:.0f} ms, {conns}/{max_conns} connections"),
                       round(ms, 1), "ms", details=details)


def redis(url: str, timeout: float, t) -> CheckResult:
    """PING `url` (ms, the check's value) and read INFO: memory, hit rate, evictions, last
    save. CRITICAL with the error (credentials masked) when it cannot ping."""
    import redis as redislib

    began = time.perf_counter()
    try:
        client = redislib.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        client.ping()
        ms = (time.perf_counter() - began) * 1000
        info = client.info()
        client.close()
    except (redislib.RedisError, ValueError) as exc:  # ValueError: a malformed URL
        return CheckResult("", "redis", Status.CRITICAL, f"cannot ping: {scrub(str(exc), _password(url))}")
    judge = Judge()
    judge.over("ping", round(ms, 1), t.response_time_ms, " ms")
    used, limit = info.get("used_memory", 0), info.get("maxmemory", 0)
    memory_pct = round(100.0 * used / limit, 1) if limit else None
    judge.over("memory", memory_pct, t.memory_percent, "% of maxmemory")
    hits, misses = info.get("keyspace_hits", 0), info.get("keyspace_misses", 0)
    if info.get("rdb_last_bgsave_status", "ok") != "ok":
        judge.add(Status.WARNING, "last background save failed")
    details = {"used_memory": used, "maxmemory": limit or None, "memory_percent": memory_pct,
               "hit_rate_percent": round(100.0 * hits / (hits + misses), 1) if hits + misses else None,
               "evicted_keys": info.get("evicted_keys", 0),
               "seconds_since_save": round(time.time() - info["rdb_last_save_time"]) if "rdb_last_save_time" in info else None,
               "last_save_status": info.get("rdb_last_bgsave_status")}
    return CheckResult("", "redis", judge.status(), judge.message(f"PONG in {ms:.0f} ms"), round(ms, 1), "ms",
                       details=details)
