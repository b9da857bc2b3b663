"""Health sweep benchmark on a fresh embedded platform (its own temporary ops root), as a
user runs it: with a backup key (a throwaway one), so its WAL archiver runs, and one full
backup taken first, so the backup and WAL archive checks judge real ones.

1. Sweep overhead: each sweep's wall time against its slowest single check in the same
   sweep (target: overhead under 50 ms), and against the slowest check run on its own.
2. Continuous mode's CPU at a 1 s interval over ~20 s (this process's user+system time,
   psutil), as % of one core and as a ratio against the CPU of the same number of sweeps
   run back to back without the loop, alerter and dispatcher (baseline, same run).
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from opsctl.config import load_project
from opsctl.endpoints import resolve
from opsctl.health import checks as checks_mod
from opsctl.health import monitor, sweep
from opsctl.local import platform
from opsctl.starter import starter_text

SWEEPS = 20


def cpu_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def main() -> int:
    os.environ.setdefault("OPSCTL_BACKUP_KEY", base64.b64encode(os.urandom(32)).decode())
    with tempfile.TemporaryDirectory(prefix="opsctl-bench-health-") as tmp:
        root = Path(tmp)
        (root / "opsctl.yaml").write_text(starter_text())
        project = load_project(root)
        env = project.env("local")
        try:
            platform.up(project)
            from opsctl.backup.create import create

            create(project, env)
            plan = checks_mod.plan(project, env, resolve(project, env))
            sweep.run(env.name, plan)  # warm-up: imports, first connections, the metrics baseline

            overheads, ratios = [], []
            for _ in range(SWEEPS):
                result = sweep.run(env.name, plan)
                slowest = max(r.duration_ms for r in result.results)
                overheads.append(result.duration_ms - slowest)
                ratios.append(result.duration_ms / slowest)
            alone = {}
            for check in plan:  # each check on its own, one after another
                one = sweep.run(env.name, [check])
                alone[check.name] = one.results[0].duration_ms
            slowest_name = max(alone, key=alone.get)
            walls = []
            for _ in range(5):
                walls.append(sweep.run(env.name, plan).duration_ms)
            print(f"checks per sweep: {len(plan)} ({', '.join(c.name for c in plan)})")
            print(f"sweep overhead over its slowest check: median {statistics.median(overheads):.1f} ms, "
                  f"max {max(overheads):.1f} ms, min {min(overheads):.1f} ms over {SWEEPS} sweeps (target < 50 ms); "
                  f"sweep/slowest = {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})")
            print(f"sweep wall (median {statistics.median(walls):.1f} ms, {min(walls):.1f}-{max(walls):.1f}) vs slowest "
                  "check alone "
                  f"({slowest_name}: {alone[slowest_name]:.1f} ms) = {statistics.median(walls) / alone[slowest_name]:.2f}x; "
                  f"sum of all checks alone {sum(alone.values()):.1f} ms = "
                  f"{sum(alone.values()) / statistics.median(walls):.2f}x the sweep")

            began_cpu, began = cpu_seconds(), time.perf_counter()
            for _ in range(SWEEPS):
                sweep.run(env.name, plan)
            base_cpu = cpu_seconds() - began_cpu
            base_wall = time.perf_counter() - began

            began_cpu, began = cpu_seconds(), time.perf_counter()
            out = monitor.watch(project, env, interval=1.0, iterations=SWEEPS)
            loop_cpu = cpu_seconds() - began_cpu
            loop_wall = time.perf_counter() - began
            print(f"continuous mode, {out.sweeps} sweeps at a 1 s interval over {loop_wall:.1f} s: "
                  f"{loop_cpu:.2f} s CPU = {100 * loop_cpu / loop_wall:.1f}% of one core; "
                  f"vs the same sweeps back to back ({base_cpu:.2f} s CPU in {base_wall:.1f} s): "
                  f"{loop_cpu / base_cpu:.2f}x")
            odd = [f"{r.name} {r.status.name} ({r.message})" for r in out.last.results if r.status.name != "OK"]
            print(f"last sweep: {out.last.status.name}" + (f"; not OK: {'; '.join(odd)}" if odd else ""))
        finally:
            platform.down(project, purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
