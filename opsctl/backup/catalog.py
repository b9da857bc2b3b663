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
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Callable

from opsctl.backup import manifest as mf
from opsctl.backup import record
from opsctl.backup.crypto import IntegrityError
from opsctl.backup.keys import BackupKey
from opsctl.backup.repository import NotFound, Repository
from opsctl.errors import OperationFailed, UsageError
from opsctl.local import pidstart

log = logging.getLogger(__name__)

STALE_AFTER = dt.timedelta(hours=24)
VERIFIED = "verified.json"  # written by a successful `backup verify`; prune keeps the newest one
FAILED = "verify-failed.json"  # written by a failed `backup verify`: the backup is damaged


@dataclass
class Entry:
    """One backup folder as the catalog sees it; `summary` is the index's view of its
    manifest (times, components, sizes, key id, label, verdict)."""
    id: str
    status: str  # complete | running | incomplete | damaged | untrusted
    manifest: mf.Manifest | None = None  # read when the index did not have it
    note: str = ""
    verified: bool = False
    summary: dict | None = None  # index.summary() of the manifest, from the index or the manifest

    @property
    def complete(self) -> bool:
        """Authenticated, whole, and not damaged: the only status restored and retained."""
        return self.status == "complete"

    def _time(self, field: str) -> dt.datetime | None:
        if self.summary is None:
            return None
        return dt.datetime.fromisoformat(self.summary[field])

    @property
    def created_at(self) -> dt.datetime | None:
        """When the backup started (UTC), None without a summary."""
        return self._time("created_at")

    @property
    def finished_at(self) -> dt.datetime | None:
        """When its manifest was written (UTC), None without a summary."""
        return self._time("finished_at")

    @property
    def components(self) -> list[str]:
        """What it holds (Manifest.components), [] without a summary."""
        return list(self.summary["components"]) if self.summary else []


@dataclass
class Scan:
    """The catalog: entries oldest first, foreign names, the repository record."""
    entries: list[Entry]
    foreign: list[str] = field(default_factory=list)
    record: record.RepositoryRecord | None = None
    authenticated: bool = True  # False: encrypted repository read without its key
    files: dict[str, set[str]] = field(default_factory=dict)  # id -> its objects' names, from the listing

    @property
    def encrypted(self) -> bool | None:
        """The record's answer; None before the repository was initialised."""
        return self.record.encrypted if self.record else None


def new_id(now: dt.datetime) -> str:
    """A backup id: `now` as YYYYMMDDTHHMMSSZ (UTC) and 4 random hex digits."""
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(2).hex()


# how far a backup's time may run ahead of this host's clock before it is said to be wrong:
# clocks kept by NTP agree within well under a second; a few minutes covers a drifting VM
CLOCK_SKEW = dt.timedelta(minutes=5)


def ahead_of_clock(when: dt.datetime | None, now: dt.datetime | None = None) -> dt.timedelta | None:
    """How far `when` (a backup's time, from the clock of the host that made it) is after this
    host's clock (`now`), when by more than CLOCK_SKEW; else None. A backup made on a host
    whose clock ran ahead sorts after every later one (breaker 53 F5: health called it
    "-8760 h old", fresh, for a year, and `restore --latest` picked it over a newer one)."""
    if when is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    ahead = when.astimezone(dt.timezone.utc) - now
    return ahead if ahead > CLOCK_SKEW else None


def ahead_text(ahead: dt.timedelta) -> str:
    """A clock's lead for a person: '8760.0 h' or '42 min'."""
    minutes = ahead.total_seconds() / 60
    return f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes:.0f} min"


def id_time(backup_id: str) -> dt.datetime | None:
    """The UTC time an id was made at, None when it is not one of opsctl's ids."""
    try:
        return dt.datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def marker(now: dt.datetime, done: bool = False) -> bytes:
    """opsctl's start record of a backup folder; `done` once its manifest is written. It names
    the process by pid and start time (`pidstart.identity`): a pid alone, reused by another
    process, kept an interrupted backup `running` for good (breaker 56 F6)."""
    doc = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now.isoformat(),
           "start": pidstart.identity(os.getpid())}
    return json.dumps({**doc, "done": True} if done else doc).encode()


