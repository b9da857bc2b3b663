"""Physical base backups: full with `pg_basebackup`, incremental with `pg_basebackup --incremental`.

A base backup is one tar stream (`pg_basebackup -Ft -D - -X none`: the WAL it needs comes
from the archive) that goes straight through the backup pipeline (zstd, AES-256-GCM, SHA-256)
into the repository, never staged on disk. On its way a small tar reader picks out
`backup_label` (where replay starts) and `backup_manifest` (PostgreSQL's list of the files and
the WAL range), and the manifest is also stored on its own, because the next incremental
backup needs it (`--incremental=OLD_MANIFEST`) and should not read the whole tar to get it.
An incremental backup holds only the blocks changed since its parent, which the server finds
in its WAL summaries (`summarize_wal=on`); at restore, opsctl.pitr.unpack applies the chain
into one data directory as `pg_combinebackup` would.

    pitr/<sysid>/base/<id>/in-progress.json   written first (host, pid, start)
    pitr/<sysid>/base/<id>/base.tar.zst       the tar stream
    pitr/<sysid>/base/<id>/backup_manifest.zst
    pitr/<sysid>/base/<id>/base.json          the record, written last and MAC'd like a manifest

`<id>` has the backup id format (YYYYMMDDTHHMMSSZ-xxxx), so ids are checked the same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opsctl.backup.manifest import StoredObject
from opsctl.errors import OperationFailed, UsageError
from opsctl.pitr import layout

log = logging.getLogger("opsctl.pitr.base")
RECORD = "base.json"
IN_PROGRESS = "in-progress.json"
# why a folder without its record is no base backup: its process may still run (this host's
# and alive, or another host's not yet LEASE old), or it provably died (`dead`)
UNFINISHED = "running or interrupted (no base.json)"
INTERRUPTED = "interrupted (no base.json; its process is gone): `backup prune-chain` removes it"
# a base backup started on another host is taken for dead after this long (its process can't be
# asked); the logical backups' rule (opsctl.backup.catalog.STALE_AFTER)
LEASE = dt.timedelta(hours=24)
KINDS = ("full", "incremental", "auto")


def check_kind(kind: str) -> None:
    """UsageError unless `kind` is one of KINDS."""
    if kind not in KINDS:
        raise UsageError(f"base backup kind '{kind}' is not one of {', '.join(KINDS)}")
FULL_EVERY = dt.timedelta(days=7)  # kind auto: a full base backup when the chain's full is older


class DamagedBase(OperationFailed):
    """A base backup whose stored tar failed its check while being read (`base_id`, `why`)."""

    def __init__(self, base_id: str, why: str):
        super().__init__(f"base backup {base_id} is damaged ({why}); nothing live was changed")
        self.base_id, self.why = base_id, why


class BaseBackup(BaseModel):
    """A base backup's record (`base.json`): its id, cluster, kind and parent, the WAL range
    (`start_lsn` where replay starts, `stop_lsn` where it is consistent), times (UTC), the stored
    objects with their SHA-256, sizes in bytes, `seconds` taken, and its MAC under the backup key
    (SHA-256 when unencrypted)."""
    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = 1
    id: str
    sysid: str
    kind: Literal["full", "incremental"]
    parent: str | None = None
    timeline: int
    start_lsn: str
    stop_lsn: str
    started_at: dt.datetime
    finished_at: dt.datetime
    server_version: str
    objects: list[StoredObject] = Field(default_factory=list)
    raw_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    key_id: str | None = None
    mac: str | None = None

    def _canonical(self) -> bytes:
        return b"opsctl-base\0" + json.dumps(self.model_dump(mode="json", exclude={"mac"}), sort_keys=True,
                                             separators=(",", ":")).encode()

    def seal(self, key) -> None:
        """Set `key_id` and `mac` over every other field (HMAC under `key`, plain SHA-256 when
        None)."""
        self.key_id = key.id if key else None
        self.mac = key.mac(self._canonical()) if key else "sha256:" + hashlib.sha256(self._canonical()).hexdigest()

    def authentic(self, key) -> bool:
        """True when the record was sealed by `key` (same key id) and no field changed since."""
        if (key.id if key else None) != self.key_id:
            return False
        want = key.mac(self._canonical()) if key else "sha256:" + hashlib.sha256(self._canonical()).hexdigest()
        return bool(self.mac) and hmac.compare_digest(self.mac, want)

    def object(self, suffix: str) -> StoredObject:
        """The stored object whose name ends with `suffix` (StopIteration when none does)."""
        return next(o for o in self.objects if o.name.endswith(suffix))


class _TarWatch:
    """Reads a ustar stream as it passes and keeps the members it was asked for (small ones)."""

    def __init__(self, wanted: tuple[str, ...]):
        self.wanted, self.files = wanted, {}
        self._head, self._skip, self._capture, self._name, self._size = bytearray(), 0, None, "", 0

    def feed(self, data: bytes) -> None:
        """Read the next bytes of the stream (any block size)."""
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                if self._capture is not None:
                    self._capture += data[i:i + take]
                self._skip -= take
                i += take
                if not self._skip and self._capture is not None:
                    self.files[self._name] = bytes(self._capture[:self._size])
                    self._capture = None
                continue
            need = 512 - len(self._head)
            self._head += data[i:i + need]
            i += min(need, n - i)
            if len(self._head) < 512:
                return
            h, self._head = bytes(self._head), bytearray()
            if not h.strip(b"\0"):
                continue  # end-of-archive blocks
            name = h[0:100].rstrip(b"\0").decode(errors="replace")
            prefix = h[345:500].rstrip(b"\0").decode(errors="replace")
            name = f"{prefix}/{name}" if prefix else name
            size = int.from_bytes(h[125:136], "big") if h[124] & 0x80 else int(h[124:136].strip(b"\0 ") or b"0", 8)
            self._skip = (size + 511) // 512 * 512
            if name in self.wanted:
                self._name, self._size, self._capture = name, size, bytearray()
                if not self._skip:
                    self.files[name], self._capture = b"", None


class _Tee:
    """A reader over pg_basebackup's stdout that shows every block to a _TarWatch."""

    def __init__(self, raw, watch: _TarWatch):
        self.raw, self.watch = raw, watch

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.watch.feed(data)
        return data


