"""`backup verify`: every object read back and checked, optionally a real restore as proof.

Checksums prove the bytes are the ones written; decrypting and decompressing proves the key
and the whole chain; `--restore-test` proves the dump restores (into a scratch database,
dropped afterwards, row counts compared with the manifest) and the RDB loads with the
recorded key counts. A backup that passes is marked verified, which retention respects; one
that fails is marked damaged in the repository (catalog.mark_failed), so `list` shows it,
`restore --latest/--date` skip it and `prune` removes it.

Only a failure that proves the backup itself bad is recorded: a checksum or MAC mismatch, an
object missing or undecryptable (IntegrityError), pg_restore refusing the dump's content or a
restored database that differs from the manifest (postgres.DumpRejected: pg_restore's known
content errors only), an RDB that does
not load or holds other key counts (RedisRejected), or any other error raised while reading
the backup's bytes. A failure of the environment (the database server unreachable, a tool
missing, a role the server lacks, the disk; a server error whose SQLSTATE class is 08, 53, 54,
57, 58, 28, 3D or 42501) is reported, exit 1, and never recorded: `prune`
deletes damaged backups, so a healthy one must never be marked by a verify that could not run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from opsctl.backup import catalog, keys
from opsctl.backup import manifest as mf
from opsctl.backup.crypto import IntegrityError
from opsctl.backup.pipeline import Reporter, checked, quiet, unpack
from opsctl.backup.repository import NotFound, Repository, open_repository
from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, OpsError, UsageError


class RedisRejected(OperationFailed):
    """The backed-up RDB does not load, or holds other key counts than its manifest says."""


# errors of the environment, not of the backup's bytes: never recorded as damage
def _environmental(exc: BaseException) -> bool:
    import psycopg

    try:
        import redis
        redis_env: tuple = (redis.ConnectionError, redis.TimeoutError)
    except ImportError:  # pragma: no cover - redis is a dependency
        redis_env = ()
    try:
        from botocore.exceptions import BotoCoreError
        boto_env: tuple = (BotoCoreError,)
    except ImportError:  # pragma: no cover
        boto_env = ()
    return isinstance(exc, (OSError, psycopg.OperationalError, MemoryError, *redis_env, *boto_env))


# what redis-server logs when an RDB file itself is bad (rdb.c: rdbLoad's error paths)
_RDB_BAD = re.compile(r"Short read|Wrong signature|RDB checksum|Internal error in RDB|Bad file format|"
                      r"Unexpected EOF|Unknown RDB|Error reading|corrupt", re.IGNORECASE)


def _damage(exc: BaseException) -> bool:
    """Whether a failed verify proves the backup bad (recorded) or says nothing about it."""
    from opsctl.backup import postgres as pgb

    if isinstance(exc, (IntegrityError, pgb.DumpRejected, RedisRejected)):
        return True
    if isinstance(exc, OpsError) or not isinstance(exc, Exception):
        return False  # the environment (connection, tools, roles, configuration), or an interrupt
    if pgb.environmental_sqlstate(getattr(exc, "sqlstate", None)):
        return False  # a server error whose SQLSTATE class is the environment's (resources, limits, I/O...)
    return not _environmental(exc)


@dataclass
class VerifyResult:
    """`backup verify`'s answer: objects checked and their stored bytes, whether they were
    decrypted, and per component the restore test's counts (when asked); `not_recorded`: why
    the passed verdict could not be kept in the repository (None when it was)."""
    id: str
    ok: bool
    objects: int
    bytes: int
    decrypted: bool
    restore_test: dict = field(default_factory=dict)
    not_recorded: str | None = None
    cleaned: list[str] = field(default_factory=list)  # what killed restores and restore tests had left, removed


def fetch(repo: Repository, obj: mf.StoredObject, key, target: Path, report: Reporter = quiet) -> None:
    """Write an object's plaintext to target; raises before returning if anything is off."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(target, "wb") as fh:
            for block in unpack(repo.get(obj.name), obj.name, obj.sha256, obj.size,
                                key if obj.encrypted else None, report(obj.name.split("/")[-1], obj.size)):
                fh.write(block)
    except NotFound:
        raise IntegrityError(f"{obj.name} is missing from the repository: the backup is damaged") from None


