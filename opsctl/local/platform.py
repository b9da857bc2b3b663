"""`opsctl local up | down | status | logs`: the whole platform on this machine.

`up` is idempotent: each component is probed and only what is not healthy is (re)started,
in dependency order. Components are plain processes recorded in the state file, so `down`
stops exactly what `up` started, and nothing else.

Safe to kill at any instant: a component's port is in the state file before its process
starts, and its PID as soon as the process exists; each process also writes a PID file
itself (PostgreSQL: postmaster.pid). A later `up` keeps a component only when its start-up
had finished; what a killed `up` left half-started is stopped by its PID and started again.
`down` finds processes by the state file and by the PID files, so it works whatever the
state file holds.
"""

from __future__ import annotations

import contextlib

import logging
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Callable, Iterator

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError, fault_text
from opsctl.files import fsync_dir
from opsctl.local import caddy, procs
from opsctl.local import postgres as pg
from opsctl.local import redis as rd
from opsctl.local import s3 as s3mod
from opsctl.local import state as st
from opsctl.local import worker as wk

ORDER = ("postgres", "redis", "s3", "worker", "router")


@dataclass
class ComponentStatus:
    """One row of `opsctl local status`: PID (None: not running), port, health, version,
    log path and a note."""
    name: str
    pid: int | None
    port: int | None
    healthy: bool
    version: str | None
    log: str
    note: str = ""


@dataclass
class UpResult:
    """What `up` did: the router's URL, the components started and kept, and each start's
    seconds."""
    router_url: str
    started: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str, str], None]  # (component, "checking" | "starting" | "ok" | "kept")


def _local_env(project: Project, env: Environment | None) -> Environment:
    env = env or project.env("local")
    if env.platform != "local":
        raise UsageError(f"environment '{env.name}' runs on {env.platform}; 'opsctl local' manages platform: local")
    return env


# the program each component's command line names: a reused PID is never taken for ours
HINTS = {"postgres": "postgres", "redis": "redis-server", "s3": "moto", "router": "caddy",
         "worker-blue": "transcription-worker", "worker-green": "transcription-worker"}


def live_pid(state: st.LocalState, key: str) -> int | None:
    """The component's running process: the PID recorded in the state when that process still
    listens on the component's port (a reused PID whose command line merely names the same
    program is never taken for ours), else its PID file's (checked by create time)."""
    comp = state.components.get(key)
    return procs.owned(comp.pid if comp else None, HINTS[key], [comp.port, comp.admin_port] if comp else [],
                       state.pidfile(key))


def _stop_any(state: st.LocalState, key: str, pid: int, port: int | None = None,
              admin_port: int | None = None, timeout: float = 30.0, keep: bool = True) -> None:
    """Stop component `key` (its process `pid`); `keep` False: its data is about to be purged.
    OperationFailed, the process left running, when Redis can't save its data (rd.stop)."""
    if key == "postgres":
        pg.stop(pid)
    elif key == "redis":
        rd.stop(pid, port, keep=keep)
    elif key == "router":
        caddy.stop(pid, admin_port)
    else:
        procs.stop(pid, timeout, HINTS[key])
    if key != "postgres":
        state.pidfile(key).unlink(missing_ok=True)


def _healthy(name: str, comp: st.Component | None) -> bool:
    if comp is None or not procs.listens(comp.pid, [comp.port, comp.admin_port]):
        return False  # an answer on the port from a stranger is never our server's
    if name == "postgres":
        return pg.ready(comp.port)
    if name == "redis":
        return rd.ping(comp.port)
    if name == "s3":
        return s3mod.ready(comp.port)
    if name == "router":
        return caddy.admin_ready(comp.admin_port) and caddy.current_upstream(comp.admin_port) is not None
    return wk.ready(comp.port)


def _ensure(state: st.LocalState, name: str) -> st.Component:
    comp = state.components.get(name)
    if comp is None:
        comp = st.Component(port=procs.free_port())
        if name == "router":
            comp.admin_port = procs.free_port()
        state.components[name] = comp
    return comp