# -- the catalog of base backups ------------------------------------------------------------

def dead(repo, folder: str, now: dt.datetime) -> bool:
    """Whether the unfinished base backup in `folder` (no base.json) is provably not running: its
    start record (IN_PROGRESS: host, pid, started_at) is missing or unreadable, names a
    process of this host that is gone or started after it (the PID reused), or another host and
    is older than LEASE. `now` is UTC."""
    import psutil

    from opsctl.backup.repository import NotFound

    try:
        info = json.loads(repo.get_bytes(folder + IN_PROGRESS))
        started = dt.datetime.fromisoformat(info["started_at"])
        host, pid = info["host"], int(info["pid"])
    except (NotFound, OperationFailed, ValueError, KeyError, TypeError):
        return True  # written before anything else: without it nothing runs there
    if host != socket.gethostname():
        return now - started > LEASE
    try:
        return psutil.Process(pid).create_time() > started.timestamp() + 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


NOT_A_FILE = "base.json is not a file (objects stored under its name): check, then remove by hand"


def record_shadowed(rests: set[str]) -> bool:
    """Whether a base backup folder's names (`rests`, relative to the folder) hold objects *under*
    base.json: a record that is a folder is neither a record nor the absence of one. Taken for
    an interrupted base backup, its sound tar was deleted by prune-chain (breaker 30 F6)."""
    return any(r.startswith(RECORD + "/") for r in rests)


