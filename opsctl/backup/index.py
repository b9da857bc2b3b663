"""The catalog index: one object summarising every complete backup, so a year of hourly
backups costs `list`, `restore --latest`, `prune` and the health check one read, not one
per manifest (pgBackRest's `backup.info`, restic's index files).

`opsctl-catalog.json` at the top of the repository: `{"format": 1, "backups": {id: summary},
"mac": ...}`, a summary being what list/resolve/prune/health need (times, components,
sizes, key id, label, verdict). It is rewritten after each manifest, verdict and deletion,
and authenticated like the record (HMAC under the backup key in an encrypted repository,
SHA-256 otherwise). It is a cache, never the truth: a missing, damaged or forged index is
ignored and rebuilt from the manifests; folders it does not know are read one by one; ids it
names whose folder is gone are dropped; and a restore always loads and checks the backup's
own manifest (catalog.load).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

from opsctl.backup.keys import BackupKey
from opsctl.backup.repository import NotFound, Repository
from opsctl.errors import OperationFailed

NAME = "opsctl-catalog.json"


def summary(m, verified: bool = False, failed: dict | None = None) -> dict:
    """What the index keeps of a manifest."""
    return {"created_at": m.created_at.isoformat(), "finished_at": m.finished_at.isoformat(),
            "components": m.components, "label": m.label, "raw_bytes": m.raw_bytes,
            "stored_bytes": m.stored_bytes, "key_id": m.key_id, "verified": verified, "failed": failed}


def _canonical(backups: dict) -> bytes:
    return b"opsctl-catalog\0" + json.dumps(backups, sort_keys=True, separators=(",", ":")).encode()


def _mac(backups: dict, key: BackupKey | None, encrypted: bool) -> str | None:
    if encrypted:
        return key.mac(_canonical(backups)) if key is not None else None
    return "sha256:" + hashlib.sha256(_canonical(backups)).hexdigest()


def read(repo: Repository, key: BackupKey | None, encrypted: bool) -> dict | None:
    """{id: summary} when the index is present and authentic, else None (rebuild).

    In an encrypted repository read without the key the index can't be checked; it is used
    for display only (the caller knows it is not authenticated)."""
    try:
        doc = json.loads(repo.get_bytes(NAME))
        backups = doc["backups"]
        if not isinstance(backups, dict) or doc.get("format") != 1:
            return None
    except (NotFound, ValueError, KeyError, TypeError, OperationFailed):  # OperationFailed: a link (repository.py)
        return None
    if encrypted and key is None:
        return backups
    want = _mac(backups, key, encrypted)
    if not want or not isinstance(doc.get("mac"), str) or not hmac.compare_digest(doc["mac"], want):
        return None  # tampered with or damaged: ignored in favour of the manifests
    return backups


def write(repo: Repository, backups: dict, key: BackupKey | None, encrypted: bool) -> bool:
    """Replace the index; False (nothing written) when it can't be sealed (no key)."""
    mac = _mac(backups, key, encrypted)
    if mac is None:
        return False
    repo.put_bytes(NAME, json.dumps({"format": 1, "written_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                                     "backups": backups, "mac": mac}).encode())
    return True


def update(repo: Repository, key: BackupKey | None, encrypted: bool, changes: dict[str, dict | None]) -> None:
    """Read-modify-write: `changes` maps ids to a new summary, or None to drop them. A
    concurrent writer may lose an entry; the next full read finds the folder and adds it."""
    current = read(repo, key, encrypted)
    if current is None:
        return  # no valid index: the next scan rebuilds it whole
    for backup_id, value in changes.items():
        if value is None:
            current.pop(backup_id, None)
        else:
            current[backup_id] = value
    write(repo, current, key, encrypted)
