"""Time from `opsctl local up` to all-healthy: from nothing, warm (data kept), and no-op.

Prints each as seconds with the share each component took, and the warm and no-op runs as
ratios of the from-nothing run measured in the same process (the baseline).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from opsctl.config import load_project
from opsctl.local import platform
from opsctl.starter import starter_text


def timed_up(project) -> tuple[float, dict[str, float]]:
    began = time.perf_counter()
    result = platform.up(project)
    return time.perf_counter() - began, result.seconds


def show(label: str, total: float, parts: dict[str, float], baseline: float | None) -> None:
    shares = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in parts.items()) or "nothing started"
    ratio = f", ratio {total / baseline:.2f} of from-nothing" if baseline else ""
    print(f"bench_local_up: {label}: {total:.1f}s to all-healthy{ratio}; {shares}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="opsctl-bench-") as tmp:
        root = Path(tmp)
        (root / "opsctl.yaml").write_text(starter_text())
        project = load_project(root)
        try:
            cold, cold_parts = timed_up(project)
            show("from nothing (initdb, model already assembled)", cold, cold_parts, None)
            noop, noop_parts = timed_up(project)
            show("already up (no-op)", noop, noop_parts, cold)
            platform.down(project)
            warm, warm_parts = timed_up(project)
            show("warm (after down, data kept)", warm, warm_parts, cold)
        finally:
            platform.down(project, purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