def start_component(name: str, state: st.LocalState, env: Environment) -> None:
    """Start component `name` (postgres, redis, s3 or router) on its kept port, recording
    the port before the process exists and its PID as soon as it does; `ready` once started.
    The caller holds the state lock. Raises OperationFailed when it does not start."""
    procs.remember_secrets(env)  # the variables opsctl.yaml names as secrets never reach the server
    comp = _ensure(state, name)
    comp.pid, comp.ready = None, False
    state.save()  # the port is known before the process exists

    def spawned(pid: int) -> None:  # and the PID as soon as it does
        comp.pid = pid
        state.save()

    log = state.log(name)
    pidfile = state.pidfile(name)
    if name == "postgres":
        from opsctl.pitr import local as pitr  # WAL archiving into the queue, WAL summaries
        from opsctl.pitr.restore import undo_killed_swap
        from opsctl.pitr.standby import before_primary_start

        undo_killed_swap(state)  # data/postgres missing: a restore killed mid-swap puts the previous one back
        before_primary_start(state, env)  # mid-failover: the old primary fenced, never an empty cluster
        pg.start(state.data("postgres"), comp.port, log, on_spawn=spawned, settings=pitr.server_settings(state, env))
        pitr.arm_archive_timeout(comp.port)
        pg.ensure_database(comp.port, env.database.name, env.database.user)
        comp.version = pg.version(comp.port)
    elif name == "redis":
        rd.start(state.data("redis"), comp.port, log, pidfile=pidfile, on_spawn=spawned)
        comp.version = rd.version(comp.port)
    elif name == "s3":
        s3mod.start(comp.port, log, pidfile=pidfile, on_spawn=spawned)
        _recover_s3(state.data("s3"))  # a `down` killed inside its save's swap
        s3mod.load(s3mod.endpoint(comp.port), state.data("s3"))
        s3mod.ensure_buckets(s3mod.endpoint(comp.port), [env.buckets.audio, env.buckets.backups])
        comp.version = f"moto {dist_version('moto')}"
    elif name == "router":
        upstream = state.components[wk.name(state.active_color)].port
        caddy.start(state.data("caddy"), comp.port, comp.admin_port, upstream,
                    state.active_color, env.deploy.drain_timeout, log, pidfile=pidfile, on_spawn=spawned)
        comp.version = f"caddy {caddy.version()}"
    comp.ready = True


def _start_worker(state: st.LocalState, env: Environment) -> None:
    color = state.active_color
    previous = state.components.get(wk.name(color))
    wk.assemble_model()
    settings = previous.settings if previous else {}
    version = (previous.version if previous and previous.version else None) or dist_version("transcription-worker")
    wk.migrate(wk.environment(state, env, color, version, settings))
    wk.start(state, env, color, version, settings, env.deploy.ready_timeout)


def up(project: Project, env: Environment | None = None, progress: Progress | None = None) -> UpResult:
    """Start (or repair) the embedded platform of `project` in dependency order (ORDER):
    what is healthy and finished starting is kept, anything else is stopped and started
    again. `env` defaults to `local` (UsageError for a non-local platform); `progress` is
    called with (component, "checking" | "starting" | "ok" | "kept", or "waiting": the WAL
    archiver could not start, its reason logged). Raises OperationFailed
    naming the component that failed."""
    env = _local_env(project, env)
    notify = progress or (lambda _c, _s: None)
    folder = st.folder_for(project.root)
    with st.locked(folder):
        state = st.load(folder)
        _follow_router(state)
        result = UpResult(router_url="")
        for name in ORDER:
            key = wk.name(state.active_color) if name == "worker" else name
            if name == "worker":  # before its migrations, which a database left closed would fail
                _repair_interrupted_restore(state, env)
            notify(name, "checking")
            comp = state.components.get(key)
            pid = live_pid(state, key)
            if comp is not None:  # a recorded PID that is no longer ours is forgotten, never used
                comp.pid = pid
            if comp is not None and comp.ready and _healthy(name, comp):
                result.kept.append(name)
                notify(name, "kept")
                continue
            if pid is not None:  # left half-started by a killed `up` (or hung): stop, start again
                _stop_any(state, key, pid, comp.port if comp else None, comp.admin_port if comp else None)
            notify(name, "starting")
            began = time.monotonic()
            try:
                if name == "worker":
                    _start_worker(state, env)
                else:
                    start_component(name, state, env)
            except OperationFailed as exc:
                state.save()
                raise OperationFailed(f"{name}: {exc}") from None
            finally:
                result.seconds[name] = round(time.monotonic() - began, 2)
            state.save()
            result.started.append(name)
            notify(name, "ok")
        standby = _standby_color(state)
        if standby is not None:  # the known-good color a deploy record says must stay warm
            key = wk.name(standby)
            comp = state.components[key]
            pid = live_pid(state, key)
            if pid is None or not wk.ready(comp.port):
                if pid is not None:
                    _stop_any(state, key, pid, comp.port)
                notify(key, "starting")
                try:
                    wk.migrate(wk.environment(state, env, standby, comp.version, comp.settings))
                    wk.start(state, env, standby, comp.version, comp.settings, env.deploy.ready_timeout)
                except OperationFailed as exc:
                    state.save()
                    raise OperationFailed(f"{key} (known-good, kept warm): {exc}") from None
                state.save()
                result.started.append(key)
                notify(key, "ok")
        from opsctl.pitr import local as pitr

        notify(pitr.COMPONENT, "checking")
        before = pitr.archiver_pid(state)
        if note := pitr.ensure_archiver(project, env, state):  # drains the WAL queue into the repository
            logging.getLogger("opsctl.local").warning("%s", note)
            notify(pitr.COMPONENT, "waiting")
        elif pitr.archiver_pid(state) != before:  # started now (after a crash, or for another repository)
            result.started.append(pitr.COMPONENT)
            notify(pitr.COMPONENT, "ok")
        else:
            result.kept.append(pitr.COMPONENT)
            notify(pitr.COMPONENT, "kept")
        state.save()
        from opsctl.pitr import standby as pitr_standby

        pending = pitr_standby.pending_failover_note(project, env)
        if pending is not None:  # up, but PostgreSQL refuses every write until it is finished
            logging.getLogger("opsctl.local").warning("%s", pending)
        router = state.components["router"]
        upstream = state.components[wk.name(state.active_color)].port
        if caddy.current_upstream(router.admin_port) != f"{procs.HOST}:{upstream}":
            point_router(state, state.active_color)
        result.router_url = f"http://{procs.HOST}:{router.port}"
        return result