def _abandoned(repo: Repository, backup_id: str) -> bool:
    try:
        info = json.loads(repo.get_bytes(f"{backup_id}/{mf.IN_PROGRESS}"))
        if info.get("done") or info.get("deleting"):
            return True  # its process finished (or a prune began deleting it)
        if info.get("host") == socket.gethostname():
            import psutil

            pid = int(info.get("pid", 0))
            if info.get("start") and pidstart.identity(pid) not in (None, info["start"]):
                return True  # that pid is another process's now
            return not psutil.pid_exists(pid)
        started = dt.datetime.fromisoformat(info["started_at"])
    except (NotFound, ValueError, KeyError, TypeError, OperationFailed):
        return True  # its start record vanished or is unreadable (or a link): nothing runs there
    return dt.datetime.now(dt.timezone.utc) - started > STALE_AFTER


def unfinished_entry(repo: Repository, backup_id: str) -> Entry:
    """The entry of an opsctl folder without a manifest: `running` while its start record
    names a live process (or one elsewhere started under 24 hours ago), else `incomplete`."""
    running = not _abandoned(repo, backup_id)
    return Entry(backup_id, "running" if running else "incomplete",
                 note="in progress" if running else "no manifest: interrupted, never restored")


def unfinished(repo: Repository) -> tuple[list[Entry], list[str]]:
    """(opsctl folders without a manifest, foreign entries), from the listing alone: no
    manifest is read, so thousands of backups cost `backup create` one listing."""
    ours, foreign = record.layout(repo.names())
    return [unfinished_entry(repo, i) for i, files in sorted(ours.items()) if mf.NAME not in files], foreign


def _key(repo: Repository, key: BackupKey | None | bool) -> BackupKey | None:
    return getattr(repo, "key", None) if key is False else key


def trust(manifest: mf.Manifest, rec: record.RepositoryRecord | None, key: BackupKey | None,
          backup_id: str | None = None) -> None:
    """Raise IntegrityError unless `manifest` is one this repository's writer sealed, for
    the folder `backup_id` (the MAC covers the id: a genuine manifest copied into another
    folder, a replay, is refused).

    Encrypted repository (or, without a record, any repository read with a key): the
    manifest must name the key and carry its HMAC. Unencrypted: it must not claim a key,
    and its SHA-256 must match (damage, not forgery: say so in `list` and `doctor`).
    """
    if backup_id is not None and manifest.id != backup_id:
        raise IntegrityError(f"the manifest in folder {backup_id} is that of backup {manifest.id}: untrusted, "
                             "never restored")
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
    """A verdict document, or None when absent or not sealed for this backup: its `id`
    must be `backup_id` and its `mac` the HMAC under the key (encrypted repository) or the
    SHA-256 (unencrypted) of the rest. Read without the key, an encrypted repository's
    verdict can't be checked: returned for display only (Scan.authenticated is False)."""
    try:
        doc = json.loads(repo.get_bytes(f"{backup_id}/{name}"))
    except (NotFound, ValueError, OperationFailed):
        return None
    if not isinstance(doc, dict) or doc.get("id") != backup_id:
        return None
    encrypted = rec.encrypted if rec is not None else key is not None
    if encrypted and key is None:
        return doc
    mac = doc.pop("mac", None)
    want = key.mac(_canonical(doc)) if encrypted else "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    if not isinstance(mac, str) or not hmac.compare_digest(mac, want):
        return None
    return doc


def _canonical(doc: dict) -> bytes:
    return b"opsctl-verdict\0" + json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


VERDICTS = (mf.NAME, VERIFIED, FAILED)


def _tags(repo: Repository, backup_id: str, files: set[str]) -> dict[str, str | None]:
    """The listing's stamps of a backup's manifest and verdicts (Repository.tags)."""
    return {f: repo.tag(f"{backup_id}/{f}") for f in VERDICTS if f in files}


