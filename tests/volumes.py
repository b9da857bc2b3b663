"""Filling a small file system (the `small_volume` fixture's tmpfs) to a chosen free space."""

from __future__ import annotations

import os
from pathlib import Path


def fill(volume: Path, leave: int = 0) -> Path:
    """Fill `volume` with one file, `filler`, so that `leave` bytes (in whole pages) stay free."""
    filler = volume / "filler"
    filler.unlink(missing_ok=True)
    stat = os.statvfs(volume)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler
