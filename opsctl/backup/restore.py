"""`opsctl restore`: fetch and check everything first, then apply component by component.

`restore` is the whole operation, called by `opsctl restore` and the runbook `restore`
step alike: plan (what backup, what it would overwrite), ask the caller's `approve`
callable when live data would be overwritten, then run inside the environment's operation
window (opsctl.health.notify: start and end events, a maintenance window on its checks).
Running fetches every selected component and checks its SHA-256 and authentication
before anything live is touched; PostgreSQL is restored into a new database, checked
against the manifest's row counts, analyzed (a dump holds no planner statistics), then
renamed into place (the old one is kept, renamed); Redis goes through a scratch server;
audio is put back where missing or different. Native snapshots (RDS, ElastiCache) are
restored only by name, with `--target-instance`, into a new instance or replication group:
never over a live one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from opsctl.backup import catalog, keys
from opsctl.backup import manifest as mf
from opsctl.backup import postgres as pgb
from opsctl.backup import runs
from opsctl.backup.pipeline import Reporter, quiet
from opsctl.backup.repository import open_repository
from opsctl.backup.verify import fetch
from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError

NATIVE = ("rds-snapshot", "elasticache-snapshot")
MAX_JOBS = 256  # pg_restore --jobs: connections and processes at once; more is a typo
# how a protected environment's refusal names the act (opsctl.approval.Verb)
RESTORE_VERB = ("restore over it", "restoring over it", "restored")
log = logging.getLogger("opsctl.backup")

Approve = Callable[[str], None]  # the question; returns when approved, raises UsageError when not


@dataclass
class RestorePlan:
    """What a restore would do: the backup chosen, its components, the database it lands in
    and what live data it would overwrite (empty: nothing to approve)."""
    backup_id: str
    created_at: dt.datetime
    components: list[str]
    database: str
    overwrites: list[str] = field(default_factory=list)
    target_db: str | None = None
    snapshots: list[mf.SnapshotPart] = field(default_factory=list)
    target_instance: str | None = None
    skipped: list[str] = field(default_factory=list)  # newer backups passed over: damaged or untrusted
    partial: list[str] = field(default_factory=list)  # newer complete backups without what was asked
    replaces_copy: str | None = None  # the mark of the earlier restore copy at target_db it replaces
    _ctx: dict = field(default_factory=dict, repr=False)


@dataclass
class RestoreResult:
    """What a restore did: counts restored, the previous database's new name, new instances'
    endpoints, `seconds` taken, newer backups passed over (`skipped`); whether the restored
    database was analyzed before it was handed over (`analyzed`, else `analyze_failed` says
    why), and the logical-replication subscriptions it brought back, disabled
    (`subscriptions`, `subscriptions_note`: what to do before it replicates again)."""
    backup_id: str
    components: list[str]
    database: str | None = None
    previous_database: str | None = None
    tables: int = 0
    rows: int = 0
    redis_keys: int = 0
    files_restored: int = 0
    instances: dict[str, str] = field(default_factory=dict)  # "rds NAME" -> endpoint
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # newer backups passed over: "ID (redis)", holding only part
    cleaned: list[str] = field(default_factory=list)  # what dead restores had left, removed or repaired first
    backup_created_at: dt.datetime | None = None  # when the restored backup was taken (UTC)
    replaced_copy: str | None = None  # the mark of the earlier restore copy at the target it replaced
    analyzed: bool = False  # planner statistics made (postgres.analyze) before the database was handed over
    analyze_failed: str | None = None  # why not: the restore went on, its data whole and checked
    subscriptions: list[str] = field(default_factory=list)  # restored disabled (pg_dump's connect = false)
    subscriptions_note: str | None = None  # that it does not replicate, and what to do


def terminal_approval(env: Environment | None, yes: bool, confirm_env: str | None = None,
                      pause: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Approve:
    """The approval of a restore over live data, for `opsctl restore` (backups and
    point-in-time), and the runbook step: `--yes` or a person at a terminal, and in a
    protected environment its name (`confirm_env`, or typed). `pause` quiets progress bars
    while the question is asked. Refusals raise UsageError (exit 2), nothing changed."""
    def approve(question: str) -> None:
        from opsctl.approval import at_terminal

        with pause():
            at_terminal(question, env, yes, confirm_env, verb=RESTORE_VERB)

    return approve


def _window(project: Project, env: Environment, subject: str):
    """The environment's operation window around a restore (opsctl.health.notify): start and
    end events ("failed" with the redacted error when it raises) through its sinks, and a
    maintenance window on the checks a restore disturbs; never fails the restore itself."""
    from opsctl.health.notify import operation_window

    return operation_window(project, env.name, "restore", subject)


def restore_any(project: Project, env: Environment, backup_id: str | None = None, date: str | None = None,
                latest: bool = False, components: str | list[str] | None = None, target_db: str | None = None,
                target_instance: str | None = None, no_owner: bool = False, role: str | None = None,
                allow_damaged: bool = False, jobs: int = 1, to_time: str | None = None,
                to_lsn: str | None = None, beside: bool = False, approve: Approve | None = None,
                report: Reporter = quiet, notice: Callable[[str], None] | None = None, timeline: int | None = None,
                replace_copy: bool = False):
    """The one restore entry point behind `opsctl restore` and the runbook `restore` step: with
    `to_time` / `to_lsn` / `beside` a point-in-time recovery (base backups + WAL,
    opsctl.pitr.restore.restore; returns its PitrResult, or an rds.RdsRestoreResult on
    kubernetes), else a backup restore (`restore` above; returns a RestoreResult). `timeline`
    (with `to_time`/`to_lsn`): recover along that timeline's history.
    `approve(question)` as for `restore`: called before anything live is overwritten, None
    refuses. `components`: a list, or the option's text `db,redis` (None: all of them; an
    empty name is refused by `plan`, never taken for all). Raises UsageError when the two
    kinds' options are mixed, and as each kind does."""
    from opsctl.errors import not_empty

    # an unset CI variable ("--target-db $SCRATCH") is "", which read as "not given" made a
    # restore meant for scratch an in-place one over the live database (breaker 40 P1, P2)
    for option, value, remedy in (
            ("--target-db", target_db, "give the scratch database's name, or leave it out to restore in place"),
            ("--target-instance", target_instance, "give the new instance's name, or leave it out"),
            ("--role", role, "give the role pg_restore runs as, or leave it out for the connecting one")):
        not_empty(value, option, remedy)
    if isinstance(components, str):
        components = [c.strip() for c in components.split(",")]
    if replace_copy and target_db is None:  # breaker 45 F9: ignored, it let an in-place restore run
        raise UsageError("--replace-copy goes with --target-db NAME (it replaces a restore's copy of that name); "
                         "give --target-db, or leave --replace-copy out")
    twice = sorted({c for c in components or [] if c and components.count(c) > 1})  # empty names: plan says
    if twice:  # `db,db` was printed "(db, db)"
        raise UsageError(f"--components names {', '.join(twice)} twice; give each component once")
    if to_time is None and to_lsn is None and not beside:
        if timeline is not None:
            raise UsageError("--timeline chooses the timeline of a point-in-time recovery: give it with "
                             "--to-time or --to-lsn")
        return restore(project, env, backup_id, date, latest, components, target_db, target_instance, no_owner,
                       role, allow_damaged, jobs, approve=approve, report=report, notice=notice,
                       replace_copy=replace_copy)
    if (backup_id is not None or date is not None or latest or components is not None or target_db is not None
            or no_owner or role is not None or allow_damaged or jobs != 1 or replace_copy):
        # a physical restore copies the cluster as it was, owners and grants included: the
        # logical restore's options would be ignored, and an ignored option is a surprise
        # (breaker 42 R18: --jobs 4 with --to-time was silently ignored)
        raise UsageError("--to-time/--to-lsn/--beside restore from base backups and WAL; they don't combine "
                         "with --id, --date, --latest, --components, --target-db, --replace-copy, --no-owner, "
                         "--role, --allow-damaged or --jobs (base backups are unpacked two at a time)")
    from opsctl.pitr import restore as pitr

    def approve_plan(p) -> None:
        question = f"restore {env.name} to {p.target} over {'; '.join(p.overwrites)}"
        if approve is None:
            raise UsageError(f"{question} needs approval; nothing was changed")
        approve(question)

    return pitr.restore(project, env, to_time, to_lsn, beside, target_instance, approve_plan, report, timeline)


