"""The operations the commands call: take a base backup, verify the chains, show the window.

Each returns a plain result for the front door to render; none prints.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Callable

from opsctl.backup.crypto import IntegrityError
from opsctl.config import Environment, Project
from opsctl.errors import Interrupted, OperationFailed, UsageError
from opsctl.pitr import base as bb
from opsctl.pitr import chain, layout

log = logging.getLogger("opsctl.pitr")


def repository(project: Project, env: Environment):
    """The environment's backup repository (repository.for_environment)."""
    from opsctl.backup.repository import for_environment

    return for_environment(project, env)


def sealed_repository(project: Project, env: Environment, initialise: bool = False):
    """(repository, key or None) for PITR objects, following the repository record.

    An encrypted repository needs the key (UsageError). Without a record, `initialise`
    makes the location an encrypted repository (as `backup create` does) and needs a key:
    a repository is never made unencrypted behind the user's back.
    """
    from opsctl.backup import keys
    from opsctl.local import procs

    procs.remember_secrets(env)  # the servers a PITR operation starts never inherit them
    repo = repository(project, env)
    key = keys.load(project, env, required=False)
    try:
        from opsctl.backup import record
    except ImportError:  # a tree without the repository record
        record = None
    rec = record.read(repo, key) if record is not None else None
    if rec is None and key is None:
        raise UsageError(f"no backup key: set ${env.backup.key_env} (or backup.key_file) so WAL and base backups "
                         f"are sealed like every backup, or make {repo.url} an unencrypted repository with "
                         "'opsctl backup create --no-encrypt'")
    if rec is None and record is not None and initialise:
        record.ensure(repo, key)
    elif rec is not None and rec.encrypted and key is None:
        raise UsageError(f"repository {repo.url} is encrypted (key id {rec.key_id}); set ${env.backup.key_env}")
    elif rec is not None and not rec.encrypted:
        key = None
    return repo, key


def local_state(project: Project, env: Environment):
    """(platform state, its postgres component) of the embedded platform `env` runs on.

    Raises UsageError when `env` is not the embedded platform or its platform was never
    started: both are the caller's input, checked before any work (a drill's preflight too)."""
    from opsctl.local import state as st

    if env.platform != "local":
        raise UsageError(f"physical base backups and WAL archiving run for the embedded platform; '{env.name}' "
                         f"runs on {env.platform}, whose database RDS backs up itself")
    state = st.load(st.folder_for(project.root))
    comp = state.components.get("postgres")
    if comp is None:
        raise UsageError(f"the local platform of {project.root} was never started; run 'opsctl local up'")
    return state, comp


def create_base(project: Project, env: Environment, kind: str = "full", report=None) -> bb.BaseBackup:
    """A base backup of the embedded platform's PostgreSQL: `kind` full, incremental or auto
    (bb.take), returned once the WAL it needs (start to stop) is in the repository: a restore
    can start from it. PostgreSQL's wait at the backup's end (pg_basebackup -X none) ends when
    its archive_command has queued the stop segment locally; the archiver uploads it later,
    and a verify-chain or a restore run at once found no window from the new base backup.
    pgBackRest's archive-check waits the same way (archive-timeout). Raises OperationFailed
    when that WAL does not arrive within `backup.base_wal_wait` seconds (0: no wait), the
    archiver is not running, or a full queue dropped a segment of it; the base backup stays,
    restorable once its WAL arrives, and the message says so. With `base_wal_wait` 0 it does
    not wait, but a segment already dropped, or no archiver running, still fails it."""
    from opsctl.local import procs

    state, comp = local_state(project, env)
    repo, key = sealed_repository(project, env, initialise=True)
    conninfo = f"host={procs.HOST} port={comp.port} user=postgres dbname=postgres"
    rec = bb.take(repo, key, conninfo, kind, env.backup.compress_level, report)
    try:  # base_wal_wait 0 waits not, but a segment dropped or no archiver is still said (breaker 35 F1)
        await_wal(repo, state, rec, env.backup.base_wal_wait)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM in the wait: the base backup itself is whole
        raise Interrupted(f"interrupted while waiting for the WAL base backup {rec.id} needs; the base "
                          "backup is kept and becomes restorable once its WAL is archived") from None
    return rec


