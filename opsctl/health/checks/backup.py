"""The age of the newest complete backup in the environment's backup repository.

The backup capability writes a backup's manifest last, so a manifest means a complete
backup (DESIGN.md). When `opsctl.backup` is installed its catalog answers (the same listing
`opsctl backup list` shows); when it is not, or its interface is not the one expected, the
manifests are read here directly and defensively (file:// or s3://), so the check works
whichever version wrote them. With neither a manifest nor a backup capability the answer
is UNKNOWN. The details say which source answered.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

from opsctl.health.model import CheckResult, Status

_TIME_KEYS = ("completed_at", "finished_at", "finished", "created_at", "created", "time", "timestamp")
_DONE = {"complete", "completed", "ok", "success", "succeeded", "done"}


def _when(doc: dict, fallback: dt.datetime) -> dt.datetime | None:
    if doc.get("complete") is False or str(doc.get("status", "complete")).lower() not in _DONE:
        return None
    for key in _TIME_KEYS:
        value = doc.get(key)
        try:
            if isinstance(value, (int, float)):
                return dt.datetime.fromtimestamp(value, dt.timezone.utc)
            if isinstance(value, str):
                when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            continue
    return fallback


def _is_manifest(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return key.endswith(".json") and ("manifest" in name or "manifests/" in f"/{key}")


class KeyUnavailable(Exception):
    """The repository is encrypted and no backup key is available to check what it holds."""


def _default_key():
    """The key from $OPSCTL_BACKUP_KEY (backup.key_env's default), or None."""
    import os

    from opsctl.backup.keys import parse

    value = os.environ.get("OPSCTL_BACKUP_KEY")
    return parse(value, "$OPSCTL_BACKUP_KEY") if value else None


# what a backup holds (Manifest.components) -> the kind the check judges: the database is what the
# nightly backup exists for; an hourly Redis snapshot must not keep the check quiet while the
# database dumps stop (breaker 42 R5)
_KINDS = {"db": "database", "rds-snapshot": "database", "redis": "redis", "elasticache-snapshot": "redis",
          "files": "files"}
DATABASE = "database"


def _kinds(components) -> set[str]:
    return {_KINDS[c] for c in components or () if c in _KINDS}


def _open(repository: str, root: Path, endpoints, key):
    from opsctl.backup import record
    from opsctl.backup.repository import open_repository

    repo = open_repository(repository, SimpleNamespace(root=root), endpoints)
    repo.key = key() if key is not None else _default_key()
    rec = record.read(repo, repo.key)
    if rec is not None and rec.encrypted and repo.key is None:
        raise KeyUnavailable(f"{repository} is encrypted (key id {rec.key_id}) and no backup key is set, so its "
                             "catalog can't be authenticated; set the backup key (backup.key_env or "
                             "backup.key_file) for health")
    return repo, rec


def _utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _from_catalog(repository: str, root: Path, endpoints, key=None) -> dt.datetime | None:
    """Through the backup capability's own catalog, with the backup key loaded as
    `for_environment` loads it (`key`: a callable returning it; default $OPSCTL_BACKUP_KEY),
    so the index and manifests of an encrypted repository are authenticated; KeyUnavailable
    when it is encrypted and there is no key; ImportError/AttributeError if unusable."""
    from opsctl.backup import catalog

    repo, _ = _open(repository, root, endpoints, key)
    newest = catalog.newest_complete(repo)  # the catalog index: constant in the number of backups
    return None if newest is None else _utc(newest[1])


def _kinds_from_catalog(repository: str, root: Path, endpoints, key=None) -> dict[str, tuple[str, dt.datetime]]:
    """{kind: (id, completion time)} of the newest complete backup holding each kind (database,
    redis, files), through the catalog: `newest_complete` asked once per kind, each at the
    index's cost (a few backups' stamps, not the repository's)."""
    from opsctl.backup import catalog

    repo, _ = _open(repository, root, endpoints, key)
    found: dict[str, tuple[str, dt.datetime]] = {}
    for kind in sorted(set(_KINDS.values())):
        newest = catalog.newest_complete(repo, holding=lambda components, _k=kind: _k in _kinds(components))
        if newest is not None:
            found[kind] = (newest[0], _utc(newest[1]))
    return found


def newest_backup(repository: str, root: Path, endpoints, key=None) -> tuple[dt.datetime | None, str]:
    """(completion time of the newest complete backup of any kind or None, which source
    answered); `key`: a callable returning the backup key (default: $OPSCTL_BACKUP_KEY);
    KeyUnavailable when the repository is encrypted and there is none."""
    if importlib.util.find_spec("opsctl.backup") is not None:
        try:
            return _from_catalog(repository, root, endpoints, key), "opsctl.backup catalog"
        except (ImportError, AttributeError, TypeError):
            pass  # a different backup capability than this check knows: read the manifests
    return _read_manifests(repository, root, endpoints), "manifests read directly"


def newest_by_kind(repository: str, root: Path, endpoints, key=None) -> tuple[dict[str, tuple[str, dt.datetime]], str]:
    """({kind: (backup id or manifest key, completion time)} of the newest complete backup
    holding each kind ("database", "redis", "files"), which source answered); as newest_backup."""
    if importlib.util.find_spec("opsctl.backup") is not None:
        try:
            return _kinds_from_catalog(repository, root, endpoints, key), "opsctl.backup catalog"
        except (ImportError, AttributeError, TypeError):
            pass
    return _manifest_kinds(repository, root, endpoints), "manifests read directly"


def _doc_kinds(doc: dict) -> set[str]:
    """The kinds a manifest read directly holds: its `components` when it lists them, else its
    db/redis/files sections and snapshots; a manifest that says nothing of what it holds (an
    unknown writer) counts as a database backup, as it always did."""
    components = doc.get("components")
    if not isinstance(components, list):
        components = [c for c in ("db", "redis", "files") if doc.get(c)]
        snaps = doc.get("snapshots")
        components += [f"{s.get('kind')}-snapshot" for s in snaps if isinstance(s, dict)] if isinstance(snaps, list) else []
    return _kinds(components) or {DATABASE}


def _read_manifests(repository: str, root: Path, endpoints) -> dt.datetime | None:
    """The completion time of the newest complete backup of any kind, manifests read directly."""
    return max((when for _, when in _manifest_kinds(repository, root, endpoints).values()), default=None)


def _manifest_kinds(repository: str, root: Path, endpoints) -> dict[str, tuple[str, dt.datetime]]:
    found: dict[str, tuple[str, dt.datetime]] = {}

    def add(name: str, doc, when) -> None:
        if when is None:
            return
        for kind in _doc_kinds(doc):
            if kind not in found or when > found[kind][1]:
                found[kind] = (name, when)

    if repository.startswith("file://"):
        base = Path(repository[len("file://"):])
        base = base if base.is_absolute() else root / base
        for path in base.rglob("*.json") if base.is_dir() else []:
            if _is_manifest(str(path.relative_to(base))):
                mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
                try:
                    doc = json.loads(path.read_text())
                    when = _when(doc, mtime) if isinstance(doc, dict) else None
                except (OSError, ValueError):
                    continue
                add(str(path.relative_to(base)), doc, when)
    elif repository.startswith("s3://"):
        bucket, _, prefix = repository[len("s3://"):].partition("/")
        from opsctl.health.checks.s3 import client as s3_client

        client = s3_client(endpoints, 10.0)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if _is_manifest(obj["Key"][len(prefix):].lstrip("/")):
                    try:
                        doc = json.loads(client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
                    except ValueError:
                        continue
                    when = _when(doc, obj["LastModified"]) if isinstance(doc, dict) else None
                    add(obj["Key"], doc, when)
    else:
        raise ValueError(f"backup.repository {repository!r} is neither s3:// nor file://")
    return found


_SKEW_HOURS = 5 / 60  # opsctl.backup.catalog.CLOCK_SKEW: a backup dated past it is of a wrong clock


def backup_age(repository: str, root: Path, endpoints, max_hours: float, key=None) -> CheckResult:
    """The `backup` check: CRITICAL when the newest complete backup holding the database in
    `repository` finished more than `max_hours` hours ago, when there is none (a repository of
    Redis snapshots only is no database backup), or when the repository can't be read; UNKNOWN
    when it is encrypted and no backup key is available (`key`: a callable returning it, as
    newest_backup). The value is the database backup's age in hours; the message also names any
    other kind (redis, files) older than `max_hours`, and the details list each kind's newest.
    CRITICAL too when the newest is dated more than 5 minutes after this host's clock (a
    writer's clock ran ahead: a negative age had read as fresh, breaker 53 F5)."""
    try:
        found, source = newest_by_kind(repository, root, endpoints, key)
    except KeyUnavailable as exc:  # never trust what can't be authenticated
        return CheckResult("", "backup", Status.UNKNOWN, str(exc))
    except Exception as exc:  # botocore errors, permissions, a bad URL: say what, do not crash the sweep
        return CheckResult("", "backup", Status.CRITICAL, f"cannot read {repository}: {type(exc).__name__}: {exc}")
    now = dt.datetime.now(dt.timezone.utc)
    ages = {kind: (now - when).total_seconds() / 3600 for kind, (_, when) in found.items()}
    kinds = {kind: {"id": found[kind][0], "finished_at": found[kind][1].isoformat(), "age_hours": round(ages[kind], 2),
                    "stale": ages[kind] > max_hours} for kind in sorted(found)}
    details = {"repository": repository, "source": source, "kinds": kinds, "max_hours": max_hours}
    others = [f"{kind} {ages[kind]:.1f} h" for kind in sorted(found) if kind != DATABASE and ages[kind] > max_hours]
    ahead = [f"{kind} {-ages[kind]:.1f} h" for kind in sorted(found) if kind != DATABASE and ages[kind] < -_SKEW_HOURS]
    also = (f"; also older than {max_hours:g} h: {', '.join(others)}" if others else "") + (
        f"; also dated after this host's clock: {', '.join(ahead)}" if ahead else "")
    if DATABASE not in found:
        if not found and importlib.util.find_spec("opsctl.backup") is None:
            return CheckResult("", "backup", Status.UNKNOWN,
                               f"no backup capability (opsctl.backup) and no manifest in {repository}")
        held = ", ".join(f"{kind} {ages[kind]:.1f} h old" for kind in sorted(found))
        return CheckResult("", "backup", Status.CRITICAL,
                           f"no complete backup of the database in {repository}" + (f" (newest {held})" if held else ""),
                           details=details)
    hours = ages[DATABASE]
    details["newest"] = found[DATABASE][1].isoformat()
    details["newest_id"] = found[DATABASE][0]
    if hours < -_SKEW_HOURS:  # made on a host whose clock ran ahead: it would read as fresh until then
        return CheckResult("", "backup", Status.CRITICAL,
                           f"the newest complete database backup, {found[DATABASE][0]}, is dated {-hours:.1f} h after "
                           "this host's clock: the clock of the host that made it (or this one) is wrong, and until "
                           "that time passes its age says nothing about whether backups still run; fix the clock, "
                           f"and remove its folder {found[DATABASE][0]}/ from the repository to judge the real "
                           "newest ('opsctl backup list' shows them)" + also,
                           round(hours, 2), "h", details=details)
    status = Status.CRITICAL if hours > max_hours else Status.OK
    text = (f"newest complete database backup {max(hours, 0.0):.1f} h old" + (
        f", above {max_hours:g} h: the database backups stopped" if status else "") + also)
    return CheckResult("", "backup", status, text, round(hours, 2), "h", details=details)