def restore(project: Project, env: Environment, backup_id: str | None = None, date: str | None = None,
            latest: bool = False, components: list[str] | None = None, target_db: str | None = None,
            target_instance: str | None = None, no_owner: bool = False, role: str | None = None,
            allow_damaged: bool = False, jobs: int = 1, approve: Approve | None = None,
            report: Reporter = quiet, notice: Callable[[str], None] | None = None,
            replace_copy: bool = False) -> RestoreResult:
    """Restore a backup of `env`: the one operation behind `opsctl restore` and the runbook
    `restore` step. Exactly one of `backup_id`, `date` (YYYY-MM-DD, UTC) or `latest` picks
    the backup (catalog.resolve); the other arguments are `plan`'s and `run`'s.
    `replace_copy`: a `target_db` that exists is replaced when it is the copy an earlier
    `--target-db` restore made under that name (its mark says so: postgres.copy_mark) and no
    one is connected to it, as a drill killed before its clean-up leaves it; any other
    database there is still refused.

    When the restore would overwrite live data (`RestorePlan.overwrites`), `approve(question)`
    is called first and must return (raise UsageError to refuse; None: refused, since
    nobody approved). `notice(text)` gets what the operator should read before the restore
    runs (newer backups passed over: damaged or untrusted). `report` is the progress
    callback (pipeline.Reporter). The run happens inside the environment's operation window;
    one writing the live database, Redis or audio holds the deploy lease (opsctl.pitr.lease.
    for_restore: UsageError at once while a deploy or failover holds it; `--target-db` alone not).
    Raises UsageError for bad input or refusal (nothing changed), OperationFailed/
    IntegrityError when the backup can't be restored (nothing live touched before every
    object was fetched and checked)."""
    check_jobs(jobs)  # before the plan reads the repository and the approval is asked
    say = notice or (lambda text: log.warning("%s", text))
    p = plan(project, env, backup_id, date, latest, components, target_db, target_instance, no_owner, role,
             allow_damaged, replace_copy)
    if p.skipped:
        say(f"skipped newer backups that can't be restored: {', '.join(p.skipped)}")
    if p.partial:
        say(f"restoring {p.backup_id}, the newest complete backup holding {', '.join(p._ctx['needs'])}; newer "
            f"ones hold only part and were passed over: {', '.join(p.partial)} (restore one of those with --id ID "
            "--components NAMES)")
    cleaned = runs.clean_dead(p._ctx["ep"].database_url if "db" in p.components else None, say)
    from opsctl.pitr import lease

    # in place (live database, Redis, audio), the deploy lease deploys and failover hold
    url = p._ctx["ep"].database_url
    live_db = (pgb.url_database(url) if url else None) or env.database.name
    live = bool({"redis", "files"} & set(p.components)) or ("db" in p.components and p.database == live_db)
    with lease.for_restore(project, env, live, notice):
        if p.overwrites:
            question = f"restore backup {p.backup_id} over {'; '.join(p.overwrites)}"
            if approve is None:
                raise UsageError(f"{question} needs approval; nothing was changed")
            approve(question)
        with _window(project, env, f"backup {p.backup_id} ({', '.join(p.components)})"):
            result = run(p, jobs, report)
    result.cleaned = cleaned
    return result