def _standby_color(state: st.LocalState) -> str | None:
    """The color besides the active one that the deploy history (`deploys.json`) says must stay
    warm: the known-good color of a deploy interrupted after its switch (no verdict yet), or the
    previous color of a promoted deploy while deploy.scale_down_delay runs (instant rollback).
    None when there is none, or the record and the state disagree on what that color runs."""
    import json

    path = state.folder / "deploys.json"
    try:
        records = json.loads(path.read_text()) if path.exists() else []
    except (OSError, ValueError):
        return None
    last = records[-1] if isinstance(records, list) and records else None
    if not isinstance(last, dict) or last.get("strategy") == "rollback":
        return None
    color = last.get("from_color")
    if color not in st.COLORS or color == state.active_color or last.get("to_color") != state.active_color:
        return None
    comp = state.components.get(wk.name(color))
    if comp is None or not comp.version or comp.version != last.get("from_version"):
        return None
    until = last.get("standby_until")
    if last.get("outcome") == "in-progress" or (
            last.get("outcome") == "promoted" and isinstance(until, (int, float)) and until > time.time()):
        return color
    return None


def point_router(state: st.LocalState, color: str) -> None:
    """Point the router at `color`'s worker (Caddy's admin API, applied live; in-flight
    requests finish on the old upstream) and record `color` as active in the state file.

    The one place the embedded platform's router is re-pointed: the deploy driver's switch
    and `up`'s repair both call it. The caller holds the state lock (st.locked). Raises
    OperationFailed when Caddy refuses, KeyError when the color or router was never started.
    """
    router = state.components["router"]
    caddy.switch(router.admin_port, state.components[wk.name(color)].port, color)
    state.active_color = color
    state.save()


def _follow_router(state: st.LocalState) -> None:
    """Where a running router sends traffic is the truth: a deploy killed between its switch
    and its state write leaves the file one color behind, and `up` must not switch back."""
    router = state.components.get("router")
    if not router or not router.admin_port or not procs.alive(router.pid, "caddy"):
        return
    dial = caddy.current_upstream(router.admin_port)
    for color in st.COLORS:
        comp = state.components.get(wk.name(color))
        if dial and comp and dial == f"{procs.HOST}:{comp.port}" and state.active_color != color:
            state.active_color = color
            state.save()


def status(project: Project) -> list[ComponentStatus]:
    """Each component as it is now (a stopped standby worker color is left out). While a local
    failover is pending, its line (standby.pending_failover: the stage, what finishes it) is the
    note of the postgres and postgres-standby rows, both unhealthy: the platform's PostgreSQL
    takes no writes until it is finished (breaker 51 H2)."""
    state = st.load(st.folder_for(project.root))
    pending = _pending_failovers(project)
    rows = []
    names = ["postgres", "redis", "s3"] + [wk.name(c) for c in st.COLORS] + ["router"]
    for name in names:
        comp = state.components.get(name)
        if comp is None:
            # not in the state file, but its PID file may find it (a state file moved aside, as a
            # damaged one's message advises: breaker 44 T12 saw every running server "never started")
            pid = live_pid(state, name) if name in HINTS else None
            if pid is not None:
                rows.append(ComponentStatus(name, pid, None, False, None, str(state.log(name)),
                                            "running, found by its PID file, not in the state file: "
                                            "'opsctl local up' restarts it on its data"))
            elif not name.startswith("worker-"):
                rows.append(ComponentStatus(name, None, None, False, None, str(state.log(name)), "never started"))
            continue
        probe = "worker" if name.startswith("worker-") else name
        healthy = _healthy(probe, comp)
        note = ""
        if name.startswith("worker-"):
            active = name == wk.name(state.active_color)
            note = "active" if active else "standby"
            if not active and not procs.alive(comp.pid):
                continue  # a stopped standby color is history, not a component
        if name == "s3":
            note = "objects saved at down; other AWS resources ephemeral"
        if name == "redis" and healthy and _rest_stopped(state):
            note = _redis_left_running(comp.port)
        if name == "postgres" and pending:
            healthy, note = False, "; ".join(pending)
        rows.append(ComponentStatus(name, comp.pid if procs.alive(comp.pid) else None, comp.port,
                                    healthy, comp.version, str(state.log(name)), note))
        if name == "postgres":
            rows += _archiver_status(state) + _standby_status(project, state, pending) + _beside_status(state)
    return rows