def _stamps(repo: Repository, backup_id: str, names=VERDICTS) -> dict[str, str]:
    """The stamps of a backup's manifest and verdicts read object by object (Repository.stamp),
    absent ones left out: no listing, whose cost grows with the repository on some S3 servers."""
    found = {f: repo.stamp(f"{backup_id}/{f}") for f in names}
    return {f: tag for f, tag in found.items() if tag is not None}


def indexed(repo: Repository, backup_id: str, m: mf.Manifest) -> dict:
    """The index summary of a backup just written (its manifest checked by its writer),
    with the stamp of its manifest (a new backup has no verdict yet; one written later
    changes the stamps `scan` compares, so the backup is read and checked again)."""
    from opsctl.backup import index

    return {**index.summary(m), "tags": _stamps(repo, backup_id, (mf.NAME,))}


def _cached(idx: dict | None, backup_id: str, tags: dict) -> dict | None:
    """The index's summary when the manifest and verdicts it was made from are unchanged."""
    summary = (idx or {}).get(backup_id)
    if not isinstance(summary, dict) or None in tags.values() or summary.get("tags") != tags:
        return None
    return summary


def _check(repo: Repository, backup_id: str, files: set[str], tags: dict, rec, key) -> tuple[Entry, dict | None]:
    """(entry, summary to index or None) of a folder holding a manifest, read and checked."""
    from opsctl.backup import index

    m = None
    try:
        m = mf.parse(repo.get_bytes(f"{backup_id}/{mf.NAME}"), backup_id)
        trust(m, rec, key, backup_id)
    except NotFound:
        return Entry(backup_id, "incomplete", note="manifest vanished while listing"), None
    except OperationFailed as exc:  # unparseable, unauthenticated, a link, another folder's: not ours to judge
        return Entry(backup_id, "untrusted", m, note=str(exc),
                     summary=index.summary(m) if m is not None and m.id == backup_id else None), None
    failed = _verdict(repo, backup_id, FAILED, key, rec) if FAILED in files else None
    ok = _verdict(repo, backup_id, VERIFIED, key, rec) if VERIFIED in files else None
    failed = {"at": failed.get("at", "?"), "reason": str(failed.get("reason", ""))} if failed else None
    summary = {**index.summary(m, verified=bool(ok and ok.get("ok") is True), failed=failed), "tags": tags}
    return _entry(backup_id, summary, m), summary


def _entry(backup_id: str, summary: dict, m: mf.Manifest | None = None) -> Entry:
    failed = summary.get("failed")
    if failed:
        return Entry(backup_id, "damaged", m, summary=summary,
                     note=f"failed verify at {failed.get('at', '?')}: {failed.get('reason', '')}")
    return Entry(backup_id, "complete", m, verified=bool(summary.get("verified")), summary=summary)


def scan(repo: Repository, key: BackupKey | None | bool = False, pick=None) -> Scan:
    """Every opsctl backup folder, oldest first, each manifest checked against the
    repository's record and key (`key` False: the key the repository was opened with).

    One listing (paged, no object read per backup) plus the index (index.py): the index's
    summary of a backup is used only while the listing's stamps (ETag or size/inode/ctime,
    Repository.tags) of its manifest and verdicts are those the index recorded when it read
    and checked them; any other folder's manifest is read and checked (trust: MAC under the
    key, id of the folder), and the index is rewritten when it was missing, forged or stale
    (and the key to seal it is at hand). Unreadable or unauthenticated manifests are
    `untrusted`; `damaged` is an authenticated backup whose failed verify is recorded."""
    from opsctl.backup import index

    key = _key(repo, key)
    rec = record.read(repo, key)
    encrypted = rec.encrypted if rec is not None else key is not None
    idx = index.read(repo, key, encrypted) if rec is not None else None
    if pick is None:
        ours, foreign = record.layout(repo.names())  # one paged listing of everything
    else:  # only the folders `pick` chooses among the top-level ones (Repository.folder_names)
        folders, files = repo.folders()
        ids = sorted(f for f in folders if record.ID.fullmatch(f))
        names = {n: 0 for n in files}
        for f in folders:
            if not record.ID.fullmatch(f) and f not in record.OWN_AREAS:
                names[f + "/"] = 0
        chosen = pick(ids)
        found = repo.folder_names(chosen) if chosen else {}
        names.update(found)
        tops = {n.partition("/")[0] for n in found}
        names.update({f"{i}/": 0 for i in chosen if i not in tops})  # vanished since: layout decides
        ours, foreign = record.layout(names)
    out = []
    fresh: dict[str, dict] = {}
    for backup_id in sorted(ours):
        files = ours[backup_id]
        if mf.NAME not in files:
            out.append(unfinished_entry(repo, backup_id))
            continue
        tags = _tags(repo, backup_id, files)
        summary = _cached(idx, backup_id, tags)
        if summary is not None:
            entry = _entry(backup_id, summary)
        else:
            entry, summary = _check(repo, backup_id, files, tags, rec, key)
        out.append(entry)
        if summary is not None:
            fresh[backup_id] = summary
    if pick is None and rec is not None and idx != fresh:
        _cache(lambda: index.write(repo, fresh, key, encrypted))  # rebuilt from the manifests (no-op without the key)
    # ids made within one second sort by their random part: order by creation time first
    out.sort(key=lambda e: (e.created_at or id_time(e.id) or dt.datetime.min.replace(tzinfo=dt.timezone.utc), e.id))
    authenticated = not (rec is not None and rec.encrypted and key is None)
    return Scan(out, foreign, rec, authenticated, {i: set(f) for i, f in ours.items()})


