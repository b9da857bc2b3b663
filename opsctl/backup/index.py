"""The catalog index: one object summarising every complete backup, so a year of hourly
backups costs `list`, `restore --latest`, `prune` and the health check one read, not one
per manifest (pgBackRest's `backup.info`, restic's index files).

`opsctl-catalog.json` at the top of the repository: `{"format": 2, "written_at": ..., "mac":
..., "backups": {id: summary}}`, a summary being what list/resolve/prune/health need (times, components,
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
FORMAT = 2  # 1: MAC over a re-serialised payload (read as missing: rebuilt)


def summary(m, verified: bool = False, failed: dict | None = None) -> dict:
    """What the index keeps of a manifest."""
    return {"created_at": m.created_at.isoformat(), "finished_at": m.finished_at.isoformat(),
            "components": m.components, "label": m.label, "raw_bytes": m.raw_bytes,
            "stored_bytes": m.stored_bytes, "key_id": m.key_id, "verified": verified, "failed": failed}


_DOMAIN = b"opsctl-catalog\0"
_FIELD = b',"backups":'  # the payload comes last in the document, after this exact separator


def _mac(payload: bytes, key: BackupKey | None, encrypted: bool) -> str | None:
    """HMAC-SHA256 under the key (encrypted repository) or SHA-256 (unencrypted) of the
    payload's exact bytes: checking it costs one hash, not a re-serialisation of the index."""
    if encrypted:
        return key.mac(_DOMAIN + payload) if key is not None else None
    return "sha256:" + hashlib.sha256(_DOMAIN + payload).hexdigest()


def read(repo: Repository, key: BackupKey | None, encrypted: bool) -> dict | None:
    """{id: summary} when the index is present and authentic, else None (rebuild).

    The MAC covers the bytes of the `backups` payload as stored (the document ends with
    it), so a read costs one hash and one parse. In an encrypted repository read without
    the key the index can't be checked; it is used for display only (the caller knows it
    is not authenticated)."""
    try:
        data = repo.get_bytes(NAME)
    except (NotFound, OperationFailed):  # OperationFailed: a link (repository.py)
        return None
    at = data.find(_FIELD)
    if at < 0 or not data.endswith(b"}"):
        return None  # not written by write(): another format, or edited by hand
    payload = data[at + len(_FIELD):-1]
    try:
        head = json.loads(data[:at] + b"}")
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            return None
        if not (encrypted and key is None):
            want = _mac(payload, key, encrypted)
            if not want or not isinstance(head.get("mac"), str) or not hmac.compare_digest(head["mac"], want):
                return None  # tampered with or damaged: ignored in favour of the manifests
        backups = json.loads(payload)
    except (ValueError, TypeError):
        return None
    return backups if isinstance(backups, dict) else None


def write(repo: Repository, backups: dict, key: BackupKey | None, encrypted: bool) -> bool:
    """Replace the index; False (nothing written) when it can't be sealed (no key).

    One JSON document, `{"format": 2, "written_at": ..., "mac": ..., "backups": {...}}`,
    the payload last and written compactly so `read` can hash its exact bytes."""
    payload = json.dumps(backups, separators=(",", ":")).encode()
    mac = _mac(payload, key, encrypted)
    if mac is None:
        return False
    head = json.dumps({"format": FORMAT, "written_at": dt.datetime.now(dt.timezone.utc).isoformat(), "mac": mac},
                      separators=(",", ":")).encode()
    repo.put_bytes(NAME, head[:-1] + _FIELD + payload + b"}")
    return True


def update(repo: Repository, key: BackupKey | None, encrypted: bool, changes: dict[str, dict | None],
           current: dict | None | bool = False) -> None:
    """Read-modify-write: `changes` maps ids to a new summary, or None to drop them. One
    write whatever the number of changes (prune drops all it removed at once).

    The index is read again right before the write whatever `current` (the caller's earlier
    read, kept for compatibility) holds, so entries another create or prune wrote since are
    kept; a writer that still slips between that read and this write loses an entry to a
    cache only: catalog.newest_complete lists the folders after the index's newest id and
    scan() the whole repository, and both put it back. A missing or invalid index is
    rebuilt from the manifests (catalog.scan) once, here, when the key to seal it is at
    hand: the changes are already in the repository."""
    current = read(repo, key, encrypted)
    if current is None:
        if encrypted and key is None:
            return  # nothing to seal it with: the next keyed command rebuilds it
        from opsctl.backup import catalog

        catalog.scan(repo, key)  # one listing, every manifest read once, the index written
        return
    for backup_id, value in changes.items():
        if value is None:
            current.pop(backup_id, None)
        else:
            current[backup_id] = value
    write(repo, current, key, encrypted)