def check_jobs(jobs: int) -> None:
    """UsageError unless 1 <= jobs <= MAX_JOBS: pg_restore's own bound (2^31 - 1) was said only
    once the restore had begun (breaker 37 G15)."""
    if not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"--jobs must be 1 to {MAX_JOBS} (pg_restore's parallel jobs), not {jobs}")


def check_new_target(database_url: str, target_db: str, option: str = "--target-db",
                     replace_copy: bool = False) -> str | None:
    """UsageError when `--target-db` names a database that exists: it restores into a new one
    (breaker 41 Q1: another application's database named there was dropped, no copy kept,
    and a drill's clean-up step dropped it for good). With `replace_copy`, one that is the
    copy an earlier restore made under that name (postgres.copy_mark) is allowed, when no one
    is connected to it (postgres.sessions: a copy someone went on using is theirs now, breaker
    45 F10) nor made to replicate (an enabled subscription in it, breaker 50 G4): its mark is
    returned (None: the name is free). `option` names the input in the message (a runbook
    step's `target_db`)."""
    if not pgb.database_exists(database_url, target_db):
        return None
    mark = pgb.copy_mark(database_url, target_db)
    flag = "replace_copy: true" if option == "target_db" else "--replace-copy"
    if mark and replace_copy:
        users = pgb.sessions(database_url, target_db)
        if users:
            raise UsageError(f"{option} {target_db}: the copy an earlier restore left ({mark}) has {len(users)} open "
                             f"session{'s' if len(users) > 1 else ''} ({', '.join(users[:3])}); {flag} replaces "
                             "a copy no one uses: end them, or restore under another name")
        working = [name for name, enabled in pgb.subscriptions(database_url, target_db) if enabled]
        if working:
            raise UsageError(f"{option} {target_db}: the copy an earlier restore left ({mark}) replicates "
                             f"(subscription {', '.join(working)} enabled in it); {flag} replaces a copy no one "
                             "uses: disable it, or restore under another name")
        return mark
    if mark:
        raise UsageError(f"{option} {target_db}: that database exists, the copy an earlier restore left "
                         f"({mark}); add {flag} to replace it, or drop it first")
    raise UsageError(f"{option} {target_db}: that database exists, and {option} restores into a new "
                     f"one; choose another name, or drop {target_db} first if it is a copy no longer needed")