def _cache(write) -> None:
    """Run an index write a read (`backup list`, the health check's backup age) makes: the
    index is a cache, so a repository that cannot take it (a full or read-only volume, a
    restore host's mount) is listed all the same, with a warning (breaker 33 B2)."""
    try:
        write()
    except OperationFailed as exc:
        log.warning("the catalog index was not updated (%s); the listing is complete without it", exc)


def newest_complete(repo: Repository, key: BackupKey | None | bool = False,
                    holding: Callable[[list[str]], bool] | None = None) -> tuple[str, dt.datetime] | None:
    """(id, finished_at) of the newest complete backup (whose components `holding` accepts,
    when given: the health check asks for the newest holding the database), at a cost that
    does not grow with the repository: the index is a cache, never the last word on what is newest.

    Backup ids sort by creation time, so after reading the index only the folders named
    after its newest id are listed (Repository.names_after: S3 StartAfter, one scandir on
    file://) and their manifests read and checked: a create killed before its index write,
    an entry lost by two concurrent index writes, or a replayed older index is found at a
    cost proportional to what the index misses, and the index is repaired when the key to
    seal it is at hand. An empty index means "list everything once", never "no backups".
    The index's own candidates count only while the stamps of their manifest and verdicts
    (Repository.stamp) are those it recorded; a full scan (which rebuilds the index) when
    the index is missing, invalid or does not match."""
    from opsctl.backup import index

    def wanted(components) -> bool:
        return holding is None or holding(list(components or []))

    def scanned() -> tuple[str, dt.datetime] | None:  # scan() rebuilds the index
        done = [e for e in entries(repo, key) if e.complete and wanted(e.components)]
        return (done[-1].id, max(e.finished_at for e in done)) if done else None

    key = _key(repo, key)
    rec = record.read(repo, key)
    idx = index.read(repo, key, rec.encrypted) if rec is not None else None
    if idx is None:
        return scanned()
    ids = [i for i in idx if record.ID.fullmatch(i)]
    ours, _ = record.layout(repo.names_after(max(ids, default="")))
    found: dict[str, dict] = {}
    best: tuple[dt.datetime, str] | None = None
    for backup_id in sorted(ours, reverse=True):
        files = ours[backup_id]
        if mf.NAME not in files:
            continue  # running or interrupted: never complete
        entry, summary = _check(repo, backup_id, files, _tags(repo, backup_id, files), rec, key)
        if summary is not None:
            found[backup_id] = summary
        if entry.complete and wanted(entry.components) and (best is None or (entry.finished_at, backup_id) > best):
            best = (entry.finished_at, backup_id)
    if found and (key is not None or not rec.encrypted):
        _cache(lambda: index.update(repo, key, rec.encrypted, found))  # repaired: the next answer reads nothing more
    for backup_id in sorted(ids, key=lambda i: (idx[i]["finished_at"], i), reverse=True):
        if not wanted(idx[backup_id].get("components")):
            continue  # holds other things (its stamps are checked only if it is the answer)
        tags = _stamps(repo, backup_id)  # a HEAD per object, no listing
        if mf.NAME not in tags:  # a deleted one drops out
            continue
        summary = _cached(idx, backup_id, tags)
        if summary is None:  # changed since it was indexed: check everything
            return scanned()
        if summary.get("failed"):
            continue  # damaged (a failed verify is recorded): not a complete backup
        when = dt.datetime.fromisoformat(summary["finished_at"])
        if best is None or (when, backup_id) > best:
            best = (when, backup_id)
        break
    return (best[1], best[0]) if best else None