def _dropped_here(state, sysid: str, file: str) -> bool:
    """Whether the local queue dropped WAL segment `file` of cluster `sysid` (its marker in
    `<queue>/.dropped/`, which a stopped archiver has not filed in the repository yet; a
    marker whose header can't be read counts)."""
    from opsctl.pitr import archive
    from opsctl.pitr import local as pitr_local

    try:
        head = (pitr_local.queue_dir(state) / archive.DROPPED / file).read_bytes()
    except OSError:
        return False
    try:
        return archive.header_sysid(head, file) == sysid
    except ValueError:
        return True


def await_wal(repo, state, rec: bb.BaseBackup, timeout: float, poll: float = 0.2) -> None:
    """Wait, at most `timeout` seconds (0: not at all), until every WAL segment base backup
    `rec` needs (the one holding its start LSN to the one holding its stop LSN, on its
    timeline) is in `repo`.
    OperationFailed, naming the first one missing, when the time is up, a segment was dropped
    by a full queue (it never comes) or the embedded platform's archiver is not running."""
    import time

    from opsctl.pitr import local as pitr_local

    needed = [layout.segment(rec.timeline, n) for n in
              range(layout.segno(layout.lsn(rec.start_lsn)), layout.segno(layout.lsn(rec.stop_lsn)) + 1)]
    deadline = time.monotonic() + timeout
    told = False
    nudged: frozenset[str] = frozenset()
    while True:
        needed = [f for f in needed if not repo.names(layout.wal_prefix(rec.sysid) + f + ".")]
        if not needed:
            return
        first = needed[0]
        lost = next((f for f in needed if repo.names(layout.dropped_prefix(rec.sysid) + f)
                     or _dropped_here(state, rec.sysid, f)), None)
        taken = f"base backup {rec.id} was taken, but WAL segment {lost or first}, which a restore from it needs,"
        after = ("; the base backup is kept and becomes restorable once its WAL is archived "
                 "('opsctl backup verify-chain' shows it)")
        if lost is not None:
            raise OperationFailed(f"{taken} was dropped by the full local WAL queue (backup.archive_queue) and "
                                  "will never be archived; take another base backup once the archiver keeps up")
        elsewhere = pitr_local.archiving_into(state)
        if elsewhere is not None and elsewhere != repo.url:  # backup.repository changed since it started
            raise OperationFailed(f"{taken} is not in the repository: the WAL archiver archives into {elsewhere}, "
                                  f"not {repo.url}; 'opsctl local up' starts it again for {repo.url}{after}")
        pid = pitr_local.archiver_pid(state)
        if pid is None:
            raise OperationFailed(f"{taken} is not in the repository and the WAL archiver is not running "
                                  f"('opsctl local up' starts it){after}")
        nudged = pitr_local.nudge_when_new(state, pitr_local.queued_wal(state), nudged)  # uploaded now
        if not timeout:  # asked not to wait: what is on its way may arrive
            return
        if time.monotonic() > deadline:
            where = "waits in the local queue" if first in pitr_local.queued_wal(state) else "is not in the repository"
            stuck = pitr_local.stalled(state, pid)  # the WAL archive health check's own reading
            why = f"the archiver is stuck: {stuck}" if stuck else f"the archiver is behind; read {state.log('archiver')}"
            raise OperationFailed(f"{taken} {where} after {timeout:g} s (backup.base_wal_wait): {why}{after}")
        if not told:  # a wait with nothing on screen reads as a hang
            log.info("waiting up to %g s for the archiver to upload WAL segment %s, which base backup %s needs",
                     timeout, first, rec.id)
            told = True
        time.sleep(poll)


