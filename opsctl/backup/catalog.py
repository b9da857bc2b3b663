"""The catalog is the repository itself: ids are folders, a manifest makes a backup complete.

Any machine listing the same bucket sees the same backups; nothing is cached locally. A
folder without a manifest is incomplete: still running (its in-progress marker names a
live process) or abandoned (the process is gone, or it started over a day ago), and only
abandoned ones are ever cleaned up.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass

from opsctl.backup import manifest as mf
from opsctl.backup.keys import BackupKey
from opsctl.backup.repository import NotFound, Repository
from opsctl.errors import OperationFailed, UsageError

STALE_AFTER = dt.timedelta(hours=24)
VERIFIED = "verified.json"  # written by a successful `backup verify`; prune keeps the newest one


@dataclass
class Entry:
    id: str
    status: str  # complete | running | incomplete | damaged
    manifest: mf.Manifest | None = None
    note: str = ""
    verified: bool = False

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def new_id(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(2).hex()


def id_time(backup_id: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def marker(now: dt.datetime) -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started_at": now.isoformat()}).encode()


def _abandoned(repo: Repository, backup_id: str) -> bool:
    try:
        info = json.loads(repo.get_bytes(f"{backup_id}/{mf.IN_PROGRESS}"))
    except (NotFound, ValueError):
        return True  # a running backup writes its marker before anything else
    if info.get("host") == socket.gethostname():
        import psutil

        return not psutil.pid_exists(int(info.get("pid", 0)))
    started = dt.datetime.fromisoformat(info["started_at"])
    return dt.datetime.now(dt.timezone.utc) - started > STALE_AFTER


def _unfinished(repo: Repository, backup_id: str) -> Entry:
    running = not _abandoned(repo, backup_id)
    return Entry(backup_id, "running" if running else "incomplete",
                 note="in progress" if running else "no manifest: interrupted, never restored")


def unfinished(repo: Repository) -> list[Entry]:
    """Folders without a manifest, from the listing alone: no manifest is read, so a
    repository of thousands of backups costs `backup create` one listing, not a read each."""
    names = repo.names()
    ids = sorted({n.split("/", 1)[0] for n in names if "/" in n})
    return [_unfinished(repo, i) for i in ids if f"{i}/{mf.NAME}" not in names]


def entries(repo: Repository) -> list[Entry]:
    """Every backup folder, oldest first."""
    names = repo.names()
    ids = sorted({n.split("/", 1)[0] for n in names if "/" in n})
    out = []
    for backup_id in ids:
        verified = f"{backup_id}/{VERIFIED}" in names
        if f"{backup_id}/{mf.NAME}" not in names:
            out.append(_unfinished(repo, backup_id))
            continue
        try:
            m = mf.parse(repo.get_bytes(f"{backup_id}/{mf.NAME}"), backup_id)
            out.append(Entry(backup_id, "complete", m, verified=verified))
        except NotFound:
            out.append(Entry(backup_id, "incomplete", note="manifest vanished while listing"))
        except OperationFailed as exc:
            out.append(Entry(backup_id, "damaged", note=str(exc)))
    return out


def mark_verified(repo: Repository, backup_id: str, restore_tested: bool) -> None:
    doc = {"verified_at": dt.datetime.now(dt.timezone.utc).isoformat(), "restore_tested": restore_tested}
    repo.put_bytes(f"{backup_id}/{VERIFIED}", json.dumps(doc).encode())


def load(repo: Repository, backup_id: str, key: BackupKey | None) -> mf.Manifest:
    """The authenticated manifest of one complete backup, or one clear error."""
    try:
        data = repo.get_bytes(f"{backup_id}/{mf.NAME}")
    except NotFound:
        if backup_id in repo.ids():
            raise OperationFailed(f"backup {backup_id} has no manifest: it is incomplete and is never "
                                  "restored; 'opsctl backup prune' cleans it up") from None
        raise UsageError(f"no backup '{backup_id}' in {repo.url}; 'opsctl backup list' shows the ids") from None
    manifest = mf.parse(data, backup_id)
    if manifest.key_id and key is None:
        raise UsageError(f"backup {backup_id} is encrypted (key id {manifest.key_id}); set the backup key")
    if manifest.key_id and key is not None and key.id != manifest.key_id:
        raise UsageError(f"wrong backup key: backup {backup_id} was encrypted with key id {manifest.key_id}, "
                         f"the key given has id {key.id}; set the key it was made with")
    mf.authenticate(manifest, key)
    return manifest


def resolve(repo: Repository, backup_id: str | None, date: str | None, latest: bool,
            needs: list[str] | None = None) -> str:
    """Pick a backup by id, by day (the newest complete one that day, UTC) or the newest."""
    if sum(x is not None and x is not False for x in (backup_id, date, latest)) != 1:
        raise UsageError("give exactly one of --id ID, --date YYYY-MM-DD or --latest")
    if backup_id:
        return backup_id
    done = [e for e in entries(repo) if e.complete
            and (not needs or set(needs) <= set(e.manifest.components))]
    if date is not None:
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            raise UsageError(f"--date '{date}' is not a date; use YYYY-MM-DD") from None
        done = [e for e in done if e.manifest.created_at.astimezone(dt.timezone.utc).date() == day]
        if not done:
            raise UsageError(f"no complete backup on {day.isoformat()} (UTC) in {repo.url}; "
                             "'opsctl backup list' shows the dates that have one")
    if not done:
        raise UsageError(f"no complete backup in {repo.url}; create one with 'opsctl backup create'")
    return done[-1].id


def rows(repo: Repository) -> list[dict]:
    """The catalog as plain rows, for `backup list` and anything else that shows it."""
    out = []
    for e in entries(repo):
        m = e.manifest
        out.append({"id": e.id, "status": e.status, "verified": e.verified, "note": e.note,
                    "created_at": m.created_at if m else id_time(e.id),
                    "components": m.components if m else [], "label": m.label if m else None,
                    "raw_bytes": m.raw_bytes if m else None, "stored_bytes": m.stored_bytes if m else None,
                    "encrypted": bool(m and m.key_id), "key_id": m.key_id if m else None})
    return out