def failed_verdict(repo: Repository, backup_id: str, key: BackupKey | None | bool = False) -> dict | None:
    """The failed verify recorded for one backup (checked as `scan` checks it), or None."""
    key = _key(repo, key)
    return _verdict(repo, backup_id, FAILED, key, record.read(repo, key))


def entries(repo: Repository, key: BackupKey | None | bool = False) -> list[Entry]:
    """Every backup folder, oldest first."""
    return scan(repo, key).entries


def mark_verified(repo: Repository, backup_id: str, restore_tested: bool, key: BackupKey | None = None) -> None:
    """Record a passed verify (`verified.json`, sealed for this id) and drop a failed one."""
    _write_verdict(repo, backup_id, VERIFIED, {"ok": True, "restore_tested": restore_tested}, key)
    repo.delete_prefix(f"{backup_id}/{FAILED}")
    _reindex(repo, backup_id, key)


def mark_failed(repo: Repository, backup_id: str, reason: str, key: BackupKey | None = None) -> None:
    """Record a failed verify in the repository: the backup is damaged from now on."""
    from opsctl.redact import credentials

    _write_verdict(repo, backup_id, FAILED, {"ok": False, "reason": credentials(reason)[:500]}, key)
    repo.delete_prefix(f"{backup_id}/{VERIFIED}")
    _reindex(repo, backup_id, key)


def _reindex(repo: Repository, backup_id: str, key: BackupKey | None) -> None:
    """After a verdict: the backup's index entry gets the verdict and the new stamps of its
    manifest and verdicts, so the index keeps answering for it (without this, every later
    health sweep and listing would find the stamps changed and read the repository whole)."""
    from opsctl.backup import index

    rec = record.read(repo, key)
    if rec is None or (rec.encrypted and key is None):
        return  # nothing to seal the index with: the next keyed scan updates it
    idx = index.read(repo, key, rec.encrypted)
    entry = (idx or {}).get(backup_id)
    if idx is not None and not isinstance(entry, dict):
        return  # not indexed (yet): the next scan adds it
    changes: dict[str, dict | None] = {}
    if idx is not None:
        tags = _stamps(repo, backup_id)
        ok = _verdict(repo, backup_id, VERIFIED, key, rec) if VERIFIED in tags else None
        failed = _verdict(repo, backup_id, FAILED, key, rec) if FAILED in tags else None
        changes[backup_id] = {**entry, "verified": bool(ok and ok.get("ok") is True), "tags": tags,
                              "failed": {"at": failed.get("at", "?"), "reason": str(failed.get("reason", ""))}
                              if failed else None}
    index.update(repo, key, rec.encrypted, changes)  # an invalid or missing index: rebuilt once


def gone_or_going(repo: Repository, backup_id: str) -> bool:
    """Whether backup `backup_id` was deleted, or a deletion of it has begun (retention.remove
    rewrites its start record as deleting first, then deletes the manifest)."""
    names = {n.split("/", 1)[1] for n in repo.names(f"{backup_id}/")}
    if mf.NAME not in names:
        return True
    if mf.IN_PROGRESS not in names:
        return False
    try:
        return bool(json.loads(repo.get_bytes(f"{backup_id}/{mf.IN_PROGRESS}")).get("deleting"))
    except (NotFound, ValueError, AttributeError):
        return False


