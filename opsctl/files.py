"""JSON state files written whole: to a temporary name beside the file, fsynced, then renamed
over it and the folder fsynced, so a process killed (or a machine losing power) mid-write
leaves the previous version or the new one, never half a document or an empty file."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from opsctl.errors import MachineFaults


def write_json(path: Path, doc: Any, indent: int | None = 2, private: bool = False,
               folder_mode: int = 0o700) -> Path:
    """Write `doc` as JSON to `path` whole; `private`: the file 0600 in a `folder_mode` folder
    (0700; 0711 where another user must pass through, e.g. PostgreSQL's system user)."""
    with MachineFaults(f"writing {path}"):  # a full disk: one line naming the file
        if private:
            private_dir(path.parent, folder_mode)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "w", opener=_private_opener if private else None) as handle:
                handle.write(json.dumps(doc, indent=indent) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:  # the previous version stays, and no temporary beside it
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    return path


_NAME_MAX = 255  # bytes in one file name (Linux, macOS); a report is written as `.{name}.tmp` first


def report_path(value: str | os.PathLike | None, option: str, make: bool = True,
                example: str = "report.xml", own: Path | None = None) -> Path | None:
    """Where a report a caller asked for is written (`option` names it in errors, e.g.
    '--junit'): the path made absolute (symlinks kept: /dev/stdout stays itself; a link's
    target is what `write_text` replaces) and (`make`) its folder created, checked before any work so a long run never ends on a path it can't
    write. Without `make` nothing is created: the writer makes the folder itself (with its own
    mode) when it first writes. An existing file that is not a regular one (/dev/null, a FIFO,
    /dev/stdout) is written in place by `write_text`, never replaced. UsageError (exit 2) when
    it names a folder (or ends in '/'), its name is too long for the temporary name beside it,
    or its folder can't be made (a file in the way, no permission), or is empty (an unset CI
    variable: `--junit "$REPORT"` wrote no report and the step uploading it found nothing,
    reviewer 39 R9); None for None.
    A URL (`--history 'http://u:pw@host/'`, `--junit s3://bucket/r.xml`) is refused too: reports
    are local files, and the URL taken for a path made folders named `http:` and the password
    (`Path` folds 'http://' to 'http:/'; the CLI joins a relative one to the ops root, so a
    `scheme:` folder anywhere in the path counts); the URL is shown as redact.redact masks it,
    as DESIGN.md's Conventions keep a secret off the command's output. A real folder named like
    `name:` is refused with it, a price taken for never writing a file named after a password.
    `example`: the file name a refusal of a folder suggests (a JSON-lines history is no .xml).
    A path into opsctl's own state under an ops root's `.opsctl/` is refused (`_in_state`),
    except `own`: the one state file the caller keeps there itself (health's history)."""
    from opsctl.errors import UsageError

    if value is None:
        return None
    if not str(value).strip():
        raise UsageError(f"{option} is empty; give a file path such as {example}, or leave {option} out "
                         "for no report")
    url = re.search(r"(?:^|/)(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):(?P<slashes>/+)(?P<rest>.*)",
                    os.fspath(value).strip(), re.S)
    if url:  # before any message that repeats the value: it may hold a password
        from opsctl.redact import MASK, redact

        shown = redact(f"{url['scheme']}:{url['slashes'] if len(url['slashes']) > 1 else '//'}{url['rest']}")
        shown = shown if shown != MASK else f"{url['scheme']}://{MASK}"
        raise UsageError(f"{option} {shown} is a URL; reports are local files: give a file path such as "
                         f"{example} (and copy it where it should go after the run)")
    if str(value).endswith(("/", os.sep)):
        raise UsageError(f"{option} {value} is a folder; give a file path such as {value}{example}")
    try:
        path = Path(value).expanduser().absolute()
        target, in_place = _target(path)
        if in_place:  # a stream or device: it must be there (a /dev/fd/N not open is not)
            if not os.path.exists(path):
                raise UsageError(f"{option} {value} does not exist; give a file path, or a stream that is open")
            try:  # /dev/stdin, when it is a file, would be overwritten with the report
                given = os.stat(path)
                reads = (stat.S_ISREG(given.st_mode) and os.path.samestat(given, os.fstat(0))
                         and not os.path.samestat(given, os.fstat(1)))
            except OSError:
                reads = False
            if reads:
                raise UsageError(f"{option} {value} is this process's standard input; give a file path or /dev/stdout")
            real = Path(os.path.realpath(path))
            if real.is_file():  # breaker 65 G2: a link under /dev or /proc to the ops root's config
                _refuse_protected(option, value, [real], own)
            return path
        if len(os.fsencode(target.name)) + len("..tmp") > _NAME_MAX:
            raise UsageError(f"{option}: file name {path.name[:40]}... is longer than {_NAME_MAX - 5} bytes; "
                             "give a shorter one")
        if path.is_dir():
            raise UsageError(f"{option} {value} is a folder; give a file path such as {path / example}")
        # the path as given too (breaker 65 G1: opsctl.yaml or runbooks/ a link to elsewhere,
        # whose target's folder holds no opsctl.yaml)
        _refuse_protected(option, value, [target, Path(os.path.normpath(path))], own)
        folder = target.parent  # a symlink's target is what is written (`write_text`)
        while not folder.exists():  # the nearest folder that exists is where the rest would be made
            folder = folder.parent
        if not folder.is_dir():
            raise UsageError(f"{option} {value}: its folder can't be made ({folder} is a file); give another path")
        if not os.access(folder, os.W_OK):
            raise UsageError(f"{option} {value}: folder {folder} is not writable; give another path")
        if make:
            target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {value}: {exc.strerror or exc}; give another path") from None
    return path


def _in_state(target: Path) -> str | None:
    """The state folder of an ops root (`<root>/.opsctl/<name>`, but the report folders) a
    report at `target` would land in, folders resolved; None when none: opsctl's own records
    (silences, journals, drill records, ...) are never a report's place, whatever the option
    (runbook.paths.state_problem, the rule runbook outputs follow)."""
    from opsctl.runbook.paths import STATE, state_problem

    parts = (Path(os.path.realpath(target.parent)) / target.name).parts
    if STATE not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index(STATE)
    problem = state_problem("/".join(parts[at:]))
    return str(Path(*parts[:at], problem)) if problem else None


def _refuse_protected(option: str, value, places: list[Path], own: Path | None) -> None:
    """UsageError when any of `places` (what a report would replace, reached one way or another)
    is opsctl's state (`_in_state`) or one of an ops root's own places (`_in_ops_root`), unless
    it is `own`, the caller's own state file."""
    from opsctl.errors import UsageError

    for place in places:
        if own is not None and os.path.realpath(place) == os.path.realpath(own):
            continue
        state = _in_state(place)
        if state:  # breaker 44 T1: `runbook run --junit .opsctl/health/silences-E.json` replaced the silences
            raise UsageError(f"{option} {value} would write into {state}, which holds opsctl's own state; write "
                             "under reports/, .opsctl/reports/ or .opsctl/dr/")
        root_place = _in_ops_root(place) or _in_ops_root(place, resolve=False)
        if root_place:  # breaker 64 F1: `dr drill --metrics-file opsctl.yaml` replaced the config
            raise UsageError(f"{option} {value} would write into {root_place}, which holds the ops root's config, "
                             "procedures or code; write under reports/ or .opsctl/reports/")


def _in_ops_root(target: Path, resolve: bool = True) -> str | None:
    """The protected place (runbook.paths.protected_place: opsctl.yaml, runbooks/ with its lock,
    stacks/, templates/, loadtests/, .git/, .venv/, opsctl's state) of the nearest ops root (a
    folder holding opsctl.yaml) a report at `target` would replace, its folders resolved (or,
    `resolve` False, as written: a link in the ops root's place to a file elsewhere); None when
    none. The rule runbook outputs and `render ci --out` follow, for every report option."""
    from opsctl.config import CONFIG_NAME
    from opsctl.runbook.paths import protected_place

    folder = Path(os.path.realpath(target.parent)) if resolve else Path(os.path.normpath(target.parent))
    for root in (folder, *folder.parents):
        try:
            holds = (root / CONFIG_NAME).is_file()
        except OSError:  # a folder this user may not search: no ops root known there
            holds = False
        if holds:
            place = protected_place((folder / target.name).relative_to(root).as_posix())
            return str(root / place) if place else None
    return None


_IN_PLACE_ROOTS = ("/dev/", "/proc/")  # /dev/stdout, /dev/fd/N, /proc/self/fd/N: a process's own streams
_FD_FOLDER = re.compile(r"/dev/fd|/proc/[^/]+/fd|/proc/[^/]+/task/[^/]+/fd")


def _target(path: Path) -> tuple[Path, bool]:
    """(where a report for `path` is written, whether in place). Links are followed hop by hop
    as the kernel does (folders resolved at each hop), so a link stays and its target is what a
    rename replaces; a place under /dev or /proc (/dev/stdout, /dev/fd/1, however reached: a
    process's streams) that exists or is a file descriptor's name, a link to something that is
    not a path (`pipe:[N]`), and an existing file other than a regular one (a device, a FIFO)
    are written in place, never replaced by a renamed file. OSError ELOOP for a loop or more
    than 40 links (the kernel's limit), in the name or in any folder of it."""
    import errno

    for _hop in range(41):
        try:
            os.stat(path.parent)  # realpath passes over a loop in a folder (L -> L in L/x.xml) silently
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "too many levels of symbolic links (a loop, or more than 40)") from None
        try:
            path = Path(os.path.realpath(path.parent)) / path.name
        except OSError:
            return path, False
        if str(path).startswith(_IN_PLACE_ROOTS) and (os.path.lexists(path) or _FD_FOLDER.fullmatch(str(path.parent))):
            return path, True  # a stream or device there (a /dev/fd/N not open: refused by report_path)
        try:
            if not path.is_symlink():
                break
            dest = os.readlink(path)
        except OSError:  # a name too long, a folder not searchable: no link to follow
            return path, False
        if not dest.startswith(("/", ".")) and re.fullmatch(r"[a-z_]+:\[\d+\]|anon_inode:.*", dest):
            return path, True  # a magic link to a pipe or socket
        path = path.parent / dest
    else:
        raise OSError(errno.ELOOP, "too many levels of symbolic links (a loop, or more than 40)")
    try:
        return path, path.exists() and not path.is_file() and not path.is_dir()
    except OSError:
        return path, False


