"""What the repository can restore: base backup chains, the WAL after them, gaps, the window.

`inventory` reads the listing of one cluster's `pitr/<sysid>/` (and, when `deep`, every WAL
object and base backup tar: tag, SHA-256, authentication, zstd) and answers WAL-G's `wal-verify` question: is
every segment from each base backup to the newest one present and authentic, and up to
when can this cluster be restored? Segments are followed along the newest timeline's
history, as recovery would. The newest restorable time is the time of the last transaction
end (commit or abort: both carry a time, and recovery_target_time stops at either) in the
last good segment of a window (read with `pg_waldump`): commits after it are either not
archived yet or behind a missing or tampered segment, and a restore to a later time is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from opsctl.backup import pipeline
from opsctl.backup.crypto import IntegrityError
from opsctl.backup.repository import NotFound
from opsctl.errors import OperationFailed
from opsctl.pitr import base as bb
from opsctl.pitr import layout

log = logging.getLogger("opsctl.pitr.chain")

# a transaction's end: COMMIT or ABORT (an aborted transaction's record carries its time too, and
# both are what recovery_target_time stops at and pg_last_xact_replay_timestamp reports)
_XACT_END = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+).*desc: (COMMIT|ABORT)(?:_PREPARED)? (?:\d+: )?"
                       r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
_RECORD = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+), prev")


QUEUED = "queued"  # a Problem kind: absent from the repository, waiting in the local WAL queue


@dataclass
class Problem:
    """One fault of the archive: the PostgreSQL `file` it concerns, `kind` (missing | dropped | not
    authentic | foreign object | queued) and a `detail` for people."""
    file: str
    kind: str  # missing | dropped | not authentic | foreign object | queued (QUEUED: not archived yet)
    detail: str

    def line(self) -> str:
        """'FILE: kind (detail)', as verify and restore print it."""
        return f"{self.file}: {self.kind} ({self.detail})"


@dataclass
class Window:
    """Restorable from `start` (the base backup finished) to `end` (newest commit replayable)."""

    base_id: str
    start: dt.datetime
    start_lsn: int
    end_segment: str
    end_lsn: int = 0  # the end of the window's last segment (from the listing: no WAL read)
    end: dt.datetime | None = None  # newest time a restore may ask for: max(last_xact, base finished)
    last_commit: dt.datetime | None = None  # the newest commit replayable in this window
    # the newest transaction end (commit or abort) replayable in it: replaying the whole window
    # replays nothing later, so a restore to a time before it needs a recovery target
    last_xact: dt.datetime | None = None
    stopped_by: Problem | None = None  # the gap that ends it, or None: the archive ends there


@dataclass
class Inventory:
    """What the repository holds for one cluster: authentic base backups (and why others are
    unusable), the timeline path, the segments on it in replay order, the problems found, the
    recoverable windows, and (deep) the checked object of each file."""
    sysid: str
    repository: str
    bases: list[bb.BaseBackup]
    bad_bases: dict[str, str]
    path: list[tuple[int, int | None]]
    segments: list[str] = field(default_factory=list)  # on the path, in replay order (present or not)
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    objects: dict[str, list[layout.WalObject]] = field(default_factory=dict)
    good: dict[str, layout.WalObject] = field(default_factory=dict)  # file -> a checked object (deep)
    damaged: dict[str, str] = field(default_factory=dict)  # (deep) base backup id -> why its read failed
    unfit: dict[str, str] = field(default_factory=dict)  # id -> why no incremental is built on it (its manifest)
    unsealed: set[str] = field(default_factory=set)  # ids whose base.json is unreadable or not authentic

    @property
    def newest_restorable(self) -> dt.datetime | None:
        """The latest time any window reaches (UTC), or None without a window."""
        ends = [w.end for w in self.windows if w.end is not None]
        return max(ends) if ends else None

    @property
    def ok(self) -> bool:
        """No problem found and no damaged base backup (running ones, and WAL still in the local
        queue, do not count)."""
        return all(p.kind == QUEUED for p in self.problems) and not self.bad_bases_broken

    @property
    def bad_bases_broken(self) -> list[str]:
        """Ids of base backups that are damaged or forged (not merely still running)."""
        return [bid for bid, why in self.bad_bases.items() if why not in (bb.UNFINISHED, bb.INTERRUPTED)]


def sysids(repo) -> list[str]:
    """The clusters that have anything under pitr/, newest activity last (by listing order).
    IntegrityError when something stands where a folder belongs (`refuse_misplaced`)."""
    names = repo.names(layout.PREFIX + "/")
    refuse_misplaced(repo, names)
    return sorted({n.split("/")[1] for n in names if n.count("/") >= 2})


def refuse_misplaced(repo, names) -> None:
    """IntegrityError naming the first of `names` that stands where a folder of the layout
    belongs (layout.misplaced: a symbolic link, a file, a folder that can't be opened), so
    `verify-chain` and `backup list` say what hides the chain instead of "nothing under pitr/"."""
    if bad := layout.misplaced(names):
        raise IntegrityError(f"{repo.url.rstrip('/')}/{bad[0]} stands where a folder belongs (a symbolic link, a "
                             "file, or a folder opsctl can't open): opsctl never follows links inside its "
                             "repository and reads nothing under it; remove it, or give access")


def _stored(repo, key, sysid: str, obj: layout.WalObject) -> tuple[bytes, str]:
    """(stored bytes, their SHA-256) of one WAL object whose tag holds; IntegrityError."""
    try:
        stored = repo.get_bytes(obj.name)
    except NotFound:
        raise IntegrityError(f"{obj.file}: its object {obj.name} vanished") from None
    sha = hashlib.sha256(stored).hexdigest()
    if not layout.tag_ok(key, sysid, obj.file, sha, obj.tag):
        raise IntegrityError(f"{obj.file} ({obj.name}) fails its authentication tag: planted or modified, "
                             "or written with another key")
    return stored, sha


def _is_segment(file: str) -> bool:
    return len(file) == 24 and file.isalnum()


def open_wal(repo, key, sysid: str, obj: layout.WalObject) -> bytes:
    """The plaintext of one WAL object, after its tag, SHA-256, authentication and zstd check."""
    from opsctl.backup.pipeline import unpack

    stored, sha = _stored(repo, key, sysid, obj)
    plain = b"".join(unpack([stored], obj.name, sha, len(stored), key))
    if _is_segment(obj.file) and len(plain) != layout.SEGMENT_BYTES:
        raise IntegrityError(f"{obj.file} holds {len(plain)} bytes, not a whole segment")
    return plain


_ZERO_PIECE = bytes(pipeline.BLOCK)


def _zeros(piece: memoryview) -> bool:
    """Whether a view unpack_into gave holds only zero bytes (a memcmp of its whole buffer)."""
    whole = piece.obj
    if len(piece) == len(whole) == len(_ZERO_PIECE):
        return whole == _ZERO_PIECE
    return piece.tobytes() == bytes(len(piece))


def check_wal(repo, key, sysid: str, obj: layout.WalObject, into: Path | None = None) -> None:
    """Check one WAL object as open_wal does (tag, SHA-256, AES-GCM, zstd, a segment's size)
    without holding its plaintext; `into`: also write the plaintext there (a new 0600 file),
    each all-zero MiB of a segment left a hole (reads give the same zeros; a segment switched
    by archive_timeout is mostly zeros). IntegrityError as open_wal; OSError for `into`.

    A segment is decompressed a MiB at a time into one reused buffer (pipeline.unpack_into):
    open_wal's 16 MiB plaintext per segment is memory the process touches for the first time,
    and a restore staging 15 segments faulted in 270 MB for them, on this VM ~2 us a page (0.2 s
    of CPU beside the base backup's unpacking). Other files (timeline histories, a few bytes)
    go through open_wal."""
    if not _is_segment(obj.file):
        plain = open_wal(repo, key, sysid, obj)
        if into is not None:
            fd = os.open(into, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(plain)
        return
    stored, sha = _stored(repo, key, sysid, obj)
    fd = (os.open(into, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
          if into is not None else None)
    at = 0
    try:
        for piece in pipeline.unpack_into([stored], obj.name, sha, len(stored), key, layout.SEGMENT_BYTES,
                                          buffers=1):
            if fd is not None and not _zeros(piece):
                os.pwrite(fd, piece, at)
            at += len(piece)
        if fd is not None:
            os.ftruncate(fd, at)
    finally:
        if fd is not None:
            os.close(fd)


def abandon(repo, key, sysid: str, tli: int, history: str, why: str) -> str:
    """Record in the repository that timeline `tli` of cluster `sysid` is abandoned: its history
    (`history`, the text of its `.history` file) was queued for the archive, and then the
    restore that made it was undone. Restores, verify-chain and prune then follow the timeline
    below it even with no live server to ask (after a lost disk), as long as the repository's
    history of `tli` is this same text (a timeline number PostgreSQL made anew, with other
    history, is followed). The marker's name carries its tag, as WAL objects do (layout.tag).
    Returns the object's name."""
    import datetime as _dt
    import json

    body = json.dumps({"timeline": tli, "history": history, "why": why,
                       "at": _dt.datetime.now(_dt.timezone.utc).isoformat()}, sort_keys=True).encode()
    tag = layout.tag(key, sysid, layout.abandoned_file(tli), hashlib.sha256(body).hexdigest())
    name = f"{layout.abandoned_prefix(sysid)}{tli:08X}.{tag}"
    repo.put_bytes(name, body)
    return name


def has_base_backups(repo, sysid: str) -> bool:
    """Whether the repository holds a base backup's record for cluster `sysid` (a folder without
    one, running or interrupted, is none)."""
    return any(n.endswith(f"/{bb.RECORD}") for n in repo.names(layout.base_prefix(sysid)))


def other_cluster(repo, sysid: str) -> str | None:
    """The one cluster other than `sysid` the repository holds base backups of (a base
    backup's record: a folder without one, running or interrupted, is none), None when there is
    none; UsageError when there are several. What `sysid`, a cluster with no base backup (a data
    directory lost and made anew by `local up`), gives way to in restore and verify-chain."""
    from opsctl.errors import UsageError

    others = [s for s in sysids(repo) if s != sysid and has_base_backups(repo, s)]
    if len(others) > 1:
        raise UsageError(f"no base backup of the live cluster (system {sysid}) in {repo.url}, which holds "
                         f"base backups of clusters {', '.join(others)}; restore names one only when it is "
                         "the only one: move the others' pitr/<system>/ folders aside, or take a base backup")
    return others[0] if others else None


def unabandon(repo, sysid: str, tli: int) -> list[str]:
    """Remove every marker of timeline `tli` of cluster `sysid` (`abandon`): a server is about to
    live on it (a swap or a failover bringing it in), or the undo that wrote one left the
    restored server live after all. Returns the names removed."""
    names = [n for n in repo.names(f"{layout.abandoned_prefix(sysid)}{tli:08X}.")]
    if names:
        repo.delete_names(names)
    return names


def _abandoned(repo, key, sysid: str, names: dict[str, int], problems: list[Problem]) -> dict[int, set[str]]:
    """{timeline: the history texts recorded as abandoned} from the authentic markers under
    `abandoned/`; a marker failing its tag (planted, modified, another key) is a problem and
    counts for nothing."""
    import json

    found: dict[int, set[str]] = {}
    head = layout.abandoned_prefix(sysid)
    for name in sorted(n for n in names if n.startswith(head)):
        m = layout.ABANDONED.fullmatch(name[len(head):])
        file = layout.abandoned_file(int(m["tli"], 16)) if m else name.rpartition("/")[2]
        try:
            body = repo.get_bytes(name) if m else b""
        except NotFound:
            continue  # removed since the listing
        if not m or not layout.tag_ok(key, sysid, file, hashlib.sha256(body).hexdigest(), m["tag"]):
            problems.append(Problem(file, "not authentic", f"{name} fails its authentication tag: planted or "
                                    "modified, or written with another key; it is ignored"))
            continue
        try:
            doc = json.loads(body)
            found.setdefault(int(doc["timeline"]), set()).add(str(doc["history"]))
        except (ValueError, KeyError, TypeError):
            problems.append(Problem(file, "not authentic", f"{name} is not an abandoned-timeline record; it is ignored"))
    return found


def _history(repo, key, sysid: str, objects: dict, tli: int, problems: list[Problem],
             deep_good: dict) -> str | None:
    """The text of timeline `tli`'s history file from its first authentic object (None when
    none is: each one that fails is a problem)."""
    hist = layout.history_file(tli)
    for obj in objects.get(hist, []):
        try:
            text = open_wal(repo, key, sysid, obj).decode()
        except IntegrityError as exc:
            problems.append(Problem(hist, "not authentic", str(exc)))
            continue
        deep_good[hist] = obj
        return text
    return None


def _path(repo, key, sysid: str, objects: dict, bases: list[bb.BaseBackup], problems: list[Problem],
          deep_good: dict, live_path: list[tuple[int, int | None]] | None = None,
          abandoned: dict[int, set[str]] | None = None, timeline: int | None = None) -> list[tuple[int, int | None]]:
    tlis = {b.timeline for b in bases}
    tlis |= {int(f[:8], 16) for f in objects if len(f) == 24}
    tlis |= {int(f[:8], 16) for f in objects if f.endswith(".history")}
    target = max(tlis) if tlis else 1
    if timeline is not None:  # the operator's choice (--timeline) over every rule below
        if timeline not in tlis | {1}:
            from opsctl.errors import UsageError

            raise UsageError(f"timeline {timeline} is not in the repository of cluster {sysid} (it holds timeline(s) "
                             f"{', '.join(str(t) for t in sorted(tlis | {1}))}); choose one of them")
        target, live_path, abandoned = timeline, None, None
    if live_path is not None and live_path[-1][0] < target:
        # the live server is on an older timeline than the repository's newest: those were
        # abandoned (an in-place restore undone after its swap had queued its history, a
        # failover given up after promoting): its WAL after the fork is what a restore wants
        log.warning("timeline(s) %s in the repository are not the live server's (timeline %d): abandoned "
                    "by an undone restore or failover; following timeline %d",
                    ", ".join(str(t) for t in sorted(tlis) if t > live_path[-1][0]), live_path[-1][0],
                    live_path[-1][0])
        return live_path
    text = _history(repo, key, sysid, objects, target, problems, deep_good) if target > 1 else None
    # no live server to ask (a lost disk): timelines the repository records as abandoned, with
    # this same history, are passed over. A live server on the newest timeline is on it: never
    # passed over (its number may have been made again after an abandoned one never archived)
    # (or with no history in the repository: the archiver holds an abandoned history back until
    # its marker is filed, and a swap removes the markers of the timeline it brings in)
    while (live_path is None and target > 1 and target in (abandoned or {})
           and (text is None or text in abandoned[target])):
        below = max((t for t in tlis if t < target), default=1)
        log.warning("timeline %d in the repository was abandoned (an in-place restore undone after its "
                    "history was queued); following timeline %d", target, below)
        target = below
        text = _history(repo, key, sysid, objects, target, problems, deep_good) if target > 1 else None
    if target == 1:
        return [(1, None)]
    if text is not None:
        return layout.history_path(text, target)
    hist = layout.history_file(target)
    if not objects.get(hist):  # one that is there and fails its check is named 'not authentic' already
        problems.append(Problem(hist, "missing", f"timeline {target} has segments but no history file"))
    return [(target, None)]


def left_for(repo, key, sysid: str, objects: dict[str, list[layout.WalObject]], tli: int) -> tuple[int, int, int] | None:
    """Where timeline `tli` was left for a newer one the repository holds: (that timeline,
    the timeline it branched from, its switch LSN), read from the newer timelines' authentic
    history files: of those that branched from `tli` itself, the one that branched last (it
    holds the most of `tli`: a restore to a past time branches early, a later restore along
    `tli` to its end branches there; breaker 18 F1), else the first newer one at all (a
    restore to a point before `tli` began, or on an older branch, made it: the server left
    `tli` then too); None when the repository holds no newer timeline, or when every one is
    recorded abandoned (an undone restore: the server went back and writes on). A timeline
    that was left ends for good, so a target past its end is no "not archived yet"."""
    newer = sorted(int(f[:8], 16) for f in objects if f.endswith(".history") and int(f[:8], 16) > tli)
    if not newer:
        return None
    problems: list[Problem] = []
    abandoned = _abandoned(repo, key, sysid, repo.names(layout.abandoned_prefix(sysid)), problems)
    first = last = None
    for child in newer:
        text = _history(repo, key, sysid, objects, child, problems, {})
        entries = layout.parse_history(text) if text is not None and text not in abandoned.get(child, set()) else []
        if not entries:
            continue
        switch = dict(entries).get(tli)
        if switch is not None:
            if last is None or switch >= last[2]:
                last = (child, tli, switch)
            continue
        first = first or (child, *entries[-1])
    return last or first


def branched_before_end(tli: int, left: tuple[int, int, int], end_lsn: int | None) -> bool:
    """Whether the timeline that left `tli` (left_for's (child, parent, switch LSN)) branched
    from it before the segment `tli`'s archived WAL ends in (`end_lsn`): then it lacks what
    `tli` holds after the switch, and no timeline holds those commits."""
    _child, parent, switch = left
    return parent == tli and end_lsn is not None and switch <= end_lsn - layout.SEGMENT_BYTES


def left_text(tli: int, left: tuple[int, int, int], end_lsn: int | None = None) -> str:
    """Where timeline `tli` was left, from left_for's (child, parent, switch LSN): the child
    that branched from it, or the timeline the server moved to (a sibling or a later branch).
    `end_lsn`: where `tli`'s archived WAL ends; a child that branched before the segment it
    ends in is said to, since it lacks what `tli` holds after its switch."""
    child, parent, switch = left
    if branched_before_end(tli, left, end_lsn):
        return (f"the server left it for timeline {child}, which branched from it at {layout.lsn_text(switch)}, "
                f"before its end (timeline {child} lacks its later commits)")
    if parent == tli:
        return f"timeline {child} branched from it at {layout.lsn_text(switch)}"
    return (f"the server left it for timeline {child}, which branched from timeline {parent} at "
            f"{layout.lsn_text(switch)}")


def on_path(b: bb.BaseBackup, path: list[tuple[int, int | None]]) -> bool:
    """Whether base backup `b` lies on the timeline path `path` ([(tli, end LSN or None)], oldest
    first, as layout.history_path gives it): its timeline holds its WAL from its start to its
    stop there. A base backup taken on a branch a later restore abandoned (or past the point
    where its timeline was left) is not: recovery along `path` can't start from it."""
    def holding(position: int) -> int:
        return next((t for t, end in path if end is None or position < end), path[-1][0])

    start, stop = layout.lsn(b.start_lsn), layout.lsn(b.stop_lsn)
    return holding(start) == b.timeline and holding(max(start, stop - 1)) == b.timeline


def commits(plain_segment: bytes, file: str) -> list[tuple[int, dt.datetime]]:
    """(LSN, commit time) of every commit record that starts in one segment (pg_waldump)."""
    return [(at, when) for at, when, kind in xact_ends(plain_segment, file) if kind == "COMMIT"]


def xact_ends(plain_segment: bytes, file: str) -> list[tuple[int, dt.datetime, str]]:
    """(LSN, time, "COMMIT" | "ABORT") of every transaction-end record that starts in one
    segment, in LSN order (pg_waldump --rmgr=Transaction; prepared ones included)."""
    with tempfile.TemporaryDirectory(prefix="opsctl-waldump-") as tmp:
        Path(tmp, file).write_bytes(plain_segment)
        return segment_xact_ends(Path(tmp, file))


def segment_xact_ends(segment: Path) -> list[tuple[int, dt.datetime, str]]:
    """xact_ends of a segment file on disk (named as PostgreSQL names it)."""
    from opsctl.local.postgres import tool

    out = subprocess.run([tool("pg_waldump"), "--rmgr=Transaction", str(segment)],
                         capture_output=True, text=True, env={**os.environ, "TZ": "UTC", "LC_ALL": "C"})
    found = []
    for m in _XACT_END.finditer(out.stdout):
        when = dt.datetime.fromisoformat(m.group(3)).replace(tzinfo=dt.timezone.utc)
        found.append((layout.lsn(m.group(1)), when, m.group(2)))
    return found


def last_record(segment: Path) -> int | None:
    """The LSN where the last whole WAL record starting in the segment file `segment` starts
    (pg_waldump), None when none does. Recovery to a target LSN stops at the first record
    starting at or after it (xlogrecovery.c, recoveryStopsAfter): one after this is never reached."""
    from opsctl.local.postgres import tool

    out = subprocess.run([tool("pg_waldump"), str(segment)], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"})
    found = _RECORD.findall(out.stdout)
    return layout.lsn(found[-1]) if found else None


def first_record(stage: Path, tli: int, lsn: int) -> int | None:
    """The LSN of the first whole WAL record starting at or after `lsn` (on timeline `tli`) in
    the WAL files of the folder `stage` (pg_waldump --start, which finds the first record from a
    position, --limit 1); None when there is none. Recovery to a target LSN stops just after
    that record (recovery_target_inclusive): without one it replays all it has and never
    reaches the target (a record that runs into a segment the archive lacks is not whole)."""
    from opsctl.local.postgres import tool

    out = subprocess.run([tool("pg_waldump"), f"--path={stage}", f"--timeline={tli}",
                          f"--start={layout.lsn_text(lsn)}", "--limit=1"],
                         capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    found = _RECORD.search(out.stdout)
    return layout.lsn(found.group(1)) if found else None


def ends_at(stage: Path, tli: int, lsn: int) -> bool:
    """Whether the WAL in folder `stage` (timeline `tli`) ends at `lsn` rather than holding a
    record there that PostgreSQL refuses: after `lsn` its segment holds only zeros (what
    PostgreSQL writes after a segment switch), or the record there goes on into a segment
    `stage` lacks (pg_waldump --start: "could not find file"). Anything else there (pg_waldump
    finds no valid record at `lsn` and bytes follow it) is a damaged record: recovery stopped
    at it as it would at the end of the WAL."""
    from opsctl.local.postgres import tool

    out = subprocess.run([tool("pg_waldump"), f"--path={stage}", f"--timeline={tli}",
                          f"--start={layout.lsn_text(lsn)}", "--quiet"],
                         capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if out.returncode == 0 or "could not find file" in out.stderr:
        return True
    segment = stage / layout.segment(tli, layout.segno(lsn))
    try:
        with segment.open("rb") as fh:
            fh.seek(lsn % layout.SEGMENT_BYTES)
            while block := fh.read(pipeline.BLOCK):
                if block.count(0) != len(block):
                    return False
    except FileNotFoundError:
        return True  # nothing staged there: the WAL ends before it
    return True


def reaches(stage: Path, tli: int, lsn: int) -> bool:
    """Whether recovery to `lsn` on timeline `tli` can stop: `first_record` finds one."""
    return first_record(stage, tli, lsn) is not None


def inventory(repo, key, sysid: str, deep: bool = False, until: int | None = None, stage: Path | None = None,
              end_times: bool = True, progress=None, start_at: int | None = None,
              archived: str | None = None, live_path: list[tuple[int, int | None]] | None = None,
              timeline: int | None = None, queued: set[str] | frozenset[str] = frozenset(),
              findings: bool = True) -> Inventory:
    """The chains and windows of cluster `sysid`.

    deep: read and check every WAL object on the path (not only the ones that date windows).
    until: with deep, stop checking after this segment number (a restore needs no more).
    stage: write each checked WAL file's plaintext there (the restore's WAL source).
    start_at: only the segments from this number on, and only the base backups starting there
    (a restore from one base backup); off-path objects are then not checked.
    archived: the newest WAL file the live server reports archived (pg_stat_archiver's
    last_archived_wal): segments up to it missing from the repository are named, not taken for
    "not archived yet".
    live_path: the running server's own timeline path (base.server_path), when it is cluster
    `sysid`: followed instead of the repository's newest timeline when it is on an older one
    (the newer were abandoned); None: the newest timeline's history, as recovery_target_timeline
    'latest' follows it, passing over timelines recorded as abandoned (`abandon`).
    timeline: follow this timeline's history instead of either (the operator's choice, as
    PostgreSQL's recovery_target_timeline, pgBackRest's --target-timeline); UsageError when
    the repository holds nothing of it.
    queued: WAL files waiting in the live server's local queue: one absent from the repository
    is a QUEUED problem (not archived yet), not "missing"; it ends a window all the same, and
    does not make the inventory broken (`ok`), as WAL-G's wal-verify tells MISSING_DELAYED from
    MISSING_LOST.
    findings: (not deep) pass over what the last verify-chain found damaged (found_damaged), as
    `backup list` does; a caller that reads the tar itself (a restore, prune's proof) passes
    False, so a base backup repaired since is read sound rather than refused on a stale record.
    Base backups whose tar is missing, of another size than their record says, (deep, without
    start_at) fails its authenticated read, (findings) was found damaged by the last
    verify-chain, or whose incremental parent is unusable, are moved to bad_bases
    (whole_bases): no window starts at them.
    """
    names = repo.names(layout.root(sysid) + "/")
    refuse_misplaced(repo, names)
    bases, bad = bb.load_all(repo, sysid, key, {n: s for n, s in names.items() if n.startswith(layout.base_prefix(sysid))})
    unsealed = {bid for bid, why in bad.items() if why not in (bb.UNFINISHED, bb.INTERRUPTED)}
    if findings and not deep and bases:  # what the last verify-chain's read found; a deep read judges afresh
        found = found_damaged(repo, key, sysid)
        bad |= {b.id: found[b.id] for b in bases if b.id in found}
        bases = [b for b in bases if b.id not in found]
    damaged: dict[str, str] = {}
    unfit: dict[str, str] = {}
    bases = whole_bases(repo, key, bases, bad, names, read=deep and start_at is None, damaged=damaged, unfit=unfit)
    objects, strange = layout.parse_wal(sysid, names)
    dropped = {n[len(layout.dropped_prefix(sysid)):] for n in names if n.startswith(layout.dropped_prefix(sysid))}
    inv = Inventory(sysid, repo.url, bases, bad, [], objects=objects, damaged=damaged, unsealed=unsealed,
                    unfit=unfit)
    inv.problems += [Problem(n.rpartition("/")[2], "foreign object", f"{n} is not an archived WAL file") for n in strange]
    abandoned = _abandoned(repo, key, sysid, names, inv.problems)
    inv.path = _path(repo, key, sysid, objects, bases, inv.problems, inv.good, live_path, abandoned, timeline)
    # windows start only at base backups on that path: one on a branch a restore abandoned
    # starts none (its WAL beyond the fork is not on the path; counted, it read as missing)
    bases = [b for b in bases if on_path(b, inv.path)]
    if not bases:
        return inv
    first = min(layout.segno(layout.lsn(b.start_lsn)) for b in bases)
    if start_at is not None:
        first = start_at
        bases = [b for b in bases if layout.segno(layout.lsn(b.start_lsn)) >= start_at]
    present = [layout.parse_segment(f) for f in objects if len(f) == 24]
    on_path_segments = [n for tli, n in present if layout.timeline_of(n, inv.path) == tli]
    # the archive's end is the newest segment present, dropped by a full queue (its marker is in
    # the repository) or (`archived`) reported archived by the server: the ones missing before it
    # are gaps, never "not archived yet"
    ends = [layout.parse_segment(f[:24]) for f in dropped if len(f) == 24]
    if archived and len(archived) >= 24 and layout.WAL_FILE.fullmatch(archived[:24]):
        ends.append(layout.parse_segment(archived[:24]))
    # and the segments waiting in the local queue: the window ends at the first as QUEUED, not
    # at "the end of the archive" while commits sit only on the local disk (breaker 18 F3)
    ends += [layout.parse_segment(f) for f in queued if len(f) == 24 and layout.WAL_FILE.fullmatch(f)]
    on_path_segments += [n for tli, n in ends if layout.timeline_of(n, inv.path) == tli]
    last = max(on_path_segments + [first - 1] + [layout.segno(layout.lsn(b.stop_lsn)) for b in bases])
    bad_at: dict[int, Problem] = {}
    todo: list[tuple[str, list, int | None]] = []
    for n in range(first, last + 1):
        file = layout.segment(layout.timeline_of(n, inv.path), n)
        inv.segments.append(file)
        if file not in objects:
            kind = "dropped" if file in dropped else QUEUED if file in queued else "missing"
            detail = ("the local WAL queue was full when PostgreSQL archived it" if kind == "dropped" else
                      "not archived yet: it waits in the local WAL queue (the archiver is behind or stopped)"
                      if kind == QUEUED else
                      "not in the repository" + (f", though the server reports {archived} archived"
                                                 if archived and n <= layout.parse_segment(archived[:24])[1] else ""))
            bad_at[n] = Problem(file, kind, detail)
            continue
        if deep and (until is None or n <= until) and file not in inv.good:
            todo.append((file, objects[file], n))
    if deep and start_at is None:  # history files and off-path objects are checked too: a planted one is named
        for file, objs in sorted(objects.items()):
            if file not in inv.good and not (len(file) == 24 and file in inv.segments):
                todo.append((file, objs, None))
    if stage is not None:
        # recovery needs every timeline's history file, not only the segments: with
        # recovery_target_timeline = 'latest' it probes 00000002.history, 3, ... until one is
        # missing, and promotion takes the next timeline none of them names (without them a
        # second restore reused a timeline the repository already held)
        listed = {file for file, _objs, _n in todo}
        todo += [(file, objs, None) for file, objs in sorted(objects.items())
                 if file.endswith(".history") and file not in listed]
    _check_all(repo, key, sysid, todo, inv, bad_at, stage, progress)
    inv.problems += [bad_at[n] for n in sorted(bad_at)]
    _windows(repo, key, inv, bases, first, bad_at, stage, end_times)
    return inv


PARENT_MANIFEST = "/backup_manifest.zst"  # a base backup's standalone manifest: an incremental's input only


def whole_bases(repo, key, bases: list[bb.BaseBackup], bad: dict[str, str], names: dict[str, int],
                read: bool = False, damaged: dict[str, str] | None = None,
                unfit: dict[str, str] | None = None) -> list[bb.BaseBackup]:
    """The base backups of `bases` (oldest first) a restore can use: each stored object listed in
    `names` ({name: bytes}) with the size its record gives, (`read`) its whole object read and
    checked (SHA-256, authentication, zstd: the read a restore does), and an incremental's parent
    itself usable. The others go to `bad` ({id: why}), naming the object or parent at fault;
    those whose tar's read failed (what a listing can't see, and a restore can't get past) to
    `damaged` too. The standalone backup_manifest.zst is read by an incremental built on the
    base backup, never by a restore (the tar holds its own copy): one missing, resized or
    failing its read goes to `unfit` ({id: why}: no incremental is built on it), not `bad`
    (breaker 28 F1: a base backup that restores was called broken, and dropped)."""
    from opsctl.backup.pipeline import unpack

    good: list[bb.BaseBackup] = []
    # parents before their children by where their WAL starts, not by id: an id is the wall
    # clock's, and a clock stepped back (an NTP step, a VM restored from a snapshot) gave a
    # parent a later id than its incrementals, all then "missing their parent" (breaker 27 F7)
    for b in sorted(bases, key=lambda b: (layout.lsn(b.start_lsn), b.id)):
        why = None
        if not b.objects:
            why = "its record names no stored object"
        for obj in b.objects:
            if why:
                break
            fault = None
            if obj.name not in names:
                fault = f"its object {obj.name} is missing"
            elif names[obj.name] != obj.size:
                fault = f"its object {obj.name} holds {names[obj.name]} bytes, its record says {obj.size}"
            elif read:
                try:
                    # read as the restore reads it (unpack.extract): held to the size its record
                    # gives, nothing after its zstd frame (breaker 62 F2: verify passed what the
                    # restore refused)
                    args = (repo.get(obj.name), obj.name, obj.sha256, obj.size, key if obj.encrypted else None)
                    for _ in (pipeline.unpack_into(*args, obj.raw_size) if obj.raw_size else unpack(*args)):
                        pass
                except (IntegrityError, NotFound, OperationFailed) as exc:
                    # the error names the object already: said once
                    fault = f"its object {obj.name} fails its check: {str(exc).removeprefix(obj.name).lstrip(': ')}"
                    if damaged is not None and not obj.name.endswith(PARENT_MANIFEST):
                        damaged[b.id] = fault  # kept (record_findings): a restore reads it
            if fault and obj.name.endswith(PARENT_MANIFEST):
                if unfit is not None:
                    unfit[b.id] = fault
            else:
                why = fault
        if why is None and b.parent and b.parent not in {g.id for g in good}:
            why = f"its parent base backup {b.parent} is " + (
                "unusable" if b.parent in bad else "missing")
        if why:
            bad[b.id] = why
        else:
            good.append(b)
    kept = {g.id for g in good}
    return [b for b in bases if b.id in kept]  # in the caller's order


def record_findings(repo, key, sysid: str, damaged: dict[str, str], at: dt.datetime,
                    unfit: dict[str, str] | None = None) -> None:
    """Keep what a whole read of cluster `sysid`'s base backups found (`damaged`: {id: why},
    Inventory.damaged; {} when every one read whole) at `layout.verified`, sealed like a base
    backup's record (HMAC under `key`; a plain SHA-256 without one), replacing the last.

    A tar replaced by other bytes of the same size passes every check by listing; only a read
    finds it, and reading every base backup is verify-chain's (breaker 25 F1, F2). Kept, the
    finding makes `newest_usable_base` pass the damaged base backup over until a later whole
    read finds it sound: the `wal archive` health check then says no restore can start from it,
    and an incremental base backup is not built on it. `unfit` (Inventory.unfit): base backups
    whose standalone manifest failed, which restore but take no incremental."""
    body = {"version": 1, "sysid": sysid, "checked_at": at.astimezone(dt.timezone.utc).isoformat(),
            "damaged": dict(sorted(damaged.items())), "unfit": dict(sorted((unfit or {}).items())),
            "key_id": key.id if key else None}
    body["mac"] = _findings_mac(key, body)
    repo.put_bytes(layout.verified(sysid), json.dumps(body, sort_keys=True, indent=1).encode())


_FINDINGS_MAX = 16 << 20  # bytes: a finding is a line per damaged base backup


def _findings_mac(key, body: dict) -> str:
    text = b"opsctl-verified\0" + json.dumps({k: v for k, v in body.items() if k != "mac"}, sort_keys=True,
                                             separators=(",", ":")).encode()
    return key.mac(text) if key else "sha256:" + hashlib.sha256(text).hexdigest()


NOT_AUTHENTIC = ("verify-chain's record of damaged base backups ({name}) is not authentic (edited, forged, "
                 "sealed by another key or damaged): what it found is not heeded; run 'opsctl backup verify-chain' "
                 "to read every base backup again and write it anew (anything there that is not a file, such as a "
                 "folder, moved aside first)")


def read_findings(repo, key, sysid: str) -> tuple[dict[str, str], dict[str, str], str | None]:
    """({base backup id: why} of what the last verify-chain found damaged (`record_findings`),
    each why saying so and when; {id: why} of those it found unfit to take an incremental (their
    standalone manifest); why the record was ignored, or None). The record is ignored ({}, {},
    NOT_AUTHENTIC, also logged) when it is not authentic: sealed by another key, for another
    cluster, edited, not JSON, over 16 MiB, a folder. ({}, {}, None) when there is none."""
    import hmac

    from opsctl.errors import OpsError

    name = layout.verified(sysid)
    try:
        raw = bytearray()
        for chunk in repo.get(name):
            raw += chunk
            if len(raw) > _FINDINGS_MAX:  # no record of ours is this long: not read further
                raise ValueError("too long")
        body = json.loads(raw)
        authentic = (isinstance(body, dict) and body.get("sysid") == sysid and body.get("key_id") == (key.id if key else None)
                     and isinstance(body.get("mac"), str) and hmac.compare_digest(body["mac"], _findings_mac(key, body))
                     and isinstance(body.get("damaged"), dict))
    except NotFound:
        return {}, {}, None
    except (ValueError, TypeError, RecursionError, OSError, OpsError):  # not JSON, a folder, a link...
        authentic = False
    if not authentic:
        why = NOT_AUTHENTIC.format(name=name)
        log.warning("%s", why)
        return {}, {}, why
    when = str(body.get("checked_at", ""))[:16].replace("T", " ")
    unfit = body.get("unfit") if isinstance(body.get("unfit"), dict) else {}
    # a record is a finding at a time, not a fact about now: say how to renew it (breaker 28 F8: a stale
    # record, or an old one put back, says nothing restores while a repaired base backup does)
    again = "; if it was repaired since, run 'opsctl backup verify-chain'"
    return ({str(bid): f"verify-chain found it damaged ({when} UTC{again}): {why}" for bid, why in body["damaged"].items()},
            {str(bid): f"verify-chain found ({when} UTC) {why}" for bid, why in unfit.items()}, None)


def found_damaged(repo, key, sysid: str) -> dict[str, str]:
    """What the last verify-chain found damaged (read_findings), {} when nothing is heeded."""
    return read_findings(repo, key, sysid)[0]


def newest_usable_base(repo, sysid: str, key, names: dict[str, int],
                       path: list[tuple[int, int | None]] | None,
                       for_parent: bool = False) -> tuple[bb.BaseBackup | None, dict[str, str]]:
    """(the newest base backup of cluster `sysid` a restore along timeline path `path` can start
    from, {id: why not} for the newer ones passed over). Usable: complete and authentic
    (`bb.load_all`), every object listed in `names` ({name: bytes} of the `pitr/<sysid>/base/`
    listing) at its recorded size and an incremental's parents likewise (`whole_bases`, by
    listing: nothing read but records), not found damaged by the last verify-chain
    (`read_findings`: one small read), and `on_path` (`path` None: any); `for_parent` (an
    incremental's parent), its standalone manifest listed whole and not found failing by that
    verify-chain either (`whole_bases`' unfit). None when there is no
    such base backup. Records are read newest first, stopping at the first usable one and its
    parents, so the cost is that of the newest few, not of the whole history.

    The one answer to "which base backup would a restore start from": an incremental base
    backup's parent and the `wal archive` health check's "WAL since the newest base backup"
    both ask it (a base backup whose tar is gone restores nothing: breaker 22 left the check
    counting one)."""
    head = layout.base_prefix(sysid)
    folders: dict[str, dict[str, int]] = {}
    for name, size in names.items():
        if name.startswith(head) and "/" in name[len(head):]:
            folders.setdefault(name[len(head):].partition("/")[0], {})[name] = size
    loaded: dict[str, bb.BaseBackup | None] = {}
    bad: dict[str, str] = {}
    damaged, recorded_unfit, _ = read_findings(repo, key, sysid) if folders else ({}, {}, None)

    def load(bid: str) -> bb.BaseBackup | None:
        if bid in damaged:
            loaded[bid], bad[bid] = None, damaged[bid]
        if bid not in loaded:
            good, why = bb.load_all(repo, sysid, key, folders.get(bid, {}))
            loaded[bid] = good[0] if good else None
            bad.update(why)
        return loaded[bid]

    passed: dict[str, str] = {}
    for bid in sorted(folders, reverse=True):  # ids sort by time
        b = load(bid)
        if b is None:
            passed[bid] = bad.get(bid, "unreadable")
            continue
        if path is not None and not on_path(b, path):
            continue
        lineage = [b]
        while lineage[-1].parent and lineage[-1].parent not in {x.id for x in lineage}:
            parent = load(lineage[-1].parent)
            if parent is None:
                break
            lineage.append(parent)
        unfit: dict[str, str] = {}
        if any(g.id == b.id for g in whole_bases(repo, key, lineage[::-1], bad, names, unfit=unfit)):
            why_not = (unfit.get(bid) or recorded_unfit.get(bid)) if for_parent else None
            if not why_not:
                return b, passed
            passed[bid] = f"{why_not}: no incremental is built on it (a restore does not read it)"
            continue
        cause, seen = bid, {bid}  # down the parents to the one at fault (breaker 25 F11: only the newest was named)
        while (rec := loaded.get(cause)) is not None and rec.parent in bad and rec.parent not in seen:
            cause = rec.parent
            seen.add(cause)
        passed[bid] = bad[bid] + (f" ({cause}: {bad[cause]})" if cause != bid else "")
    return None, passed


def _open_objects(repo, key, sysid: str, file: str, objs,
                  stage: Path | None) -> tuple[list[tuple[object, str | None]], tuple | None]:
    """([(object, error or None)], (first good object, its plaintext's temporary file in
    `stage`, or None without a stage) or None). The caller renames or removes the file."""
    results, good = [], None
    for n, obj in enumerate(objs):
        tmp = stage / f".{file}.{n}.tmp" if stage is not None and good is None else None
        try:
            if tmp is not None:
                tmp.unlink(missing_ok=True)  # left by a worker of an earlier, interrupted check
            check_wal(repo, key, sysid, obj, into=tmp)
        except IntegrityError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            results.append((obj, str(exc)))
            continue
        results.append((obj, None))
        if good is None:
            good = (obj, tmp)
    return results, good


def _check_all(repo, key, sysid: str, todo: list, inv: Inventory, bad_at: dict, stage, progress,
               workers: int = 2, chunk: int = 4) -> None:
    """Read and check `todo`'s objects two at a time (hashing, AES-GCM and zstd run outside the
    GIL), a few segments ahead at most, and apply the verdicts in order. `stage`: each file's
    first good object is written there by its worker (check_wal) and renamed in order here."""
    from concurrent.futures import ThreadPoolExecutor

    if stage is not None:
        stage.mkdir(parents=True, exist_ok=True, mode=0o700)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            for (file, _objs, n), (results, good) in zip(part, pool.map(
                    lambda item: _open_objects(repo, key, sysid, item[0], item[1], stage), part)):
                for _obj, error in results:
                    if error is not None:
                        inv.problems.append(Problem(file, "not authentic", error))
                    else:
                        inv.checked += 1
                    if progress:
                        progress(1)
                if good is not None:
                    inv.good[file] = good[0]
                    if stage is not None:
                        good[1].replace(stage / file)
                elif n is not None:
                    bad_at[n] = next(p for p in reversed(inv.problems) if p.file == file)
                    inv.problems.remove(bad_at[n])


def stage_file(stage: Path, file: str, plain: bytes) -> None:
    """Write one checked WAL file's plaintext `plain` (a timeline history: segments go through
    stage_wal) as `stage/file`, whole, by rename. Decrypted WAL is the database's data: 0600
    files in a 0700 folder."""
    stage.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = stage / f".{file}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(plain)
    tmp.replace(stage / file)


def stage_wal(repo, key, sysid: str, file: str, objs, stage: Path):
    """Stage WAL file `file` from the first of its objects `objs` that is authentic (check_wal:
    a segment's zero MiBs left holes) as `stage/file`, by rename; that object, or None when
    none is (nothing staged). OSError for `stage`."""
    stage.mkdir(parents=True, exist_ok=True, mode=0o700)
    _results, good = _open_objects(repo, key, sysid, file, objs, stage)
    if good is None:
        return None
    good[1].replace(stage / file)
    return good[0]


def _windows(repo, key, inv: Inventory, bases, first: int, bad_at: dict[int, Problem], stage,
             end_times: bool) -> None:
    """One window per stretch of good segments that starts at a base backup."""
    by_end: dict[int, Window] = {}
    for b in sorted(bases, key=lambda b: b.finished_at):
        start = layout.segno(layout.lsn(b.start_lsn))
        stop = layout.segno(layout.lsn(b.stop_lsn))
        gap = next((n for n in sorted(bad_at) if n >= start), None)
        if gap is not None and gap <= stop:
            continue  # this base backup can't even become consistent
        end = (gap - 1) if gap is not None else first + len(inv.segments) - 1
        if end in by_end:
            continue  # an older base reaches the same end: the window starts there
        # the archived WAL ends with segment `end`: known from the listing, no WAL read (a
        # restore to an LSN checks against it without dating the window)
        by_end[end] = Window(b.id, b.finished_at, layout.lsn(b.start_lsn), inv.segments[end - first],
                             end_lsn=(end + 1) * layout.SEGMENT_BYTES - 1,
                             stopped_by=bad_at.get(gap) if gap is not None else None)
    inv.windows = [by_end[e] for e in sorted(by_end)]
    if not end_times:
        return
    for w in inv.windows:
        _date_end(repo, key, inv, w, first, stage)


def _date_end(repo, key, inv: Inventory, w: Window, first: int, stage) -> None:
    """The newest transaction end (commit or abort) and the newest commit in the window, walking
    back from its last segment to its base (usually both are in the last segment read)."""
    base = next(b for b in inv.bases if b.id == w.base_id)
    end_n = inv.segments.index(w.end_segment) + first
    w.end = base.finished_at
    for n in range(end_n, layout.segno(w.start_lsn) - 1, -1):
        file = inv.segments[n - first]
        plain = None
        if stage is not None and file in inv.good and (stage / file).is_file():
            plain = (stage / file).read_bytes()
        else:
            for obj in inv.objects.get(file, []):
                try:
                    plain = open_wal(repo, key, inv.sysid, obj)
                    inv.good.setdefault(file, obj)
                    break
                except IntegrityError:
                    continue
        if plain is None:
            return
        found = xact_ends(plain, file)
        if found and w.last_xact is None:
            w.last_xact = max(when for _, when, _ in found)
            w.end = max(w.last_xact, base.finished_at)
        done = [when for _, when, kind in found if kind == "COMMIT"]
        if done:
            w.last_commit = max(done)
            return
