"""The manifest: what a backup holds, written last, so its presence is what makes a backup.

It records every stored object with its size and SHA-256, what the data looked like when
it was taken (row counts per table from the dump's own snapshot, Redis key counts at the
fork of BGSAVE) so a restore can be checked against it, and the id of the key, never the
key. Encrypted backups carry an HMAC of the manifest under a key derived from the backup
key, so an edited manifest fails like an edited object.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opsctl.backup.crypto import IntegrityError
from opsctl.backup.keys import BackupKey

NAME = "manifest.json"
IN_PROGRESS = "in-progress.json"
COMPONENTS = ("db", "redis", "files")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a damaged key name is an error, not an ignored field


class StoredObject(_Strict):
    """One object the backup wrote: its repository name, stored `size` and `sha256` (of the
    stored bytes), `raw_size` before compression (bytes), and how it was transformed."""
    name: str
    size: int
    sha256: str
    raw_size: int | None = None
    encrypted: bool = False
    compressed: bool = False


class DbPart(_Strict):
    """The PostgreSQL component: what the dump's snapshot saw and the stored dump object."""
    database: str  # the database pg_dump dumped (current_database() of its snapshot)
    owner: str
    server_version: str
    server_major: int | None = None
    row_counts: dict[str, int] | None = None  # manifests before tables: {"schema.table": rows}
    tables: list[tuple[str, str, int]] | None = None  # [schema, table, rows]: names are never joined
    catalog: dict | None = None  # owners and privileges (postgres.CATALOG_SQL) at the snapshot
    object: StoredObject

    @property
    def expected_rows(self) -> list | dict:
        """Row counts a restore must reproduce: [[schema, table, rows]], or the older
        {"schema.table": rows} of manifests written before `tables` existed."""
        return [list(t) for t in self.tables] if self.tables is not None else (self.row_counts or {})


class RedisPart(_Strict):
    """The Redis component: server version, keys and keys with an expiry per database
    number at the snapshot, and the stored RDB object."""
    redis_version: str
    keys: dict[int, int]
    expires: dict[int, int]
    object: StoredObject


class AudioObject(_Strict):
    """One audio object copied: its bucket `key`, `size` (bytes) and `sha256`, its copy's
    repository `name`, and the source ETag the copy was made from."""
    key: str
    size: int
    sha256: str
    name: str
    etag: str | None = None


class FilesPart(_Strict):
    """The audio component: the bucket and every completed object copied from it."""
    bucket: str
    objects: list[AudioObject]


class SnapshotPart(_Strict):
    """A native snapshot taken by the cloud service (RDS or ElastiCache) and its source."""
    kind: Literal["rds", "elasticache"]
    identifier: str
    source: str


class Manifest(_Strict):
    """`manifest.json` of one backup, written last: a backup exists only once it does.
    Times are UTC datetimes, sizes bytes, `seconds` the backup's duration; `mac` seals the
    rest (`sign`, `authenticate`)."""
    format: Literal[1] = 1
    id: str
    environment: str
    platform: str
    label: str | None = None
    created_at: dt.datetime
    finished_at: dt.datetime
    tool_version: str
    key_id: str | None
    encryption: str | None
    compression: dict = Field(default_factory=dict)
    db: DbPart | None = None
    redis: RedisPart | None = None
    files: FilesPart | None = None
    snapshots: list[SnapshotPart] = Field(default_factory=list)
    raw_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    mac: str | None = None

    @property
    def components(self) -> list[str]:
        """What the backup holds: "db", "redis", "files", then "<kind>-snapshot" per snapshot."""
        return [c for c in COMPONENTS if getattr(self, c) is not None] + [f"{s.kind}-snapshot" for s in self.snapshots]

    def stored_objects(self) -> list[StoredObject]:
        """Every object the backup stored (dump, RDB, audio copies), for verify and sizes."""
        objs = [p.object for p in (self.db, self.redis) if p is not None]
        if self.files:
            objs += [StoredObject(name=a.name, size=a.size, sha256=a.sha256) for a in self.files.objects]
        return objs

    def _canonical(self) -> bytes:
        doc = self.model_dump(mode="json", exclude={"mac"})
        if doc.get("db"):  # fields added later are left out while empty: older MACs still verify
            for k in ("server_major", "row_counts", "tables", "catalog"):
                if doc["db"].get(k) is None:
                    doc["db"].pop(k, None)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def sign(self, key: BackupKey | None) -> None:
        """An HMAC under the backup key; without a key, a plain SHA-256 (catches damage, not forgery)."""
        import hashlib

        self.mac = key.mac(self._canonical()) if key else "sha256:" + hashlib.sha256(self._canonical()).hexdigest()

    def to_bytes(self) -> bytes:
        """The manifest as stored: compact JSON, MAC included."""
        return self.model_dump_json().encode()  # compact: every byte is significant, so any flip is caught


def parse(data: bytes, backup_id: str) -> Manifest:
    """The manifest in `data` (not yet authenticated: see `authenticate`); IntegrityError
    naming `backup_id` when it is not a valid manifest."""
    try:
        return Manifest.model_validate_json(data)
    except ValidationError:
        raise IntegrityError(f"the manifest of backup {backup_id} is damaged (not a valid manifest); "
                             "this backup can't be trusted") from None


def authenticate(manifest: Manifest, key: BackupKey | None) -> None:
    """Raise unless the manifest's MAC matches (encrypted backups; needs the key)."""
    import hashlib
    import hmac

    if manifest.key_id is None:
        expected = "sha256:" + hashlib.sha256(manifest._canonical()).hexdigest()
    elif key is None:
        return
    else:
        expected = key.mac(manifest._canonical())
    if not manifest.mac or not hmac.compare_digest(manifest.mac, expected):
        raise IntegrityError(f"the manifest of backup {manifest.id} fails its authentication check: "
                             "it was modified; this backup can't be trusted")
