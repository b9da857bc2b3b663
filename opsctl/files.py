"""JSON state files written whole: to a temporary name beside the file, fsynced, then renamed
over it and the folder fsynced, so a process killed (or a machine losing power) mid-write
leaves the previous version or the new one, never half a document or an empty file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, doc: Any, indent: int = 2, private: bool = False,
               folder_mode: int = 0o700) -> Path:
    """Write `doc` as JSON to `path` whole; `private`: the file 0600 in a `folder_mode` folder
    (0700; 0711 where another user must pass through, e.g. PostgreSQL's system user)."""
    if private:
        private_dir(path.parent, folder_mode)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", opener=_private_opener if private else None) as handle:
        handle.write(json.dumps(doc, indent=indent) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


_NAME_MAX = 255  # bytes in one file name (Linux, macOS); a report is written as `.{name}.tmp` first


def report_path(value: str | os.PathLike | None, option: str, make: bool = True) -> Path | None:
    """Where a report a caller asked for is written (`option` names it in errors, e.g.
    '--junit'): the path made absolute (symlinks kept: /dev/stdout stays itself) and (`make`)
    its folder created, checked before any work so a long run never ends on a path it can't
    write. Without `make` nothing is created: the writer makes the folder itself (with its own
    mode) when it first writes. An existing file that is not a regular one (/dev/null, a FIFO,
    /dev/stdout) is written in place by `write_text`, never replaced. UsageError (exit 2) when
    it names a folder (or ends in '/'), its name is too long for the temporary name beside it,
    or its folder can't be made (a file in the way, no permission); None for None or ''."""
    from opsctl.errors import UsageError

    if not value:
        return None
    if str(value).endswith(("/", os.sep)):
        raise UsageError(f"{option} {value} is a folder; give a file path such as {value}report.xml")
    try:
        path = Path(value).expanduser().absolute()
        if len(os.fsencode(path.name)) + len("..tmp") > _NAME_MAX and not _in_place(path):
            raise UsageError(f"{option}: file name {path.name[:40]}... is longer than {_NAME_MAX - 5} bytes; "
                             "give a shorter one")
        if path.is_dir():
            raise UsageError(f"{option} {value} is a folder; give a file path such as {path / 'report.xml'}")
        folder = path.parent
        while not folder.exists():  # the nearest folder that exists is where the rest would be made
            folder = folder.parent
        if not folder.is_dir():
            raise UsageError(f"{option} {value}: its folder can't be made ({folder} is a file); give another path")
        if not os.access(folder, os.W_OK):
            raise UsageError(f"{option} {value}: folder {folder} is not writable; give another path")
        if make:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {value}: {exc.strerror or exc}; give another path") from None
    return path


def _in_place(path: Path) -> bool:
    """True for an existing file that is not a regular one (a device, a FIFO, a pipe behind
    /dev/stdout): written where it is, never replaced by a renamed file."""
    try:
        return path.exists() and not path.is_file() and not path.is_dir()
    except OSError:
        return False


def write_text(path: Path, text: str | bytes) -> Path:
    """Write `text` (str or bytes) to `path` whole: to a temporary name beside it, renamed over
    it, so a reader never sees half a report (the temporary file removed if the write fails).
    A device, FIFO or pipe (/dev/null, /dev/stdout) is written in place: renamed over, /dev/null
    would have become a regular file."""
    mode = "wb" if isinstance(text, bytes) else "w"
    if _in_place(path):
        with open(path, mode) as out:
            out.write(text)
        return path
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode) as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _private_opener(name: str, flags: int) -> int:
    fd = os.open(name, flags, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temporary file keeps its old mode otherwise
    return fd


def private_dir(folder: Path, mode: int = 0o700) -> Path:
    """`folder` created if missing and made `mode` (opsctl's own state folders only)."""
    folder.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(folder, mode)
    return folder


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
