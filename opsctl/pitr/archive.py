"""Continuous WAL archiving: PostgreSQL's `archive_command` fills a bounded local queue, and the
archiver drains it into the backup repository (pgBackRest's asynchronous archive-push).

Why two halves: `archive_command` runs inside PostgreSQL's archiver, which keeps every
finished segment in `pg_wal` until the command succeeds; a command that waited on a slow or
unreachable repository would fill `pg_wal` and stop the database. So the command only copies
the segment into a local folder (the queue: fsynced, renamed into place, a few milliseconds)
and returns. When the queue holds `queue` files already, it records the file as *dropped*
(a marker in `<queue>/.dropped/` holding the segment's first 40 bytes, its page header, which
names the cluster) and still returns success: the database keeps
running, and the gap is uploaded as a marker that `backup verify` names, with the newest
restorable time before it. It is a shell command (cp, sync, mv) because PostgreSQL runs it as
its own unprivileged user, who may not be able to run this project's Python.

The archiver (`python -m opsctl.pitr.archive`, supervised by `opsctl local up`) takes the
queue's files oldest first, compresses and seals each with the backup key exactly like every
other object (opsctl.backup.pipeline.pack), names it with its authentication tag
(layout.py), writes it, and only then removes it from the queue. A file already archived
with the same bytes (PostgreSQL repeats a file after a crash) is not written twice; one
archived with other bytes is a conflict (two servers of the cluster on one timeline): it
stays queued, the archiver logs an error and stops there, the health check is CRITICAL. A repository that is down
makes it retry with backoff; the queue absorbs the wait.

Each queued segment is filed under the cluster its own long page header names (xlp_sysid), not
the cluster of the data directory: after a lost data directory and `local up`, the old
cluster's queued WAL still goes to `pitr/<old sysid>/`; a history file (it names no cluster)
goes with the queued segments of its timeline. A segment whose header is not a WAL header for
its name, or a history file whose timeline's queued segments name two clusters, is moved to
`<queue>/.quarantine/` (with a `.reason`), never filed, and the health check is CRITICAL. An uploaded drop marker of the archiver's own cluster stays in
`<queue>/.gaps/` until a base backup starting after the segment exists: until then the health
check names the gap.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from opsctl.errors import OperationFailed
from opsctl.pitr import layout

log = logging.getLogger("opsctl.pitr.archive")
DROPPED = ".dropped"
# <queue>/.abandoned-timelines.json: timelines an undone in-place restore abandoned whose marker is
# not in the repository yet (opsctl.pitr.restore.record_abandoned); their queued histories wait
NOTES = ".abandoned-timelines.json"
CONFLICT = ".conflict"  # <queue>/.conflict/<file>: the reason a queued file conflicts with a stored one
QUARANTINE = ".quarantine"  # <queue>/.quarantine/<file> (+ <file>.reason): a header naming no cluster
GAPS = ".gaps"  # <queue>/.gaps/<file>: uploaded drop markers not yet covered by a base backup
# <queue>/.progress: touched by the archiver after each pass that reached its end and each file
# it stored; its age is how long the archiver has not moved (opsctl.pitr.local.stalled)
PROGRESS = ".progress"
# XLogLongPageHeaderData (PostgreSQL's xlog_internal.h), in the server's (native) byte order:
# xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len, padding, xlp_sysid, xlp_seg_size, xlp_xlog_blcksz
_LONG_HEADER = struct.Struct("=HHIQI4xQII")
_XLP_LONG_HEADER = 0x0002


class WalConflict(OperationFailed):
    """A queued WAL file whose name is already archived with other content."""


def header_sysid(head: bytes, name: str) -> str:
    """The system identifier in the long page header `head` (a segment's first 40 bytes) of WAL
    segment file `name` (24 hex digits, maybe `.partial`). ValueError saying why when `head` is
    not the header of that segment: too short, no long header flag, a segment or block size
    PostgreSQL can't have, a later timeline (an earlier one is the switch segment's copy of its
    parent's pages) or another position than the name's, identifier 0."""
    if len(head) < _LONG_HEADER.size:
        raise ValueError(f"{len(head)} bytes, shorter than a WAL long page header ({_LONG_HEADER.size})")
    _magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack(head[:_LONG_HEADER.size])
    if not info & _XLP_LONG_HEADER:
        raise ValueError("its first page has no long header (xlp_info lacks XLP_LONG_HEADER)")
    if not (1 << 20 <= seg_size <= 1 << 30) or seg_size & (seg_size - 1) or \
            not (1024 <= blcksz <= 65536) or blcksz & (blcksz - 1):
        raise ValueError(f"its header's segment size {seg_size} / block size {blcksz} are not PostgreSQL's")
    number = int(name[8:16], 16) * (0x1_0000_0000 // seg_size) + int(name[16:24], 16)
    # the segment holding a timeline switch is a copy of the parent timeline's up to the switch,
    # its first page still the parent's: an older timeline in the header is PostgreSQL's own
    if not 1 <= tli <= int(name[:8], 16) or pageaddr != number * seg_size:
        raise ValueError(f"its header is timeline {tli} at {layout.lsn_text(pageaddr)}, not the name's")
    if sysid == 0:
        raise ValueError("its header's system identifier is 0")
    return str(sysid)


DEFAULT_QUEUE = 64  # segments: 1 GiB of 16 MiB segments
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")


def archive_command(queue: Path, limit: int = DEFAULT_QUEUE) -> str:
    """The `archive_command` that queues `%p` as `<queue>/%f` (at most `limit` files queued).

    The segment is hard-linked into the queue (no copy: the server runs with wal_recycle=off,
    so a finished segment's file is never written again), or copied and fsynced when the
    queue is on another file system. Exit 0 means "PostgreSQL may remove the segment": after
    the queue entry is durable, or after a full queue recorded it as dropped. Non-zero (copy failed, e.g. disk full) makes
    PostgreSQL retry it, as for any archive_command. A name already queued is success only when
    the queued file holds the same bytes (`cmp`: PostgreSQL repeating a segment); another cluster's
    segment of that name (a lost data directory, `local up`'s new cluster restarting at segment 1
    while the repository is down) fails the command, so PostgreSQL keeps its segment and retries
    after the archiver has moved the old one out: success is never reported for bytes not queued
    (likewise a full queue's drop marker of another cluster is never overwritten). Idempotent: a `.tmp` left by a run
    interrupted between its link and its rename is removed first (else `ln` finds the name taken
    and `cp` refuses to copy a file onto its own hard link: failing forever). A drop marker
    holds the segment's first 40 bytes (its header names the cluster); a marker that can't be
    written fails the command, so no segment is lost unrecorded.
    """
    q = str(queue)
    if not _SAFE_PATH.fullmatch(q):
        from opsctl.errors import UsageError

        raise UsageError(f"the WAL queue path {q!r} holds characters a shell command can't carry; "
                         "use a path of letters, digits and ._/+-")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    d = f"$q/{DROPPED}"
    return (f"f=%f; q={q}; if [ -f \"$q/$f\" ]; then cmp -s %p \"$q/$f\" && exit 0; "
            "echo \"opsctl archive: $q/$f is queued with other bytes (a segment of another cluster with that name "
            "waits for the repository): retried once it is archived\" >&2; exit 1; fi; "
            f"if [ \"$(ls -1 \"$q\" | wc -l)\" -ge {limit} ]; then "
            f"head -c 40 %p > \"{d}/.$f.new\" || exit 1; "
            f"if [ -f \"{d}/$f\" ] && ! cmp -s \"{d}/.$f.new\" \"{d}/$f\"; then rm -f \"{d}/.$f.new\"; "
            f"echo \"opsctl archive: queue $q full and {d}/$f holds a drop of another cluster: retried\" >&2; exit 1; fi; "
            f"mv \"{d}/.$f.new\" \"{d}/$f\" || exit 1; "
            f"echo \"opsctl archive: queue $q full ({limit} files): $f dropped\" >&2; exit 0; fi; "
            "rm -f \"$q/.$f.tmp\" && { ln %p \"$q/.$f.tmp\" 2>/dev/null || { cp %p \"$q/.$f.tmp\" && sync \"$q/.$f.tmp\"; }; } && "
            "mv \"$q/.$f.tmp\" \"$q/$f\" && sync \"$q\"")


def server_settings(queue: Path | None, timeout_s: float = 30, limit: int = DEFAULT_QUEUE) -> dict[str, str]:
    """PostgreSQL settings for archiving into `queue` (None: no archiving) with WAL summaries.

    `archive_timeout` forces a segment switch after that many seconds with commits, so the
    commits at risk when the server's disk is lost span at most that much (plus the queue).
    `summarize_wal` lets `pg_basebackup --incremental` find the changed blocks;
    `track_commit_timestamp` dates every row's commit, so a drill can measure the RPO it got.
    `wal_recycle=off` makes the queue's hard link safe (see archive_command).
    """
    # max_slot_wal_keep_size: a standby's replication slot (opsctl/pitr/standby.py) whose
    # standby is gone may hold at most that much WAL; past it the slot is invalidated (the
    # standby is rebuilt from the archive) instead of filling the disk
    settings = {"wal_level": "replica", "summarize_wal": "on", "track_commit_timestamp": "on",
                "max_slot_wal_keep_size": "4GB"}
    if queue is not None:
        # wal_recycle off: a finished segment is never rewritten (it is unlinked, not renamed and
        # reused), so the queue can hard-link it instead of copying and fsyncing 16 MiB; new
        # segments are then created, not recycled, and wal_init_zero off spares zero-filling them
        settings |= {"archive_mode": "on", "archive_command": archive_command(queue, limit),
                     "archive_timeout": f"{max(1, int(timeout_s))}s", "wal_recycle": "off", "wal_init_zero": "off"}
    return settings


def prepare_queue(queue: Path, user: str | None) -> None:
    """Create the queue (and its .dropped/ folder) owned by the server's user, 0700."""
    (queue / DROPPED).mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in (queue, queue / DROPPED):
        os.chmod(folder, 0o700)
        if user is not None:
            import shutil

            shutil.chown(folder, user, user)


def control_data(data: Path) -> dict[str, str]:
    """pg_controldata of a data directory (running or not) as {field: value}, e.g.
    "Database system identifier", "Latest checkpoint's TimeLineID", "Database cluster state";
    {} when it can't be read."""
    from opsctl.local.postgres import tool

    out = subprocess.run([tool("pg_controldata"), "-D", str(data)], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"})
    if out.returncode != 0:
        return {}
    fields = (line.partition(":") for line in out.stdout.splitlines())
    return {name.strip(): value.strip() for name, sep, value in fields if sep}


def control_timeline(data: Path) -> int | None:
    """The timeline of a data directory's latest checkpoint (running or not), or None when it
    can't be read."""
    value = control_data(data).get("Latest checkpoint's TimeLineID", "")
    return int(value) if value.isdigit() else None


def system_identifier(data: Path) -> str:
    """The cluster's system identifier (works while the server is down); OperationFailed when
    pg_controldata can't read `data`."""
    value = control_data(data).get("Database system identifier", "")
    if not value.isdigit():
        from opsctl.errors import OperationFailed

        raise OperationFailed(f"pg_controldata could not read {data}")
    return value


@dataclass
class DrainResult:
    """One drain of the queue: PostgreSQL file names archived, skipped (already in the repository)
    dropped (markers of a full queue uploaded) and quarantined (a header naming no cluster);
    bytes before (`raw_bytes`) and after
    (`stored_bytes`) compression and sealing."""
    archived: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the repository
    dropped: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    raw_bytes: int = 0
    stored_bytes: int = 0


class Archiver:
    """Drains one queue into one repository. `sysid` is the live cluster's (the data directory's).
    A segment is filed under the cluster its own header names. History and backup-history files
    carry no identifier: they go under the cluster the queued segments of their timeline name
    (after a lost data directory the old cluster's history file waits beside its segments),
    under `sysid` when none is queued, and to quarantine when those segments name two.
    With `data` (the data directory), `sysid` follows the cluster there: re-read (pg_controldata)
    whenever its global/pg_control is another file than last seen, so an archiver that outlived
    a lost data directory files the new cluster's history files and gaps under the new cluster.
    With `cluster` (a callable giving the server's system identifier, or None when it can't
    tell: a self-managed server asked over SQL), the same, asked whenever something that names
    no cluster is about to be filed."""

    GAP_CHECK_SECONDS = 2.0  # how often, while gaps are kept, the base backups are listed

    def __init__(self, repo, key, sysid: str, queue: Path, level: int = 1, data: Path | None = None,
                 cluster=None):
        self.repo, self.key, self.sysid, self.queue, self.level = repo, key, sysid, queue, level
        self.data, self.cluster = data, cluster
        self._control_seen: tuple[int, int] | None = None
        self._gap_checked = 0.0
        self._bases_seen: tuple | None = None
        self._untouchable = False  # `.progress` could not be touched (said once in the log)
        self._moved_at = time.time()  # the last pass that ended or file stored (start: not stuck yet)

    def follow_cluster(self) -> str:
        """The live cluster's system identifier, re-read from `data` when its pg_control is a new
        file (a new cluster: initdb after a lost data directory, or a restored copy swapped in).
        With `cluster`, the identifier it gives (None: the one known stays). Without either, or
        while the data directory has no pg_control, the one known stays."""
        if self.cluster is not None:
            self._now(self.cluster(), "the server")
            return self.sysid
        if self.data is None:
            return self.sysid
        try:
            st = (self.data / "global" / "pg_control").stat()
        except OSError:
            return self.sysid
        if (st.st_dev, st.st_ino) != self._control_seen:
            self._now(system_identifier(self.data), f"the data directory {self.data}")
            self._control_seen = (st.st_dev, st.st_ino)
        return self.sysid

    def _now(self, sysid: str | None, where: str) -> None:
        if sysid and sysid != self.sysid:
            log.warning("%s now holds cluster %s (was %s): what names no cluster is filed under %s from now on",
                        where, sysid, self.sysid, sysid)
            self.sysid, self._bases_seen = sysid, None

    def _timeline_clusters(self, files: list[str]) -> dict[int, set[str]]:
        """{timeline: system identifiers the headers of the queued segments `files` of it name}
        (unreadable headers left out)."""
        out: dict[int, set[str]] = {}
        for name in files:
            if layout.WAL_FILE.fullmatch(name)["seg"]:
                try:
                    with open(self.queue / name, "rb") as fh:
                        out.setdefault(int(name[:8], 16), set()).add(header_sysid(fh.read(_LONG_HEADER.size), name))
                except (ValueError, OSError):
                    continue
        return out

    def owner(self, path: Path, clusters: dict[int, set[str]] | None = None) -> str:
        """The system identifier queued file `path` is filed under: a segment's own header's
        (ValueError when it is not a WAL header for its name); for a history or backup-history
        file, the one cluster `clusters` (see _timeline_clusters) names for its timeline, the
        live cluster's when it names none, ValueError when it names several."""
        if layout.WAL_FILE.fullmatch(path.name)["seg"]:
            with open(path, "rb") as fh:
                return header_sysid(fh.read(_LONG_HEADER.size), path.name)
        tli = int(path.name[:8], 16)
        ids = (clusters or {}).get(tli, set())
        if len(ids) > 1:
            raise ValueError(f"the queued segments of timeline {tli} name clusters {', '.join(sorted(ids))}: "
                             "which one wrote this file (it names none) is unknown")
        return next(iter(ids), self.sysid)

    def _quarantine(self, path: Path, why: str, result: DrainResult) -> None:
        """Move `path` out of the queue into `.quarantine/` with its reason; logged as an error."""
        folder = self.queue / QUARANTINE
        folder.mkdir(exist_ok=True, mode=0o700)
        (folder / f"{path.name}.reason").write_text(why + "\n")
        os.replace(path, folder / path.name)
        log.error("%s quarantined in %s: %s; it names no cluster, so it is not archived", path.name, folder, why)
        result.quarantined.append(path.name)

    def _pending(self) -> list[str]:
        """The WAL files waiting in the queue, oldest first (PostgreSQL names sort by position); []
        when the queue folder is missing."""
        try:
            return sorted(n for n in os.listdir(self.queue) if not n.startswith(".") and layout.WAL_FILE.fullmatch(n))
        except FileNotFoundError:
            return []

    def _held_histories(self) -> set[str]:
        """History files of the timelines the queue's NOTES name: held back until the undo's
        marker is filed (a history in the repository with no marker would be followed after a
        lost disk). Notes that can't be read hold nothing (restore moves such a file aside)."""
        import json

        try:
            notes = json.loads((self.queue / NOTES).read_text())
            return {layout.history_file(n["timeline"]) for n in notes}
        except (OSError, ValueError, TypeError, KeyError):
            return set()

    def _stored(self, file: str, sysid: str) -> list[layout.WalObject]:
        """The objects already stored for `file` (normally none; one after PostgreSQL repeats it)."""
        objects, _ = layout.parse_wal(sysid, self.repo.names(f"{layout.wal_prefix(sysid)}{file}."))
        return objects.get(file, [])

    def _same_as_stored(self, path: Path, stored: list[layout.WalObject], sysid: str) -> bool:
        """True when an authentic stored object of the file holds exactly `path`'s bytes (a
        repeat: skip it); WalConflict when an authentic one holds other bytes; False when none
        is authentic (a planted or damaged one: ours is written beside it, verify names it)."""
        import hashlib

        from opsctl.backup.crypto import IntegrityError
        from opsctl.pitr.chain import open_wal

        mine = hashlib.sha256(path.read_bytes()).hexdigest()
        other = None
        for obj in stored:
            try:
                theirs = hashlib.sha256(open_wal(self.repo, self.key, sysid, obj)).hexdigest()
            except IntegrityError:
                continue
            if theirs == mine:
                return True
            other = obj
        if other is not None:
            raise WalConflict(f"{path.name} is already archived with other content ({other.name}): two servers "
                              f"of cluster {sysid} wrote the same WAL file name (a timeline reused?); it stays "
                              f"queued in {self.queue} and archiving stops here until someone decides which is "
                              "right (nothing was overwritten)")
        return False

    def push(self, path: Path, result: DrainResult, sysid: str | None = None) -> None:
        """Archive one queued file: skipped when an authentic stored object of it has the same
        bytes (PostgreSQL repeated it), else packed (zstd, sealed) and written under its tagged
        name. WalConflict (the file stays queued, a marker in `<queue>/.conflict/` for the health
        check) when a stored one has other bytes: never a silent skip, never an overwrite.
        Filed under cluster `sysid` (default: the live one). Raises whatever the repository
        raises; the caller keeps the file queued then."""
        from opsctl.backup.pipeline import StreamStats, pack

        file = path.name
        sysid = sysid or self.sysid
        stored = self._stored(file, sysid)
        try:
            same = bool(stored) and self._same_as_stored(path, stored, sysid)
        except WalConflict as exc:
            marks = self.queue / CONFLICT
            marks.mkdir(exist_ok=True, mode=0o700)
            (marks / file).write_text(str(exc) + "\n")
            raise
        if same:
            result.skipped.append(file)
            return
        stats = StreamStats()
        with open(path, "rb") as fh:
            sealed = b"".join(pack(fh, self.level, self.key, stats, threads=0))
        name = layout.wal_object(sysid, file, layout.tag(self.key, sysid, file, stats.sha256))
        self.repo.put(name, [sealed])
        (self.queue / CONFLICT / file).unlink(missing_ok=True)
        result.archived.append(file)
        result.raw_bytes += stats.raw_bytes
        result.stored_bytes += stats.stored_bytes

    def drain(self) -> DrainResult:
        """Archive everything queued now, oldest first, each under the cluster its header names;
        each file leaves the queue only once stored (or quarantined). Drop markers are uploaded
        under their segment's cluster; the live cluster's stay in `.gaps/` until a base backup
        covers them (see clear_gaps)."""
        result = DrainResult()
        pending = self._pending()
        dropped = self.queue / DROPPED
        # what names no cluster (history and backup-history files, drop markers) is filed under
        # the live cluster: make sure it is the one live now (segments name their own)
        if any(not (m := layout.WAL_FILE.fullmatch(f)) or not m["seg"] for f in pending) or (
                dropped.is_dir() and any(dropped.iterdir())):
            self.follow_cluster()
        clusters = self._timeline_clusters(pending)
        held = self._held_histories()
        for file in pending:
            if file in held:  # an abandoned timeline's history goes only after its marker
                continue
            path = self.queue / file
            try:
                sysid = self.owner(path, clusters)
            except ValueError as exc:
                self._quarantine(path, str(exc), result)
                continue
            self.push(path, result, sysid)
            path.unlink(missing_ok=True)
            (self.queue / CONFLICT / file).unlink(missing_ok=True)
            self.moved()  # a long backlog is progress too, file by file
        for marker in sorted(dropped.iterdir()) if dropped.is_dir() else []:
            if not layout.WAL_FILE.fullmatch(marker.name):
                continue
            sysid = self.sysid
            if layout.WAL_FILE.fullmatch(marker.name)["seg"]:
                try:
                    sysid = header_sysid(marker.read_bytes(), marker.name)
                except ValueError:
                    pass  # unreadable: a gap is reported in the live cluster rather than lost
            self.repo.put_bytes(f"{layout.dropped_prefix(sysid)}{marker.name}",
                                b'{"reason": "the local WAL queue was full"}')
            if sysid == self.sysid:
                gaps = self.queue / GAPS
                gaps.mkdir(exist_ok=True, mode=0o700)
                os.replace(marker, gaps / marker.name)  # keeps its time: when the segment was dropped
            else:
                marker.unlink(missing_ok=True)
            result.dropped.append(marker.name)
        self.clear_gaps()
        return result

    def moved(self) -> None:
        """Touch `<queue>/.progress`: the archiver is moving (a pass ended, or a file was stored).
        A stopped or hung archiver (SIGSTOP, a repository call that never returns) and one whose
        every pass fails leave it aging; the health check reads that age (breaker 20 F8: a
        SIGSTOPped archiver was "healthy" and OK until the lag passed the whole RPO)."""
        self._moved_at = time.time()
        try:
            (self.queue / PROGRESS).touch()
            self._untouchable = False
        except OSError as exc:  # said once: the health check will call this archiver stuck
            if not self._untouchable:
                log.warning("cannot touch %s (%s): health checks will report this archiver as stuck",
                            self.queue / PROGRESS, exc)
            self._untouchable = True

    def not_moved(self) -> None:
        """A pass failed: `.progress` keeps the time of the last move, and is made again with that
        time when it is gone (deleted by hand or by a cleanup), so a failing archiver does not
        read as one that never wrote it (breaker 22 F6: "healthy" and OK again until the lag
        passed the RPO). An archiver hung in a repository call can't: its process state and the
        lag still tell."""
        path = self.queue / PROGRESS
        if path.exists():
            return
        try:
            path.touch()
            os.utime(path, (self._moved_at, self._moved_at))
        except OSError:
            pass  # as in moved(): the health check then calls this archiver stuck, or judges the lag

    def clear_gaps(self, force: bool = False) -> list[str]:
        """Remove the `.gaps/` markers a base backup of the live cluster covers (it starts at a
        later segment or on a later timeline; for a backup history file, at its segment or later: recovery never reads
        one; for a timeline history file, it started after the drop), and those whose header names
        another cluster (a gap of the cluster live before a lost data directory: its record stays
        in that cluster's dropped/ folder of the repository, logged). Lists the base backups at
        most every GAP_CHECK_SECONDS and reads them only when that list changed. Returns the
        files cleared."""
        gaps = self.queue / GAPS
        marks = sorted(p for p in gaps.iterdir() if not p.name.startswith(".")) if gaps.is_dir() else []
        now = time.monotonic()
        if not marks or (not force and now - self._gap_checked < self.GAP_CHECK_SECONDS):
            return []
        self.follow_cluster()
        self._gap_checked = now
        cleared = []
        for mark in marks:  # another cluster's gap (left before a lost data directory): not this one's
            m = layout.WAL_FILE.fullmatch(mark.name)
            if not (m and m["seg"]):
                continue
            try:
                owner = header_sysid(mark.read_bytes()[:_LONG_HEADER.size], mark.name)
            except (ValueError, OSError):
                continue  # unreadable: kept as the live cluster's (reported rather than lost)
            if owner != self.sysid:
                mark.unlink(missing_ok=True)
                cleared.append(mark.name)
                log.warning("%s was dropped by a full queue while cluster %s was live: a gap of that cluster "
                            "(recorded in %s), not of the live cluster %s; no longer in this cluster's health",
                            mark.name, owner, layout.dropped_prefix(owner), self.sysid)
        marks = [mark for mark in marks if mark.name not in cleared]
        if not marks:
            return cleared
        from opsctl.pitr import base as bb

        names = self.repo.names(layout.base_prefix(self.sysid))
        if not force and self._bases_seen == tuple(sorted(names)):
            return cleared
        self._bases_seen = tuple(sorted(names))
        bases, _ = bb.load_all(self.repo, self.sysid, self.key, names)
        if not bases:
            return cleared
        start = max(layout.segno(layout.lsn(b.start_lsn)) for b in bases)
        started = max(b.started_at.timestamp() for b in bases)
        # a base backup on a later timeline (after an in-place restore that forked before the gap)
        # never reads the gap's timeline past the fork: it covers the gap whatever their numbers
        tli = max(b.timeline for b in bases)
        for mark in marks:
            m = layout.WAL_FILE.fullmatch(mark.name)
            if m and m["seg"]:
                covered = layout.parse_segment(m["seg"])[1] < start or int(mark.name[:8], 16) < tli
            elif mark.name.endswith(".backup"):
                covered = layout.parse_segment(mark.name[:24])[1] <= start or int(mark.name[:8], 16) < tli
            else:
                covered = mark.stat().st_mtime < started
            if covered:
                mark.unlink(missing_ok=True)
                cleared.append(mark.name)
        if cleared:
            log.info("base backups now cover the gaps of %s", ", ".join(cleared))
        return cleared

    def run(self, stop=None, interval: float = 0.5, pause=None) -> None:
        """Drain until `stop` (a threading.Event) is set; failures are logged and retried.
        Between passes it waits `interval` seconds (up to 30 s after failures, doubling) with
        `pause(seconds)` when given (the process's own: `main` wakes early on a nudge), else
        on `stop` or in time.sleep."""
        delay = interval
        while stop is None or not stop.is_set():
            try:
                r = self.drain()
                self.moved()
                if r.archived or r.dropped:
                    log.info("archived %s%s", ", ".join(r.archived) or "nothing",
                             f"; dropped by a full queue: {', '.join(r.dropped)}" if r.dropped else "")
                delay = interval
            except WalConflict as exc:  # an error, not a retry worth a warning: someone has to decide
                log.error("%s", exc)
                delay = min(delay * 2, 30.0)
                self.not_moved()
            except Exception as exc:  # the repository is down or slow: the queue waits
                from opsctl.redact import credentials

                log.warning("archiving failed, retrying in %.0f s: %s", delay, credentials(str(exc)))
                delay = min(delay * 2, 30.0)
                self.not_moved()
            if pause is not None:
                pause(delay)
            elif stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)


def for_environment(project, env, data: Path, queue: Path) -> Archiver:
    """The archiver of an environment's cluster: its repository (initialised like `backup
    create` would) and its key (UsageError when it is needed and missing)."""
    from opsctl.pitr.ops import sealed_repository

    repo, key = sealed_repository(project, env, initialise=True)
    return Archiver(repo, key, system_identifier(data), queue, env.backup.compress_level, data=data)


# "Drain now": sent by a caller that waits for the queue to empty (opsctl.pitr.local.nudge_archiver:
# restore --to-time latest, which drills and standbys use, and a base backup's WAL wait), so it waits for the
# upload alone rather than also for the rest of the archiver's pause.
NUDGE = signal.SIGUSR2


def _nudgeable_pause():
    """The archiver process's pause between passes, `pause(seconds)`, which ends early when a
    NUDGE arrives. The signal gets a handler (so the sender can see in /proc that this process
    takes it) that does nothing itself: its arrival is written to a pipe (signal.set_wakeup_fd)
    that the pause waits on, so one that comes during a pass ends the next pause at once and
    nothing queued meanwhile waits a whole interval. Main thread only."""
    import selectors

    wake, woken = os.pipe()
    os.set_blocking(wake, False)
    os.set_blocking(woken, False)
    signal.set_wakeup_fd(woken, warn_on_full_buffer=False)
    signal.signal(NUDGE, lambda *_: None)
    # A selector (epoll), not select.select, which refuses descriptors above FD_SETSIZE (1024).
    waiting = selectors.DefaultSelector()
    waiting.register(wake, selectors.EVENT_READ)

    def pause(seconds: float) -> None:
        waiting.select(seconds)
        try:
            while os.read(wake, 512):
                pass
        except BlockingIOError:
            pass

    return pause


def main(argv: list[str] | None = None) -> int:
    """The supervised archiver process: `python -m opsctl.pitr.archive --root R --env E --data D --queue Q`."""
    parser = argparse.ArgumentParser(prog="opsctl-archiver")
    parser.add_argument("--root", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    # the cluster the supervisor started it for: a label `local up` compares with the data
    # directory's (pitr.local.ensure_archiver); the archiver itself follows the data directory
    parser.add_argument("--sysid", default=None)
    # the repository it was started to archive into: a label compared the same way, with the
    # configured one (breaker 34 F7: after backup.repository changed, it went on archiving
    # into the old one, and base backups in the new one waited for WAL that never came)
    parser.add_argument("--repository", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` writes every thread's stack to the log
    pause = _nudgeable_pause()
    from opsctl.config import load_project
    from opsctl.errors import OpsError
    from opsctl.signals import sigterm_as_interrupt

    try:
        project = load_project(Path(args.root))
        archiver = for_environment(project, project.env(args.env), Path(args.data), Path(args.queue))
    except OpsError as exc:
        from opsctl.redact import credentials

        log.error("%s", credentials(str(exc)))
        return 2
    if args.repository is not None and archiver.repo.url != args.repository:
        log.error("started to archive into %s, but the configuration now names %s; 'opsctl local up' starts "
                  "the archiver again", args.repository, archiver.repo.url)
        return 2
    os.nice(10)  # the database's backends come first on a busy host; the queue absorbs the delay
    log.info("archiving %s (system %s) into %s", args.queue, archiver.sysid, archiver.repo.url)
    try:
        with sigterm_as_interrupt():
            archiver.run(interval=args.interval, pause=pause)
    except KeyboardInterrupt:
        archiver.drain()  # what was queued before the stop goes out first
    return 0


if __name__ == "__main__":
    sys.exit(main())