def check_objects(repo: Repository, manifest: mf.Manifest, key, report: Reporter = quiet) -> tuple[int, int]:
    """Read every object of the backup; raise on the first that is missing or damaged."""
    total = 0
    for obj in manifest.stored_objects():
        try:
            if obj.compressed and (key is not None or not obj.encrypted):
                stream = unpack(repo.get(obj.name), obj.name, obj.sha256, obj.size, key if obj.encrypted else None,
                                report(obj.name.split("/")[-1], obj.size))
            else:
                stream = checked(repo.get(obj.name), obj.name, obj.sha256, obj.size)
            for _ in stream:
                pass
        except NotFound:
            raise IntegrityError(f"{obj.name} is missing from the repository: the backup is damaged") from None
        total += obj.size
    return len(manifest.stored_objects()), total


def restore_test(repo: Repository, manifest: mf.Manifest, key, database_url: str | None,
                 report: Reporter = quiet) -> dict:
    """Restore the backup beside the live data (a scratch database, a scratch Redis) and
    compare counts and catalog with the manifest: {"db": {...}, "redis": {...}}; a scratch
    database that could not be dropped after a pass is said in db's `scratch_left`. Raises
    DumpRejected/IntegrityError when the backup's content differs (damage), other
    OperationFailed for the environment's failures."""
    from opsctl.backup import postgres as pgb
    from opsctl.backup import redis as rdb
    from opsctl.backup import runs

    out: dict = {}
    # a run folder with its record, as a restore's: killed outright, this test's scratch
    # database, decrypted files and scratch redis-server are removed by the next restore or test
    with runs.folder(database_url if manifest.db else None, sessions=2) as tmp:
        if manifest.db:
            if not database_url:
                raise OperationFailed("--restore-test needs the environment's database server for a scratch database")
            dump = tmp / "db.dump"
            fetch(repo, manifest.db.object, key, dump, report)
            scratch = pgb.derived_name("opsctl_verify", manifest.id[:15].lower())
            runs.note(tmp, scratch=scratch)  # before it exists
            # restore_into drops its copy on its own failures (its subscriptions first), and never
            # raises that clean-up's failure over its own (breaker 50 G4)
            counts = pgb.restore_into(database_url, str(dump), scratch, 2, manifest.db.expected_rows,
                                      catalog=manifest.db.catalog, run_mark=runs.mark(tmp, scratch))
            try:  # after a pass the verdict stands: a copy left behind is said in the result
                pgb.drop_scratch(database_url, scratch)
                left = None
            except OperationFailed as exc:
                left = str(exc)
            runs.note(tmp, scratch=None)  # dropped, or said in the result: never a dead run's to drop
            out["db"] = {"tables": len(counts), "rows": sum(counts.values()), "matches_manifest": True,
                         "owners_and_privileges_checked": manifest.db.catalog is not None,
                         # older backups recorded only the owner, grants, locale and own settings
                         "database_properties_checked": bool(manifest.db.catalog
                                                             and manifest.db.catalog.get("db_properties"))}
            if left:  # breaker 50 G4: its clean-up failing made a sound backup "could not be verified"
                out["db"]["scratch_left"] = left
        if manifest.redis:
            rdb_path = tmp / "redis" / "dump.rdb"
            fetch(repo, manifest.redis.object, key, rdb_path, report)
            try:
                server = rdb.scratch_server(rdb_path)
                url = server.__enter__()
            except OperationFailed as exc:
                # bytes that passed their checksum yet don't load: the RDB was bad when written. A
                # redis-server too old for its RDB version, or none at all, is the environment's.
                text = str(exc)
                if "does not load" in text and _RDB_BAD.search(text) and "format version" not in text:
                    raise RedisRejected(text) from None
                raise
            try:
                got = rdb.check_counts(url, manifest.redis.keys, manifest.redis.expires)
            except OperationFailed as exc:
                raise RedisRejected(str(exc)) from None
            finally:
                server.__exit__(None, None, None)
            out["redis"] = {"keys": sum(got.values()), "matches_manifest": True}
    return out


