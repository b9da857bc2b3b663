"""WAL archiving for self-managed PostgreSQL servers that opsctl.yaml names (`backup.archive_servers`).

opsctl does not run these servers, so it configures them and drains what they queue:

- `configure` (`opsctl backup archive-setup --server NAME`) connects as a superuser (the URL
  in the env var `url_env` names) and sets, with ALTER SYSTEM and a reload, the same
  settings the embedded platform runs with (archive.server_settings): `archive_mode`,
  `archive_command` (the bounded queue into the server's `queue` folder: cp/ln, sync, mv, so
  it runs as the server's own OS user, which may not be able to run opsctl's Python, and a
  slow repository never stops the server), `archive_timeout`, `wal_level`, `summarize_wal`.
  Settings that need a restart (archive_mode, wal_level) are named. When the role may not
  run ALTER SYSTEM, nothing is changed and the result holds exactly what to set (the
  postgresql.conf lines).
- `push` (`opsctl backup wal-push --server NAME [--follow]`, on the server's host) drains the
  queue into the same repository through the same Archiver as the embedded platform:
  compressed, sealed with the backup key, tagged (layout.py), under the server's own system
  identifier, so `backup verify-chain`-style checks and restores read it like any archive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, OpsError, UsageError

RESTART = ("archive_mode", "wal_level")


@dataclass
class SetupResult:
    """What `configure` did on server `server`: `applied` (False: not allowed, nothing
    changed), the `settings` (name -> value), `restart_needed` (settings waiting for a server
    restart), `conf_lines` (what to put in postgresql.conf by hand), `reason` when not applied."""

    server: str
    system_identifier: str | None
    applied: bool
    settings: dict[str, str]
    restart_needed: list[str] = field(default_factory=list)
    conf_lines: list[str] = field(default_factory=list)
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def _server(env: Environment, name: str):
    servers = env.backup.archive_servers
    if name not in servers:
        known = ", ".join(sorted(servers)) or "none"
        raise UsageError(f"no archive server '{name}' in backup.archive_servers of '{env.name}' (known: {known}); "
                         "add it to opsctl.yaml")
    return servers[name]


def server_url(env: Environment, name: str) -> str:
    """The connection URL of archive server `name`, from the env var its `url_env` names; its
    password is remembered for redaction. UsageError for an unknown server, an unset var or a URL
    libpq would misread (endpoints.check_database_url)."""
    import os

    from opsctl.redact import remember, url_password

    srv = _server(env, name)
    url = os.environ.get(srv.url_env)
    if not url:
        raise UsageError(f"${srv.url_env} is not set; it holds the connection URL of archive server '{name}'")
    remember(url_password(url))
    from opsctl.endpoints import check_database_url

    check_database_url(url, srv.url_env)
    return url


def settings(env: Environment, name: str) -> dict[str, str]:
    """The server settings that archive `name`'s WAL into its queue (archive.server_settings)."""
    from opsctl.pitr import archive

    srv = _server(env, name)
    out = archive.server_settings(Path(srv.queue), env.backup.archive_timeout, env.backup.archive_queue)
    out.pop("track_commit_timestamp", None)  # the drill's RPO measure: not ours to turn on elsewhere
    return out


def _conf_line(name: str, value: str) -> str:
    return f"{name} = '" + value.replace("'", "''") + "'"