def _pending_failovers(project: Project) -> list[str]:
    """The line of each local failover pending on an environment the platform serves
    (standby.pending_failover_note)."""
    from opsctl.pitr import standby

    return [note for env in served(project) if (note := standby.pending_failover_note(project, env)) is not None]


def _rest_stopped(state: st.LocalState) -> bool:
    """Whether every process of the platform but Redis is stopped (what `down` leaves when Redis
    can't save): PostgreSQL, its standby and archiver, S3, the workers, the router. Breaker 51
    H2: PostgreSQL alone down (an interrupted failover) was told as all of it stopped."""
    from opsctl.pitr import local as pitr
    from opsctl.pitr import standby

    return (all(live_pid(state, key) is None for key in HINTS if key != "redis")
            and standby.running_pid(state) is None and pitr.archiver_pid(state) is None)


def _beside_status(state: st.LocalState) -> list[ComponentStatus]:
    """A row for each PostgreSQL running on a data folder of the platform's own beside
    data/postgres and the standby's (a `restore --beside` copy, left running on purpose: breaker
    42 R18 found `local status` silent about it, fsync off and all); `local down` stops them.
    What a row says is what the server is: a restore's copy only on a folder a restore makes,
    "fsync off" only when the server says so (breaker 51 H1: the standby was told as one)."""
    rows = []
    for data, pid in _beside_servers(state):
        lines = (data / "postmaster.pid").read_text(errors="replace").splitlines()
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        what = ("a copy a restore left running beside the live server"
                if data.name.startswith(("postgres.restored-", "postgres.restoring-")) else
                "a PostgreSQL running on a folder of the platform's data beside the live server")
        fsync = _fsync(port) if port else None
        rows.append(ComponentStatus(f"postgres ({data.name})", pid, port, bool(port and pg.ready(port)), None,
                                    str(data / "log"), f"{what} ('opsctl local down' stops it"
                                    + ("; fsync off: not for keeps)" if fsync == "off" else ")")))
    return rows


def _fsync(port: int) -> str | None:
    """The `fsync` setting of the PostgreSQL on `port` ("on", "off"), None when it does not answer."""
    import psycopg

    try:
        with psycopg.connect(pg.url(port), connect_timeout=3) as conn:
            return conn.execute("show fsync").fetchone()[0]
    except psycopg.Error:
        return None


def _redis_left_running(port: int) -> str:
    """The note for a Redis that runs while the rest of the platform does not (_rest_stopped):
    what `down` leaves when Redis can't write its final snapshot (a full disk). Its writes since the last
    snapshot (INFO persistence) are in memory only until a `down` saves it."""
    import datetime as dt

    import redis

    try:
        info = redis.Redis(host=procs.HOST, port=port, socket_timeout=5).info("persistence")
        unsaved = int(info["rdb_changes_since_last_save"])
        last = dt.datetime.fromtimestamp(int(info["rdb_last_save_time"]), dt.timezone.utc)
    except (redis.RedisError, KeyError, ValueError):
        return "running while the rest of the platform is stopped; 'opsctl local down' saves and stops it"
    if not unsaved:
        return "running while the rest of the platform is stopped (nothing unsaved); 'opsctl local down' stops it"
    return (f"running while the rest of the platform is stopped, {unsaved} writes since its last snapshot "
            f"({last:%Y-%m-%d %H:%M:%S} UTC) in memory only: 'opsctl local down' saves and stops it (free space "
            "first when it could not)")


