"""Write-once files for the posix repository, written with O_DIRECT where the filesystem allows.

A backup object is written once and read rarely, so passing it through the page cache only
costs: every byte is copied into freshly allocated cache pages (0.18 s of a core for a
92 MB object on the 2-core machine of bench_backup, the largest single cost of a backup
after zstd), and those pages push the database's own hot pages out of memory on the host
that is being backed up. O_DIRECT sends whole 4 MiB spans from one reused, page-aligned
buffer straight to the device, and the final fsync has nothing left to flush.

Filesystems without O_DIRECT (older tmpfs, some FUSE and network mounts) refuse it at
open() or at the first write with EINVAL; the file then continues through the page cache.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

ALIGN = 4096  # O_DIRECT wants offsets, lengths and buffer addresses aligned to the logical block size
SPAN = 4 << 20


class DirectFile:
    """A new file at `path`: write() any bytes, then close() (which fsyncs); abort() leaves it half-written."""

    def __init__(self, path: Path | str, dir_fd: int | None = None):
        """Create `path` (relative to `dir_fd` when given): it must not exist (O_EXCL), and a
        symbolic link in its place is never followed (O_NOFOLLOW), so a link planted under
        the name can't redirect the write outside the repository."""
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        direct = getattr(os, "O_DIRECT", 0)
        self.direct = bool(direct)
        at = {} if dir_fd is None else {"dir_fd": dir_fd}
        try:
            self.fd = os.open(path, flags | direct, 0o600, **at)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not direct:
                raise
            self.fd, self.direct = os.open(path, flags, 0o600, **at), False
        self.buf = mmap.mmap(-1, SPAN)  # anonymous mappings are page-aligned
        self.fill = 0
        self.size = 0

    def write(self, data) -> None:
        """Append `data` (any bytes-like object), written out in aligned spans."""
        with memoryview(data) as view:
            view = view.cast("B")
            start = 0
            while start < len(view):
                n = min(len(view) - start, SPAN - self.fill)
                self.buf[self.fill:self.fill + n] = view[start:start + n]
                self.fill += n
                start += n
                if self.fill == SPAN:
                    self._flush(SPAN)

    def _flush(self, length: int) -> None:
        """Write buf[:length] (a multiple of ALIGN when direct) at the current end."""
        with memoryview(self.buf) as view:
            done = 0
            while done < length:
                try:
                    done += os.write(self.fd, view[done:length])
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not self.direct:
                        raise
                    self._stop_direct()
        self.size += self.fill
        self.fill = 0

    def _stop_direct(self) -> None:
        import fcntl

        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def close(self) -> None:
        """Write the tail, trim the padding a direct write needs, fsync, and close."""
        try:
            if self.fill:
                tail = self.fill
                length = -(-tail // ALIGN) * ALIGN if self.direct else tail
                self.buf[tail:length] = bytes(length - tail)
                self._flush(length)
                if length != tail:
                    os.ftruncate(self.fd, self.size)
            os.fsync(self.fd)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close without finishing (the caller removes the file); safe to call twice."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.buf.closed:
            self.buf.close()