def plan(project: Project, env: Environment, backup_id: str | None = None, date: str | None = None,
         latest: bool = False, components: list[str] | None = None, target_db: str | None = None,
         target_instance: str | None = None, no_owner: bool = False, role: str | None = None,
         allow_damaged: bool = False, replace_copy: bool = False) -> RestorePlan:
    """What `run` would do. `no_owner`: objects owned by the restoring role (or `role`),
    grants skipped; `role`: pg_restore's --role (both for restores across environments).
    A backup named by id whose verify failed (damaged) is refused (UsageError) unless
    `allow_damaged`: its objects still pass their checksums when restored, or nothing changes."""
    from opsctl.endpoints import resolve

    known = ", ".join(mf.COMPONENTS + NATIVE)
    if components is not None and not all(components):
        # breaker 37 G2: "--components $UNSET" meant every component, over live Redis and audio
        raise UsageError(f"--components: {'empty' if not any(components) else 'an empty name in ' + repr(','.join(components))}"
                         f"; give one or more of {known}, comma-separated, or leave the option out for all")
    for c in components or []:
        if c not in mf.COMPONENTS + NATIVE:
            raise UsageError(f"--components: '{c}' is not one of {known}")
    key = keys.load(project, env, required=False)
    ep = resolve(project, env)
    repo = open_repository(env.backup.repository, project, ep)
    repo.key = key
    skipped: list[str] = []
    partial: list[str] = []
    # what the pick must hold (breaker 42 R4: the newest backup of any kind was an hourly Redis
    # snapshot, and `--latest` after a database loss restored Redis alone, exit 0): the
    # components asked; the database for --target-db; else the database too, since a restore
    # with no --components is above all the database's, and the pick's other parts come with
    # it (a Redis-only or audio-only backup is restored by naming --components), unless the
    # repository holds no database backup at all (Redis snapshots alone: the newest is the latest)
    needs = (list(components) if components is not None else ["db"] if not target_instance else None)
    chosen = catalog.resolve(repo, backup_id, date, latest, needs, skipped, partial,
                             unless_none=components is None and target_db is None)
    failed = catalog.failed_verdict(repo, chosen, key)
    if failed is not None and not allow_damaged:
        raise UsageError(f"backup {chosen} is damaged: its verify failed at {failed.get('at', '?')} "
                         f"({failed.get('reason', 'no reason recorded')}); restore another backup, or pass "
                         "--allow-damaged to restore it anyway")
    manifest = catalog.load(repo, chosen, key)
    native = [c for c in components or [] if c in NATIVE]
    if components is None:
        # --target-db restores the database beside the live one and stops there: not the live
        # Redis and audio too (breaker 40 P5); --components asks for more explicitly
        wanted = ([] if target_instance else ["db"] if target_db is not None
                  else [c for c in mf.COMPONENTS if getattr(manifest, c) is not None])
        native = [f"{s.kind}-snapshot" for s in manifest.snapshots] if target_instance else []
    else:
        wanted = [c for c in components if c in mf.COMPONENTS]
    missing = [c for c in wanted + native if c not in manifest.components]
    if missing:
        raise UsageError(f"backup {chosen} holds no {', '.join(missing)} (it holds {', '.join(manifest.components)})")
    if native and not target_instance:
        raise UsageError(f"{', '.join(native)} restores into a new instance: name it with --target-instance NAME")
    if target_instance and not native:
        raise UsageError(f"--target-instance needs a native snapshot, and backup {chosen} holds "
                         f"{', '.join(manifest.components)}")
    snaps = [s for s in manifest.snapshots if f"{s.kind}-snapshot" in native]
    if target_instance:
        from opsctl.backup import snapshots

        if any(snap.kind == "rds" for snap in snaps):  # before any AWS call
            from opsctl.pitr.rds import check_instance_identifier

            check_instance_identifier(target_instance)
        for snap in snaps:
            if snapshots.target_exists(env, snap, target_instance):
                raise UsageError(f"{snap.kind} {target_instance} already exists: a snapshot restores into a new "
                                 "one, choose another --target-instance")
    if not (wanted or native):
        raise UsageError(f"backup {chosen} holds nothing opsctl restores without --target-instance "
                         f"({', '.join(manifest.components)})")
    if target_db is not None and "db" not in wanted:
        raise UsageError("--target-db needs the db component")
    if target_db is not None and len(target_db.encode()) > pgb.NAMEDATALEN:
        raise UsageError(f"--target-db: {target_db!r} is {len(target_db.encode())} bytes and PostgreSQL keeps "
                         f"{pgb.NAMEDATALEN} of a name; choose a shorter name")
    database = env.database.name
    if "db" in wanted and ep.database_url:
        # the database this environment's URL connects to, which is what `backup create` dumps
        database = pgb.url_database(ep.database_url) or env.database.name
    if target_db is not None:
        for live in {env.database.name, database}:
            pgb.check_replaceable(target_db, live, "--target-db")
    if "db" in wanted and ep.database_url:
        if target_db is None and manifest.db.database != database:
            raise UsageError(f"backup {chosen} holds database {manifest.db.database!r} and environment "
                             f"'{env.name}' uses {database!r}; nothing was changed: restore it beside with "
                             "--target-db NAME, or point the environment's database URL at "
                             f"{manifest.db.database!r}")
    p = RestorePlan(chosen, manifest.created_at, wanted + native, target_db or database,
                    target_db=target_db, snapshots=snaps, target_instance=target_instance, skipped=skipped,
                    partial=partial,
                    _ctx={"manifest": manifest, "repo": repo, "key": key, "ep": ep, "env": env,
                          "no_owner": no_owner, "role": role, "needs": needs or []})
    if "db" in wanted:
        if not ep.database_url:
            raise UsageError(f"no database URL for '{env.name}': set ${env.database.url_env}")
        if target_db is not None:
            p.replaces_copy = check_new_target(ep.database_url, target_db, replace_copy=replace_copy)
        elif pgb.database_exists(ep.database_url, p.database):
            p.overwrites.append(f"database {p.database} (the current one is kept, renamed)")
    if "redis" in wanted:
        from opsctl.backup import redis as rdb

        if not ep.redis_url:
            raise UsageError(f"no Redis URL for '{env.name}': set ${env.redis.url_env}")
        if (n := rdb.live_keys(ep.redis_url)):
            p.overwrites.append(f"Redis ({n} live keys replaced by the backup's)")
    if "files" in wanted:
        from opsctl.backup import files

        todo, replaced = files.differing(ep.s3_client(), ep.audio_bucket, manifest.files)
        p._ctx["files"] = todo
        if replaced:
            p.overwrites.append(f"{replaced} audio objects in {ep.audio_bucket}")
    return p


