"""Time from `opsctl local up` to all-healthy: from nothing, warm (data kept), and no-op.

ROUNDS rounds, each from nothing (a fresh ops root), then no-op, then warm after `down`:
each scenario is printed as its median (min-max) in seconds with the share each component
took in its median round, and the warm and no-op runs as ratios of the from-nothing run of
their own round (the baseline), with the spread of those ratios. The platform is the one
`local up` makes for a user with a backup key (a throwaway one here), WAL archiver included.
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from opsctl.config import load_project
from opsctl.local import platform
from opsctl.starter import starter_text

ROUNDS = 3


def timed_up(project) -> tuple[float, dict[str, float]]:
    began = time.perf_counter()
    result = platform.up(project)
    return time.perf_counter() - began, result.seconds


def show(label: str, runs: list[tuple[float, dict[str, float]]], baselines: list[float] | None) -> None:
    """`runs`: (seconds, {component: seconds}) per round; `baselines`: the from-nothing
    seconds of the same rounds, for the ratios."""
    totals = [t for t, _ in runs]
    total, parts = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median round
    shares = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in parts.items()) or "nothing started"
    ratio = ""
    if baselines:
        ratios = sorted(t / b for t, b in zip(totals, baselines))
        ratio = (f", ratio {statistics.median(ratios):.2f} of from-nothing "
                 f"({ratios[0]:.2f}-{ratios[-1]:.2f})")
    print(f"bench_local_up: {label}: {statistics.median(totals):.1f}s ({min(totals):.1f}-{max(totals):.1f}) "
          f"to all-healthy{ratio}; median round: {shares}")


def main() -> int:
    # the platform as a user runs it: its WAL archiver needs a backup key (a throwaway one)
    os.environ.setdefault("OPSCTL_BACKUP_KEY", base64.b64encode(os.urandom(32)).decode())
    cold, noop, warm = [], [], []
    for _ in range(ROUNDS):
        with tempfile.TemporaryDirectory(prefix="opsctl-bench-") as tmp:
            root = Path(tmp)
            (root / "opsctl.yaml").write_text(starter_text())
            project = load_project(root)
            try:
                cold.append(timed_up(project))
                noop.append(timed_up(project))
                platform.down(project)
                warm.append(timed_up(project))
            finally:
                platform.down(project, purge=True)
    print(f"bench_local_up: {ROUNDS} rounds, median (min-max)")
    baselines = [t for t, _ in cold]
    show("from nothing (initdb, model already assembled)", cold, None)
    show("already up (no-op)", noop, baselines)
    show("warm (after down, data kept)", warm, baselines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
