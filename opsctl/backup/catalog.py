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
    manifest: mf.Manifest | None = None  # read when the index did not have it
    note: str = ""
    verified: bool = False
    summary: dict | None = None  # index.summary() of the manifest, from the index or the manifest

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def _time(self, field: str) -> dt.datetime | None:
        if self.summary is None:
            return None
        return dt.datetime.fromisoformat(self.summary[field])

    @property
    def created_at(self) -> dt.datetime | None:
        return self._time("created_at")

    @property
    def finished_at(self) -> dt.datetime | None:
        return self._time("finished_at")

    @property
    def components(self) -> list[str]:
        return list(self.summary["components"]) if self.summary else []


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


def scan(repo: Repository, key: BackupKey | None | bool = False, pick=None) -> Scan:
    """Every opsctl backup folder, oldest first, each manifest checked against the
    repository's record and key (`key` False: the key the repository was opened with).

    One listing (paged, no object read per backup) plus the index (index.py): manifests are
    read only for complete folders the index does not hold, and the index is rewritten
    when it was missing, forged or stale (and the key to seal it is at hand)."""
    from opsctl.backup import index

    key = _key(repo, key)
    rec = record.read(repo, key)
    encrypted = rec.encrypted if rec is not None else key is not None
    idx = index.read(repo, key, encrypted) if rec is not None else None
    if pick is None:
        ours, foreign = record.layout(repo.names())  # one paged listing of everything
    else:  # only the folders `pick` chooses among the top-level ones: a listing each
        folders, files = repo.folders()
        ids = sorted(f for f in folders if record.ID.fullmatch(f))
        names = {n: 0 for n in files}
        for f in folders:
            if not record.ID.fullmatch(f) and f not in record.OWN_AREAS:
                names[f + "/"] = 0
        for backup_id in pick(ids):
            names.update(repo.names(f"{backup_id}/") or {f"{backup_id}/": 0})
        ours, foreign = record.layout(names)
    out = []
    fresh: dict[str, dict] = {}
    for backup_id in sorted(ours):
        files = ours[backup_id]
        if mf.NAME not in files:
            out.append(_unfinished(repo, backup_id))
            continue
        m = None
        if idx is not None and backup_id in idx:
            summary = idx[backup_id]
        else:
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
                out.append(Entry(backup_id, "untrusted", m, note=str(exc), summary=index.summary(m)))
                continue
            summary = index.summary(m)
        fresh[backup_id] = summary
        if FAILED in files and (doc := _verdict(repo, backup_id, FAILED, key, rec)) is not None:
            out.append(Entry(backup_id, "damaged", m, summary=summary,
                             note=f"failed verify at {doc.get('at', '?')}: {doc.get('reason', '')}"))
            continue
        out.append(Entry(backup_id, "complete", m, verified=VERIFIED in files, summary=summary))
    if pick is None and rec is not None and (idx is None or set(idx) != set(fresh)):
        index.write(repo, fresh, key, encrypted)  # rebuilt from the manifests (no-op without the key)
    # ids made within one second sort by their random part: order by creation time first
    out.sort(key=lambda e: (e.created_at or id_time(e.id) or dt.datetime.min.replace(tzinfo=dt.timezone.utc), e.id))
    authenticated = not (rec is not None and rec.encrypted and key is None)
    return Scan(out, foreign, rec, authenticated)


def newest_complete(repo: Repository, key: BackupKey | None | bool = False) -> tuple[str, dt.datetime] | None:
    """(id, finished_at) of the newest complete backup in constant time: the index and one
    HEAD-like read of that backup's manifest; a full scan only when the index is missing."""
    from opsctl.backup import index

    key = _key(repo, key)
    rec = record.read(repo, key)
    idx = index.read(repo, key, rec.encrypted) if rec is not None else None
    if idx is None:
        done = [e for e in entries(repo, key) if e.complete]
        return (done[-1].id, max(e.finished_at for e in done)) if done else None
    for backup_id in sorted(idx, key=lambda i: (idx[i]["finished_at"], i), reverse=True):
        files = repo.names(f"{backup_id}/")
        if f"{backup_id}/{mf.NAME}" not in files:  # a deleted one drops out
            continue
        if f"{backup_id}/{FAILED}" in files and _verdict(repo, backup_id, FAILED, key, rec) is not None:
            continue  # damaged (a failed verify is recorded): not a complete backup
        return backup_id, dt.datetime.fromisoformat(idx[backup_id]["finished_at"])
    return None


def failed_verdict(repo: Repository, backup_id: str, key: BackupKey | None | bool = False) -> dict | None:
    """The failed verify recorded for one backup (checked as `scan` checks it), or None."""
    key = _key(repo, key)
    return _verdict(repo, backup_id, FAILED, key, record.read(repo, key))


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
        all_ = [e for e in all_ if e.created_at and e.created_at.astimezone(dt.timezone.utc).date() == day]
    usable = [e for e in all_ if e.status in ("complete", "damaged", "untrusted") and e.summary is not None
              and (not needs or set(needs) <= set(e.components))]
    done = [e for e in usable if e.complete]
    if skipped is not None:  # entries are in creation order: what comes after the pick was passed over
        after = usable[usable.index(done[-1]) + 1:] if done else usable
        skipped += [f"{e.id} ({e.status})" for e in after]
    if not done:
        where = f"on {day.isoformat()} (UTC) " if date is not None else ""
        also = f" (skipped: {', '.join(skipped)})" if skipped else ""
        raise UsageError(f"no complete backup {where}in {repo.url}{also}; 'opsctl backup list' shows the backups"
                         + ("" if date is not None else " and 'opsctl backup create' makes one"))
    return done[-1].id


def rows(repo: Repository, limit: int | None = None, since: dt.datetime | None = None) -> dict:
    """The catalog as plain rows, for `backup list` and anything else that shows it: the
    newest `limit` ones, created at or after `since` (oldest first)."""
    def pick(ids: list[str]) -> list[str]:
        ids = [i for i in ids if since is None or (id_time(i) or since) >= since]
        return ids[-limit:] if limit else []

    s = scan(repo, pick=pick if limit is not None else None)
    chosen = [e for e in s.entries if since is None or (e.created_at or id_time(e.id) or since) >= since]
    if limit is not None:
        chosen = chosen[-limit:] if limit else []
    out = []
    for e in chosen:
        m = e.summary
        out.append({"id": e.id, "status": e.status, "verified": e.verified, "note": e.note,
                    "created_at": e.created_at if m else id_time(e.id),
                    "components": e.components, "label": m["label"] if m else None,
                    "raw_bytes": m["raw_bytes"] if m else None, "stored_bytes": m["stored_bytes"] if m else None,
                    "encrypted": bool(m and m["key_id"]), "key_id": m["key_id"] if m else None})
    return {"repository": repo.url, "initialised": s.record is not None,
            "encrypted": s.encrypted, "key_id": s.record.key_id if s.record else None,
            "authenticated": s.authenticated, "foreign": s.foreign, "total": len(s.entries), "backups": out}