def _in_place(path: Path) -> bool:
    """True when a report at `path` is written where it is (`_target`)."""
    return _target(path)[1]


def write_text(path: Path, text: str | bytes, private: bool = False) -> Path:
    """Write `text` (str or bytes) to `path` whole: to a temporary name beside it, renamed over
    it, so a reader never sees half a report (the temporary file removed if the write fails).
    A device, FIFO or pipe (/dev/null, /dev/stdout) is written in place: renamed over, /dev/null
    would have become a regular file; a symlink's target is replaced, the link kept (`_target`).
    A FIFO is waited on for a reader FIFO_WAIT seconds, then UsageError (`_stream_opener`).
    An existing file keeps its mode (the rename would have given it the new file's); a new one
    is 0600 when `private` (reports: what a run found is its operator's), else as the umask
    makes it (files others must read: a rendered workflow, a starter opsctl.yaml)."""
    with MachineFaults(f"writing {path}"):  # a full disk, a read-only folder: one line naming the file
        mode = "wb" if isinstance(text, bytes) else "w"
        target, in_place = _target(path)
        if in_place:
            data = text if isinstance(text, bytes) else text.encode()
            if _write_own_stream(path, data):
                return path
            with open(path, mode, opener=_stream_opener) as out:
                out.write(text)
            return path
        tmp = target.with_name(f".{target.name}.tmp")  # beside a symlink's target: the link stays
        try:
            kept = stat.S_IMODE(os.stat(target).st_mode) if target.is_file() else None
        except OSError:
            kept = None
        try:
            with open(tmp, mode, opener=_private_opener if private else None) as out:
                if kept is not None:
                    os.fchmod(out.fileno(), kept)
                out.write(text)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


