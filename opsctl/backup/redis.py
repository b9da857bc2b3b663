"""Redis: a fresh RDB snapshot out, and a checked load back in through a scratch server.

Backup: BGSAVE inside MULTI with INFO keyspace, so the key counts recorded are those at
the fork, then wait for `INFO persistence` to show it finished and stream the RDB file (the server must be on
this machine: the embedded platform; ElastiCache gets native snapshots instead).
Restore mirrors PostgreSQL's new-database-then-swap, all or nothing: the RDB is loaded by a
scratch redis-server on 127.0.0.1 (a damaged file fails there, away from the live cache), its
key counts are checked, the live server's room is checked (`check_room`: maxmemory against
what it holds plus the backup's dataset, and a spare logical database per restored one),
then every key is copied with DUMP/RESTORE (TTLs kept) into a spare, empty database beside
the live one, and SWAPDB switches all of them in one MULTI; the old data is flushed after.
A failure before the switch flushes the spare databases: the live data is exactly as it was.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from opsctl.errors import OperationFailed, UsageError


def _client(url: str, db: int | None = None):
    import redis

    if db is not None:  # the URL's own /db would override a db= argument
        from urllib.parse import urlsplit, urlunsplit

        url = urlunsplit(urlsplit(url)._replace(path=f"/{db}"))
    return redis.Redis.from_url(url)


def _busy(p: dict) -> bool:
    return bool(p.get("rdb_bgsave_in_progress") or p.get("rdb_bgsave_scheduled")
                or p.get("aof_rewrite_in_progress") or p.get("aof_rewrite_scheduled")
                or p.get("module_fork_in_progress"))


def _wait_idle(r, deadline: float, timeout: float) -> dict:
    """INFO persistence once no child (RDB save, AOF rewrite, module fork) runs or is
    scheduled; OperationFailed past `deadline` (time.monotonic)."""
    while True:
        p = r.info("persistence")
        if not _busy(p):
            return p
        if time.monotonic() > deadline:
            raise OperationFailed(f"redis BGSAVE did not finish within {timeout:.0f} s (another save or an AOF "
                                  "rewrite kept the server busy); try again, or raise the timeout")
        time.sleep(0.01)


def snapshot(url: str, timeout: float = 600.0) -> tuple[Path, dict]:
    """BGSAVE now; return the RDB path and {redis_version, keys, expires} at the fork."""
    import redis

    r = _client(url)
    r.set_response_callback("BGSAVE", lambda resp, **_: resp)  # the server's words, not redis-py's True
    deadline = time.monotonic() + timeout
    while True:
        # plain BGSAVE, never SCHEDULE (redis-py's bgsave() default) and not inside MULTI
        # (Redis 7 only schedules a BGSAVE from EXEC): its reply "Background saving started"
        # proves the fork happened right here, INFO keyspace is the next command of the
        # same request, and no earlier RDB can pass for ours
        pipe = r.pipeline(transaction=False)
        pipe.execute_command("BGSAVE")
        pipe.info("keyspace")
        try:
            reply, keyspace = pipe.execute()
        except redis.ResponseError as exc:  # a save or an AOF rewrite child running: wait
            if "in progress" not in str(exc) and "child process" not in str(exc):
                raise OperationFailed(f"redis BGSAVE failed: {exc}") from None
            reply, keyspace = str(exc), None
        reply = reply.decode() if isinstance(reply, bytes) else str(reply)
        if keyspace is not None and "started" in reply.lower():
            break
        _wait_idle(r, deadline, timeout)  # then ask again: the scheduled save's fork is not ours
    # our child runs until it renamed the new RDB into place; only one RDB child runs at a time
    p = _wait_idle(r, deadline, timeout)
    if p["rdb_last_bgsave_status"] != "ok":
        raise OperationFailed("redis BGSAVE failed; see the redis log")
    path = Path(r.config_get("dir")["dir"]) / r.config_get("dbfilename")["dbfilename"]
    if not path.is_file():
        raise UsageError(f"the RDB file {path} is not on this machine; for a managed Redis use "
                         "--type elasticache-snapshot")
    dbs = {int(name[2:]): v for name, v in keyspace.items() if name.startswith("db")}
    return path, {"redis_version": r.info("server")["redis_version"],
                  "keys": {d: v["keys"] for d, v in dbs.items()},
                  "expires": {d: v.get("expires", 0) for d, v in dbs.items()}}


@contextmanager
def scratch_server(rdb: Path) -> Iterator[str]:
    """A redis-server on 127.0.0.1 that loaded `rdb`; yields its URL."""
    from opsctl.local import procs
    from opsctl.local import redis as local_redis

    port = procs.free_port()
    log = rdb.parent / "scratch-redis.log"
    try:
        # tied: a restore killed outright (kill -9) left it running for good once its run
        # folder was gone with the temporary directory (breaker 55's leftovers)
        pid = local_redis.start(rdb.parent, port, log, timeout=120, tied=True)
    except OperationFailed:
        raise OperationFailed(f"the backed-up RDB does not load: {procs.tail(log, 3).strip()}") from None
    try:
        client = _client(local_redis.url(port))
        client.config_set("save", "")
        yield local_redis.url(port)
    finally:
        procs.stop(pid, 10)


def check_counts(url: str, keys: dict[int, int], expires: dict[int, int]) -> dict[int, int]:
    """Key counts per db; raise unless each is what the manifest says (keys with a TTL may have gone)."""
    info = _client(url).info("keyspace")
    got = {int(n[2:]): v["keys"] for n, v in info.items() if n.startswith("db")}
    for db, want in keys.items():
        have = got.get(db, 0)
        if not (want - expires.get(db, 0) <= have <= want):
            raise OperationFailed(f"restored Redis db{db} holds {have} keys, the manifest says {want}")
    return got


def check_room(source_url: str, target_url: str, dbs: list[int]) -> dict[int, int]:
    """{restored db: spare db} on the target, or OperationFailed (nothing changed) when the
    target can't hold the backup beside its live data (maxmemory) or has no spare databases."""
    src, dst = _client(source_url), _client(target_url)
    mem = dst.info("memory")
    limit, used = int(mem.get("maxmemory", 0) or 0), int(mem.get("used_memory", 0))
    dataset = int(src.info("memory").get("used_memory_dataset", 0))
    if limit and used + dataset > limit * 0.9:
        raise OperationFailed(f"the Redis restore needs about {dataset >> 10} KiB beside the live data "
                              f"({used >> 10} KiB used) and maxmemory is {limit >> 10} KiB; nothing was changed: "
                              "raise maxmemory (CONFIG SET maxmemory) or free memory, then restore again")
    import redis

    try:
        count = int(dst.config_get("databases").get("databases", 16))
    except redis.ResponseError:  # CONFIG disabled (managed Redis): the default
        count = 16
    used_dbs = {int(n[2:]) for n in dst.info("keyspace") if n.startswith("db")} | set(dbs)
    spares = [d for d in range(count) if d not in used_dbs]
    if len(spares) < len(dbs):
        raise OperationFailed(f"the Redis restore needs {len(dbs)} empty logical database(s) beside the live ones "
                              f"and {len(spares)} of {count} are free; nothing was changed: raise 'databases'")
    return dict(zip(dbs, spares))


