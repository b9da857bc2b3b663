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
    """The embedded platform's WAL queue: `.opsctl/local/data/wal-queue`."""
    return state.data("wal-queue")


def queued_wal(state) -> set[str]:
    """The WAL files waiting in the embedded platform's local queue for the archiver (empty
    without a queue): handed to archive_command, not yet in the repository."""
    from opsctl.pitr import layout

    try:
        return {p.name for p in queue_dir(state).iterdir() if layout.WAL_FILE.fullmatch(p.name)}
    except OSError:
        return set()


def queued_ages(queue: Path) -> list[float]:
    """Seconds each WAL file in the queue folder `queue` has waited (since the segment's last
    write, its finish), leaving out those archived while the folder is read; [] when it is
    missing. The lag a health check judges, and what tells a stuck archiver without its
    `.progress`."""
    import os
    import time

    from opsctl.pitr import layout

    try:
        names = os.listdir(queue)
    except FileNotFoundError:
        return []
    now, ages = time.time(), []
    for name in names:
        if layout.WAL_FILE.fullmatch(name):
            try:
                ages.append(now - os.stat(queue / name).st_mtime)
            except FileNotFoundError:
                continue  # archived meanwhile
    return ages


def ready_wal(state) -> dict[str, float]:
    """The WAL files the embedded PostgreSQL has finished and not yet handed to its
    archive_command (marked .ready in its pg_wal), read from the disk: {name: when it was
    finished, epoch seconds}; {} when there are none or they can't be read. What a stopped
    server never archived; while it runs, what it is about to hand over."""
    folder = state.data("postgres") / "pg_wal" / "archive_status"
    try:
        return {p.name[:-len(".ready")]: p.stat().st_mtime for p in folder.glob("*.ready")}
    except OSError:
        return {}


STALL_S = 120.0  # seconds without a pass before the archiver counts as stuck: past a failing
# repository's longest retry delay (30 s) and a slow segment upload, well within any RPO


def stalled(state, pid: int | None) -> str | None:
    """Why the running archiver `pid` is not moving, or None: its process is stopped (SIGSTOP,
    a debugger), or it has not ended a pass nor stored a file for STALL_S seconds
    (`<queue>/.progress`, archive.Archiver.moved: hung in a repository call, or every pass
    failing; its log says which). Without the file (deleted; a failing archiver makes it again,
    one hung in a call can't: breaker 25 F5), a queued WAL file older than STALL_S says it: a
    moving archiver takes each within seconds. None too when `pid` is None."""
    import time

    import psutil

    if pid is None:
        return None
    try:
        if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
            return (f"its process {pid} is stopped (SIGSTOP or a debugger): 'kill -CONT {pid}' resumes it, or "
                    "'opsctl local down' then 'opsctl local up' restarts it ('local up' alone keeps a running one)")
    except psutil.Error:
        return None
    try:
        idle = time.time() - (queue_dir(state) / archive.PROGRESS).stat().st_mtime
    except OSError:
        waited = max(queued_ages(queue_dir(state)), default=0.0)
        if waited <= STALL_S:
            return None
        return (f"its {archive.PROGRESS} is gone and a queued WAL file has waited {waited:.0f} s (hung or "
                f"failing: read {state.log(COMPONENT)})")
    if idle <= STALL_S:
        return None
    return f"it has not finished a pass nor stored a file for {idle:.0f} s (hung or failing: read {state.log(COMPONENT)})"


def server_settings(state, env) -> dict[str, str]:
    """Settings for the platform's PostgreSQL: archiving into the queue, WAL summaries."""
    from opsctl.local import postgres as pg
    from opsctl.local import procs

    procs.remember_secrets(env)  # kept out of the server's environment, whatever their names
    queue = queue_dir(state)
    archive.prepare_queue(queue, pg.run_as())
    return archive.server_settings(queue, env.backup.archive_timeout, env.backup.archive_queue)


def arm_archive_timeout(port: int) -> None:
    """Run a CHECKPOINT on the just-started server on `port`, so its archive_timeout runs from
    now on. The checkpointer starts before the startup process ends; in its first loop,
    recovery still in progress, it leaves archive_timeout out of its sleep and sleeps the
    whole checkpoint_timeout (5 min), and nothing wakes it when the start ends, so a commit
    waited for its segment to fill or for that sleep to end (breaker 16: 3 min 40 s with
    archive_timeout 1 s after an in-place restore; after `local up` too, until something
    asked for a checkpoint, such as a base backup). A checkpoint request wakes it; on a
    server just started it writes next to nothing. Raises psycopg.Error."""
    import psycopg

    from opsctl.local import postgres as pg

    with psycopg.connect(pg.url(port), connect_timeout=5, autocommit=True) as conn:
        conn.execute("checkpoint")


