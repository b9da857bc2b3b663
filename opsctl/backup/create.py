"""`backup create`: every component through the pipeline, the manifest last, then retention.

The backup's folder first gets an in-progress marker naming this host and process; any
failure or interruption (SIGINT, SIGTERM) aborts open multipart uploads and deletes what
was written, and a process killed outright leaves a folder without a manifest that `list`
shows as incomplete and the next `create` or `prune` removes, uploads aborted. Folders
that are not opsctl's (record.layout) are reported in `foreign` and never touched; the
first create initialises the repository (record.py) and every later one must match it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# only what starting pg_dump needs is imported with this module (the CLI imports it before
# anything runs): the catalog, manifest, crypto and repository modules load while pg_dump
# reads the catalog (create below)
from opsctl.backup import postgres as pgb
from opsctl.errors import UsageError

if TYPE_CHECKING:
    from opsctl.backup import manifest as mf
    from opsctl.backup.pipeline import Reporter
    from opsctl.backup.repository import Repository
    from opsctl.config import Environment, Project

log = logging.getLogger("opsctl.backup")
KINDS = ("full", "db", "redis", "files", "rds-snapshot", "elasticache-snapshot")


@dataclass
class CreateResult:
    """A backup made: sizes in bytes (raw before compression, stored after), `seconds`, and
    what the run also removed (retention `pruned`, interrupted `cleaned`) or left (`foreign`,
    and `damaged_kept`: damaged backups its retention leaves for `backup prune`);
    `prune_failed`: why the retention run after it failed, when it did."""
    id: str
    repository: str
    components: list[str]
    raw_bytes: int
    stored_bytes: int
    ratio: float
    seconds: float
    encrypted: bool
    key_id: str | None
    pruned: list[str] = field(default_factory=list)
    prune_failed: str | None = None  # why retention after the backup failed (the backup stands)
    damaged_kept: list[str] = field(default_factory=list)  # failed verify, left for a person
    cleaned: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


def _say_clock_skew(folders: set[str], started: dt.datetime) -> str | None:
    """Warn when a backup in the repository is dated after this host's clock (by more than
    catalog.CLOCK_SKEW), and return its id (else None): one of the two clocks is wrong, and the
    backup being made sorts before it, so `restore --latest` refuses to pick and the backup-age
    check is CRITICAL until the clock is fixed (breaker 53 F5); create then runs no retention
    (breaker 54 F3: a clock behind made create's own retention delete the backup it made)."""
    from opsctl.backup import catalog, record

    newest = max((name for name in folders if record.ID.fullmatch(name)), default=None)
    ahead = catalog.ahead_of_clock(catalog.id_time(newest), started) if newest else None
    if ahead is not None:
        log.warning("backup %s in the repository is dated %s after this host's clock: one of the two clocks is "
                    "wrong, and this backup sorts before it ('restore --latest' refuses to choose between them)",
                    newest, catalog.ahead_text(ahead))
        return newest
    return None


def check_level(level: int) -> int:
    """`level` when it is one of zstd's levels (1-22), else UsageError (0 is refused, never
    taken for the default)."""
    if not 1 <= level <= 22:
        raise UsageError(f"--compress-level {level} is outside zstd's 1..22")
    return level


def components_for(kind: str, env: Environment) -> list[str]:
    """The components `--type kind` backs up in `env`; UsageError for an unknown kind."""
    if kind not in KINDS:
        raise UsageError(f"--type '{kind}' is not one of {', '.join(KINDS)}")
    if kind != "full":
        return [kind]
    if env.platform == "local":
        return ["db", "redis", "files"]
    return ["db", "files"] + (["elasticache-snapshot"] if env.redis.replication_group else [])


def clean_abandoned(repo: Repository, rec=None,
                    listing: tuple[set[str], set[str]] | None = None) -> tuple[list[str], list[str]]:
    """Remove opsctl's folders of interrupted backups (aborting their uploads); running ones
    are kept. Returns (removed ids, foreign entries left alone). `listing`: the caller's
    `repo.folders()`, when it has one.

    Never walks the repository: one top-level listing, the index, and a listing of each
    folder the index does not hold (running, interrupted, foreign, or complete but not yet
    indexed: the next full scan adds those to the index). A missing or invalid index is
    rebuilt first (once; catalog.scan), when the key to seal it is at hand."""
    from opsctl.backup import catalog, index, record
    from opsctl.backup import manifest as mf

    gone: list[str] = []
    folders, files = listing or repo.folders()
    foreign = sorted({f for f in files if f not in (record.NAME, index.NAME)}
                     | {f + "/" for f in folders if f not in record.OWN_AREAS and not record.ID.fullmatch(f)})
    encrypted = rec.encrypted if rec is not None else repo.key is not None
    known = index.read(repo, repo.key, encrypted) if rec is not None else None
    if known is None and rec is not None and (repo.key is not None or not encrypted) and folders:
        # a missing or invalid index: rebuilt once from the manifests (one listing), or
        # every later create would list every folder
        catalog.scan(repo, repo.key)
        known = index.read(repo, repo.key, encrypted)
    for backup_id in sorted(f for f in folders if record.ID.fullmatch(f) and (known is None or f not in known)):
        names = {n.split("/", 1)[1] for n in repo.names(f"{backup_id}/")}
        if mf.NAME in names:
            continue  # complete, not yet in the index: the next listing adds it
        if mf.IN_PROGRESS not in names:
            foreign.append(backup_id + "/")
            continue
        entry = catalog.unfinished_entry(repo, backup_id)
        if entry.status == "incomplete":
            repo.abort_uploads(f"{entry.id}/")
            repo.delete_prefix(f"{entry.id}/")
            gone.append(entry.id)
    if foreign:
        log.warning("left alone in %s (not opsctl backups): %s", repo.url, ", ".join(foreign))
    return gone, foreign


def _stream(repo: Repository, name: str, reader, level: int, key, report: Reporter, what: str) -> mf.StoredObject:
    from opsctl.backup import manifest as mf
    from opsctl.backup.pipeline import StreamStats, pack, threads_for

    stats = StreamStats()
    repo.put(name, pack(reader, level, key, stats, report(what, None), threads_for(level)))
    return mf.StoredObject(name=name, size=stats.stored_bytes, sha256=stats.sha256, raw_size=stats.raw_bytes,
                           encrypted=key is not None, compressed=True)


def create(project: Project, env: Environment, kind: str = "full", compress_level: int | None = None,
           encrypt: bool = True, label: str | None = None, report: Reporter | None = None) -> CreateResult:
    """Back up `env` (`kind`: one of KINDS; "full" is every component its platform has) into
    its repository: each component streamed through the pipeline (zstd at `compress_level`,
    default backup.compress_level, 1-22; AES-256-GCM under the backup key unless `encrypt`
    is False), the manifest written last and sealed, the index updated, then the
    environment's retention applied (retention.after_backup: CreateResult.pruned, and the
    damaged backups it leaves in `damaged_kept`). `label` is a free note kept in the
    manifest; `report(what, total_bytes)` returns a callback taking byte counts (progress).

    The backup exists only once its manifest is written: any failure or interruption
    removes what was written (Interrupted, exit 130, on Ctrl-C/SIGTERM). Raises
    UsageError for bad input (kind, level, no key, no database/Redis URL, a repository not
    matching its record), OperationFailed when a component fails. Sizes are bytes, times
    seconds."""
    from opsctl import __version__
    from opsctl.backup import keys
    from opsctl.endpoints import resolve

    parts = components_for(kind, env)
    level = check_level(env.backup.compress_level if compress_level is None else compress_level)
    key = keys.load(project, env) if encrypt else None
    ep = resolve(project, env)
    if "db" in parts and not ep.database_url:
        raise UsageError(f"no database URL for '{env.name}': set ${env.database.url_env}")
    if "redis" in parts and not ep.redis_url:
        raise UsageError(f"no Redis URL for '{env.name}': set ${env.redis.url_env}")
    started = dt.datetime.now(dt.timezone.utc)
    began = time.monotonic()
    # pg_dump starts first and reads the catalog while the repository is opened (for S3:
    # boto3, a bucket check, a listing), so that time is not added to the dump's own
    dump = pgb.Dump(ep.database_url) if "db" in parts else None
    early = None
    try:
        from opsctl.backup.pipeline import FAST_HASH_LOG, FAST_WINDOW_LOG, ReadAhead, quiet

        # its output is read from now on (up to 32 MiB ahead), so pg_dump runs while the
        # rest of this module's imports load and the repository is opened and checked
        early = ReadAhead(dump.stdout, ahead=32) if dump is not None else None
        from opsctl.backup import catalog
        from opsctl.backup import manifest as mf
        from opsctl.backup.repository import open_repository

        report = report or quiet
        repo = open_repository(env.backup.repository, project, ep)
        repo.key = key
        from opsctl.backup import record

        listing = repo.folders()  # the top level, once: the record's checks and the clean-up share it
        rec, _ = record.ensure(repo, key, listing)
        cleaned, foreign = clean_abandoned(repo, rec, listing)
        backup_id = catalog.new_id(started)
        skewed = _say_clock_skew(listing[0], started)
        repo.put_bytes(f"{backup_id}/{mf.IN_PROGRESS}", catalog.marker(started))
    except BaseException:
        if early is not None:
            early.close()
        if dump is not None:
            dump.abort()
        raise
    m = mf.Manifest(id=backup_id, environment=env.name, platform=env.platform, label=label, created_at=started,
                    finished_at=started, tool_version=__version__, key_id=key.id if key else None,
                    encryption="aes-256-gcm-chunked-hkdf" if key else None,
                    compression={"algorithm": "zstd", "level": level,
                                 **({"window_log": FAST_WINDOW_LOG, "hash_log": FAST_HASH_LOG} if level == 1 else {})})
    try:
        if dump is not None:
            log.info("dumping database %s", dump.info.get("database"))
            obj = _stream(repo, f"{backup_id}/db.dump.zst", early, level, key, report, "database")
            info = dump.finish()
            m.db = mf.DbPart(database=info["database"], owner=info["owner"], object=obj,
                             server_version=info["server_version"], server_major=info["server_major"],
                             tables=info["tables"], catalog=info["catalog"])
        if "redis" in parts:
            from opsctl.backup import redis as rdb

            log.info("snapshotting redis")
            path, info = rdb.snapshot(ep.redis_url)
            with open(path, "rb") as reader:  # opened at once: a later BGSAVE renames a new file in
                obj = _stream(repo, f"{backup_id}/redis.rdb.zst", reader, level, key, report, "redis")
            m.redis = mf.RedisPart(object=obj, **info)
        if "files" in parts:
            from opsctl.backup import files

            log.info("copying audio objects from %s", ep.audio_bucket)
            s3 = ep.s3_client()
            m.files = files.backup(s3, ep.audio_bucket, repo, backup_id, report("audio objects", None),
                                   files.unfinished_upload_keys(s3, ep.audio_bucket, ep.database_url))
        for snap in (p for p in parts if p.endswith("-snapshot")):
            from opsctl.backup import snapshots

            m.snapshots.append(snapshots.take(env, snap, backup_id))
        m.finished_at = dt.datetime.now(dt.timezone.utc)
        m.seconds = round(time.monotonic() - began, 3)
        stored = m.stored_objects()
        m.raw_bytes = sum(o.raw_size if o.raw_size is not None else o.size for o in stored)
        m.stored_bytes = sum(o.size for o in stored)
        m.sign(key)
        repo.put_bytes(f"{backup_id}/{mf.NAME}", m.to_bytes())  # now the backup exists
        # the start record stays, marked done: it keeps the folder opsctl's for good (a folder
        # with neither it nor a manifest is another tool's, never touched)
        repo.put_bytes(f"{backup_id}/{mf.IN_PROGRESS}", catalog.marker(started, done=True))
        from opsctl.backup import index

        # read again (a prune or another create may have changed it while this one ran): a read
        # is one hash and one parse (index.py). Inside the try: a create that says it failed
        # (a full disk here) leaves no backup behind that the index would not list
        index.update(repo, key, rec.encrypted, {backup_id: catalog.indexed(repo, backup_id, m)})
    except BaseException as exc:
        if early is not None:
            early.close()
        if dump is not None:
            dump.abort()
        log.warning("backup %s stopped: removing what was written", backup_id)
        repo.abort_uploads(f"{backup_id}/")
        repo.delete_prefix(f"{backup_id}/")
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or SIGTERM: say what state we left
            from opsctl.errors import Interrupted

            # exit 130, as a shell does: CI tells a cancel from a failure (breaker 37 G7)
            raise Interrupted(f"backup {backup_id} interrupted; what it had written was removed "
                              "and its uploads aborted") from None
        raise
    result = CreateResult(id=backup_id, repository=repo.url, components=m.components, raw_bytes=m.raw_bytes,
                          stored_bytes=m.stored_bytes, ratio=round(m.raw_bytes / m.stored_bytes, 2) if m.stored_bytes else 0.0,
                          seconds=m.seconds, encrypted=key is not None, key_id=m.key_id, cleaned=cleaned,
                          foreign=foreign)
    from opsctl.backup import retention

    if skewed:  # retention goes by the backups' times: with one of two clocks wrong it could remove the newest data
        result.prune_failed = (f"not run: backup {skewed} is dated after this host's clock, and retention ordered by "
                               "those times could remove newer data; prune once the clocks agree")
        log.warning("backup %s is complete; retention was %s", backup_id, result.prune_failed)
        return result
    try:
        run = retention.after_backup(repo, env, backup_id)
        if run is not None:
            result.pruned, result.damaged_kept = run.removed, run.damaged_kept
    except Exception as exc:  # noqa: BLE001 - the backup is made: a failed create would be retried (breaker 33 B7)
        from opsctl.errors import fault_text

        result.pruned = getattr(exc, "removed", [])  # what it did remove before (breaker 34 F3)
        result.damaged_kept = getattr(exc, "damaged_kept", [])
        result.prune_failed = fault_text(exc)
        log.warning("backup %s is complete, but retention after it failed: %s", backup_id, result.prune_failed)
    return result