@dataclass
class ChainReport:
    """What verify-chain and `backup list` report for one cluster: repository URL, system
    identifier, `ok`, the base backups and unusable ones (with why; `broken_base_backups` are the
    damaged or forged among them, not those merely unfinished), segments on the path and
    objects checked, problems, recoverable windows (times UTC), the newest restorable time and
    the timeline path."""
    repository: str
    sysid: str
    ok: bool
    base_backups: list[dict]
    unusable_base_backups: dict[str, str]
    broken_base_backups: list[str]
    segments: int
    checked: int
    problems: list[dict]
    windows: list[dict]
    newest_restorable: dt.datetime | None
    timeline_path: list[dict] = field(default_factory=list)
    unfit_parents: dict[str, str] = field(default_factory=dict)  # id -> why no incremental is built on it

    def faults(self) -> str:
        """What breaks the chain, named once, for an error line (the report gives the reasons):
        missing or damaged files with their kind, damaged base backups; "no restorable window"
        when nothing is named."""
        return ", ".join([f"{p['file']} ({p['kind']})" for p in self.problems]
                         + [f"base backup {bid}" for bid in self.broken_base_backups]) or "no restorable window"


def _sysid(project: Project, env: Environment, repo) -> str:
    """The live cluster's system identifier; on a host whose platform was never started (a new
    host after a lost one, before `local up`), the one cluster the repository holds: checking
    the chain is the first thing a disaster recovery does there, and it needs no server."""
    from opsctl.pitr.restore import cluster_id

    return cluster_id(repo, _started_state(project, env))


def _checked_sysid(project: Project, env: Environment, repo) -> str:
    """The cluster verify-chain and backup list show: the live one (_sysid) or, when it has no
    base backup (its data directory lost and made anew by `local up`), the one other cluster
    the repository holds base backups of: the one a restore restores (chain.other_cluster,
    UsageError when there are several)."""
    sysid = _sysid(project, env, repo)
    if not chain.has_base_backups(repo, sysid):
        sysid = chain.other_cluster(repo, sysid) or sysid
    return sysid


def _started_state(project: Project, env: Environment):
    """The embedded platform's state, or None when it was never started here (UsageError when
    `env` is not the embedded platform, as local_state)."""
    try:
        return local_state(project, env)[0]
    except UsageError:
        if env.platform != "local":
            raise
        return None


def _report(inv: chain.Inventory, end: str = "end of the archive") -> ChainReport:
    """The report of `inv`; `end`: what ends a window nothing broke (its `ends_at`)."""
    return ChainReport(
        repository=inv.repository, sysid=inv.sysid, ok=inv.ok and bool(inv.windows),
        base_backups=[{"id": b.id, "kind": b.kind, "parent": b.parent, "finished_at": b.finished_at,
                       "start_lsn": b.start_lsn, "stop_lsn": b.stop_lsn, "timeline": b.timeline,
                       "raw_bytes": b.raw_bytes, "stored_bytes": b.stored_bytes} for b in inv.bases],
        unusable_base_backups=inv.bad_bases, broken_base_backups=inv.bad_bases_broken, segments=len(inv.segments), checked=inv.checked,
        problems=[{"file": p.file, "kind": p.kind, "detail": p.detail} for p in inv.problems],
        windows=[{"base": w.base_id, "from": w.start, "to": w.end, "last_commit": w.last_commit,
                  "to_lsn": layout.lsn_text(w.end_lsn), "last_segment": w.end_segment,
                  "ends_at": w.stopped_by.line() if w.stopped_by else end} for w in inv.windows],
        newest_restorable=inv.newest_restorable,
        timeline_path=[{"timeline": t, "until": layout.lsn_text(e) if e is not None else None} for t, e in inv.path],
        unfit_parents=dict(inv.unfit))