def _write_verdict(repo: Repository, backup_id: str, name: str, doc: dict, key: BackupKey | None) -> None:
    if gone_or_going(repo, backup_id):  # a verdict written into its emptied folder made it "not opsctl's" for good
        raise OperationFailed(f"backup {backup_id} was deleted while it was verified")
    doc = {"id": backup_id, "at": dt.datetime.now(dt.timezone.utc).isoformat(), **doc}
    # sealed for this backup id: an HMAC under the key, else (unencrypted) a SHA-256 (_verdict)
    doc["mac"] = key.mac(_canonical(doc)) if key is not None else "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
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
                         "made without encryption, unset the key for this command; otherwise its record was "
                         "replaced and nothing in it can be trusted")
    trust(manifest, rec, key)
    return manifest


def resolve(repo: Repository, backup_id: str | None, date: str | None, latest: bool,
            needs: list[str] | None = None, skipped: list[str] | None = None,
            partial: list[str] | None = None, unless_none: bool = False) -> str:
    """Pick a backup by id, by day (the newest complete one that day, UTC) or the newest.

    With `needs` (components), by day or newest means the newest complete backup holding
    every one of them: an hourly Redis snapshot is never "the latest" of a restore that asks
    for the database (breaker 42 R4). Newer complete backups passed over for holding only
    part are added to `partial` as "ID (components)", so the caller can say why the pick is
    older; when none holds them all, the refusal names the newest and what it holds.
    `unless_none`: `needs` is dropped when no complete backup in the repository, any day,
    holds them (a repository of Redis snapshots alone: its newest is the latest).
    Damaged (failed verify) and untrusted backups are never picked; their ids are added
    to `skipped` when they are newer than the pick, so the caller can say so. A pick dated
    after this host's clock (ahead_of_clock) is refused: only --id chooses it."""
    if sum(x is not None and x is not False for x in (backup_id, date, latest)) != 1:
        raise UsageError("give exactly one of --id ID, --date YYYY-MM-DD or --latest")
    if backup_id is not None:  # "" is an id too, and not a valid one: never "the latest"
        return record.check_id(backup_id)
    all_ = entries(repo)
    if needs and unless_none and not any(e.complete and e.summary is not None and set(needs) <= set(e.components)
                                         for e in all_):
        needs = None
    if date is not None:
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            raise UsageError(f"--date '{date}' is not a date; use YYYY-MM-DD") from None
        all_ = [e for e in all_ if e.created_at and e.created_at.astimezone(dt.timezone.utc).date() == day]
    readable = [e for e in all_ if e.status in ("complete", "damaged", "untrusted") and e.summary is not None]
    usable = [e for e in readable if not needs or set(needs) <= set(e.components)]
    done = [e for e in usable if e.complete]
    if skipped is not None:  # entries are in creation order: what comes after the pick was passed over
        after = usable[usable.index(done[-1]) + 1:] if done else usable
        skipped += [f"{e.id} ({e.status})" for e in after]
    part = [e for e in readable if e.complete and e not in usable]
    newer_part = [e for e in part if not done or readable.index(e) > readable.index(done[-1])]
    if partial is not None:
        partial += [f"{e.id} ({', '.join(e.components)})" for e in newer_part]
    if not done:
        where = f"on {day.isoformat()} (UTC) " if date is not None else ""
        also = f" (skipped: {', '.join(skipped)})" if skipped else ""
        if part:  # complete backups there are, none holding what was asked
            newest = part[-1]
            raise UsageError(f"no complete backup {where}in {repo.url} holds {', '.join(needs or [])}{also}; the "
                             f"newest, {newest.id}, holds {', '.join(newest.components)}: restore that with "
                             f"--components {','.join(newest.components)}, or choose another with --id or --date")
        raise UsageError(f"no complete backup {where}in {repo.url}{also}; 'opsctl backup list' shows the backups"
                         + ("" if date is not None else " and 'opsctl backup create' makes one"))
    pick = done[-1]
    ahead = ahead_of_clock(pick.created_at or id_time(pick.id))
    if ahead is not None:  # it sorts after backups made later: which is newest can't be told
        raise UsageError(f"the newest complete backup {'that day ' if date is not None else ''}in {repo.url}, "
                         f"{pick.id}, is dated {ahead_text(ahead)} after this host's clock: the clock of the host that "
                         "made it (or this one) is wrong, so which backup is newest can't be told; nothing was "
                         "changed: choose one with --id ('opsctl backup list' shows them)")
    return pick.id


