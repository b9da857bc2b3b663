"""The repository record: what makes a location an opsctl backup repository, and whether it is encrypted.

Like pgBackRest's stanza and restic's `config`, a repository is initialised once: the first
`backup create` into an empty location writes `opsctl-repository.json` at its top
(`{"format": 1, "encrypted": bool, "key_id": str|null, "created_at": ISO-8601, "mac": str}`),
and from then on encryption is a property of the repository, not of a command line. In an
encrypted repository the record carries an HMAC-SHA256 under a sub-key of the backup key
(keys.BackupKey.mac), so it can't be rewritten to "unencrypted" by anyone without the key;
an unencrypted repository's record carries a plain SHA-256, which catches damage only, so
with a key configured an "unencrypted" record is refused while any manifest names a key id
(a flipped record), and a missing record is not re-initialised unencrypted over sealed
backups (a deleted record).

A non-empty location without a record is refused by `create` (naming what is there), unless
everything in it is an opsctl backup folder written before records existed (adopted).
Backup ids are checked against their format (`YYYYMMDDTHHMMSSZ-xxxx`) before any use, so an
id can never name a path outside its folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from opsctl.backup.crypto import IntegrityError
from opsctl.backup.keys import BackupKey
from opsctl.backup.repository import NotFound, Repository
from opsctl.errors import UsageError

NAME = "opsctl-repository.json"
ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}", re.ASCII)  # [0-9]: \\d matches any Unicode digit
OWN_FILES = ("manifest.json", "in-progress.json")
OWN_AREAS = ("pitr",)  # top-level folders of opsctl's other repository users (WAL archive, base backups)


def check_id(backup_id: str) -> str:
    """`backup_id` if it has the format of an opsctl backup id; UsageError (exit 2) otherwise."""
    if not isinstance(backup_id, str) or not ID.fullmatch(backup_id):
        raise UsageError(f"{backup_id!r} is not a backup id (YYYYMMDDTHHMMSSZ-xxxx, e.g. 20260101T020000Z-1a2b); "
                         "'opsctl backup list' shows the ids")
    return backup_id


class RepositoryRecord(BaseModel):
    """`opsctl-repository.json`: whether the repository is encrypted and under which key id,
    sealed like a manifest (`seal`)."""
    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = 1
    encrypted: bool
    key_id: str | None
    created_at: dt.datetime
    mac: str | None = None

    def _canonical(self) -> bytes:
        return json.dumps(self.model_dump(mode="json", exclude={"mac"}), sort_keys=True,
                          separators=(",", ":")).encode()

    def seal(self, key: BackupKey | None) -> None:
        """Set `mac`: HMAC under `key`, or (unencrypted) a SHA-256 that anyone can recompute."""
        self.mac = key.mac(b"opsctl-repository\0" + self._canonical()) if key else \
            "sha256:" + hashlib.sha256(self._canonical()).hexdigest()


def layout(names: dict[str, int]) -> tuple[dict[str, set[str]], list[str]]:
    """({backup id: file names under it}, foreign top-level entries) from a listing.

    A folder is opsctl's when its name is a backup id and it holds a manifest or opsctl's
    start record; anything else (other tools' folders, stray files) is foreign.
    """
    folders: dict[str, set[str]] = {}
    foreign: set[str] = set()
    for name in names:
        top, sep, rest = name.partition("/")
        if not sep:
            if top not in (NAME, "opsctl-catalog.json"):  # the record, the catalog index (index.py)
                foreign.add(top)
            continue
        folders.setdefault(top, set()).add(rest)
    ours = {}
    for top, files in folders.items():
        if top in OWN_AREAS:
            continue
        if ID.fullmatch(top) and any(f in files for f in OWN_FILES):
            ours[top] = files
        else:
            foreign.add(top + "/")
    return ours, sorted(foreign)


def sealed_key_id(repo: Repository) -> str | None:
    """The key id the first backup manifest found names, or None when none names one (each
    opsctl folder's manifest read until one does: only when a record is missing or says
    "unencrypted" while a key is configured, never on the common path)."""
    folders, _ = repo.folders()
    for folder in sorted((f for f in folders if ID.fullmatch(f)), reverse=True):
        try:
            doc = json.loads(repo.get_bytes(f"{folder}/manifest.json"))
        except (NotFound, ValueError, IntegrityError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("key_id"), str):
            return doc["key_id"]
    return None


def read(repo: Repository, key: BackupKey | None) -> RepositoryRecord | None:
    """The record, checked: None when there is none; IntegrityError when damaged or forged.

    Without the key an encrypted repository's record can't be authenticated; it is
    returned as it is (every manifest is checked against the key before a restore anyway).
    """
    try:
        data = repo.get_bytes(NAME)
    except NotFound:
        return None
    try:
        rec = RepositoryRecord.model_validate_json(data)
    except ValidationError:
        raise IntegrityError(f"the repository record {repo.url}/{NAME} is damaged; this repository can't be trusted") from None
    if rec.encrypted:
        if key is None:
            return rec
        if key.id != rec.key_id:
            raise UsageError(f"wrong backup key: repository {repo.url} is encrypted with key id {rec.key_id}, "
                             f"the key given has id {key.id}; set the key it was made with")
        expected = key.mac(b"opsctl-repository\0" + rec._canonical())
    else:
        expected = "sha256:" + hashlib.sha256(rec._canonical()).hexdigest()
    if not rec.mac or not hmac.compare_digest(rec.mac, expected):
        raise IntegrityError(f"the repository record of {repo.url} fails its authentication check: "
                             "it was modified; this repository can't be trusted")
    if not rec.encrypted and key is not None and (sealed := sealed_key_id(repo)) is not None:
        # a plain SHA-256 can be recomputed by anyone: an "unencrypted" record over sealed backups is forged
        raise IntegrityError(f"the repository record of {repo.url} says unencrypted but its backups are sealed "
                             f"with key id {sealed}: the record was replaced (tampering); nothing is written or "
                             "restored until the genuine record is put back")
    return rec


def ensure(repo: Repository, key: BackupKey | None,
           listing: tuple[set[str], set[str]] | None = None) -> tuple[RepositoryRecord, list[str]]:
    """The record for a `backup create` with `key` (None: --no-encrypt), initialising an
    empty location; returns (record, foreign entries found). `listing`: the caller's
    `repo.folders()`, when it has one. UsageError when the command contradicts the
    repository or the location holds something that is not opsctl's."""
    rec = read(repo, key)
    folders, files = listing or repo.folders()  # one listing that does not descend into the backups
    foreign = sorted({f for f in files if f not in (NAME, "opsctl-catalog.json")}
                     | {f + "/" for f in folders if f not in OWN_AREAS and not ID.fullmatch(f)})
    if rec is None and key is None and (sealed := sealed_key_id(repo)) is not None:
        raise UsageError(f"{repo.url} has no repository record but holds backups sealed with key id {sealed}: "
                         "the record was deleted (tampering); refusing to re-initialise it unencrypted; set the "
                         "backup key the backups were made with")
    if rec is None:
        # backups of an opsctl from before the record: each id folder must hold opsctl's files
        foreign += sorted(f + "/" for f in folders if ID.fullmatch(f) and not
                          any(n.rsplit("/", 1)[-1] in OWN_FILES for n in repo.names(f + "/")))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise UsageError(f"{repo.url} is not empty and is not an opsctl backup repository (no {NAME}): "
                             f"found {shown}; choose an empty location for backup.repository")
        # empty, or only opsctl backups from before the record existed: initialise it
        rec = RepositoryRecord(encrypted=key is not None, key_id=key.id if key else None,
                               created_at=dt.datetime.now(dt.timezone.utc))
        rec.seal(key)
        repo.put_bytes(NAME, rec.model_dump_json().encode())
        if not folders:  # an empty location: its catalog index starts empty (index.py)
            from opsctl.backup import index

            index.write(repo, {}, key, rec.encrypted)
        return rec, foreign
    if rec.encrypted and key is None:
        raise UsageError(f"repository {repo.url} is encrypted (key id {rec.key_id}): --no-encrypt is refused; "
                         "set the backup key")
    if not rec.encrypted and key is not None:
        raise UsageError(f"repository {repo.url} was initialised unencrypted and a backup key is set: opsctl "
                         "never stores plaintext when it has a key; use a new (empty) backup.repository for "
                         "encrypted backups")
    return rec, foreign


def describe(project, env) -> tuple[bool, str]:
    """(encrypted or not yet initialised, one line) about an environment's repository, for `doctor`."""
    from opsctl.backup.repository import for_environment

    repo = for_environment(project, env)
    rec = read(repo, getattr(repo, "key", None))
    if rec is None:
        return True, f"{repo.url}: not initialised yet (the first 'opsctl backup create' does it)"
    if rec.encrypted:
        return True, f"{repo.url}: encrypted, key id {rec.key_id}"
    return False, f"{repo.url}: NOT encrypted (manifests checksummed, not authenticated)"