FIFO_WAIT = 10.0  # seconds a report waits for a process to open a FIFO for reading


def _stream_opener(name: str, flags: int) -> int:
    """Open an in-place report target (a device, FIFO or pipe) for writing. A FIFO no process
    reads blocks open(2) for ever, which hung a command after its work: opened non-blocking,
    it fails with ENXIO until a reader comes (fifo(7)), so a reader is waited for FIFO_WAIT
    seconds, then UsageError; once open, writes block as usual while the reader reads."""
    import errno
    import fcntl
    import time

    from opsctl.errors import UsageError

    deadline = time.monotonic() + FIFO_WAIT
    while True:
        try:
            fd = os.open(name, flags | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            if time.monotonic() >= deadline:
                raise UsageError(f"{name} is a FIFO that no process reads (waited {FIFO_WAIT:.0f} s); start its "
                                 f"reader first (e.g. 'cat {name} &'); the report was not written") from None
            time.sleep(0.05)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _write_own_stream(path: Path, data: bytes) -> bool:
    """Write `data` through this process's own stdout or stderr when `path` is that stream
    (/dev/stdout, /dev/fd/1 ...: the same file): opened anew it would be truncated (a log file
    behind `> log` lost its earlier lines) or written at an offset of its own (later output
    overwrote the report). False when `path` is neither."""
    import sys

    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            if not os.path.samestat(os.stat(path), os.fstat(fd)):
                continue
            if stream is not None:
                stream.flush()  # what was printed before comes first
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            return True
        except OSError:
            continue
    return False


def append_line(path: Path, line: str, durable: bool = False) -> None:
    """Append `line` and a newline to `path`, whole or not at all; a file made here is created
    0600 (lines may hold messages), an existing one keeps its owner's mode: chmod'ing whatever
    the path named made a file another user shares private and took the bits of device nodes
    (breaker 42 R10).

    A write that fails part way (a full disk) is cut back to the old size: left, the next
    line would be glued to half of this one and both be unreadable (breaker 33 B4, B9). A
    last line a crash left unfinished (no newline) is ended first, so this one reads on its
    own. `durable`: fsynced before returning (a failed fsync cuts the line back too). The
    folder must exist. An existing target that is not a regular file (a device, a FIFO, a
    pipe) is written in place as `write_text` writes one: a FIFO waits FIFO_WAIT seconds for a
    reader, then UsageError; nothing is cut back or fsynced there. Raises OperationFailed
    naming the file for any fault of the write (errors.MachineFaults, or the OSError's reason)."""
    import errno

    from opsctl.errors import OperationFailed, UsageError

    data = line.encode() + b"\n"
    try:
        with MachineFaults(f"writing {path}"):
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                os.fchmod(fd, 0o600)  # ours, just made: private whatever the umask
            except FileExistsError:
                if not _is_regular(path):
                    _append_stream(path, data)
                    return
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the check and the open
                    raise OSError(errno.EINVAL, "not a regular file")
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                view = memoryview(data)
                try:
                    while view:
                        view = view[os.write(fd, view):]
                    if durable:
                        os.fsync(fd)
                except BaseException:
                    try:
                        os.ftruncate(fd, size)
                    except OSError:
                        pass  # the write's own error is the one to say
                    raise
            finally:
                os.close(fd)
    except (OperationFailed, UsageError):
        raise
    except OSError as exc:  # not a machine fault (EINVAL of a /proc file...): still one line naming the file
        raise OperationFailed(f"writing {path}: {exc.strerror or exc}") from None


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # a dangling link or the like: the regular path says what is wrong


def _append_stream(path: Path, data: bytes) -> None:
    """`data` written to a device, FIFO or pipe in place, as write_text writes a report there:
    this process's own stdout/stderr through its stream, a FIFO waited on for a reader."""
    if _write_own_stream(path, data):
        return
    fd = _stream_opener(str(path), os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


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
