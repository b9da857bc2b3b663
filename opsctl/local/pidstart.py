"""Which process a pid names: its start time, which a later process given the same pid does not share.

A record that names a process by pid alone (a backup's start record, a restore's run folder)
outlives it, and the kernel hands the pid to another process later: that one would keep the
record "running" for good (breaker 56 F6). The start time in clock ticks since boot
(field 22 of /proc/PID/stat, proc(5)) tells them apart for as long as the machine runs; the
boot's id tells one boot from the next.

Read from /proc rather than psutil's `Process.create_time()`: this runs on `backup create`'s
start-up path, where importing psutil is fixed cost before pg_dump starts (issue 24), and
psutil's float of seconds since the epoch is derived from these same ticks.
"""

from __future__ import annotations

from pathlib import Path


def boot_id() -> str | None:
    """This boot of this machine (/proc/sys/kernel/random/boot_id, a UUID); None without /proc.
    A pid and its start ticks mean something only on the boot that recorded them."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def start_ticks(pid: int) -> str | None:
    """Process `pid`'s start time in clock ticks since boot, as text; None when no such process
    runs (or there is no /proc). The command name in /proc/PID/stat may hold ')' and spaces, so
    the fields are counted from the last ')'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def identity(pid: int) -> str | None:
    """"<boot id>:<start ticks>" of process `pid`: one value per process for as long as the
    machine runs, never the same for two processes; None when either part is unknown."""
    boot, ticks = boot_id(), start_ticks(pid)
    return f"{boot}:{ticks}" if boot and ticks else None