def rows(repo: Repository, limit: int | None = None, since: dt.datetime | None = None) -> dict:
    """The catalog as plain rows, for `backup list` and anything else that shows it: the
    newest `limit` ones, created at or after `since` (oldest first). "total" counts every
    entry created at or after `since`, not only the page shown (`limit` 0: none shown, the
    total still true)."""
    want = limit or 0
    seen: list[int] = []
    picked: list[str] = []

    def pick(ids: list[str]) -> list[str]:
        ids = [i for i in ids if since is None or (id_time(i) or since) >= since]
        seen[:] = [len(ids)]
        if not want:
            return []
        start = max(len(ids) - want, 0)
        while 0 < start < len(ids) and ids[start - 1][:16] == ids[start][:16]:
            start -= 1  # ids of one second sort by their random part: take the whole second
        picked[:] = ids[start:]
        return ids[start:]

    while True:  # id-shaped folders that are not backups (another tool's) take no place in the page
        s = scan(repo, pick=pick if limit is not None else None)
        chosen = [e for e in s.entries if since is None or (e.created_at or id_time(e.id) or since) >= since]
        if limit is None or len(chosen) >= limit or not seen or want >= seen[0]:
            break
        want *= 2
    # every matching entry: the page's own, plus the id-shaped folders left unread (those
    # read that turned out not to be backups, another tool's, are not counted)
    total = len(chosen) if limit is None else len(chosen) + max(seen[0] if seen else 0, 0) - len(picked)
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
            "authenticated": s.authenticated, "foreign": s.foreign, "total": total, "backups": out}


def listing(project, env, limit: int | None = None, since: dt.datetime | None = None) -> dict:
    """`backup list` of an environment: `rows` of its repository (newest `limit`, created at
    or after `since`), plus under "pitr" its point-in-time recoverable windows
    (opsctl.pitr.ops.windows: {sysid, windows, newest_restorable, base_backups, note}; on a
    kubernetes environment its RDS instance's, opsctl.pitr.rds.window) or None.
    `note` says why windows are not shown though the repository holds point-in-time data (it
    holds several clusters and none runs here, or its point-in-time part can't be read as
    opsctl's: a link where its folder belongs); else None."""
    from opsctl.backup.crypto import IntegrityError
    from opsctl.backup.repository import for_environment
    from opsctl.errors import UsageError
    from opsctl.output import to_jsonable
    from opsctl.pitr.ops import windows

    doc = rows(for_environment(project, env), limit, since)
    if env.platform == "kubernetes" and env.database.rds_instance:  # RDS keeps its own WAL (breaker 64 F12)
        from opsctl.pitr.rds import window

        doc["pitr"] = window(env)
        return doc
    try:
        rep = windows(project, env)
    except (UsageError, IntegrityError, OSError) as exc:
        # several clusters, or the point-in-time part tampered with (a linked `pitr` folder,
        # breaker 51 H4) or unreadable (breaker 52 K7): the list still lists the logical
        # backups, and says why no window shows
        note = str(exc) if not isinstance(exc, OSError) else (
            f"the point-in-time part of {env.backup.repository} can't be read "
            f"({exc.strerror or exc}: {exc.filename or 'pitr'}); give the user opsctl runs as access to it")
        doc["pitr"] = {"sysid": None, "windows": [], "newest_restorable": None, "base_backups": [],
                       "note": note}
        return doc
    doc["pitr"] = None if rep is None else to_jsonable(
        {"sysid": rep.sysid, "windows": rep.windows, "newest_restorable": rep.newest_restorable,
         "base_backups": rep.base_backups, "note": None})
    return doc
