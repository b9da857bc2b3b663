"""What this process holds open: tests that an operation closes what it opened (DESIGN.md,
Conventions). CI stop 51 failed when a pytest worker had leaked descriptors past 1024."""

from __future__ import annotations

import collections
import os
import re


def held() -> list[str]:
    """Where each of this process's descriptors leads (its /proc/self/fd links), sorted."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return sorted(out)


def grown(before: list[str], after: list[str]) -> dict[str, int]:
    """{kind: how many more}: what `after` holds beyond `before` (both from `held`), by kind
    (a socket, an epoll, an eventfd, a pipe: their numbers dropped; a file by its path). A
    socket another part closed meanwhile and one opened since leave the count as it was."""
    def kinds(links: list[str]) -> collections.Counter:
        return collections.Counter(re.sub(r"\[\d+\]$", "", link) for link in links)

    return dict(kinds(after) - kinds(before))