def _repair_interrupted_restore(state: st.LocalState, env: Environment) -> str | None:
    """A logical restore killed outright (kill -9) during its swap leaves the live database
    refusing connections, and the worker's migrations then fail on it (breaker 42 R1): put back
    here, as the next restore would (backup.postgres.repair_interrupted_swap: only a state a
    swap makes, never a database closed by hand), and said. Returns what was repaired."""
    import psycopg

    from opsctl.backup import postgres as pgb

    comp = state.components.get("postgres")
    if comp is None or not procs.alive(comp.pid):
        return None
    try:
        done = pgb.repair_interrupted_swap(pg.url(comp.port), env.database.name)
    except psycopg.Error:  # the worker's own start says what is wrong with the server
        return None
    if done:
        logging.getLogger("opsctl.local").warning("%s", done)
    return done


def _standby_status(project: Project, state: st.LocalState, pending: list[str]) -> list[ComponentStatus]:
    """The `dr standby` standby's row, while one was built (or its server runs): the server a
    failover promotes, so one that died is shown, not found out by the failover (breaker 20 F2).
    Judged by the `standby` health check itself (opsctl.pitr.health.standby_health: streaming
    is what its WAL receiver says, not pg_isready; breaker 51 H2 saw a promoted standby told as
    "streaming from the primary"); while a failover is pending, that failover's line (`pending`)
    instead, since its standby is then the server meant to become the primary."""
    from opsctl.health.model import Status
    from opsctl.pitr import standby
    from opsctl.pitr.health import standby_health

    comp = state.components.get(standby.COMPONENT)
    pid = standby.running_pid(state)
    log = str(state.log(standby.COMPONENT))
    envs = served(project)
    if comp is None and pid is None:
        return []
    if pending:
        return [ComponentStatus(standby.COMPONENT, pid, comp.port if comp else None, False, None, log,
                                "; ".join(pending))]
    if comp is None or not envs:  # its server found by its PID file alone: no failover promotes it
        return [ComponentStatus(standby.COMPONENT, pid, None, False, None, log,
                                "running, found by its PID file, not in the state file: a failover can't promote "
                                "it; 'opsctl local down' stops it")]
    check = standby_health(project, envs[0])
    return [ComponentStatus(standby.COMPONENT, pid, comp.port, check.status == Status.OK, None, log,
                            check.message)]


def _archiver_status(state: st.LocalState) -> list[ComponentStatus]:
    """The WAL archiver's row (none before archiving was ever started): the one component whose
    death stops point-in-time recovery without stopping anything else (breaker 18 F8)."""
    from opsctl.pitr import local as pitr

    if pitr.COMPONENT not in state.components:
        return []
    pid = pitr.archiver_pid(state)
    stuck = pitr.stalled(state, pid)  # running is not moving (breaker 20 F8)
    return [ComponentStatus(pitr.COMPONENT, pid, None, pid is not None and stuck is None, None,
                            str(state.log(pitr.COMPONENT)),
                            f"WAL queue: {len(pitr.queued_wal(state))} file(s)" + (f"; stuck: {stuck}" if stuck else ""))]


def served(project: Project) -> list[Environment]:
    """The environments the embedded platform serves (`platform: local`), in opsctl.yaml's order:
    one database, Redis and S3 hold the data of them all."""
    return [e for e in project.config.environments.values() if e.platform == "local"]