def restore_beside(source_url: str, target_url: str, dbs: list[int], batch: int = 500) -> int:
    """Make every listed db of target hold exactly the keys of source (values and TTLs), all
    or nothing: copied into spare databases, switched with SWAPDB in one transaction."""
    import redis

    spares = check_room(source_url, target_url, dbs)
    dst = _client(target_url)
    copied = 0
    try:
        for db, spare in spares.items():
            src, beside = _client(source_url, db), _client(target_url, spare)
            if beside.dbsize():
                raise OperationFailed(f"Redis db{spare} was empty a moment ago and is not now; nothing was changed")
            keys: list[bytes] = []
            for key in src.scan_iter(count=1000):
                keys.append(key)
                if len(keys) >= batch:
                    copied += _copy_batch(src, beside, keys, set())
                    keys = []
            copied += _copy_batch(src, beside, keys, set())
        pipe = dst.pipeline(transaction=True)
        for db, spare in spares.items():
            pipe.swapdb(db, spare)
        _execute(pipe, [("SWAPDB", None)] * len(spares))
    except BaseException as exc:
        for spare in spares.values():
            try:
                _client(target_url, spare).flushdb()
            except redis.RedisError:
                pass
        if isinstance(exc, (redis.RedisError, CommandFailed)):
            raise OperationFailed(f"the Redis restore failed before the switch ({_describe(exc)}); "
                                  "the live data is unchanged") from None
        raise
    for spare in spares.values():  # now holding the data that was live
        _client(target_url, spare).flushdb(asynchronous=True)
    return copied