def ensure_archiver(project, env, state) -> str:
    """Start the archiver unless it runs; returns a note for `local up` ('' when running). First
    files the abandoned timelines an undone restore killed mid-way noted (restore.record_abandoned)."""
    from opsctl.errors import OpsError
    from opsctl.local import procs
    from opsctl.local import state as st
    from opsctl.pitr.restore import record_abandoned
    from opsctl.redact import credentials

    record_abandoned(project, env, state)

    comp = state.components.get(COMPONENT)
    running = archiver_pid(state)
    try:
        sysid = archive.system_identifier(state.data("postgres"))
    except OpsError:
        sysid = None  # no cluster to compare with; for_environment below says why, if it matters
    if running is not None and sysid is not None and _cluster_of(running) != sysid:
        # started for another cluster (the data directory was lost and made anew): an adopted
        # archiver would file the new cluster's timeline history under the old one
        stop_archiver(state)
        running = archiver_pid(state)
    want = _configured_repository(project, env)
    if running is not None and want is not None and _label(running, "--repository") not in (None, want):
        stop_archiver(state)  # it archives into a repository the configuration no longer names
        running = archiver_pid(state)
    if running is not None:  # adopted, even when a killed `up` never recorded it
        state.components[COMPONENT] = comp = comp or st.Component(port=0)
        comp.pid = running
        return ""
    try:
        archive.for_environment(project, env, state.data("postgres"), queue_dir(state))  # fails here, clearly
    except OpsError as exc:
        return f"WAL archiving waits in the local queue: {credentials(str(exc))}"
    pid = procs.spawn([sys.executable, "-m", HINT, "--root", str(project.root), "--env", env.name,
                       "--data", str(state.data("postgres")), "--queue", str(queue_dir(state)),
                       *(["--sysid", sysid] if sysid else []), *(["--repository", want] if want else [])],
                      state.log(COMPONENT), pidfile=state.pidfile(COMPONENT),  # written by the process itself
                      secrets=True)  # the one child that needs the backup key and the repository's credentials
    state.components[COMPONENT] = comp = comp or st.Component(port=0)
    comp.pid = pid
    return ""


def stop_archiver(state, timeout: float = 30) -> bool:
    """SIGTERM: the archiver drains what is queued, then exits (SIGKILL after `timeout` seconds;
    what is still queued stays for the next one)."""
    from opsctl.local import procs

    pid = archiver_pid(state)
    stopped = pid is not None and procs.stop(pid, timeout, HINT)
    state.pidfile(COMPONENT).unlink(missing_ok=True)
    return stopped


def nudge_archiver(state) -> bool:
    """Ask this platform's archiver to drain its queue now, not at the end of its pause (up to
    half a second; archive.NUDGE). Only an archiver that handles the signal is sent it (SigCgt
    in its /proc/<pid>/status): to one started by a version before the nudge it would be
    fatal. The process is held by a pidfd while it is checked and signalled (Linux 5.3+; a
    plain kill elsewhere), so a PID reused between the two never gets the signal. True when
    sent; False when none runs or it can't take one."""
    import os
    import signal

    pid = archiver_pid(state)
    if pid is None:
        return False
    try:
        held = os.pidfd_open(pid)
    except (AttributeError, OSError):  # gone, or no pidfd here
        held = None
    try:
        # with the process held, it is checked again: the archiver still, not a reused PID
        if held is not None and archiver_pid(state) != pid:
            return False
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if not caught >> (archive.NUDGE - 1) & 1:
            return False
        if held is not None:
            signal.pidfd_send_signal(held, archive.NUDGE)
        else:
            os.kill(pid, archive.NUDGE)
    except (OSError, StopIteration, ValueError):  # gone meanwhile, another user's, unreadable
        return False
    finally:
        if held is not None:
            os.close(held)
    return True


def nudge_when_new(state, queued, nudged: frozenset[str]) -> frozenset[str]:
    """For a caller polling the queue: nudge the archiver when the files `queued` (names) are
    not the ones it was last nudged for, `nudged`; returns the set to pass next time. Once per
    new set, not per poll: a nudge also ends the archiver's backoff after a failed pass, and a
    repository that is down is not to be retried at the caller's polling rate."""
    queued = frozenset(queued)
    if queued and queued != nudged:
        nudge_archiver(state)
    return queued


def _cluster_of(pid: int) -> str | None:
    """The cluster (`--sysid`) archiver `pid` was started for; None when it names none (one
    started by a version before the label) or is gone."""
    return _label(pid, "--sysid")


def archiving_into(state) -> str | None:
    """The repository URL this platform's running archiver was started to archive into
    (`--repository`); None when none runs or it names none."""
    pid = archiver_pid(state)
    return _label(pid, "--repository") if pid is not None else None


def _label(pid: int, option: str) -> str | None:
    """The value of `option` on archiver `pid`'s command line; None when it has none (one
    started by a version before the label) or is gone."""
    import psutil

    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return argv[argv.index(option) + 1] if option in argv[:-1] else None


def _configured_repository(project, env) -> str | None:
    """The URL of the repository `env` names now; None when it can't be opened (the archiver
    start says why)."""
    from opsctl.errors import OpsError
    from opsctl.pitr.ops import repository

    try:
        return repository(project, env).url
    except OpsError:
        return None


def archiver_pid(state) -> int | None:
    """This platform's archiver: by its PID file (create time checked, so a reused PID is not
    taken), else the recorded PID when its command line names this platform's queue. Found
    whatever the state file holds, so `up` never starts a second one and `down` always stops it."""
    from opsctl.local import procs

    pid = procs.pidfile_owner(state.pidfile(COMPONENT), HINT)
    if pid is not None:
        return pid
    comp = state.components.get(COMPONENT)
    if comp is not None and procs.alive(comp.pid, f"--queue {queue_dir(state)}"):
        return comp.pid
    return None