def down(project: Project, purge: bool = False, approve: Callable[[str], None] | None = None) -> list[str]:
    """Stop what `up` started, by recorded PID or PID file; keep the data unless `purge`.
    With `purge`, `approve(question)` is called first, the question naming every environment
    `served` (opsctl.approval.purge_approval asks for each protected one's name; raise
    UsageError to refuse, nothing stopped; None: no approval asked).

    Works whatever the state file holds: a damaged one is read as empty (the PID files still
    find every process); without `purge` it is then left as it is for a person to look at.
    """
    if purge and approve is not None:
        names = [e.name for e in served(project)]
        approve("delete all local platform data" + (f" (environments {', '.join(names)})" if names else ""))
    folder = st.folder_for(project.root)
    stopped: list[str] = []
    save_error: Exception | None = None
    moto_pid = 0  # the moto a failed save left running
    left: dict[str, OperationFailed] = {}  # components left running, and why (a Redis that could not save)
    unclean: str | None = None  # PostgreSQL stopped, but not by a clean shutdown (pg_controldata says)
    with _no_operation_running(folder), st.locked(folder):
        state, problem = st.load_lenient(folder)
        comps = state.components
        from opsctl.pitr import local as pitr
        from opsctl.pitr import standby as pitr_standby

        if pitr_standby.stop_for_down(state):  # the embedded standby (opsctl dr standby), if one runs
            stopped.append(pitr_standby.COMPONENT)
        from opsctl.pitr import restore as pitr_restore

        if pitr_restore.clean_abandoned(state):  # a point-in-time restore killed mid-way: its server, its folders
            stopped.append("postgres-restore")
        from opsctl.pitr import drill as pitr_drill

        if pitr_drill.clean_for_down(project):  # a drill killed mid-way: its preview worker, Redis, bucket
            stopped.append("drill scratch")
        # moto asked first: one that does not answer is said at once, before the archiver waits on
        # a repository it may hold (breaker 25 F4: 38 s of silence), and its save is not tried
        silent = _silent_s3(state) if not purge else None
        if not purge:
            _say_if_s3_died(state)
        # PostgreSQL before the archiver, and the archiver before the S3 endpoint a repository may
        # be on: the shutdown's last segment is queued, then archived, before the archiver exits
        # (breaker 20 F6: stopped first, it left those commits in the local queue until the next up)
        for key in ["router", *(wk.name(c) for c in st.COLORS), "postgres", pitr.COMPONENT, "s3", "redis"]:
            if key == pitr.COMPONENT:
                # what is queued is archived before it exits; with moto silent, what it could not
                # archive in 5 s waits in the queue for the next `up`
                if pitr.stop_archiver(state, 5 if silent else 30):
                    stopped.append(key)
                continue
            comp = comps.get(key)
            pid = live_pid(state, key)
            if pid is None:
                continue
            if key == "s3" and not purge:
                try:  # a failed save must not leave the rest running; the previous copy is kept
                    if silent is not None:
                        raise silent
                    _keep_s3(state, comp, pid)
                except Exception as exc:  # noqa: BLE001 - reported once everything else is stopped
                    save_error, moto_pid = exc, pid
                    continue  # moto stays up: stopping it would lose the objects it holds
            try:
                _stop_any(state, key, pid, comp.port if comp else None, comp.admin_port if comp else None,
                          timeout=10 if key == "s3" else 30, keep=not purge)
            except OperationFailed as exc:  # Redis that could not save: left running, said at the end
                left[key] = exc
                continue
            stopped.append(key)
            if key == "postgres" and not purge:
                unclean = _unclean_shutdown(state)
        if _stop_scratch_servers(state):  # `restore --beside` copies (and any other left on data/)
            stopped.append("postgres-beside")
        for key, comp in comps.items():
            # moto left running by a failed save stays recorded: `status` shows it, the next `down` saves it;
            # so does a Redis that could not write its snapshot
            if not (key == "s3" and save_error is not None and procs.alive(moto_pid)) and key not in left:
                comp.pid = None
        if purge:
            shutil.rmtree(folder / "data", ignore_errors=True)
            shutil.rmtree(folder / "logs", ignore_errors=True)
            shutil.rmtree(folder / "run", ignore_errors=True)
            state.path.unlink(missing_ok=True)
        elif problem is None:
            try:
                state.save()
            except OperationFailed as exc:  # a full disk: what it records is only the stopped PIDs
                logging.getLogger("opsctl.local").warning(
                    "the state file was not updated: %s ('local status' finds the processes by their PID files)",
                    fault_text(exc))
    also = f"; and {unclean}" if unclean else ""
    if left:
        more = f"; and saving the S3 objects failed too ({save_error})" if save_error is not None else ""
        raise OperationFailed(f"stopped {', '.join(stopped) or 'nothing'}, but {'; '.join(map(str, left.values()))}"
                              f"{more}; free space, then run 'opsctl local down' again{also}")
    if save_error is not None:
        from opsctl.redact import credentials

        why = f"stopped {', '.join(stopped) or 'nothing'}, but saving the S3 objects failed ({credentials(str(save_error))})"
        if not procs.alive(moto_pid):  # it died meanwhile (breaker 25 F6: "left running" was false)
            raise OperationFailed(f"{why}; moto (PID {moto_pid}) is gone, and with it what it held that was not in "
                                  f"the previous copy in {state.data('s3')}, which is kept: 'opsctl local up' starts "
                                  "from it ('opsctl backup verify-chain' names WAL that went with it)")
        kept = (f", and the previous copy in {state.data('s3')} is kept" if state.data("s3").exists() else "")
        raise OperationFailed(f"{why}; moto is left running so they are not lost{kept}; run 'opsctl local down' "
                              f"again{also}")
    if unclean:
        raise OperationFailed(f"stopped {', '.join(stopped)}, but {unclean}")
    return stopped