def run(p: RestorePlan, jobs: int = 1, report: Reporter = quiet) -> RestoreResult:
    """Carry out a plan (no approval asked here: `restore` asks before calling it): fetch
    and check every object, then database, Redis and audio. `jobs`: pg_restore's parallel
    jobs (>= 1, else UsageError). Times in the result are seconds."""
    check_jobs(jobs)
    m: mf.Manifest = p._ctx["manifest"]
    repo, key, ep = p._ctx["repo"], p._ctx["key"], p._ctx["ep"]
    began = time.monotonic()
    result = RestoreResult(p.backup_id, p.components, skipped=p.skipped, partial=p.partial,
                           backup_created_at=p.created_at)
    with runs.folder(ep.database_url if "db" in p.components else None, sessions=jobs) as tmp:
        p._ctx["run_dir"] = tmp
        dump, rdb_file = tmp / "db.dump", tmp / "redis" / "dump.rdb"
        # 1. fetch and check everything; nothing live has been touched if this fails
        if "db" in p.components:
            fetch(repo, m.db.object, key, dump, report)
        if "redis" in p.components:
            fetch(repo, m.redis.object, key, rdb_file, report)
        if "files" in p.components:
            from opsctl.backup import files

            files.check(repo, m.files, report("audio checks", sum(o.size for o in m.files.objects)))
        no_owner, role = p._ctx.get("no_owner", False), p._ctx.get("role")
        archive = major = scratch_url = redis_dbs = None
        if "db" in p.components:  # the roles the dump needs, before anything live is touched
            major = pgb.server_major(ep.database_url)
            archive = pgb.inspect(str(dump), major)
            archive.roles |= pgb.property_roles(pgb.properties_of(m.db.catalog))  # owner, grants, role settings
            missing = pgb.roles_missing(ep.database_url, archive, no_owner, role)
            if role and role in missing:  # the option's own value: bad input, not the backup's need
                raise UsageError(f"--role {role}: no such role on the target server; nothing was changed: give a "
                                 "role it has (pg_restore runs as it), or leave --role out")
            if missing:
                raise OperationFailed(f"backup {p.backup_id} needs role(s) the target server lacks: "
                                      f"{', '.join(missing)}; nothing was changed: create them, or restore with "
                                      "--no-owner (objects owned by the restoring role, grants skipped) or --role NAME")
        stack = contextlib.ExitStack()
        with stack:
            if "redis" in p.components:  # loaded and checked beside, before anything live is touched
                from opsctl.backup import redis as rdb

                scratch_url = stack.enter_context(rdb.scratch_server(rdb_file))
                rdb.check_counts(scratch_url, m.redis.keys, m.redis.expires)
                redis_dbs = rdb.all_dbs(ep.redis_url, list(m.redis.keys))
                rdb.check_room(scratch_url, ep.redis_url, redis_dbs)
            _apply(p, jobs, report, result, str(dump), archive, major, scratch_url, redis_dbs)
    for snap in p.snapshots:
        from opsctl.backup import snapshots

        result.instances[f"{snap.kind} {p.target_instance}"] = snapshots.restore(p._ctx["env"], snap, p.target_instance)
    result.seconds = round(time.monotonic() - began, 2)
    return result


