"""WAL archiving on the embedded platform: the server's settings and the supervised archiver.

`opsctl local up` starts PostgreSQL with `server_settings` (archiving into the queue
`.opsctl/local/data/wal-queue`, WAL summaries for incremental base backups) and then runs
`ensure_archiver`, which starts `python -m opsctl.pitr.archive` when it is not running. The
archiver gets the backup key through its environment (inherited from `opsctl local up`),
never on its command line. Without a usable repository or key, archiving waits in the
bounded queue and `local up` says why; the platform itself still comes up.
"""

from __future__ import annotations

import sys
from pathlib import Path

from opsctl.pitr import archive

COMPONENT = "archiver"
HINT = "opsctl.pitr.archive"


def queue_dir(state) -> Path:
    return state.data("wal-queue")


def server_settings(state, env) -> dict[str, str]:
    """Settings for the platform's PostgreSQL: archiving into the queue, WAL summaries."""
    from opsctl.local import postgres as pg

    queue = queue_dir(state)
    archive.prepare_queue(queue, pg._run_as())
    return archive.server_settings(queue, env.backup.archive_timeout, env.backup.archive_queue)


def ensure_archiver(project, env, state) -> str:
    """Start the archiver unless it runs; returns a note for `local up` ('' when running)."""
    from opsctl.errors import OpsError
    from opsctl.local import procs
    from opsctl.local import state as st
    from opsctl.redact import credentials

    comp = state.components.get(COMPONENT)
    if comp is not None and procs.alive(comp.pid, HINT):
        return ""
    try:
        archive.for_environment(project, env, state.data("postgres"), queue_dir(state))  # fails here, clearly
    except OpsError as exc:
        return f"WAL archiving waits in the local queue: {credentials(str(exc))}"
    pid = procs.spawn([sys.executable, "-m", HINT, "--root", str(project.root), "--env", env.name,
                       "--data", str(state.data("postgres")), "--queue", str(queue_dir(state))],
                      state.log(COMPONENT))
    state.components[COMPONENT] = comp = comp or st.Component(port=0)
    comp.pid = pid
    return ""


def stop_archiver(state) -> bool:
    """SIGTERM: the archiver drains what is queued, then exits."""
    from opsctl.local import procs

    comp = state.components.get(COMPONENT)
    return comp is not None and procs.stop(comp.pid, 30, HINT)
