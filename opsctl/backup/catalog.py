"""The catalog is the repository itself: ids are folders, a manifest makes a backup complete.

Any machine listing the same bucket sees the same backups; nothing is cached locally. A
folder without a manifest is incomplete: still running (its in-progress marker names a
live process) or abandoned (the process is gone, or it started over a day ago), and only
abandoned ones are ever cleaned up. Only folders named like a backup id that hold opsctl's
start record or a manifest are opsctl's (record.layout); everything else is foreign,
reported and never touched.

Trust: in an encrypted repository (record.py) a manifest counts only when it carries a
valid MAC under the repository's key; one that does not is `untrusted`: listed as such,
failing verify, never restored, never removed by prune. The verdict of `backup verify`
is kept beside the manifest (`verified.json` or `verify-failed.json`, MAC'd like it), so
a backup that failed verify is `damaged` for list, restore --latest/--date and prune.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import socket
from dataclasses import dataclass, field

from opsctl.backup import manifest as mf
from opsctl.backup import record
from opsctl.backup.crypto import IntegrityError
from opsctl.backup.keys import BackupKey
from opsctl.backup.repository import NotFound, Repository
from opsctl.errors import OperationFailed, UsageError

STALE_AFTER = dt.timedelta(hours=24)
VERIFIED = "verified.json"  # written by a successful `backup verify`; prune keeps the newest one
FAILED = "verify-failed.json"  # written by a failed `backup verify`: the backup is damaged


@dataclass
class Entry:
    id: str
    status: str  # complete | running | incomplete | damaged | untrusted
    manifest: mf.Manifest | None = None
    note: str = ""
    verified: bool = False

    @property
    def complete(self) -> bool:
        return self.status == "complete"


@dataclass
class Scan:
    entries: list[Entry]
    foreign: list[str] = field(default_factory=list)
    record: record.RepositoryRecord | None = None
    authenticated: bool = True  # False: encrypted repository read without its key

    @property
    def encrypted(self) -> bool | None:
        return self.record.encrypted if self.record else None


def new_id(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(2).hex()


def id_time(backup_id: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def marker(now: dt.datetime, done: bool = False) -> bytes:
    """opsctl's start record of a backup folder; `done` once its manifest is written."""
    doc = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now.isoformat()}
    return json.dumps({**doc, "done": True} if done else doc).encode()


def _abandoned(repo: Repository, backup_id: str) -> bool:
    try:
        info = json.loads(repo.get_bytes(f"{backup_id}/{mf.IN_PROGRESS}"))
        if info.get("done") or info.get("deleting"):
            return True  # its process finished (or a prune began deleting it)
        if info.get("host") == socket.gethostname():
            import psutil

            return not psutil.pid_exists(int(info.get("pid", 0)))
        started = dt.datetime.fromisoformat(info["started_at"])
    except (NotFound, ValueError, KeyError, TypeError):
        return True  # its start record vanished or is unreadable: nothing runs there
    return dt.datetime.now(dt.timezone.utc) - started > STALE_AFTER


def _unfinished(repo: Repository, backup_id: str) -> Entry:
    running = not _abandoned(repo, backup_id)
    return Entry(backup_id, "running" if running else "incomplete",
                 note="in progress" if running else "no manifest: interrupted, never restored")


def unfinished(repo: Repository) -> tuple[list[Entry], list[str]]:
    """(opsctl folders without a manifest, foreign entries), from the listing alone: no
    manifest is read, so thousands of backups cost `backup create` one listing."""
    ours, foreign = record.layout(repo.names())
    return [_unfinished(repo, i) for i, files in sorted(ours.items()) if mf.NAME not in files], foreign


def _key(repo: Repository, key: BackupKey | None | bool) -> BackupKey | None:
    return getattr(repo, "key", None) if key is False else key