def configure(project: Project, env: Environment, name: str) -> SetupResult:
    """Set archiving on server `name` (ALTER SYSTEM + reload), or say what to set.

    UsageError for an unknown server or a missing URL; OperationFailed when the server can't
    be reached or a setting fails for another reason than privileges."""
    import psycopg
    from psycopg import errors, sql

    from opsctl.redact import credentials

    wanted = settings(env, name)
    result = SetupResult(name, None, False, wanted, conf_lines=[_conf_line(k, v) for k, v in wanted.items()])
    try:
        with psycopg.connect(server_url(env, name), connect_timeout=10, autocommit=True) as conn:
            result.system_identifier = conn.execute(
                "select system_identifier::text from pg_control_system()").fetchone()[0]
            try:
                for key, value in wanted.items():
                    conn.execute(sql.SQL("alter system set {} = {}").format(sql.Identifier(key), sql.Literal(value)))
            except errors.InsufficientPrivilege as exc:
                result.reason = (f"the role may not run ALTER SYSTEM ({str(exc).strip()}); put the lines below into "
                                 "the server's postgresql.conf and restart it")
                return result
            conn.execute("select pg_reload_conf()")
            import time

            time.sleep(0.2)  # the postmaster re-reads its files asynchronously
            rows = conn.execute("select name, setting, pending_restart from pg_settings where name = any(%s)",
                                (list(wanted),)).fetchall()
    except psycopg.Error as exc:
        raise OperationFailed(f"archive server '{name}': {credentials(str(exc)).strip()}") from None
    result.applied = True
    current = {n: (s, pending) for n, s, pending in rows}
    result.restart_needed = sorted(n for n, (s, pending) in current.items() if pending)
    result.notes.append(f"queue {_server(env, name).queue} must exist on the server's host, owned by the server's "
                        "OS user, mode 0700; drain it with 'opsctl backup wal-push --env "
                        f"{env.name} --server {name} --follow' there (a service)")
    return result


def prepare_local_queue(env: Environment, name: str, user: str | None) -> Path:
    """Create server `name`'s queue on this host for the server's OS user `user` (0700)."""
    from opsctl.pitr import archive

    queue = Path(_server(env, name).queue)
    archive.prepare_queue(queue, user)
    return queue


def archiver(project: Project, env: Environment, name: str):
    """The Archiver for server `name`'s queue: its repository and key, its system identifier
    (asked of the server: WAL is filed under the cluster that wrote it)."""
    import psycopg

    from opsctl.pitr.archive import Archiver
    from opsctl.pitr.ops import sealed_repository
    from opsctl.redact import credentials

    srv = _server(env, name)
    try:
        with psycopg.connect(server_url(env, name), connect_timeout=10) as conn:
            sysid = conn.execute("select system_identifier::text from pg_control_system()").fetchone()[0]
    except psycopg.Error as exc:
        raise OperationFailed(f"archive server '{name}': {credentials(str(exc)).strip()}") from None
    repo, key = sealed_repository(project, env, initialise=True)

    def cluster() -> str | None:
        # asked again when a history file or a drop marker (they name no cluster) is to be filed:
        # a server rebuilt (initdb) while `wal-push --follow` runs is another cluster
        try:
            with psycopg.connect(server_url(env, name), connect_timeout=10) as conn:
                return conn.execute("select system_identifier::text from pg_control_system()").fetchone()[0]
        except (psycopg.Error, OpsError):
            return None  # can't tell now: the one known stays

    return Archiver(repo, key, sysid, Path(srv.queue), env.backup.compress_level, cluster=cluster)


def push_until_stopped(project: Project, env: Environment, name: str, follow: bool = False):
    """`opsctl backup wal-push`: `push` (following the queue with `follow`); on an interrupt
    (Ctrl-C, or SIGTERM made one by the caller) what was queued before the stop still goes
    out, in one more drain. Returns that drain's DrainResult."""
    try:
        return push(project, env, name, follow)
    except KeyboardInterrupt:
        return push(project, env, name)


def push(project: Project, env: Environment, name: str, follow: bool = False, stop=None):
    """Drain server `name`'s queue once (a DrainResult), or until `stop` is set with `follow`."""
    arch = archiver(project, env, name)
    if not Path(arch.queue).is_dir():
        raise UsageError(f"the queue {arch.queue} of archive server '{name}' does not exist on this host; run "
                         "wal-push on the server's host (or create the folder for the server's OS user)")
    if follow:
        arch.run(stop)
        return arch.drain()
    return arch.drain()
