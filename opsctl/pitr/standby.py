"""The embedded platform's standby and its failover (`opsctl dr standby`, `opsctl failover --env local`).

**The standby** is a second PostgreSQL of the same cluster, built from the backup repository,
not copied from the primary: the newest base backup chain is unpacked and recombined and
the checked WAL staged, exactly as `restore --to-time latest` does (restore.plan), and the
server starts with `standby.signal`. It replays the archived WAL (restore_command copies the
staged, checked files; the key never reaches PostgreSQL), then streams the rest from the
primary (`primary_conninfo`) through a physical replication slot (`opsctl_standby`), so it
follows the primary within a second instead of within `archive_timeout`. The slot is made
before the build and the archive is waited for up to the slot's start, so the WAL between
"archived" and "streamed" is kept by the primary: there is no hole between the two. Its data
directory is `.opsctl/local/data/postgres-standby`, its component `postgres-standby` in the
platform's state file (port, PID), its log `logs/postgres-standby.log`.

**Failover** (`failover`) fences the old primary (stopped when it still runs: two primaries
must never take writes), promotes the standby (`pg_promote`, a new timeline whose history
file the archiver uploads), and repoints the environment: the promoted server becomes the
platform's `postgres` component (its data directory renamed into `data/postgres`, the old
one kept as `data/postgres.failed-<time>`; PostgreSQL holds absolute paths to its data
directory, so the promoted server is stopped cleanly, moved and started again there by the
platform's own start on its port), so the database URL every command gets from
opsctl.endpoints is the new one, and the workers are restarted through the platform's own
worker start (opsctl.local.platform / opsctl.local.worker) so they connect to it. Each
failover is recorded in `.opsctl/failover/<env>.json` (0600), as the RDS failover is. It
leaves no standby: its notes say to build one, and `.opsctl/failover/<env>.no-standby.json`
keeps the `standby` health check warning (unprotected_since) until `dr standby` builds one or
`dr standby --stop` says none is wanted.

The intent is journaled (`.opsctl/failover/<env>.pending.json`) before the old primary is
stopped and fenced, so a run killed at any later point is finished by the next one. While a
journal is pending `dr standby` and `dr standby --stop` are refused; a journal whose standby is
gone is refused too (exit 2), and `failover --abandon` (abandon) unfences the old primary and
removes the journal; `opsctl local up` then starts the old primary fenced and never initdb's a
missing data/postgres (before_primary_start).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError

COMPONENT = "postgres-standby"
SLOT = "opsctl_standby"
BEGIN, END = "# opsctl standby: begin", "# opsctl standby: end"


@dataclass
class StandbyResult:
    """A running standby: `port`/`pid` of its server, `data_dir`, the chain it was built from,
    `replay_lsn` when it was reported, `streaming` once its WAL receiver streams from the primary,
    `seconds` the build took."""

    environment: str
    port: int
    pid: int
    data_dir: str
    chain: list[str]
    replay_lsn: str | None
    streaming: bool
    seconds: float
    kept: bool = False  # it already ran: nothing was built


@dataclass
class LocalFailoverResult:
    """What `failover --env local` did: old and new primary (ports), whether the old one still
    ran (and was stopped), the promoted server's timeline and last replayed LSN, the workers
    restarted, the database URL now handed out, seconds from start to the promoted server
    taking writes at data/postgres (`promote_seconds`) and to the workers ready (`seconds`),
    the journal file."""

    environment: str
    old_primary: str
    new_primary: str
    old_primary_was_running: bool
    timeline: int
    replayed_lsn: str | None
    database_url: str
    workers_restarted: list[str]
    previous_data_dir: str | None
    at: dt.datetime
    promote_seconds: float
    seconds: float
    journal: str = ""
    notes: list[str] = field(default_factory=list)
    # the old primary: "stopped" (and its data directory kept with standby.signal: started again
    # it refuses writes), "was down", or "unconfirmed" (it did not stop, or something else
    # still takes writes on its port)
    fenced: str = ""


def _local(project: Project, env: Environment):
    from opsctl.local import state as st

    if env.platform != "local":
        raise UsageError(f"a standby from the archive is for the embedded platform; '{env.name}' runs on "
                         f"{env.platform}, whose standby is the RDS read replica (database.replica_instance)")
    folder = st.folder_for(project.root)
    state = st.load(folder)
    if "postgres" not in state.components:
        raise UsageError(f"the local platform of {project.root} was never started; run 'opsctl local up'")
    return folder, state


def _ready(port: int) -> bool:
    import psycopg

    from opsctl.local import postgres as pg

    try:
        with psycopg.connect(pg.url(port), connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def _owner():
    """(PostgreSQL's system user or None, chown function), whichever names opsctl.local.postgres has."""
    from opsctl.local import postgres as pg

    run_as = getattr(pg, "run_as", None) or getattr(pg, "_run_as")
    chown = getattr(pg, "chown", None) or getattr(pg, "_chown")
    return run_as(), chown


def _standby_running(state) -> bool:
    comp = state.components.get(COMPONENT)
    return comp is not None and _standby_pid(state) is not None and _ready(comp.port)


def running_pid(state) -> int | None:
    """The standby's postmaster PID while it runs (`_standby_pid`), for `local status`."""
    return _standby_pid(state)


def _standby_pid(state) -> int | None:
    """The standby's postmaster: the recorded PID when it still listens on the standby's port,
    else the one its postmaster.pid names (create time checked); never a reused PID."""
    from opsctl.local import procs

    comp = state.components.get(COMPONENT)
    return procs.owned(comp.pid if comp else None, "postgres", [comp.port] if comp else [],
                       state.data(COMPONENT) / "postmaster.pid")


def _wait_archived(project: Project, env: Environment, url: str, timeout: float) -> None:
    """Finish the current segment and wait until the archive holds it (and so all before it)."""
    import psycopg

    from opsctl.pitr import layout
    from opsctl.pitr.ops import sealed_repository

    repo, _ = sealed_repository(project, env)
    with psycopg.connect(url, autocommit=True) as conn:
        sysid = conn.execute("select system_identifier::text from pg_control_system()").fetchone()[0]
        conn.execute("select pg_logical_emit_message(false, 'opsctl-standby', 'switch')")
        (file,) = conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
    prefix = layout.wal_prefix(sysid) + file + "."
    deadline = time.monotonic() + timeout
    while not repo.names(prefix):
        if time.monotonic() > deadline:
            raise OperationFailed(f"WAL segment {file} did not reach the archive within {timeout:.0f} s; is the "
                                  "archiver running ('opsctl local status', logs/archiver.log)?")
        time.sleep(0.2)


def _configure(data: Path, stage: Path, primary_port: int, timeline: str) -> None:
    """Standby settings: WAL from `stage` then streamed from the primary, on `timeline` (the
    primary's; PostgreSQL's recovery_target_timeline)."""
    from opsctl.local import procs

    (data / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    for name in ("postmaster.pid", "recovery.signal"):
        (data / name).unlink(missing_ok=True)
    lines = [BEGIN, f"restore_command = 'cp \"{stage}/%f\" \"%p\"'", f"recovery_target_timeline = '{timeline}'",
             f"primary_conninfo = 'host={procs.HOST} port={primary_port} user=postgres application_name={SLOT}'",
             f"primary_slot_name = '{SLOT}'", "hot_standby = on", END]
    auto = data / "postgresql.auto.conf"
    text = auto.read_text() if auto.exists() else ""
    auto.write_text(text + ("\n" if text and not text.endswith("\n") else "") + "\n".join(lines) + "\n")
    (data / "standby.signal").write_text("")


def _unconfigure(data: Path) -> None:
    auto = data / "postgresql.auto.conf"
    text = auto.read_text() if auto.exists() else ""
    if BEGIN in text:
        head, _, rest = text.partition(BEGIN)
        auto.write_text(head + rest.partition(END)[2].lstrip("\n"))


# what a standby archives with: nothing. PostgreSQL archives only once it is promoted, and a
# standby promoted by hand (a second primary) had archived its own timeline into the primary's
# repository, which a later `restore --to-time latest` followed (breaker 54: the lost disk's
# commits gone, the standby's instead). Its WAL stays in its pg_wal (.ready); a failover
# restarts it with the platform's settings just before it promotes it (_promote_standby).
_NO_ARCHIVE = ("echo 'opsctl: a dr standby promoted outside opsctl does not archive into the repository of "
               "the primary; opsctl failover promotes it with archiving' >&2; exit 1")


def _settings(state, env) -> dict[str, str]:
    """The standby's server settings: the platform's, its archive_command refusing (_NO_ARCHIVE)."""
    from opsctl.pitr import local as pitr_local

    return pitr_local.server_settings(state, env) | {"archive_command": _NO_ARCHIVE}


def promoted_note(pid: int | None, port: int) -> str:
    """What is said of a standby that left recovery without a failover (pg_promote or
    `pg_ctl promote` by hand, a promote trigger): a second primary, written apart from the
    platform's, that no failover can use (it refuses one "promoted already")."""
    return (f"the dr standby (pid {pid}, port {port}) is no longer a standby: it was promoted outside opsctl "
            "and takes writes apart from the primary, whose changes it no longer receives, so a failover can't "
            "use it; 'opsctl dr standby --stop' then 'opsctl dr standby' builds a new one (what was written on "
            "it is lost with it)")


def other_cluster_note(pid: int | None, port: int, primary_port: int | None) -> str | None:
    """What is said of a standby whose cluster is not the primary's (their pg_control system
    identifiers differ: the primary's data directory was lost and `local up` made a new one),
    or None when they match or either server can't be asked. Such a standby replays nothing
    the primary writes ("database system identifier differs" in its log) and a failover
    refuses it (breaker 54 F7: health called it "replays from the archive", WARNING)."""
    import psycopg

    from opsctl.local import postgres as pg

    if primary_port is None:
        return None
    ids = []
    try:
        for p in (primary_port, port):
            with psycopg.connect(pg.url(p), connect_timeout=5, autocommit=True) as conn:
                ids.append(conn.execute("select system_identifier from pg_control_system()").fetchone()[0])
    except psycopg.Error:
        return None
    if ids[0] == ids[1]:
        return None
    return (f"the dr standby (pid {pid}, port {port}) is a standby of another cluster (system identifier "
            f"{ids[1]}) than the primary's ({ids[0]}, its data directory made anew): it can never follow it, "
            "and a failover refuses it; 'opsctl dr standby --stop' then 'opsctl dr standby' builds one of this "
            "cluster")


def wal_receiver(port: int) -> tuple[bool, bool, str | None]:
    """(in recovery, streaming from the primary, last replayed LSN) of the server at `port`."""
    import psycopg

    from opsctl.local import postgres as pg

    with psycopg.connect(pg.url(port), connect_timeout=5, autocommit=True) as conn:
        recovering, lsn = conn.execute("select pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
        row = conn.execute("select status from pg_stat_wal_receiver").fetchone()
    return recovering, bool(row and row[0] == "streaming"), lsn


def start_standby(project: Project, env: Environment, report=None, timeout: float = 600.0) -> StandbyResult:
    """Build and start the standby from the repository (kept when one already runs).

    Needs the platform's PostgreSQL running with its archiver (a base backup taken:
    'opsctl backup base'). UsageError for a non-local environment or a platform not up;
    OperationFailed when the build, the replay or the streaming fail (what was built is
    removed, the slot dropped), or when the one running left recovery (promoted_note) or
    follows another cluster (other_cluster_note).
    `report(what, total)` as for backups. Holds the environment's
    deploy lease (opsctl.pitr.lease) while it builds: a failover, in-place restore or deploy
    running meanwhile refuses it (UsageError naming the holder), as it refuses them.
    """
    from opsctl.pitr import lease

    _local(project, env)  # a non-local environment or a platform never started: said before the lease
    with lease.held(project, env, "standby"):
        refuse_pending(project, env, "building a standby")
        result = _start_standby(project, env, report, timeout)
        _unprotected_path(project, env).unlink(missing_ok=True)  # the primary has a standby again
        return result


def _start_standby(project: Project, env: Environment, report, timeout: float) -> StandbyResult:
    import psycopg

    from opsctl.local import postgres as pg
    from opsctl.local import procs
    from opsctl.local import state as st
    from opsctl.pitr import restore as pr

    began = time.monotonic()
    folder, state = _local(project, env)
    if _standby_running(state):
        comp = state.components[COMPONENT]
        recovering, streaming, lsn = wal_receiver(comp.port)
        if not recovering:  # kept, it would be said to stand by while it is a second primary
            raise OperationFailed(promoted_note(comp.pid, comp.port))
        other = other_cluster_note(comp.pid, comp.port, state.components["postgres"].port
                                   if "postgres" in state.components else None)
        if other:
            raise OperationFailed(other)
        return StandbyResult(env.name, comp.port, comp.pid, str(state.data(COMPONENT)), [], lsn, streaming, 0.0,
                             kept=True)
    primary = state.components["postgres"]
    if not (procs.alive(primary.pid, "postgres") and _ready(primary.port)):
        raise UsageError("the platform's PostgreSQL is not running; start it with 'opsctl local up' first "
                         "(a standby follows a running primary)")
    url = pg.url(primary.port)
    with psycopg.connect(url, autocommit=True) as conn:
        # a slot left by an earlier standby holds WAL from its own start: made afresh, it reserves from now
        conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                     "where slot_name = %s and not active", (SLOT,))
        conn.execute("select pg_create_physical_replication_slot(%s, true)", (SLOT,))
    data = state.data(COMPONENT)
    stage = state.data(f"{COMPONENT}-wal")
    pid = None
    try:
        _wait_archived(project, env, url, timeout=max(60.0, env.backup.archive_timeout * 3))
        p = pr.plan(project, env, "latest", None, beside=True,
                    report=report("WAL segments", None) if report else None, unpack_report=report)
        try:
            c = p.context
            # the live server's timeline, as the plan chose it: with 'latest', a timeline in the
            # repository it never had (a standby promoted by hand archives one) stopped the new
            # standby at start-up, "requested timeline 2 is not a child of this server's history"
            timeline = c["settings"]["recovery_target_timeline"]
            c["unpacked"].result()
            c["taken"] = True
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(stage, ignore_errors=True)
            c["new"].rename(data)
            c["stage"].rename(stage)
        finally:
            pr.discard(p)
        _configure(data, stage, primary.port, timeline)
        user, chown = _owner()
        data.chmod(0o700)
        chown(data, user)
        chown(stage, user)
        port = procs.free_port()
        with st.locked(folder):
            state = st.load(folder)
            comp = state.components[COMPONENT] = st.Component(port=port, ready=False)
            state.save()
        log = state.log(COMPONENT)
        pid = pg.start(data, port, log, timeout=timeout, settings=_settings(state, env))
        deadline = time.monotonic() + timeout
        streaming, lsn = False, None
        while time.monotonic() < deadline:
            if not procs.alive(pid, "postgres"):
                from opsctl.pitr.restore import fatal_line

                raise OperationFailed(f"the standby stopped: {fatal_line(log)}")
            recovering, streaming, lsn = wal_receiver(port)
            if not recovering:
                raise OperationFailed("the standby left recovery on its own; it is removed")
            if streaming:
                break
            time.sleep(0.2)
        if not streaming:
            raise OperationFailed(f"the standby replayed the archive but does not stream from the primary within "
                                  f"{timeout:.0f} s; read {log}")
        with st.locked(folder):
            state = st.load(folder)
            comp = state.components.setdefault(COMPONENT, st.Component(port=port))
            comp.pid, comp.ready, comp.version = pid, True, pg.version(port)
            state.save()
    except BaseException:
        if pid is not None:
            pg.stop(pid)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        with st.locked(folder):
            state = st.load(folder)
            state.components.pop(COMPONENT, None)
            state.save()
        _drop_slot(url)
        raise
    return StandbyResult(env.name, port, pid, str(data), list(p.chain), lsn, True, round(time.monotonic() - began, 2))


def _drop_slot(url: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                         "where slot_name = %s and not active", (SLOT,))
    except psycopg.Error:
        pass  # the primary is gone: its slot with it


def stop_standby(project: Project, env: Environment, remove: bool = True) -> bool:
    """Stop the standby (and remove its data and the primary's slot, unless `remove` is False)."""
    from opsctl.local import postgres as pg
    from opsctl.local import state as st

    folder, state = _local(project, env)
    comp = state.components.get(COMPONENT)
    if comp is None:
        return False
    pg.stop(_standby_pid(state))  # None (not ours, or gone): nothing is stopped
    with st.locked(folder):
        state = st.load(folder)
        state.components.pop(COMPONENT, None)
        state.save()
    if remove:
        shutil.rmtree(state.data(COMPONENT), ignore_errors=True)
        shutil.rmtree(state.data(f"{COMPONENT}-wal"), ignore_errors=True)
        primary = state.components.get("postgres")
        if primary is not None:
            _drop_slot(pg.url(primary.port))
    return True


def remove_standby(project: Project, env: Environment) -> bool:
    """`dr standby --stop`: stop_standby under the environment's deploy lease (and the standby
    check's warning after a failover, unprotected_since, silenced: no standby is then chosen), refused
    (UsageError, nothing changed) while a failover journal is pending: that failover's standby
    is the server meant to become the primary, and the old primary is fenced (read-only)."""
    from opsctl.pitr import lease

    _local(project, env)
    with lease.held(project, env, "standby"):
        refuse_pending(project, env, "removing the standby")
        stopped = stop_standby(project, env)
        _unprotected_path(project, env).unlink(missing_ok=True)  # no standby, on purpose: no warning
        return stopped


def refuse_pending(project: Project, env: Environment, what: str) -> None:
    """UsageError (exit 2, nothing changed) naming `what` ("removing the standby", "an in-place
    restore") while a local failover of `env` is pending (its journal
    `.opsctl/failover/<env>.pending.json` exists): the old primary is fenced and the standby is
    the server meant to become the primary; finish it (`failover`) or undo it (`--abandon`) first,
    whichever pending_failover says its stage allows."""
    if (pending := pending_failover(project, env)) is not None:
        raise UsageError(f"{what} refused: {pending}; nothing was changed")


def pending_failover(project: Project, env: Environment) -> str | None:
    """One line on a local failover of `env` that was interrupted (the platform's PostgreSQL then
    takes no writes until it is finished or undone), with the ways out that work at its stage;
    None when none is pending. For `local up`, `local status` and the `standby` health check too
    (breaker 36 F2: after a failover killed at 'promoting', `local up` said "platform up", the
    checks OK, and every write failed), and the refusals while one is pending. UsageError when
    the journal can't be read.

    The ways out are judged by the rules the commands apply, so the advice never names one that
    is refused (breaker 51 H3: `--abandon` was offered at 'promoted'): finishing (`failover`)
    unless `_standby_gone`, undoing (`failover --abandon`) unless `_abandon_refused`."""
    from opsctl.local import state as st

    doc = _pending(project, env)
    if doc is None:
        return None
    state = st.load(st.folder_for(project.root))
    where = f"a failover of {env.name} interrupted at '{doc.get('stage')}' is pending ({_pending_path(project, env)})"
    finish = f"'opsctl failover --env {env.name} --yes'"
    undo = f"'opsctl failover --env {env.name} --abandon'"
    refused, gone = _abandon_refused(project, env, state, doc), _standby_gone(state, doc)
    writes = _takes_writes(state)
    unfenced = not writes and doc.get("stage") == "fencing" and not (state.data("postgres") / "standby.signal").exists()
    fence = ("the old primary is not fenced yet and still takes writes" if writes and doc.get("stage") == "fencing"
             else f"the platform's PostgreSQL (port {writes}) takes writes" if writes
             # breaker 65 G7: stopped before its fence, it was called fenced
             else "the old primary is down and not fenced yet ('opsctl local up' fences it before it starts it)"
             if unfenced else "the old primary is fenced (read-only: every write fails)")
    if refused is None and not gone:
        return f"{where} and {fence}; finish it with {finish} or undo it with {undo}"
    if refused is None:
        return (f"{where} and {fence}; its standby (port {doc.get('standby_port')}) is gone, so it can't be "
                f"finished: undo it with {undo} (the old primary is unfenced), then 'opsctl dr standby --env "
                f"{env.name}'")
    if not gone:
        until = (f"the platform's PostgreSQL (port {writes}) takes writes" if writes else
                 "the platform's PostgreSQL takes no writes until it is finished")
        return f"{where}: {refused.why}, so it can't be undone; {until}: finish it with {finish}"
    return (f"{where}: it can't be finished (its standby, port {doc.get('standby_port')}, is gone) nor undone: "
            f"{refused.text}")


def _takes_writes(state) -> int | None:
    """The platform's PostgreSQL's port when it runs and takes writes (not in recovery), else
    None: what a pending failover's line says of it, asked, never assumed from the journal's
    stage (breaker 64 F2: a failover killed before its fence said "fenced (read-only)" of a
    primary taking writes)."""
    from opsctl.local.platform import live_pid

    comp = state.components.get("postgres")
    if comp is None or live_pid(state, "postgres") is None:
        return None
    return comp.port if _answers_writable(comp.port) else None


def pending_failover_note(project: Project, env: Environment) -> str | None:
    """pending_failover for those that only tell (`local up`, the standby check): an unreadable
    journal is told as its UsageError's text instead of raised."""
    try:
        return pending_failover(project, env)
    except UsageError as exc:
        return str(exc)


def stop_for_down(state) -> bool:
    """`opsctl local down`'s hook: stop a running standby (its data is kept; `dr standby`
    builds a new one later). True when one was running."""
    from opsctl.local import postgres as pg

    pid = _standby_pid(state)
    if pid is None:
        return False
    pg.stop(pid)
    return True


def _answers_writable(port: int) -> bool:
    """Whether a PostgreSQL that is not in recovery answers on `port` (a primary we could not stop)."""
    import psycopg

    from opsctl.local import postgres as pg

    try:
        with psycopg.connect(pg.url(port), connect_timeout=3) as conn:
            return not conn.execute("select pg_is_in_recovery()").fetchone()[0]
    except psycopg.Error:
        return False


def _restart_workers(state, env: Environment, failed: list[str]) -> list[str]:
    """Restart every running worker color on its kept port so it reads the new database URL
    (the platform's own worker start; the router's upstream port does not change). A color
    that does not come back is added to `failed` ("color: why") and the others still go."""
    from opsctl.errors import OpsError
    from opsctl.local import procs
    from opsctl.local import state as st
    from opsctl.local import worker as wk
    from opsctl.local.platform import live_pid
    from opsctl.redact import credentials

    restarted = []
    for color in st.COLORS:
        comp = state.components.get(wk.name(color))
        pid = live_pid(state, wk.name(color))  # ours, by port or PID file: a color not running stays down
        if comp is None or pid is None:
            continue
        procs.stop(pid, 30.0, "transcription-worker")
        try:
            wk.start(state, env, color, comp.version, comp.settings, env.deploy.ready_timeout)
        except OpsError as exc:
            failed.append(f"{color}: {credentials(str(exc))}")
            continue
        finally:
            state.save()
        restarted.append(color)
    return restarted


def _promotion_found(project: Project, env: Environment, state, standby_there: bool) -> str | None:
    """What shows that the failover's standby was promoted, running or not (None: nothing does).

    Its data directory's pg_control says "in production" or "shut down" (a standby that never
    left recovery says "... in recovery" / "in archive recovery"), or a timeline history file
    newer than the old primary's timeline is in the standby's pg_wal, the local WAL queue or the
    repository (a promotion writes and archives one; an in-place restore leaves the primary on
    the newest timeline, and beside restores archive nothing)."""
    import re

    from opsctl.pitr import archive, layout
    from opsctl.pitr.local import queue_dir

    if standby_there:
        said = archive.control_data(state.data(COMPONENT)).get("Database cluster state")
        if said in ("in production", "shut down", "shutting down"):
            return f"its data directory {state.data(COMPONENT)} says '{said}', not in recovery"

    tli = archive.control_timeline(state.data("postgres"))
    if tli is None:
        return None

    from opsctl.pitr.archive import NOTES
    from opsctl.pitr.restore import read_notes

    # a timeline an undone in-place restore abandoned (noted in the queue, or recorded in the
    # repository) is no promotion
    abandoned = {n["timeline"] for n in read_notes(queue_dir(state) / NOTES)}

    def newer(names) -> list[int]:
        return sorted(int(n[:8], 16) for n in names if re.fullmatch(r"[0-9A-F]{8}\.history", n)
                      and int(n[:8], 16) > tli and int(n[:8], 16) not in abandoned)

    places = [(state.data(COMPONENT) / "pg_wal", "the standby's pg_wal"), (queue_dir(state), "the local WAL queue")]
    for folder, where in places:
        found = newer(p.name for p in folder.glob("*.history")) if folder.is_dir() else []
        if found:
            return f"{layout.history_file(found[-1])} in {where}, newer than the old primary's timeline {tli}"
    try:
        from opsctl.pitr.archive import system_identifier
        from opsctl.pitr.ops import sealed_repository

        sysid = system_identifier(state.data("postgres"))
        repo, _key = sealed_repository(project, env)
        objects, _strange = layout.parse_wal(sysid, repo.names(layout.wal_prefix(sysid)))
        abandoned |= {int(n.rpartition("/")[2][:8], 16) for n in repo.names(layout.abandoned_prefix(sysid))
                      if layout.ABANDONED.fullmatch(n.rpartition("/")[2])}
    except Exception as exc:  # noqa: BLE001 - an unreachable repository: what is local decided
        import logging

        logging.getLogger(__name__).warning("a pending failover: the repository's timeline history was not "
                                            "checked for its promotion (%s)", exc)
        return None
    found = newer(objects)
    if found:
        return f"{layout.history_file(found[-1])} in the repository, newer than the old primary's timeline {tli}"
    return None


def _refuse_stale(state, env: Environment, standby_port: int, primary_port: int, primary_running: bool,
                  streaming: bool) -> None:
    """UsageError (nothing changed) when the standby does not follow the current primary: it does
    not stream from the primary that runs; or, the primary down, the standby is on an older
    timeline and replayed WAL past the point where the primary's history left that timeline
    (or that timeline is not in the primary's history at all), as after an in-place restore.
    Promoted, it would bring back a replaced history."""
    import psycopg

    from opsctl.local import postgres as pg
    from opsctl.pitr import layout

    rebuild = (f"rebuild it: 'opsctl dr standby --env {env.name} --stop', then 'opsctl dr standby --env "
               f"{env.name}'; nothing was changed")
    if primary_running:
        if not streaming:
            raise UsageError(f"failover refused: the standby (port {standby_port}) does not stream from the running "
                             f"primary (port {primary_port}): it is behind or follows another history; {rebuild}")
        return
    from opsctl.pitr import archive

    tli = archive.control_timeline(state.data("postgres"))
    with psycopg.connect(pg.url(standby_port), connect_timeout=5, autocommit=True) as conn:
        # the standby's restartpoint timeline: a lower bound of the timeline it replays
        own, replayed = conn.execute("select timeline_id, pg_last_wal_replay_lsn()::text "
                                     "from pg_control_checkpoint()").fetchone()
    if tli is None or own >= tli or replayed is None:
        return
    hist = state.data("postgres") / "pg_wal" / layout.history_file(tli)
    switch = dict(layout.history_path(hist.read_text(), tli)).get(own) if hist.exists() else None
    if switch is None or layout.lsn(replayed.upper()) > switch:
        raise UsageError(f"failover refused: the standby (port {standby_port}) replayed timeline {own} to "
                         f"{replayed}, past where the primary's timeline {tli} left it"
                         + (f" ({layout.lsn_text(switch)})" if switch is not None else "")
                         + f": it follows a history the primary replaced (an in-place restore?); {rebuild}")


def _pending_path(project: Project, env: Environment) -> Path:
    return project.state_dir / "failover" / f"{env.name}.pending.json"


def _save_pending(project: Project, env: Environment, doc: dict) -> None:
    from opsctl.files import write_json

    write_json(_pending_path(project, env), doc, private=True)


def _unprotected_path(project: Project, env: Environment) -> Path:
    """Kept by a finished local failover, which leaves no standby (the standby became the
    primary): the `standby` health check warns until 'dr standby' builds one or 'dr standby
    --stop' says none is wanted."""
    return project.state_dir / "failover" / f"{env.name}.no-standby.json"


def mark_unprotected(project: Project, env: Environment, by: str) -> None:
    """Record that `by` ("the failover", "the in-place restore") left `env` without the standby
    it had (unprotected_since), so the `standby` health check warns rather than disappears."""
    from opsctl.files import write_json

    write_json(_unprotected_path(project, env),
               {"at": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}", "by": by}, private=True)


def unprotected_since(project: Project, env: Environment) -> str | None:
    """What left `env` without a standby and when (ISO time, UTC): "the failover at ...", "the
    in-place restore at ...", or None when nothing did (or a standby was built, or removed on
    purpose, since). A record that can't be read still says there is none ("an unknown time")."""
    import json

    path = _unprotected_path(project, env)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        return f"{doc.get('by') or 'the failover'} at {doc['at']}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "an unknown time"


def _pending(project: Project, env: Environment) -> dict | None:
    """The journal of a failover that was interrupted (Ctrl-C, SIGTERM, kill -9) after it fenced
    the old primary, or None."""
    import json

    path = _pending_path(project, env)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"the journal of an interrupted failover {path} can't be read ({exc}); read it, finish "
                         "by hand or remove it, then re-run") from None


def _fence(data: Path) -> bool:
    """Write standby.signal into the old primary's (stopped) data directory: started again by
    anyone (`opsctl local up`), it comes up as a standby that refuses writes. True when written."""
    if not data.is_dir() or (data / "standby.signal").exists():
        return False
    (data / "standby.signal").write_text("")
    return True


def failover(project: Project, env: Environment, approve=None, progress=None) -> LocalFailoverResult:
    """_failover; a Ctrl-C or SIGTERM that leaves the failover pending raises Interrupted (exit
    130) naming it and the two ways out (breaker 36 F6: it said "interrupted" alone)."""
    from opsctl.errors import Interrupted

    try:
        return _failover(project, env, approve, progress)
    except KeyboardInterrupt:
        try:
            pending = pending_failover(project, env)
        except UsageError:
            pending = None
        if pending is None:
            raise
        raise Interrupted(f"interrupted: {pending}") from None


def _failover(project: Project, env: Environment, approve=None, progress=None) -> LocalFailoverResult:
    """Promote the standby to be the platform's PostgreSQL and repoint the environment to it.

    `approve(text)` is asked before anything changes (raise to stop); `progress(step)` gets
    each step's name. The old primary is stopped and fenced (standby.signal in its data
    directory) and the intent journaled (`.opsctl/failover/<env>.pending.json`) before the
    promotion; a failover interrupted after that point (Ctrl-C, SIGTERM, kill -9) is finished
    by the next run, whose steps are each idempotent. UsageError when there is no running
    standby, or it does not follow the current primary (not streaming from it while it runs,
    or not on its timeline; nothing is changed); OperationFailed when the promotion fails
    (the old primary stays fenced; a rerun promotes again), or after a failover done and
    recorded when a worker does not come back on the new server.
    """
    from opsctl.local import postgres as pg
    from opsctl.local import procs
    from opsctl.local.platform import live_pid

    step = progress or (lambda _s: None)
    folder, state = _local(project, env)
    doc = _pending(project, env)
    if doc is not None:
        if _standby_gone(state, doc):
            _refuse_gone(project, env, doc)  # before asking: there is nothing left to finish
        if approve is not None:
            approve(f"finish the failover of {env.name} interrupted at '{doc.get('stage')}' (begun {doc.get('at')}): "
                    f"the standby (port {doc['standby_port']}) becomes its PostgreSQL; the old primary stays fenced")
        return _finish(project, env, doc, step, resumed=True)
    if not _standby_running(state):
        raise UsageError("no running standby to promote; start one with 'opsctl dr standby --env "
                         f"{env.name}' (or restore with 'opsctl restore --env {env.name} --to-time latest')")
    standby = state.components[COMPONENT]
    recovering, streaming, _lsn = wal_receiver(standby.port)
    if not recovering:
        raise UsageError(f"the standby on port {standby.port} is not in recovery: it was promoted already")
    primary = state.components["postgres"]
    primary_pid = live_pid(state, "postgres")  # ours by port or postmaster.pid, never a reused PID
    old_running = primary_pid is not None
    _refuse_stale(state, env, standby.port, primary.port, old_running, streaming)
    if approve is not None:
        approve(f"promote the standby (port {standby.port}) to be {env.name}'s PostgreSQL in place of the primary "
                f"(port {primary.port}, {'running: it will be stopped' if old_running else 'down'})")
    began = time.time()
    notes = []
    fenced = "not yet" if old_running else "was down"  # "not yet": a run killed before the stop leaves it so
    # journaled before anything changes: a run killed from here on (even between the stop and
    # the fence) is recognised and finished by the next, which stops and fences the old primary
    # again (_promote_standby); a fence without its journal is never left
    doc = {"stage": "fencing", "at": dt.datetime.now(dt.timezone.utc).isoformat(), "began": began,
           "stamp": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S"), "old_port": primary.port,
           "standby_port": standby.port, "old_primary_was_running": old_running, "fenced": fenced, "notes": notes,
           "timeline": None, "replayed_lsn": None}
    _save_pending(project, env, doc)
    if old_running:  # fence: a primary that still takes writes would fork the history
        step("stopping the old primary")
        pg.stop(primary_pid)
        fenced = "stopped"
        if procs.alive(primary_pid, "postgres"):
            fenced = "unconfirmed"
            notes.append(f"fencing not confirmed: the old primary (pid {primary_pid}) did not stop; kill it before "
                         "anyone writes to it")
        # the standby streamed until the stop; give it the primary's shutdown checkpoint
        streaming = _settle(standby.port)
    elif procs.port_open(primary.port) and _answers_writable(primary.port):
        fenced = "unconfirmed"
        notes.append(f"fencing not confirmed: a writable PostgreSQL that is not the platform's own answers on port "
                     f"{primary.port}; stop it before anyone writes to it")
    if not old_running and not streaming:
        notes.append("the standby was not streaming when the primary was found down: commits after its last "
                     "replayed WAL are lost (see replayed_lsn)")
    # fenced for good before the promotion: started again by anyone (`opsctl local up`, a
    # failover interrupted from here on), the old primary comes up as a standby that refuses
    # writes, so there are never two writable primaries (a later pg_rewind can make it one of
    # the new primary)
    _fence(state.data("postgres"))
    doc.update(stage="promoting", fenced=fenced, notes=notes)
    _save_pending(project, env, doc)
    return _finish(project, env, doc, step, resumed=False)


def _settle(port: int) -> bool:
    """Wait (up to 10 s) until the standby at `port` stops advancing its replay; whether it streamed."""
    deadline = time.monotonic() + 10
    want, streaming = None, False
    while time.monotonic() < deadline:
        _r, streaming, lsn = wal_receiver(port)
        if lsn == want:
            break
        want = lsn
        time.sleep(0.3)
    return streaming


def _refuse_gone(project: Project, env: Environment, doc: dict) -> None:
    """UsageError: the journal's standby is gone (removed since the run was interrupted)."""
    raise UsageError(f"the failover of {env.name} interrupted at '{doc.get('stage')}' can't be finished: its standby "
                     f"(port {doc.get('standby_port')}) is gone (removed since, by 'dr standby --stop' or an in-place "
                     f"restore); the platform's PostgreSQL (port {doc.get('old_port')}) stays fenced, read-only; run "
                     f"'opsctl failover --env {env.name} --abandon' to unfence it and start it writable, then "
                     f"'opsctl dr standby --env {env.name}'; nothing was changed")


def before_primary_start(state, env: Environment) -> None:
    """`opsctl local up`'s check before it starts (or would initdb) data/postgres while a failover
    of `env` is pending (its journal exists). Before the journal's 'repointing' stage the server
    there is the old primary: it is fenced (standby.signal) if the failover was stopped before
    it fenced it, so it comes up read-only, never a second writable primary beside the standby
    meant to take over (breaker 64 F2: killed between the journal and the fence, `local up`
    started it writable; the failover was approved, and `failover --abandon` unfences it: once
    an abandon began, the journal's `abandoning`, it is started as it is).
    UsageError when data/postgres is missing: it is then between two renames of the failover
    (the promoted server at data/postgres-standby, the old one at data/postgres.failed-*), and
    an empty writable cluster must not take its place."""
    import json
    import logging

    path = state.folder.parent / "failover" / f"{env.name}.pending.json"
    if path.exists() and state.data("postgres").is_dir():
        try:
            doc = json.loads(path.read_text())
            stage, abandoning = doc.get("stage"), doc.get("abandoning")
        except (OSError, ValueError, AttributeError):
            stage = abandoning = None  # unreadable: `local up` says so elsewhere; fencing is the safe side
        if stage != "repointing" and not abandoning and _fence(state.data("postgres")):
            logging.getLogger(__name__).warning("fenced the old primary %s (standby.signal): a failover of %s is "
                                                "pending", state.data("postgres"), env.name)
    if path.exists() and not state.data("postgres").exists():
        raise UsageError(f"{state.data('postgres')} is missing while a failover of {env.name} is pending ({path}): "
                         f"finish it with 'opsctl failover --env {env.name}' (it moves the promoted server there); "
                         "no empty cluster was made")


@dataclass
class _Refusal:
    """Why `failover --abandon` refuses a pending failover: `why`, what shows it (a clause),
    and `text`, the refusal as abandon says it (with what to do instead)."""

    why: str
    text: str


def _standby_there(state) -> bool:
    """Whether the failover's standby still exists (recorded, and its data directory there)."""
    return COMPONENT in state.components and state.data(COMPONENT).is_dir()


def _standby_gone(state, doc: dict) -> bool:
    """Whether the failover journaled as `doc` can't be finished: its standby is gone (removed
    since it was interrupted) and it had not yet moved it to data/postgres ('repointing')."""
    return doc.get("stage") != "repointing" and not _standby_there(state)


def _abandon_refused(project: Project, env: Environment, state, doc: dict) -> _Refusal | None:
    """Why `failover --abandon` refuses the failover journaled as `doc`, or None when it undoes
    it: past the promotion ('repointing', or 'promoted' with its standby there), a standby that
    runs out of recovery, any other sign of a promotion (_promotion_found: two histories must not
    both take writes), or no old primary's data directory to unfence. The one rule abandon
    applies and pending_failover words its advice by (breaker 51 H3)."""
    stage = doc.get("stage")
    standby_there = _standby_there(state)
    finish = f"finish it with 'opsctl failover --env {env.name}'"
    if stage == "repointing" or (standby_there and stage == "promoted"):
        return _Refusal("its standby was promoted" if stage == "promoted" else
                        "its promoted standby was being moved to data/postgres",
                        f"the failover of {env.name} got past the promotion ('{stage}'): abandoning it would leave "
                        f"two histories; {finish}")
    port = state.components[COMPONENT].port if standby_there else None
    if standby_there and _standby_pid(state) is not None and _answers_writable(port):
        return _Refusal(f"its standby (port {port}) was promoted already and takes writes",
                        f"the failover's standby (port {port}) was promoted already: {finish}")
    promoted = _promotion_found(project, env, state, standby_there)
    if promoted:  # stopped (or gone) after pg_promote: its timeline is the history restores follow
        then = (f"{finish} (it starts the promoted standby)" if standby_there else
                f"the promoted standby is gone: read {_pending_path(project, env)} and decide by hand "
                f"(e.g. 'opsctl restore --env {env.name} --to-time latest' once the journal is removed)")
        return _Refusal(f"its standby was promoted already ({promoted})",
                        f"the failover of {env.name} promoted its standby already ({promoted}): abandoning it would "
                        f"let the old primary take writes on a timeline restores no longer follow; {then}")
    data = state.data("postgres")
    if not (data / "PG_VERSION").exists():
        return _Refusal(f"{data}, the old primary, is not a data directory",
                        f"{data} is not a data directory; read {_pending_path(project, env)}")
    return None


def abandon(project: Project, env: Environment, approve=None) -> dict:
    """`failover --abandon`: undo a failover interrupted before its standby was promoted (or
    whose standby is gone): remove the old primary's fence (standby.signal), start it writable
    through the platform's own start, and remove the journal. Under the deploy lease. UsageError
    when no failover is pending, or when `_abandon_refused` says why not (its standby was
    promoted: then only finishing is safe, two histories must not both take writes). Returns
    what it did."""
    from opsctl.local import postgres as pg
    from opsctl.local import state as st
    from opsctl.local import platform
    from opsctl.local.platform import live_pid
    from opsctl.pitr import lease

    folder, state = _local(project, env)
    with lease.held(project, env, "failover"):
        doc = _pending(project, env)
        if doc is None:
            raise UsageError(f"no interrupted failover of {env.name} to abandon ({_pending_path(project, env)} "
                             "does not exist); nothing was changed")
        refused = _abandon_refused(project, env, state, doc)
        if refused is not None:
            raise UsageError(f"{refused.text}; nothing was changed")
        standby_there = _standby_there(state)
        data = state.data("postgres")
        if approve is not None:
            approve(f"abandon the failover of {env.name} interrupted at '{doc.get('stage')}': the old primary "
                    f"(port {doc.get('old_port')}) is unfenced and started writable")
        doc["abandoning"] = True  # `local up` (before_primary_start) no longer fences it, killed from here on
        _save_pending(project, env, doc)
        with st.locked(folder):
            state = st.load(folder)
            pg.stop(live_pid(state, "postgres"))  # started read-only meanwhile: started again writable
            (data / "standby.signal").unlink(missing_ok=True)
            start = getattr(platform, "start_component", None) or getattr(platform, "_start")
            start("postgres", state, env)
            state.save()
            port = state.components["postgres"].port
        if _answers_writable(port) is False:
            raise OperationFailed(f"the old primary (port {port}) was unfenced but does not take writes; read "
                                  f"{state.log('postgres')}; the journal {_pending_path(project, env)} is kept")
        _pending_path(project, env).unlink(missing_ok=True)
        return {"environment": env.name, "abandoned_stage": doc.get("stage"), "primary_port": port,
                "standby_kept": standby_there}


def _promote_standby(project: Project, env: Environment, doc: dict, step) -> None:
    """Promote the standby named by the journal `doc` unless it is promoted already (started
    first when it is down), and record its timeline and replayed LSN in the journal."""
    import psycopg

    from opsctl.local import postgres as pg
    from opsctl.local import state as st
    from opsctl.pitr import local as pitr_local

    folder, state = _local(project, env)
    comp = state.components.get(COMPONENT)
    data = state.data(COMPONENT)
    if comp is None or not data.is_dir():
        _refuse_gone(project, env, doc)
    from opsctl.local.platform import live_pid

    # the old primary again, before the promotion: a run interrupted before its fence (or
    # between its journal and its fence), then `opsctl local up`, may have started it; stopped
    # and fenced, it never takes writes beside the promoted standby
    old = live_pid(state, "postgres")
    if old is not None and _answers_writable(state.components["postgres"].port):
        # the first run was killed before it stopped the primary (breaker 64 F2)
        doc.setdefault("notes", []).append("the old primary was running and took writes when the failover resumed: "
                                           "stopped and fenced")
    if doc.get("fenced") == "not yet":
        doc["fenced"] = "stopped"
    doc.pop("abandoning", None)  # an abandon killed mid-way, finished instead: fenced again below
    pg.stop(old)
    _fence(state.data("postgres"))
    if old is not None and _standby_pid(state) is not None:
        _settle(comp.port)  # the standby gets the stopped primary's shutdown checkpoint
    recovering = True
    if _standby_pid(state) is not None:
        with psycopg.connect(pg.url(comp.port), autocommit=True) as conn:
            recovering = conn.execute("select pg_is_in_recovery()").fetchone()[0]
    if recovering:  # (re)started with the platform's archiving, still a standby, so the new timeline is archived
        step("starting the standby with archiving" if _standby_pid(state) is None else
             "restarting the standby with archiving")
        pg.stop(_standby_pid(state))
        pid = pg.start(data, comp.port, state.log(COMPONENT), settings=pitr_local.server_settings(state, env))
        with st.locked(folder):
            state = st.load(folder)
            state.components[COMPONENT].pid = pid
            state.save()
    step("promoting the standby")
    with psycopg.connect(pg.url(comp.port), autocommit=True) as conn:
        recovering, replayed = conn.execute("select pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
        if recovering and not conn.execute("select pg_promote(true, 60)").fetchone()[0]:
            raise OperationFailed(f"pg_promote did not finish within 60 s; read {state.log(COMPONENT)}; the old "
                                  "primary stays fenced; re-run 'opsctl failover' to finish")
        tli = int(conn.execute("select pg_walfile_name(pg_current_wal_lsn())").fetchone()[0][:8], 16)
        sysid = conn.execute("select system_identifier::text from pg_control_system()").fetchone()[0]
        conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
                     (SLOT,))
    doc.update(stage="promoted", timeline=tli, replayed_lsn=doc.get("replayed_lsn") or replayed)
    _save_pending(project, env, doc)
    _unabandon(project, env, sysid, tli)


def _unabandon(project: Project, env: Environment, sysid: str, tli: int) -> None:
    """The promoted standby lives on timeline `tli`: a marker recording that number as abandoned
    (an undone restore's, whose history never reached the archive, so the number was made
    again) is removed (chain.unabandon). Never raises: a failure is logged."""
    import logging

    from opsctl.pitr.restore import abandoned_marker

    try:
        abandoned_marker(project, env, sysid, tli, None)
    except Exception as exc:  # noqa: BLE001 - the failover goes on; this is said
        from opsctl.redact import credentials

        logging.getLogger(__name__).error("timeline %d: an abandoned-timeline record in the repository was not "
                                          "checked (%s)", tli, credentials(str(exc)))


def _finish(project: Project, env: Environment, doc: dict, step, resumed: bool) -> LocalFailoverResult:
    """From the journal `doc` on: promote (unless done), repoint, restart the workers, record.
    Each step checks what is done already, so an interrupted run is finished by the next."""
    import json

    from opsctl.files import write_json
    from opsctl.local import postgres as pg
    from opsctl.local import state as st
    from opsctl.local import platform
    from opsctl.local.platform import live_pid

    notes = list(doc.get("notes") or [])
    if resumed:
        notes.append(f"finished a failover interrupted at '{doc['stage']}' (begun {doc['at']})")
    folder, state = _local(project, env)
    if doc["stage"] != "repointing":  # promoted or not: its standby must still be there
        if _standby_gone(state, doc):
            _refuse_gone(project, env, doc)
        _promote_standby(project, env, doc, step)
        notes += [n for n in doc.get("notes") or [] if n not in notes]  # what the promotion found
    step("repointing the environment")
    doc["stage"] = "repointing"
    _save_pending(project, env, doc)
    with st.locked(folder):
        state = st.load(folder)
        live, new = state.data("postgres"), state.data(COMPONENT)
        kept = live.with_name(f"postgres.failed-{doc['stamp']}")
        if COMPONENT in state.components:
            # PostgreSQL keeps absolute paths to its data directory: the promoted server is
            # stopped cleanly, moved to data/postgres and started there by the platform's own
            # start (its port, archiving settings), a second or two
            pg.stop(_standby_pid(state))
            if new.is_dir():
                pg.stop(live_pid(state, "postgres"))  # the fenced old primary, started read-only meanwhile
                _unconfigure(new)
                (new / "standby.signal").unlink(missing_ok=True)
                if live.exists() and not kept.exists():
                    live.rename(kept)
                elif live.exists():
                    # kept holds the old primary (this failover's stamp): what is at data/postgres was
                    # made after the first rename (an older `opsctl local up`'s initdb); kept aside
                    stray = live.with_name(f"postgres.stray-{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S}")
                    live.rename(stray)
                    notes.append(f"{live} was made after this failover moved the old primary aside (an empty "
                                 f"cluster?): kept at {stray}")
                new.rename(live)
            state.components["postgres"] = state.components.pop(COMPONENT)
            state.save()
        if kept.is_dir():
            _fence(kept)
            notes.append(f"the old primary's data directory is kept at {kept} with standby.signal: started again, "
                         "it refuses writes")
        shutil.rmtree(state.data(f"{COMPONENT}-wal"), ignore_errors=True)
        if live_pid(state, "postgres") is None:
            start = getattr(platform, "start_component", None) or getattr(platform, "_start")
            start("postgres", state, env)
            state.save()
        from opsctl.pitr.restore import switch_fork_segment

        notes += switch_fork_segment(state.components["postgres"].port)  # its new timeline's first segment
        served = time.time() - doc["began"]
        step("restarting the workers")
        failed: list[str] = []
        workers = _restart_workers(state, env, failed)
        state.save()
    notes += [f"worker {f} did not come back on the promoted server" for f in failed]
    # the standby became the primary: nothing protects it until another is built (breaker F18)
    notes.append(f"no standby is left: run 'opsctl dr standby --env {env.name}' to protect the new primary")
    from opsctl.endpoints import resolve

    try:
        url = resolve(project, env).database_url or ""
    except UsageError:  # a platform running PostgreSQL alone (no Redis, S3, router): no URL handed out
        url = ""
    old_running, tli, replayed, fenced = (doc["old_primary_was_running"], doc["timeline"], doc["replayed_lsn"],
                                          doc["fenced"])
    result = LocalFailoverResult(env.name, f"127.0.0.1:{doc['old_port']}", f"127.0.0.1:{doc['standby_port']}",
                                 old_running, tli, replayed, url, workers, str(kept) if kept.exists() else None,
                                 dt.datetime.now(dt.timezone.utc), round(served, 2),
                                 round(time.time() - doc["began"], 2), notes=notes, fenced=fenced)
    path = project.state_dir / "failover" / f"{env.name}.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append({"at": result.at.isoformat(), "old_primary": result.old_primary, "new_primary": result.new_primary,
                    "old_primary_was_running": old_running, "timeline": tli, "replayed_lsn": replayed,
                    "database_url": url, "workers_restarted": workers, "previous_data_dir": result.previous_data_dir,
                    "fenced": fenced, "promote_seconds": result.promote_seconds, "seconds": result.seconds,
                    "notes": notes})
    write_json(path, history, private=True)
    mark_unprotected(project, env, "the failover")
    _pending_path(project, env).unlink(missing_ok=True)
    result.journal = str(path)
    if failed:  # the database failed over (recorded); the workers are the operator's next step
        raise OperationFailed(f"failover done (recorded in {path}; database URL {url}), but worker(s) did not come "
                              f"back: {'; '.join(failed)}; run 'opsctl local up' or read their logs")
    return result