def _apply(p: RestorePlan, jobs: int, report: Reporter, result: RestoreResult, dump: str, archive, major,
           scratch_url: str | None, redis_dbs: list[int] | None) -> None:
    """Step 2 of `run`, once everything was fetched and checked: database, Redis, audio."""
    m: mf.Manifest = p._ctx["manifest"]
    repo, ep = p._ctx["repo"], p._ctx["ep"]
    no_owner, role = p._ctx.get("no_owner", False), p._ctx.get("role")
    if "db" in p.components:
        scratch = pgb.derived_name(p.database, "restoring")  # within 63 bytes, unique: kept exactly as named
        run_mark = None
        if "run_dir" in p._ctx:  # before it exists: a restore killed outright leaves it to the next one
            runs.note(p._ctx["run_dir"], scratch=scratch, live=p.database, in_place=not p.target_db, swapping=False)
            run_mark = runs.mark(p._ctx["run_dir"], scratch, None if p.target_db else p.database)
        counts = pgb.restore_into(ep.database_url, dump, scratch, jobs, m.db.expected_rows,
                                  catalog=m.db.catalog, no_owner=no_owner, role=role,
                                  archive=archive, major=major, run_mark=run_mark)
        keep_scratch = False  # once an earlier copy was dropped for it, the restored copy is never dropped
        try:  # restore_into dropped the scratch database on its own failures; the swap's are ours
            _prepare(ep.database_url, scratch, jobs, major, result, p.database)
            if p.target_db:  # new (check_new_target); one made since by someone else is not touched
                pgb.mark_copy(ep.database_url, scratch, p.target_db, p.backup_id)
                if p.replaces_copy and pgb.copy_mark(ep.database_url, p.target_db):  # still the copy it was
                    users = pgb.drop_copy(ep.database_url, p.target_db)
                    if users:  # someone came to use it while the restore ran: theirs now (breaker 47 F1)
                        raise pgb.TargetAppeared(
                            f"the copy {p.target_db} came into use while the restore ran (used by "
                            f"{', '.join(users[:3])}{', ...' if len(users) > 3 else ''}); it was left "
                            f"untouched, and the restored copy is kept as {scratch}: use it under that name, or "
                            "drop it")
                    result.replaced_copy = p.replaces_copy
                try:
                    pgb.swap(ep.database_url, scratch, p.target_db, "", new_only=True)
                except pgb.TargetAppeared:
                    raise
                except BaseException as exc:
                    if not result.replaced_copy:
                        raise
                    # the old copy is gone: the restored one is all there is, kept and said (breaker 49 F10)
                    keep_scratch = True
                    said = (f"the earlier copy {p.target_db} was replaced, but renaming the restored one to "
                            f"{p.target_db} did not finish ({type(exc).__name__}); it is kept as {scratch}: "
                            "rename it, or use it under that name")
                    if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM: still an interrupt, said first
                        log.warning("%s", said)
                        raise
                    raise pgb.TargetAppeared(said) from None
            else:
                keep_as = pgb.derived_name(p.database, "before")
                if "run_dir" in p._ctx:  # from here a kill may leave the live database to repair
                    runs.swap_begins(p._ctx["run_dir"], ep.database_url, scratch, p.database)
                if pgb.swap(ep.database_url, scratch, p.database, keep_as):
                    result.previous_database = keep_as
        except pgb.TargetAppeared:
            if "run_dir" in p._ctx:  # kept on purpose, and said: never a dead restore's to drop
                runs.note(p._ctx["run_dir"], scratch=None)
                runs.handed_over(ep.database_url, scratch, kept_as_scratch=True)
            raise
        except BaseException as exc:
            if keep_scratch:
                if "run_dir" in p._ctx:  # kept on purpose, and said: never a dead restore's to drop
                    runs.note(p._ctx["run_dir"], scratch=None)
                    runs.handed_over(ep.database_url, scratch, kept_as_scratch=True)
            else:  # its failure is logged, never raised over this one (breaker 50 G4)
                pgb.discard(ep.database_url, scratch)
            import psycopg

            if isinstance(exc, psycopg.Error):  # one line, never "unexpected <class>"
                raise pgb.failure(f"putting the restored database in place as {p.database}", exc) from None
            raise
        if run_mark:  # in place: the run's mark goes with the scratch name
            runs.handed_over(ep.database_url, p.target_db or p.database)
        result.database, result.tables, result.rows = p.database, len(counts), sum(counts.values())
        if result.subscriptions:
            result.subscriptions_note = _subscriptions_note(p, result)
    if "redis" in p.components:
        from opsctl.backup import redis as rdb

        result.redis_keys = rdb.restore_beside(scratch_url, ep.redis_url, redis_dbs)
    if "files" in p.components:
        from opsctl.backup import files

        todo = p._ctx["files"]
        result.files_restored = files.restore(ep.s3_client(), ep.audio_bucket, repo, todo,
                                              report("audio objects", sum(o.size for o in todo)))