def server_archived(project: Project, env: Environment, sysid: str) -> str | None:
    """The newest WAL file the running embedded server reports archived (pg_stat_archiver's
    last_archived_wal), when it runs and is the cluster `sysid`; None otherwise (not running,
    no answer, nothing archived yet)."""
    import psycopg

    from opsctl.local import procs

    try:
        _, comp = local_state(project, env)
        with psycopg.connect(f"host={procs.HOST} port={comp.port} user=postgres dbname=postgres",
                             connect_timeout=3) as conn:
            row = conn.execute("select a.last_archived_wal, c.system_identifier::text from pg_stat_archiver a, "
                               "pg_control_system() c").fetchone()
    except (psycopg.Error, UsageError, OSError):
        return None
    if not row or not row[0] or row[1] != sysid or not layout.WAL_FILE.fullmatch(row[0][:24]):
        return None
    # the server counts a file archived once it is in the local queue; one still queued is on its
    # way, not missing: the bound is the segment before the oldest one queued
    from opsctl.local import state as st
    from opsctl.pitr.local import queue_dir

    try:
        queue = queue_dir(st.load(st.folder_for(project.root)))
        queued = sorted(p.name for p in queue.iterdir() if len(p.name) == 24 and layout.WAL_FILE.fullmatch(p.name))
    except OSError:
        queued = []
    if queued and queued[0] <= row[0][:24]:
        tli, n = layout.parse_segment(queued[0])
        return layout.segment(tli, n - 1) if n > 0 else None
    return row[0]


def live_path(project: Project, env: Environment, sysid: str) -> list[tuple[int, int | None]] | None:
    """The embedded server's own timeline path when it is cluster `sysid`: asked of the running
    server (base.server_path), or read from its data directory when it is stopped (pg_control's
    timeline and that timeline's history file in pg_wal); None otherwise (never started,
    another cluster, unreadable)."""
    import psycopg

    from opsctl.local import procs

    try:
        state, comp = local_state(project, env)
    except UsageError:
        return None
    conninfo = f"host={procs.HOST} port={comp.port} user=postgres dbname=postgres connect_timeout=3"
    try:
        with psycopg.connect(conninfo) as conn:
            (system,) = conn.execute("select system_identifier::text from pg_control_system()").fetchone()
    except (psycopg.Error, OSError):
        return _stopped_path(state.data("postgres"), sysid)
    return bb.server_path(conninfo) if system == sysid else None


def _stopped_path(data, sysid: str) -> list[tuple[int, int | None]] | None:
    """The timeline path of the stopped cluster in `data` when it is `sysid` (an abandoned newer
    timeline in the repository must not be followed just because the server is down)."""
    from opsctl.errors import OpsError
    from opsctl.pitr import archive

    try:
        if archive.system_identifier(data) != sysid:
            return None
        tli = archive.control_timeline(data)
        if tli is None:
            return None
        if tli == 1:
            return [(1, None)]
        return layout.history_path((data / "pg_wal" / layout.history_file(tli)).read_text(), tli)
    except (OpsError, OSError, ValueError):
        return None


def verify_chain(project: Project, env: Environment, progress=None, timeline: int | None = None) -> ChainReport:
    """Read and check every WAL object and base backup (record and tar) of the live cluster.
    Segments up to the one the running server reports archived must be there. `timeline`: the
    windows along that timeline's history (chain.inventory), not the one restores follow by
    default. The one write: which base backups the whole read found damaged, kept in the
    repository (chain.record_findings) for the health check and the next incremental base
    backup, which go by listing; a repository that refuses the write is logged, not fatal."""
    repo, key = sealed_repository(project, env)
    if (state := _started_state(project, env)) is not None:
        from opsctl.pitr.restore import record_abandoned

        record_abandoned(project, env, state)  # what a killed undo noted
    sysid = _checked_sysid(project, env, repo)  # after a lost disk: the cluster restore restores
    inv = chain.inventory(repo, key, sysid, deep=True, progress=progress, archived=server_archived(project, env, sysid),
                          live_path=live_path(project, env, sysid), timeline=timeline,
                          queued=_queued_for(state, sysid))
    try:
        chain.record_findings(repo, key, sysid, inv.damaged, dt.datetime.now(dt.timezone.utc), inv.unfit)
    except Exception as exc:  # noqa: BLE001 - a read-only credential, the store away: the report stands
        log.warning("could not keep verify-chain's findings in the repository (%s): the health check and "
                    "incremental base backups go by listing until a verify-chain can", exc)
    left = chain.left_for(repo, key, sysid, inv.objects, timeline) if timeline is not None else None
    # a timeline that was left ends for good where it was left, not at the archive's end
    end = max((w.end_lsn for w in inv.windows), default=None)
    return _report(inv, f"timeline {timeline} ends there: {chain.left_text(timeline, left, end)}" if left else
                   "end of the archive")


