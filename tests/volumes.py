"""Machine faults made for real: a small file system (the `small_volume` fixture's tmpfs)
filled to a chosen free space, a folder made read-only."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def fill(volume: Path, leave: int = 0) -> Path:
    """Fill `volume` with one file, `filler`, so that `leave` bytes (in whole pages) stay free."""
    filler = volume / "filler"
    filler.unlink(missing_ok=True)
    stat = os.statvfs(volume)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


@contextmanager
def read_only(folder: Path):
    """`folder` made read-only for the block by a read-only bind mount over itself (EROFS for
    any write or deletion in it, root included; the rest of its file system stays writable).
    Mounting needs root (CI runs as root); elsewhere the test is skipped."""
    import subprocess

    import pytest

    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bound.returncode:
        pytest.skip(f"cannot bind-mount here ({bound.stderr.strip()}): a read-only folder needs root")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
