"""The WAL archive health check: how old the oldest commit not yet in the repository can be.

Judged against the environment's RPO (`dr.rpo` in opsctl.yaml, default 1h): commits in the
segment PostgreSQL is writing reach the archive within `backup.archive_timeout`, and a
finished segment still waiting in the local queue has been at risk since PostgreSQL finished
it (the file's time). So the lag is `archive_timeout` plus the age of the oldest queued
segment. CRITICAL when it exceeds the RPO, when segments wait and no archiver runs, when a
queued file conflicts with a stored one of the same name (archive.WalConflict), or when
the queue dropped segments (a gap: restores can't cross it until the next base backup);
WARNING when the archiver is not running but nothing waits yet.
"""

from __future__ import annotations

import os
import time

from opsctl.health.model import CheckResult, Status

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> float:
    """'90s', '30m', '4h', '7d' -> seconds (the format opsctl.yaml's dr settings are checked against)."""
    return float(duration[:-1]) * UNITS[duration[-1]]


def archive_lag(project, env) -> CheckResult:
    """The `wal archive` check of the embedded platform: commits at risk = archive_timeout + age of
    the oldest queued segment (seconds), judged against `dr.rpo`; CRITICAL for dropped segments
    or segments waiting with no archiver running, UNKNOWN when archiving never started. Details:
    queued, dropped, archiver_running, rpo_seconds, archive_timeout_seconds."""
    from opsctl.local import procs
    from opsctl.local import state as st
    from opsctl.pitr import archive
    from opsctl.pitr import local as pitr_local

    state = st.load(st.folder_for(project.root))
    queue = pitr_local.queue_dir(state)
    rpo = seconds(env.dr.rpo)
    if not queue.is_dir():
        return CheckResult("", "backup", Status.UNKNOWN, "WAL archiving was never started ('opsctl local up')")
    now = time.time()
    pending = [queue / n for n in os.listdir(queue) if not n.startswith(".") and archive.layout.WAL_FILE.fullmatch(n)]
    oldest = min((p.stat().st_mtime for p in pending if p.exists()), default=None)
    dropped = sorted(os.listdir(queue / archive.DROPPED)) if (queue / archive.DROPPED).is_dir() else []
    conflicts = sorted(os.listdir(queue / archive.CONFLICT)) if (queue / archive.CONFLICT).is_dir() else []
    comp = state.components.get(pitr_local.COMPONENT)
    running = comp is not None and procs.alive(comp.pid, pitr_local.HINT)
    lag = env.backup.archive_timeout + (now - oldest if oldest is not None else 0.0)
    details = {"queued": len(pending), "dropped": dropped, "archiver_running": running,
               "rpo_seconds": rpo, "archive_timeout_seconds": env.backup.archive_timeout}
    if conflicts:
        details["conflicts"] = conflicts
        reason = (queue / archive.CONFLICT / conflicts[0]).read_text(errors="replace").strip()
        status, text = Status.CRITICAL, f"archiving stopped: {reason}"
    elif dropped:
        status, text = Status.CRITICAL, (f"{len(dropped)} WAL segment(s) dropped by the full queue "
                                         f"({dropped[0]}…): take a base backup ('opsctl backup base')")
    elif pending and not running:
        status, text = Status.CRITICAL, (f"{len(pending)} WAL segment(s) wait and no archiver runs "
                                         "('opsctl local up' starts it; read its log)")
    elif lag > rpo:
        status, text = Status.CRITICAL, f"archive lag {lag:.0f} s, above the RPO of {env.dr.rpo}"
    elif not running:
        status, text = Status.WARNING, "no archiver runs: new WAL will wait in the queue ('opsctl local up')"
    else:
        status, text = Status.OK, f"archive lag at most {lag:.0f} s ({len(pending)} queued; RPO {env.dr.rpo})"
    return CheckResult("", "backup", status, text, round(lag, 1), "s", details=details)