def load_all(repo, sysid: str, key, names: dict[str, int] | None = None) -> tuple[list[BaseBackup], dict[str, str]]:
    """(authentic complete base backups oldest first, {id: why not usable} for the others); an
    unfinished one is UNFINISHED while it may still run, INTERRUPTED once provably dead."""
    from opsctl.backup.repository import NotFound

    names = repo.names(layout.base_prefix(sysid)) if names is None else names
    head = layout.base_prefix(sysid)
    folders: dict[str, set[str]] = {}
    for name in names:
        if name.startswith(head) and "/" in name[len(head):]:
            bid, _, rest = name[len(head):].partition("/")
            folders.setdefault(bid, set()).add(rest)
    good, bad = [], {}
    now = dt.datetime.now(dt.timezone.utc)
    for bid in sorted(folders):
        if record_shadowed(folders[bid]):
            bad[bid] = NOT_A_FILE
            continue
        if RECORD not in folders[bid]:
            bad[bid] = INTERRUPTED if dead(repo, f"{head}{bid}/", now) else UNFINISHED
            continue
        try:
            rec = BaseBackup.model_validate_json(repo.get_bytes(f"{head}{bid}/{RECORD}"))
        except (ValidationError, NotFound):
            bad[bid] = "base.json is damaged"
            continue
        if rec.id != bid or rec.sysid != sysid or not rec.authentic(key):
            # said as it is: another cluster's or another folder's record is a copy, not a forgery
            # (breaker 28 F5); either way it is never used, nor removed by opsctl
            where = (f"belongs to cluster {rec.sysid}" if rec.sysid != sysid else
                     f"belongs to base backup {rec.id}" if rec.id != bid else "")
            bad[bid] = ("base.json fails its authentication check (" + (f"{where}: copied here?" if where else
                        "not sealed by this repository's key") + ")")
            continue
        good.append(rec)
    return good, bad


def chain_of(backups: list[BaseBackup], tip: BaseBackup) -> list[BaseBackup]:
    """[full, incremental, ..., tip]: the backups a restore of `tip` unpacks (opsctl.pitr.unpack.chain)."""
    by_id = {b.id: b for b in backups}
    chain = [tip]
    while chain[0].parent:
        parent = by_id.get(chain[0].parent)
        if parent is None:
            raise OperationFailed(f"base backup {tip.id} needs {chain[0].parent}, which is missing or damaged")
        chain.insert(0, parent)
    return chain


# -- taking one -----------------------------------------------------------------------------