def verify(project: Project, env: Environment, backup_id: str, with_restore: bool = False,
           report: Reporter = quiet) -> VerifyResult:
    """`backup verify`: every object's SHA-256 and authentication (and decryption), plus a
    restore test when `with_restore`. A failure proving the backup bad is recorded
    (catalog.mark_failed: the backup is damaged from then on) and raised; a pass is
    recorded too (catalog.mark_verified). The restore test first removes what restores and
    restore tests killed outright left (runs.clean_dead: `cleaned`, each logged). UsageError for
    an unknown id or missing key."""
    from opsctl.endpoints import resolve

    from opsctl.backup import record

    record.check_id(backup_id)
    key = keys.load(project, env, required=False)
    ep = resolve(project, env)
    repo = open_repository(env.backup.repository, project, ep)
    manifest = catalog.load(repo, backup_id, key)
    try:
        count, size = check_objects(repo, manifest, key, report)
        result = VerifyResult(id=backup_id, ok=True, objects=count, bytes=size,
                              decrypted=key is not None or manifest.key_id is None)
        if with_restore:
            from opsctl.backup import runs

            result.cleaned = runs.clean_dead(ep.database_url if manifest.db else None, swaps=False,
                                             say=lambda text: logging.getLogger("opsctl.backup").warning("%s", text))
            result.restore_test = restore_test(repo, manifest, key, ep.database_url, report)
    except UsageError:
        raise  # bad configuration or input (exit 2): nothing about the backup
    except Exception as exc:
        from opsctl.redact import credentials

        reason = str(exc) if isinstance(exc, OperationFailed) else f"{type(exc).__name__}: {exc}"
        reason = credentials(reason.strip().splitlines()[0] if reason.strip() else type(exc).__name__)
        if _damage(exc) and _gone(repo, backup_id):  # breaker 56 F3: its objects went with a deletion
            raise OperationFailed(f"backup {backup_id} was deleted while it was verified ({reason}); nothing was "
                                  "recorded") from None
        if _damage(exc):  # the backup itself is bad: the verdict is kept in the repository
            unmarked = _record(catalog.mark_failed, repo, backup_id, reason, key)
            raise OperationFailed(f"backup {backup_id} failed verification: {reason}; " + (
                f"it could not be marked damaged ({unmarked}): until it is, `backup list` and retention go by the "
                "verdict the repository last recorded" if unmarked else "it is marked damaged")) from None
        raise OperationFailed(f"backup {backup_id} could not be verified: {reason}; this says nothing about the "
                              "backup, which is not marked (fix the cause and verify again)") from None
    result.not_recorded = _record(catalog.mark_verified, repo, backup_id, with_restore, key)
    return result


def _gone(repo, backup_id: str) -> bool:
    """catalog.gone_or_going, False when the repository can't say (the failure stands as found)."""
    try:
        return catalog.gone_or_going(repo, backup_id)
    except Exception:  # noqa: BLE001 - see above
        return False


def _record(mark, *args) -> str | None:
    """Keep a verdict (`mark(*args)`: catalog.mark_verified or mark_failed) in the repository;
    why it could not be (a full or read-only volume, a credential that may only read), else
    None. The verdict stands either way: verify read the backup, and failing the command for
    its bookkeeping said a sound backup was bad (breaker 33 B8)."""
    from opsctl.redact import credentials

    try:
        mark(*args)
    except Exception as exc:  # noqa: BLE001 - S3's refusals too: bookkeeping never turns the verdict
        why = credentials(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        logging.getLogger("opsctl.backup").warning("the verdict on backup %s was not recorded in the repository: %s", args[1], why)
        return why
    return None
