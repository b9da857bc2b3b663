"""What this process holds open: tests that an operation closes what it opened (DESIGN.md,
Conventions). CI stop 51 failed when a pytest worker had leaked descriptors past 1024."""

from __future__ import annotations

import os


def held() -> list[str]:
    """Where each of this process's descriptors leads (its /proc/self/fd links), sorted."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return sorted(out)