def _queued_for(state, sysid: str) -> set[str]:
    """The local WAL queue's files when the live cluster here is `sysid` (else: none of its WAL)."""
    from opsctl.errors import OpsError
    from opsctl.pitr import local as pitr_local
    from opsctl.pitr.archive import system_identifier

    if state is None:
        return set()
    try:
        if system_identifier(state.data("postgres")) != sysid:
            return set()
    except (OpsError, OSError):
        return set()
    return pitr_local.queued_wal(state)


def windows(project: Project, env: Environment) -> ChainReport | None:
    """The recoverable windows from the listing (dated by the last segments); None: no PITR data.
    Raises UsageError (cluster_id's) when no cluster runs here and the repository holds several:
    there is point-in-time data, but whose can't be told; IntegrityError when something stands
    where one of the chain's folders belongs (chain.refuse_misplaced)."""
    try:
        repo, key = sealed_repository(project, env)
    except UsageError:
        return None
    try:
        sysid = _checked_sysid(project, env, repo)  # after a lost disk too (breaker 18 F4)
    except UsageError:
        if len(chain.sysids(repo)) > 1:
            raise
        return None
    if not repo.names(layout.root(sysid) + "/"):
        return None
    try:
        # a file still in the local queue ends a window as 'queued', as verify-chain says
        return _report(chain.inventory(repo, key, sysid, live_path=live_path(project, env, sysid),
                                       queued=_queued_for(_started_state(project, env), sysid)))
    except IntegrityError:  # the chain's folders hidden (a link at wal/): `backup list` says so
        raise
    except OperationFailed:
        return None


def prune_chain(project: Project, env: Environment, keep_full: int, dry_run: bool = False,
                approve: Callable[[str], None] | None = None, drop_damaged: bool = False):
    """Keep the newest `keep_full` full base backups (with their incrementals) and the WAL they
    need: the one operation behind `opsctl backup prune-chain` (and any step). Unless
    `dry_run`, a dry run first finds what would go; when something would,
    `approve(question)` is called (raise UsageError to refuse; None: no approval asked),
    then the prune runs. `drop_damaged`: the damaged base backups go too (retention.prune).
    Returns retention.prune's result."""
    from opsctl.pitr import retention

    repo, key = sealed_repository(project, env)
    sysid = _sysid(project, env, repo)
    # the running server's own timeline history: right after an in-place restore the new
    # timeline's history file may still be on its way to the repository; after an undone one,
    # the repository holds a newer timeline than the live server's
    path = live_path(project, env, sysid)
    # a segment still in the local queue is late, not lost: as verify-chain says it (chain.QUEUED)
    queued = _queued_for(_started_state(project, env), sysid)
    planned = retention.prune(repo, key, sysid, keep_full, True, path, drop_damaged=drop_damaged, queued=queued)
    if dry_run or not (planned.removed or planned.wal_removed or planned.interrupted or planned.dropped):
        return planned
    if approve is not None:
        approve(f"delete {len(planned.removed)} base backup(s), {planned.wal_removed} WAL object(s)"
                + (f", {len(planned.interrupted)} interrupted base backup(s)" if planned.interrupted else "")
                + (f" and {len(planned.dropped)} damaged base backup(s) ({', '.join(planned.dropped)})"
                   if planned.dropped else ""))
    # the dry run's verdicts (each kept full base backup read whole) are not read again
    return retention.prune(repo, key, sysid, keep_full, False, path, planned.proven, drop_damaged=drop_damaged,
                           dropped=planned.dropped if drop_damaged else None, queued=queued)


def window(project: Project, env: Environment, operation: str, subject: str, checks: list[str] | None = None):
    """The NOTIFICATIONS contract around a PITR operation (failover, restore to a time, drill):
    `opsctl.health.notify.operation_window` sends start and end events through the
    environment's sinks and holds the checks the operation affects; a notification failure
    never fails the operation. `checks`: None holds the operation's default checks, [] none.
    Returns the context manager (it yields the Window)."""
    from opsctl.health.notify import operation_window

    return operation_window(project, env.name, operation, subject, checks=checks)