def _label(text: str) -> tuple[int, int]:
    import re

    start = re.search(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", text)
    tli = re.search(r"START TIMELINE: (\d+)", text)
    if not start or not tli:
        raise OperationFailed("pg_basebackup's backup_label has no START WAL LOCATION/TIMELINE")
    return layout.lsn(start.group(1)), int(tli.group(1))


def _full_under(repo, key, sysid: str, names: dict[str, int], b: BaseBackup) -> BaseBackup:
    """The full base backup an incremental `b` is built on (down its parents; `b` itself when
    full). `b` came from chain.newest_usable_base, so every parent is there and authentic."""
    seen = {b.id}
    while b.kind == "incremental" and b.parent and b.parent not in seen:
        folder = f"{layout.base_prefix(sysid)}{b.parent}/"
        good, _ = load_all(repo, sysid, key, {n: size for n, size in names.items() if n.startswith(folder)})
        if not good:
            break
        b = good[0]
        seen.add(b.id)
    return b


class SummariesMissing(OperationFailed):
    """pg_basebackup --incremental refused: the server's WAL summaries have a gap between the
    parent's start and now (PostgreSQL: "WAL summaries are required on timeline N ... but the
    summaries for that timeline and LSN range are incomplete")."""


_SUMMARY_GAP = re.compile(r"WAL summaries are required on timeline (\d+) from \S+ to \S+, but.*?"
                          r"first unsummarized LSN in this range is ([0-9A-F]+/[0-9A-F]+)", re.S)


def take(repo, key, conninfo: str, kind: str = "full", level: int = 1, report=None,
         env: dict[str, str] | None = None, full_every: dt.timedelta = FULL_EVERY) -> BaseBackup:
    """One base backup of the server at `conninfo` (a replication-capable role) into `repo`
    (see _take). `kind` auto whose incremental the server refuses for a gap in its WAL
    summaries takes a full one instead, and says why (breaker 36 F3: after an in-place restore
    to 'latest', its switch at a segment boundary, PostgreSQL left the new timeline's first
    bytes unsummarized, and every nightly --auto failed until a person took a full one);
    `kind` incremental raises SummariesMissing, one line saying to take a full one."""
    try:
        return _take(repo, key, conninfo, kind, level, report, env, full_every)
    except SummariesMissing as exc:
        if kind != "auto":
            raise
        log.warning("base backup kind auto: full, since %s", exc)
        return _take(repo, key, conninfo, "full", level, report, env, full_every)


def _take(repo, key, conninfo: str, kind: str, level: int, report, env: dict[str, str] | None,
          full_every: dt.timedelta) -> BaseBackup:
    """One base backup of the server at `conninfo` (a replication-capable role) into `repo`.

    `kind` incremental needs an earlier base backup of the same cluster (its parent is the
    newest one a restore can use: chain.newest_usable_base) and `summarize_wal=on` on the
    server. `kind` auto (a schedule's choice) takes an incremental one when it can and the
    full base backup under its parent started less than `full_every` ago, else a full one:
    the chain a restore combines stays at most a week of incrementals long, as pgBackRest's
    weekly full and daily incremental schedule keeps it. Raises UsageError for a bad kind or a
    missing parent, OperationFailed when pg_basebackup fails; what was written is removed.
    """
    import psycopg

    from opsctl.backup import catalog
    from opsctl.backup.pipeline import StreamStats, pack
    from opsctl.local.postgres import tool
    from opsctl.redact import credentials

    check_kind(kind)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            sysid, version, summarize = conn.execute(
                "select system_identifier::text, current_setting('server_version'), "
                "current_setting('summarize_wal') from pg_control_system()").fetchone()
    except psycopg.Error as exc:
        raise OperationFailed(f"can't reach PostgreSQL for a base backup: {credentials(str(exc)).strip()}") from None
    parent = None
    auto, kind = kind == "auto", "incremental" if kind == "auto" else kind
    if auto and summarize != "on":
        kind = "full"
    if kind == "incremental":
        if summarize != "on":
            raise UsageError("an incremental base backup needs summarize_wal=on on the server; "
                             "take a full one, or restart the server with WAL summaries")
        from opsctl.pitr.chain import newest_usable_base

        # a parent whose tar is gone, found damaged by verify-chain, or on a branch a restore
        # abandoned restores nothing: an incremental on it would restore nothing either
        names = repo.names(layout.base_prefix(sysid))
        parent, passed = newest_usable_base(repo, sysid, key, names, server_path(conninfo), for_parent=True)
        unusable = "; ".join(f"{bid}: {why}" for bid, why in passed.items() if why not in (UNFINISHED, INTERRUPTED))
        parent_manifest = None
        if parent is not None:  # read before anything is written: one that fails is said, or (auto) passed over
            from opsctl.backup.repository import NotFound

            try:
                parent_manifest = fetch_plain(repo, parent.object("backup_manifest.zst"), key)
            except (OperationFailed, NotFound) as exc:  # IntegrityError is one: damaged at its size since listed
                if not auto:
                    raise OperationFailed(f"base backup {parent.id}'s backup_manifest.zst, which an incremental on "
                                          f"it reads, can't be read ({exc}); a restore does not read it: take a full "
                                          "base backup, or 'opsctl backup base --auto'") from None
                unusable = f"{parent.id}: its backup_manifest.zst fails its check ({exc})"
                parent = None  # breaker 28 F7: every nightly failed here, on the same parent
        chosen = ""
        if auto and parent is None:
            chosen = "full: no base backup to build an incremental on" + (f" ({unusable})" if unusable else "")
        elif auto and (root := _full_under(repo, key, sysid, names, parent)).started_at \
                < dt.datetime.now(dt.timezone.utc) - full_every:
            chosen = f"full: the full base backup under {parent.id}, {root.id}, is over {full_every.days} days old"
        if chosen:
            kind, parent, unusable = "full", None, ""
        elif parent is None:
            raise UsageError(f"no base backup of this cluster (system {sysid}) on the server's timeline history "
                             "to build an incremental one on" + (f" that a restore can use ({unusable})" if unusable
                                                                 else "") + "; take a full one first")
        if unusable:
            log.warning("building on base backup %s, the newest a restore can use; passed over: %s", parent.id, unusable)
        if auto:
            log.info("base backup kind auto: %s", chosen or f"incremental on {parent.id}")
    started = dt.datetime.now(dt.timezone.utc)
    began = time.monotonic()
    bid = catalog.new_id(started)
    folder = f"{layout.base_prefix(sysid)}{bid}/"
    repo.put_bytes(folder + IN_PROGRESS, catalog.marker(started))
    try:
        with tempfile.TemporaryDirectory(prefix="opsctl-base-") as tmp:
            argv = [tool("pg_basebackup"), "-d", conninfo, "-D", "-", "-Ft", "-X", "none", "-c", "fast",
                    "--manifest-checksums=CRC32C"]
            if parent is not None:
                old = Path(tmp) / "parent_manifest"
                old.write_bytes(parent_manifest)
                argv.append(f"--incremental={old}")
            watch = _TarWatch(("backup_label", "backup_manifest"))
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            try:
                stats = StreamStats()
                tar_name = folder + "base.tar.zst"
                repo.put(tar_name, pack(_Tee(proc.stdout, watch), level, key, stats,
                                        report("base backup", None) if report else None))
                err = proc.stderr.read().decode(errors="replace")
                if proc.wait() != 0:
                    if parent is not None and (gap := _SUMMARY_GAP.search(err)):
                        raise SummariesMissing(
                            f"the server has no WAL summary of timeline {gap[1]} from {gap[2]}, which an "
                            f"incremental base backup on {parent.id} needs (a timeline switch, such as an "
                            "in-place restore or a failover, can leave that gap); take a full one with "
                            "'opsctl backup base' ('--auto' does so by itself)")
                    raise OperationFailed(f"pg_basebackup failed: {credentials(err.strip())[-400:]}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            objects = [StoredObject(name=tar_name, size=stats.stored_bytes, sha256=stats.sha256,
                                    raw_size=stats.raw_bytes, encrypted=key is not None, compressed=True)]
            if "backup_manifest" not in watch.files or "backup_label" not in watch.files:
                raise OperationFailed("pg_basebackup's stream had no backup_manifest/backup_label")
            start, tli = _label(watch.files["backup_label"].decode())
            ranges = json.loads(watch.files["backup_manifest"])["WAL-Ranges"]
            stop = max(layout.lsn(r["End-LSN"]) for r in ranges)
            mstats = StreamStats()
            import io

            man_name = folder + "backup_manifest.zst"
            repo.put(man_name, pack(io.BytesIO(watch.files["backup_manifest"]), level, key, mstats, threads=0))
            objects.append(StoredObject(name=man_name, size=mstats.stored_bytes, sha256=mstats.sha256,
                                        raw_size=mstats.raw_bytes, encrypted=key is not None, compressed=True))
        rec = BaseBackup(id=bid, sysid=sysid, kind=kind, parent=parent.id if parent else None, timeline=tli,
                         start_lsn=layout.lsn_text(start), stop_lsn=layout.lsn_text(stop), started_at=started,
                         finished_at=dt.datetime.now(dt.timezone.utc), server_version=version, objects=objects,
                         raw_bytes=sum(o.raw_size or 0 for o in objects), stored_bytes=sum(o.size for o in objects),
                         seconds=round(time.monotonic() - began, 3))
        rec.seal(key)
        repo.put_bytes(folder + RECORD, rec.model_dump_json().encode())  # last: now it exists
    except BaseException:
        repo.abort_uploads(folder)
        repo.delete_prefix(folder)
        raise
    repo.delete_prefix(folder + IN_PROGRESS)
    return rec


def server_path(conninfo: str) -> list[tuple[int, int | None]] | None:
    """The server's timeline path (layout.history_path of its current timeline's history file,
    read with pg_read_file), or None when it can't be read (a role without the right)."""
    import psycopg

    try:
        with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
            (name,) = conn.execute("select pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()
            tli = int(name[:8], 16)
            if tli == 1:
                return [(1, None)]
            (text,) = conn.execute("select pg_read_file(%s)", (f"pg_wal/{layout.history_file(tli)}",)).fetchone()
    except psycopg.Error:
        return None
    return layout.history_path(text, tli)


def fetch_plain(repo, obj: StoredObject, key) -> bytes:
    """The whole plain content of one small stored object (a backup_manifest), checked.

    Reads it into memory: for objects of a few MB, never a base tar. Raises what
    ``pipeline.unpack`` raises for a missing, altered or undecryptable object."""
    from opsctl.backup.pipeline import unpack

    return b"".join(unpack(repo.get(obj.name), obj.name, obj.sha256, obj.size, key if obj.encrypted else None))