def _unclean_shutdown(state: st.LocalState) -> str | None:
    """Why PostgreSQL's stop was not a clean shutdown, or None when it was: its control file's
    cluster state (pg_controldata) is then not 'shut down' (a shutdown checkpoint that PANICked
    on a full disk or an I/O error, a server killed after the fast shutdown's timeout). The
    process is gone either way; what its data directory needs next is crash recovery."""
    from opsctl.pitr.archive import control_data

    cluster = control_data(state.data("postgres")).get("Database cluster state")
    if cluster is None or cluster in ("shut down", "shut down in recovery"):
        return None  # unreadable: nothing to say of it (a purge, a data folder gone)
    return (f"PostgreSQL did not shut down cleanly (its cluster state is '{cluster}'; {state.log('postgres')} says "
            "why, e.g. a PANIC on a full disk): the next 'opsctl local up' recovers it from its WAL (crash "
            "recovery); fix what the log names first, and copy its data folder only after that")


@contextlib.contextmanager
def _no_operation_running(folder: Path):
    """Hold the platform's deploy lease (deploy.lock) while `down` runs: a deploy, an in-place
    restore or a failover in progress refuses it (UsageError, exit 2, nothing stopped), and none
    starts meanwhile. Stopped under one, an in-place restore started PostgreSQL again afterwards
    on a platform its user had stopped, or failed on its recovery server gone."""
    if not folder.is_dir():
        yield
        return
    from opsctl.deploy.drivers.local import deploy_lock
    from opsctl.errors import LeaseHeld

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(deploy_lock(folder, "local down"))
        except LeaseHeld as exc:
            raise UsageError(f"local down refused: {exc.holder} holds the platform's deploy lease; nothing "
                             "was stopped; wait for it to end (or stop it with Ctrl-C), then re-run") from None
        yield


def _stop_scratch_servers(state) -> list[int]:
    """Stop every PostgreSQL running on a data directory of the platform's own data folder other
    than its own servers' (_beside_servers: a `restore --beside` copy: its restore returned and
    kept no record; a copy whose restore was killed): the live process its postmaster.pid names,
    never a reused PID (procs.pidfile_owner). Returns the PIDs stopped."""
    stopped = []
    for _data, pid in _beside_servers(state):
        pg.stop(pid)
        stopped.append(pid)
    return stopped


def _beside_servers(state) -> list[tuple[Path, int]]:
    """(data folder, postmaster PID) of each PostgreSQL running on a folder of the platform's
    data folder other than the platform's own servers' (data/postgres, and data/postgres-standby:
    the `dr standby` a failover promotes has a row and a stop of its own, breaker 51 H1): its
    postmaster.pid's live process, never a reused PID (procs.pidfile_owner)."""
    from opsctl.pitr import standby

    root = state.data("postgres").parent
    own = {state.data("postgres"), state.data(standby.COMPONENT)}
    found = []
    for data in sorted(root.iterdir()) if root.is_dir() else []:
        if data in own or not data.is_dir():
            continue
        pid = procs.pidfile_owner(data / "postmaster.pid", "postgres")
        if pid:
            found.append((data, pid))
    return found


def _moto_port(pid: int) -> int | None:
    """The port a moto server listens on, from its command line (`-p PORT`)."""
    import psutil

    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for flag, value in zip(argv, argv[1:]):
        if flag in ("-p", "--port") and value.isdigit():
            return int(value)
    return None