def _prepare(url: str, scratch: str, jobs: int, major: int | None, result: RestoreResult, database: str) -> None:
    """What the restored copy `scratch` gets before it is handed over as `database` (swapped in,
    or renamed to --target-db): planner statistics (postgres.analyze, `jobs` in parallel: a dump
    holds none, breaker 50 G3), and its subscriptions named in `result` (pg_restore makes them
    disabled: the restored database does not replicate, G4). An analysis that fails is said in
    `result.analyze_failed` (the output shows it) and the restore goes on: the data is whole
    and checked, and an ANALYZE failing on it (a function in an expression statistic) would
    make the backup unrestorable."""
    try:
        pgb.analyze(url, scratch, jobs, major)
        result.analyzed = True
    except OperationFailed as exc:
        result.analyze_failed = (f"database {database} was not analyzed ({exc}): it has no planner statistics until "
                                 "each table is analyzed; run ANALYZE in it (vacuumdb --analyze-only)")
    result.subscriptions = [name for name, _ in pgb.subscriptions(url, scratch)]


def _subscriptions_note(p: RestorePlan, result: RestoreResult) -> str:
    """What a restore that brought back subscriptions says: named, disabled (pg_dump writes
    them with connect = false, keeping only their slot's name), so the database does not
    replicate; what to check before ALTER SUBSCRIPTION ... ENABLE."""
    names = ", ".join(result.subscriptions)
    holder = (f"the originals, in the previous database kept as {result.previous_database},"
              if result.previous_database else "the source database's subscriptions of those names")
    return (f"database {p.database} holds {len(result.subscriptions)} logical-replication subscription(s), "
            f"restored disabled: {names}; it does not replicate. Before ALTER SUBSCRIPTION name ENABLE, check on "
            f"each publisher that the slot it names is this database's to use ({holder} may be using it: disable "
            "those first, or give these slots of their own: ALTER SUBSCRIPTION name SET (slot_name = ...))")