class CommandFailed(Exception):
    """A Redis command of a restore failed: the command's name, its key and the server's error
    class and code only. Never its arguments: redis-py's pipeline errors quote every argument,
    a RESTORE's payload (a key's value, possibly a secret) included."""

    def __init__(self, command: str, key: bytes | None, error: BaseException):
        self.command, self.key, self.error = command, key, error
        super().__init__(_describe(self))


def _server_error(error: BaseException) -> str:
    """The server's own reply to a command (its code and text), without redis-py's annotation
    of the pipeline command, which carries the arguments; at most 200 characters."""
    text = str(error.args[0]) if error.args else ""
    if " of pipeline caused error: " in text:
        text = text.split(" of pipeline caused error: ", 1)[1]
    elif text.startswith("Command # "):
        text = ""
    return text.splitlines()[0][:200] if text.strip() else ""


def _describe(exc: BaseException) -> str:
    """One line about a Redis failure: the command and key when known, never a payload; redacted."""
    from opsctl.redact import credentials

    if isinstance(exc, CommandFailed):
        key = "" if exc.key is None else " " + repr(exc.key.decode("utf-8", "backslashreplace"))[:120]
        server = _server_error(exc.error)
        return credentials(f"{exc.command}{key}: {type(exc.error).__name__}" + (f" ({server})" if server else ""))
    server = _server_error(exc)
    return credentials(f"{type(exc).__name__}" + (f": {server}" if server else ""))


def _execute(pipe, commands: list[tuple[str, bytes | None]]) -> list:
    """Run a pipeline; the first failed command raises CommandFailed (name and key, no arguments)."""
    answers = pipe.execute(raise_on_error=False)
    for (command, key), answer in zip(commands, answers):
        if isinstance(answer, Exception):
            raise CommandFailed(command, key, answer)
    return answers


def _copy_batch(src, dst, keys: list[bytes], wanted: set[bytes]) -> int:
    if not keys:
        return 0
    pipe = src.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pttl(key)
    answers = _execute(pipe, [c for key in keys for c in (("DUMP", key), ("PTTL", key))])
    out = dst.pipeline(transaction=False)
    sent: list[tuple[str, bytes | None]] = []
    for key, payload, ttl in zip(keys, answers[0::2], answers[1::2]):
        if payload is None:
            continue  # expired meanwhile
        out.restore(key, max(ttl, 0), payload, replace=True)
        sent.append(("RESTORE", key))
        wanted.add(key)
    _execute(out, sent)
    return len(sent)


def live_keys(url: str) -> int:
    """How many keys the Redis server at `url` holds, all databases together."""
    info = _client(url).info("keyspace")
    return sum(v["keys"] for n, v in info.items() if n.startswith("db"))


def all_dbs(url: str, manifest_dbs: list[int]) -> list[int]:
    """The database numbers a restore replaces: the backup's and those holding keys now."""
    info = _client(url).info("keyspace")
    return sorted(set(manifest_dbs) | {int(n[2:]) for n in info if n.startswith("db")})
