"""Names in the repository, WAL segment arithmetic, and the tag that authenticates each WAL object.

Everything of point-in-time recovery lives under `pitr/<system identifier>/` (a cluster made by
a new `initdb` has a new identifier, so two clusters never mix their segments):

    pitr/<sysid>/wal/<file>.<tag>.zst     one archived WAL file: a segment (24 hex digits), a
                                          timeline history (`00000002.history`), a backup
                                          history file or a `.partial` segment
    pitr/<sysid>/dropped/<file>           the local queue was full and PostgreSQL's file was not
                                          kept: a gap that `backup verify` names
    pitr/<sysid>/base/<id>/base.json      a base backup's record, written last (see base.py)
    pitr/<sysid>/abandoned/<tli>.<tag>    a timeline an undone in-place restore abandoned after
                                          its history was queued for the archive (chain.py)
    pitr/<sysid>/verified.json            what the last `backup verify-chain` found damaged by
                                          reading the base backups whole (sealed; chain.py)

Each WAL object is the pipeline's usual stream (zstd, then AES-256-GCM frames when the
repository is encrypted). Its name carries a tag, pgBackRest-style (it names WAL files
`<segment>-<sha1>`): the first 32 hex digits of HMAC-SHA256 under the backup key of
`<sysid>/<file>/<SHA-256 of the stored bytes>`. A planted object fails it (no key), so does a
flipped byte (other SHA-256) and a genuine segment renamed to another segment's name (other
file). In an unencrypted repository the tag is a plain SHA-256 of the same text: it catches
damage, not forgery.

Segment arithmetic is PostgreSQL's (xlog_internal.h): with 16 MiB segments a segment number
`n` on timeline `t` is named `%08X%08X%08X % (t, n // 256, n % 256)`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

PREFIX = "pitr"
SEGMENT_BYTES = 16 << 20  # initdb's default, which the embedded platform uses
SEGMENTS_PER_ID = 0x1_0000_0000 // SEGMENT_BYTES
WAL_FILE = re.compile(r"(?P<file>(?P<seg>[0-9A-F]{24})(?P<partial>\.partial)?|(?P<tli>[0-9A-F]{8})\.history|"
                      r"[0-9A-F]{24}\.[0-9A-F]{8}\.backup)")
OBJECT = re.compile(WAL_FILE.pattern + r"\.(?P<tag>[0-9a-f]{32})\.zst")


def root(sysid: str) -> str:
    """`pitr/<sysid>`: everything of one cluster."""
    return f"{PREFIX}/{sysid}"


def wal_prefix(sysid: str) -> str:
    """`pitr/<sysid>/wal/`: the archived WAL objects."""
    return f"{root(sysid)}/wal/"


def dropped_prefix(sysid: str) -> str:
    """`pitr/<sysid>/dropped/`: markers of WAL files a full queue did not keep."""
    return f"{root(sysid)}/dropped/"


def base_prefix(sysid: str) -> str:
    """`pitr/<sysid>/base/`: the base backups, one folder per id."""
    return f"{root(sysid)}/base/"


def abandoned_prefix(sysid: str) -> str:
    """`pitr/<sysid>/abandoned/`: markers of timelines no restore follows (chain.abandon)."""
    return f"{root(sysid)}/abandoned/"


# the folders of a cluster's root; under base/, each base backup's id is a folder too
FOLDERS = ("wal", "dropped", "base", "abandoned")


def misplaced(names) -> list[str]:
    """The listed `names` that stand where a folder of this layout belongs: `pitr/<x>` itself,
    `pitr/<sysid>/wal` (and the other FOLDERS), `pitr/<sysid>/base/<id>`. A file:// listing
    shows a symbolic link (or a folder it can't open) as an entry of its own, never descended,
    so one there hid everything under it without a word (breaker 52 K8); an S3 object of such a
    name is no more opsctl's."""
    found = []
    for name in names:
        parts = name.split("/")
        if parts[0] == PREFIX and (len(parts) == 2 or (len(parts) == 3 and parts[2] in FOLDERS)
                                   or (len(parts) == 4 and parts[2] == "base")):
            found.append(name)
    return sorted(found)


def verified(sysid: str) -> str:
    """`pitr/<sysid>/verified.json`: the last verify-chain's findings (chain.record_findings)."""
    return f"{root(sysid)}/verified.json"


ABANDONED = re.compile(r"(?P<tli>[0-9A-F]{8})\.(?P<tag>[0-9a-f]{32})")


def abandoned_file(tli: int) -> str:
    """The file name an abandoned-timeline marker's tag covers: `0000000N.abandoned`."""
    return f"{tli:08X}.abandoned"


def tag(key, sysid: str, file: str, sha256: str) -> str:
    """The 32-hex-digit tag of a WAL object (HMAC under `key`; SHA-256 without one)."""
    text = f"{sysid}/{file}/{sha256}".encode()
    if key is None:
        return hashlib.sha256(b"opsctl-wal\0" + text).hexdigest()[:32]
    return hmac.new(key.derive(b"opsctl-wal v1"), text, hashlib.sha256).hexdigest()[:32]


def tag_ok(key, sysid: str, file: str, sha256: str, given: str) -> bool:
    """True when `given` is the tag of (`sysid`, `file`, `sha256`) under `key` (constant-time
    compare)."""
    return hmac.compare_digest(tag(key, sysid, file, sha256), given)


def wal_object(sysid: str, file: str, tag_: str) -> str:
    """The repository name of WAL file `file` with tag `tag_`."""
    return f"{wal_prefix(sysid)}{file}.{tag_}.zst"


@dataclass(frozen=True)
class WalObject:
    """One archived WAL object: its repository `name`, PostgreSQL `file` name, authentication `tag`
    and stored `size` (bytes)."""
    name: str  # repository object name
    file: str  # PostgreSQL's file name
    tag: str
    size: int


def parse_wal(sysid: str, names: dict[str, int]) -> tuple[dict[str, list[WalObject]], list[str]]:
    """({PostgreSQL file: its objects}, names under wal/ that are not WAL objects at all)."""
    files: dict[str, list[WalObject]] = {}
    strange: list[str] = []
    head = wal_prefix(sysid)
    for name, size in names.items():
        if not name.startswith(head):
            continue
        m = OBJECT.fullmatch(name[len(head):])
        if not m:
            strange.append(name)
            continue
        files.setdefault(m["file"], []).append(WalObject(name, m["file"], m["tag"], size))
    return files, sorted(strange)


# -- LSNs and segments ------------------------------------------------------------------

def lsn(text: str) -> int:
    """'16/B374D848' -> integer byte position."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(value: int) -> str:
    """An integer byte position -> PostgreSQL's 'HI/LO' text (hex)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segno(position: int) -> int:
    """The segment number holding byte position `position`."""
    return position // SEGMENT_BYTES


def segment(tli: int, number: int) -> str:
    """The 24-hex-digit file name of segment `number` on timeline `tli`."""
    return f"{tli:08X}{number // SEGMENTS_PER_ID:08X}{number % SEGMENTS_PER_ID:08X}"


def parse_segment(name: str) -> tuple[int, int]:
    """'000000010000000A00000003' -> (timeline 1, segment number)."""
    return int(name[:8], 16), int(name[8:16], 16) * SEGMENTS_PER_ID + int(name[16:24], 16)


def history_file(tli: int) -> str:
    """Timeline `tli`'s history file name ('00000002.history')."""
    return f"{tli:08X}.history"


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file's lines `parentTLI switchpoint reason` -> [(tli, switch LSN)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.lstrip().startswith("#"):
            out.append((int(parts[0]), lsn(parts[1])))
    return out


def history_path(text: str, target: int) -> list[tuple[int, int | None]]:
    """Timeline `target`'s history file -> the path recovery follows: [(tli, end LSN)], oldest
    first, then (target, None). A timeline's end is clipped to any later switch point before it:
    a restore that stopped on timeline 1 before the point where timeline 2 left it writes
    "1 X / 2 E" with E < X, and recovery then reads timeline 1 only up to E (PostgreSQL takes
    each segment from the newest timeline that began at or before it), never the abandoned
    branch between E and X."""
    entries = parse_history(text)
    out: list[tuple[int, int | None]] = []
    low = None
    for tli, end in reversed(entries):
        low = end if low is None else min(low, end)
        out.append((tli, low))
    return out[::-1] + [(target, None)]


def timeline_of(number: int, path: list[tuple[int, int | None]]) -> int:
    """The timeline recovery reads segment `number` from, along `path`.

    `path` is [(tli, end LSN or None for the newest)], oldest first. The segment holding a
    switch point is read from the new timeline (PostgreSQL copies it there at promotion).
    """
    for tli, end in path:
        if end is None or number < segno(end):
            return tli
    return path[-1][0]