def _keep_s3(state: st.LocalState, comp: st.Component | None, pid: int) -> None:
    """Save moto's objects before it stops, never losing a saved set: over it only from an
    endpoint that loaded it (recorded, `ready`, and the recorded process); an endpoint that did
    not (its `up` was killed during its start-up, or the state file is damaged and nothing says
    what it loaded) is saved beside it, in data/s3.unloaded-<UTC time>, when it holds any
    object. Raises (and `down` leaves moto running) when its objects cannot be saved."""
    if comp is not None and comp.ready and procs.listens(pid, [comp.port]):
        _answering(pid, comp.port)
        _save_s3(s3mod.endpoint(comp.port), state.data("s3"))
        return
    port = comp.port if comp is not None and procs.listens(pid, [comp.port]) else _moto_port(pid)
    if port is None:
        raise OperationFailed(f"cannot find the port of moto (PID {pid}) to save its objects")
    _answering(pid, port)
    aside = state.data("s3").with_name("s3.unloaded-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    if s3mod.save(s3mod.endpoint(port), aside) == 0:
        shutil.rmtree(aside, ignore_errors=True)
        return
    logging.getLogger("opsctl.local").warning(
        "moto had not loaded the saved objects (%s kept as it was); what it held is saved in %s",
        state.data("s3"), aside)


def _say_if_s3_died(state: st.LocalState) -> None:
    """Say in the log that the platform's moto died before `down` (breaker 25 F15: "stopped: ...;
    data kept" said nothing of it): what it held in memory since `up` loaded the saved copy is
    gone, and the next `up` starts from that copy."""
    comp = state.components.get("s3")
    if comp is not None and comp.pid and live_pid(state, "s3") is None:
        logging.getLogger("opsctl.local").warning(
            "moto (PID %s) was not running: the S3 objects it held since 'opsctl local up' loaded the copy in %s "
            "are gone with it, and the next 'up' starts from that copy ('opsctl backup verify-chain' names WAL "
            "that went with it)", comp.pid, state.data("s3"))


def _silent_s3(state: st.LocalState) -> OperationFailed | None:
    """Why the platform's running moto does not answer (`_answering`, said in the log at once),
    or None: it answers, or none runs."""
    pid, comp = live_pid(state, "s3"), state.components.get("s3")
    if pid is None or comp is None or not procs.listens(pid, [comp.port]):
        return None
    try:
        _answering(pid, comp.port)
    except OperationFailed as exc:
        logging.getLogger("opsctl.local").warning("%s: its objects can't be saved; stopping the rest", exc)
        return exc
    return None


def _answering(pid: int, port: int, tries: int = 3) -> None:
    """OperationFailed when moto (`pid`) does not answer on `port` in `tries` probes of 2 s each
    (s3.ready): a stopped or hung moto made `down` wait on the save's S3 client (its timeouts
    and retries: minutes) with nothing said (breaker 22 F12). Its objects are then not saved, and
    the caller leaves it running."""
    import psutil

    for _ in range(tries):
        if s3mod.ready(port):
            return
        try:
            if psutil.Process(pid).status() == psutil.STATUS_STOPPED:
                raise OperationFailed(f"moto (PID {pid}) is stopped (SIGSTOP or a debugger): 'kill -CONT {pid}' "
                                      "resumes it")
        except psutil.Error:
            break
    raise OperationFailed(f"moto (PID {pid}) does not answer on port {port} (hung or overloaded)")


def _recover_s3(target: Path) -> None:
    """Finish the swap of a `down` killed inside _save_s3: with data/s3 renamed away to s3.old
    (done only once the new copy in s3.saving was whole and fsynced, its index last), s3.saving
    is the saved set; without it, s3.old is. Never leaves the saved objects only in s3.old,
    which `up` would not load and the next save would delete."""
    old = target.with_name(target.name + ".old")
    if target.exists() or not old.exists():
        return
    tmp = target.with_name(target.name + ".saving")
    (tmp if (tmp / s3mod.INDEX).is_file() else old).rename(target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _save_s3(endpoint: str, target: Path) -> None:
    """Save into a fresh folder and swap it in, so a failed save keeps the previous copy
    (a swap cut by a kill is finished first: _recover_s3)."""
    _recover_s3(target)
    tmp = target.with_name(target.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        s3mod.save(endpoint, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def log_path(project: Project, component: str) -> Path:
    """The log file of `component` ("worker" is the active color's); UsageError for an
    unknown name."""
    state, _ = st.load_lenient(st.folder_for(project.root))
    known = set(ORDER) - {"worker"} | {wk.name(c) for c in st.COLORS} | {"archiver"}
    if component == "worker":
        component = wk.name(state.active_color)
    if component not in known:
        raise UsageError(f"unknown component '{component}'; one of: {', '.join(sorted(known))}")
    return state.log(component)


def follow(path: Path, lines: int = 50, poll: float = 0.5) -> Iterator[str]:
    """The last `lines` whole lines, then new lines as they are written (like tail -f). Only
    "\\n" ends a line (`procs.read_lines`: a CR, VT, NEL or U+2028 inside one is shown as an
    escape, never a line of its own), and a line is yielded once its "\\n" is written: a
    writer's flush that ends mid-line (a block-buffered server cuts at 8 KiB) was shown as
    two lines, so a line with no "\\n" yet (also one ending the log when following starts)
    waits for the rest. One open file for the past and the new lines: none written in
    between is missed."""
    with open(path, "rb") as handle:
        past, pending = procs.read_lines(handle, lines)
        yield from past
        while True:
            more = handle.readline()
            if not more:
                time.sleep(poll)
                continue
            pending += more
            if pending.endswith(b"\n"):
                yield procs.line_text(pending)
                pending = b""


def logs(project: Project, component: str, lines: int = 50, keep_following: bool = False) -> Iterator[str]:
    """The last `lines` lines of `component`'s log (as `log_path` names it), then, with
    `keep_following`, each new line as it is written (until the caller stops). Raises
    UsageError, before yielding anything, for an unknown component, a log not written yet, or
    `lines` below 0 (0: none of the past lines, as `tail -n 0`)."""
    if lines < 0:
        raise UsageError(f"--lines must be 0 or more, not {lines}")
    path = log_path(project, component)
    if not path.exists():
        raise UsageError(f"no log yet at {path}; run 'opsctl local up' first")
    return follow(path, lines) if keep_following else iter(procs.tail_lines(path, lines))
