"""The host the embedded platform runs on: CPU, memory and the disk holding the ops root.

Severities follow the rendered alert rules: CPU and memory warn, a full disk is critical
(PostgreSQL and Redis stop writing when it fills).
"""

from __future__ import annotations

from pathlib import Path

from opsctl.health.model import CheckResult, Judge, Status

_primed = False


def host(root: Path, timeout: float, t) -> CheckResult:
    """This machine's disk (of `root`), CPU and memory use in %, judged against thresholds."""
    import psutil

    global _primed
    # cpu_percent(None) measures since the previous call: in a loop that is the interval
    # between sweeps; the first call ever needs a short sample of its own.
    cpu = psutil.cpu_percent(None) if _primed else psutil.cpu_percent(min(0.5, timeout / 4))
    _primed = True
    memory = psutil.virtual_memory().percent
    disk = psutil.disk_usage(str(root)).percent
    judge = Judge()
    judge.over("CPU", cpu, t.cpu_percent, "%")
    judge.over("memory", memory, t.memory_percent, "%")
    judge.over("disk", disk, t.disk_percent, "%", Status.CRITICAL)
    return CheckResult("", "host", judge.status(), judge.message(f"CPU {cpu:g}%, memory {memory:g}%, disk {disk:g}%"),
                       cpu, "%", details={"cpu_percent": cpu, "memory_percent": memory, "disk_percent": disk})
