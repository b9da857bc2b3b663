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


def _from_catalog(repository: str, root: Path, endpoints, key=None) -> dt.datetime | None:
    """Through the backup capability's own catalog, with the backup key loaded as
    `for_environment` loads it (`key`: a callable returning it; default $OPSCTL_BACKUP_KEY),
    so the index and manifests of an encrypted repository are authenticated; KeyUnavailable
    when it is encrypted and there is no key; ImportError/AttributeError if unusable."""
    from opsctl.backup import catalog, record
    from opsctl.backup.repository import open_repository

    repo = open_repository(repository, SimpleNamespace(root=root), endpoints)
    repo.key = key() if key is not None else _default_key()
    rec = record.read(repo, repo.key)
    if rec is not None and rec.encrypted and repo.key is None:
        raise KeyUnavailable(f"{repository} is encrypted (key id {rec.key_id}) and no backup key is set, so its "
                             "catalog can't be authenticated; set the backup key (backup.key_env or "
                             "backup.key_file) for health")
    newest = catalog.newest_complete(repo)  # the catalog index: constant in the number of backups
    if newest is None:
        return None
    done = newest[1]
    return done if done.tzinfo else done.replace(tzinfo=dt.timezone.utc)


def newest_backup(repository: str, root: Path, endpoints, key=None) -> tuple[dt.datetime | None, str]:
    """(completion time of the newest complete backup or None, which source answered);
    `key`: a callable returning the backup key (default: $OPSCTL_BACKUP_KEY); KeyUnavailable
    when the repository is encrypted and there is none."""
    if importlib.util.find_spec("opsctl.backup") is not None:
        try:
            return _from_catalog(repository, root, endpoints, key), "opsctl.backup catalog"
        except (ImportError, AttributeError, TypeError):
            pass  # a different backup capability than this check knows: read the manifests
    return _read_manifests(repository, root, endpoints), "manifests read directly"


def _read_manifests(repository: str, root: Path, endpoints) -> dt.datetime | None:
    found: list[dt.datetime] = []
    if repository.startswith("file://"):
        base = Path(repository[len("file://"):])
        base = base if base.is_absolute() else root / base
        for path in base.rglob("*.json") if base.is_dir() else []:
            if _is_manifest(str(path.relative_to(base))):
                mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
                try:
                    when = _when(json.loads(path.read_text()), mtime)
                except (OSError, ValueError):
                    continue
                if when:
                    found.append(when)
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
                    if when:
                        found.append(when)
    else:
        raise ValueError(f"backup.repository {repository!r} is neither s3:// nor file://")
    return max(found, default=None)


def backup_age(repository: str, root: Path, endpoints, max_hours: float, key=None) -> CheckResult:
    """The `backup` check: CRITICAL when the newest complete backup in `repository` finished
    more than `max_hours` hours ago, when there is none, or when the repository can't be
    read; UNKNOWN when it is encrypted and no backup key is available (`key`: a callable
    returning it, as newest_backup); the value is its age in hours."""
    try:
        newest, source = newest_backup(repository, root, endpoints, key)
    except KeyUnavailable as exc:  # never trust what can't be authenticated
        return CheckResult("", "backup", Status.UNKNOWN, str(exc))
    except Exception as exc:  # botocore errors, permissions, a bad URL: say what, do not crash the sweep
        return CheckResult("", "backup", Status.CRITICAL, f"cannot read {repository}: {type(exc).__name__}: {exc}")
    if newest is None:
        if importlib.util.find_spec("opsctl.backup") is None:
            return CheckResult("", "backup", Status.UNKNOWN,
                               f"no backup capability (opsctl.backup) and no manifest in {repository}")
        return CheckResult("", "backup", Status.CRITICAL, f"no complete backup in {repository}")
    hours = (dt.datetime.now(dt.timezone.utc) - newest).total_seconds() / 3600
    status = Status.CRITICAL if hours > max_hours else Status.OK
    text = f"newest complete backup {hours:.1f} h old" + (f", above {max_hours:g} h" if status else "")
    return CheckResult("", "backup", status, text, round(hours, 2), "h",
                       details={"newest": newest.isoformat(), "repository": repository, "source": source})