def trust(manifest: mf.Manifest, rec: record.RepositoryRecord | None, key: BackupKey | None) -> None:
    """Raise IntegrityError unless `manifest` is one this repository's writer sealed.

    Encrypted repository (or, without a record, any repository read with a key): the
    manifest must name the key and carry its HMAC. Unencrypted: it must not claim a key,
    and its SHA-256 must match (damage, not forgery: say so in `list` and `doctor`).
    """
    encrypted = rec.encrypted if rec is not None else (key is not None or manifest.key_id is not None)
    if encrypted:
        want = rec.key_id if rec is not None else (key.id if key else manifest.key_id)
        if manifest.key_id is None or manifest.key_id != want:
            raise IntegrityError(f"backup {manifest.id} is not sealed by this repository's key "
                                 f"(key id {manifest.key_id}, the repository's is {want}): untrusted, never restored")
        if key is None:
            return  # can't check the MAC without the key: load() refuses to restore without it
    elif manifest.key_id is not None:
        raise IntegrityError(f"backup {manifest.id} claims key id {manifest.key_id} in an unencrypted repository: "
                             "untrusted, never restored")
    mf.authenticate(manifest, key if encrypted else None)


def _verdict(repo: Repository, backup_id: str, name: str, key: BackupKey | None,
             rec: record.RepositoryRecord | None) -> dict | None:
    """A verdict document, or None when absent or (encrypted repository) not sealed by the key."""
    try:
        doc = json.loads(repo.get_bytes(f"{backup_id}/{name}"))
    except (NotFound, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("id") not in (None, backup_id):
        return None
    if rec is not None and rec.encrypted:
        if key is None:
            return doc
        mac = doc.pop("mac", None)
        if not mac or not hmac.compare_digest(mac, key.mac(_canonical(doc))):
            return None
    return doc


def _canonical(doc: dict) -> bytes:
    return b"opsctl-verdict\0" + json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def scan(repo: Repository, key: BackupKey | None | bool = False) -> Scan:
    """Every opsctl backup folder, oldest first, each manifest checked against the
    repository's record and key (`key` False: the key the repository was opened with)."""
    key = _key(repo, key)
    rec = record.read(repo, key)
    names = repo.names()
    ours, foreign = record.layout(names)
    out = []
    for backup_id in sorted(ours):
        files = ours[backup_id]
        if mf.NAME not in files:
            out.append(_unfinished(repo, backup_id))
            continue
        try:
            m = mf.parse(repo.get_bytes(f"{backup_id}/{mf.NAME}"), backup_id)
        except NotFound:
            out.append(Entry(backup_id, "incomplete", note="manifest vanished while listing"))
            continue
        except OperationFailed as exc:
            out.append(Entry(backup_id, "damaged", note=str(exc)))
            continue
        try:
            trust(m, rec, key)
        except IntegrityError as exc:
            out.append(Entry(backup_id, "untrusted", m, note=str(exc)))
            continue
        if FAILED in files and (doc := _verdict(repo, backup_id, FAILED, key, rec)) is not None:
            out.append(Entry(backup_id, "damaged", m, note=f"failed verify at {doc.get('at', '?')}: {doc.get('reason', '')}"))
            continue
        out.append(Entry(backup_id, "complete", m, verified=VERIFIED in files))
    authenticated = not (rec is not None and rec.encrypted and key is None)
    return Scan(out, foreign, rec, authenticated)


def entries(repo: Repository, key: BackupKey | None | bool = False) -> list[Entry]:
    """Every backup folder, oldest first."""
    return scan(repo, key).entries


def mark_verified(repo: Repository, backup_id: str, restore_tested: bool, key: BackupKey | None = None) -> None:
    _write_verdict(repo, backup_id, VERIFIED, {"ok": True, "restore_tested": restore_tested}, key)
    repo.delete_prefix(f"{backup_id}/{FAILED}")


def mark_failed(repo: Repository, backup_id: str, reason: str, key: BackupKey | None = None) -> None:
    """Record a failed verify in the repository: the backup is damaged from now on."""
    from opsctl.redact import credentials

    _write_verdict(repo, backup_id, FAILED, {"ok": False, "reason": credentials(reason)[:500]}, key)
    repo.delete_prefix(f"{backup_id}/{VERIFIED}")


def _write_verdict(repo: Repository, backup_id: str, name: str, doc: dict, key: BackupKey | None) -> None:
    doc = {"id": backup_id, "at": dt.datetime.now(dt.timezone.utc).isoformat(), **doc}
    if key is not None:
        doc["mac"] = key.mac(_canonical(doc))
    repo.put_bytes(f"{backup_id}/{name}", json.dumps(doc).encode())


def load(repo: Repository, backup_id: str, key: BackupKey | None) -> mf.Manifest:
    """The authenticated manifest of one complete backup, or one clear error."""
    record.check_id(backup_id)
    rec = record.read(repo, key)
    try:
        data = repo.get_bytes(f"{backup_id}/{mf.NAME}")
    except NotFound:
        if repo.names(f"{backup_id}/"):
            raise OperationFailed(f"backup {backup_id} has no manifest: it is incomplete and is never "
                                  "restored; 'opsctl backup prune' cleans it up") from None
        raise UsageError(f"no backup '{backup_id}' in {repo.url}; 'opsctl backup list' shows the ids") from None
    manifest = mf.parse(data, backup_id)
    if manifest.id != backup_id:
        raise IntegrityError(f"the manifest in folder {backup_id} is that of backup {manifest.id}: untrusted, "
                             "never restored")
    encrypted = rec.encrypted if rec is not None else manifest.key_id is not None
    if encrypted and key is None:
        raise UsageError(f"backup {backup_id} is in an encrypted repository (key id "
                         f"{rec.key_id if rec else manifest.key_id}); set the backup key")
    if manifest.key_id and key is not None and key.id != manifest.key_id and (rec is None or rec.key_id == manifest.key_id):
        raise UsageError(f"wrong backup key: backup {backup_id} was encrypted with key id {manifest.key_id}, "
                         f"the key given has id {key.id}; set the key it was made with")
    if rec is not None and not rec.encrypted and key is not None:
        raise UsageError(f"repository {repo.url} is recorded as unencrypted but a backup key is set: if it was "
                         "made with --no-encrypt, unset the key for this command; otherwise its record was "
                         "replaced and nothing in it can be trusted")
    trust(manifest, rec, key)
    return manifest


def resolve(repo: Repository, backup_id: str | None, date: str | None, latest: bool,
            needs: list[str] | None = None, skipped: list[str] | None = None) -> str:
    """Pick a backup by id, by day (the newest complete one that day, UTC) or the newest.

    Damaged (failed verify) and untrusted backups are never picked; their ids are added
    to `skipped` when they are newer than the pick, so the caller can say so."""
    if sum(x is not None and x is not False for x in (backup_id, date, latest)) != 1:
        raise UsageError("give exactly one of --id ID, --date YYYY-MM-DD or --latest")
    if backup_id is not None:  # "" is an id too, and not a valid one: never "the latest"
        return record.check_id(backup_id)
    all_ = entries(repo)
    if date is not None:
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            raise UsageError(f"--date '{date}' is not a date; use YYYY-MM-DD") from None
        all_ = [e for e in all_ if (id_time(e.id) or dt.datetime.min.replace(tzinfo=dt.timezone.utc)).date() == day
                or (e.manifest and e.manifest.created_at.astimezone(dt.timezone.utc).date() == day)]
    usable = [e for e in all_ if e.status in ("complete", "damaged", "untrusted") and e.manifest is not None
              and (not needs or set(needs) <= set(e.manifest.components))]
    done = [e for e in usable if e.complete]
    if skipped is not None:
        newest = done[-1].id if done else ""
        skipped += [f"{e.id} ({e.status})" for e in usable if not e.complete and e.id > newest]
    if not done:
        where = f"on {day.isoformat()} (UTC) " if date is not None else ""
        also = f" (skipped: {', '.join(skipped)})" if skipped else ""
        raise UsageError(f"no complete backup {where}in {repo.url}{also}; 'opsctl backup list' shows the backups"
                         + ("" if date is not None else " and 'opsctl backup create' makes one"))
    return done[-1].id


def rows(repo: Repository) -> dict:
    """The catalog as plain rows, for `backup list` and anything else that shows it."""
    s = scan(repo)
    out = []
    for e in s.entries:
        m = e.manifest
        out.append({"id": e.id, "status": e.status, "verified": e.verified, "note": e.note,
                    "created_at": m.created_at if m else id_time(e.id),
                    "components": m.components if m else [], "label": m.label if m else None,
                    "raw_bytes": m.raw_bytes if m else None, "stored_bytes": m.stored_bytes if m else None,
                    "encrypted": bool(m and m.key_id), "key_id": m.key_id if m else None})
    return {"repository": repo.url, "initialised": s.record is not None,
            "encrypted": s.encrypted, "key_id": s.record.key_id if s.record else None,
            "authenticated": s.authenticated, "foreign": s.foreign, "backups": out}
