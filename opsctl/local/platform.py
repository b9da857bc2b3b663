"""`opsctl local up | down | status | logs`: the whole platform on this machine.

`up` is idempotent: each component is probed and only what is not healthy is (re)started,
in dependency order. Components are plain processes recorded in the state file, so `down`
stops exactly what `up` started, and nothing else.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Callable, Iterator

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError
from opsctl.local import caddy, procs
from opsctl.local import postgres as pg
from opsctl.local import redis as rd
from opsctl.local import s3 as s3mod
from opsctl.local import state as st
from opsctl.local import worker as wk

ORDER = ("postgres", "redis", "s3", "worker", "router")


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    port: int | None
    healthy: bool
    version: str | None
    log: str
    note: str = ""


@dataclass
class UpResult:
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


def _healthy(name: str, comp: st.Component | None) -> bool:
    if comp is None or not procs.alive(comp.pid):
        return False
    if name == "postgres":
        return pg._ready(comp.port)
    if name == "redis":
        return rd.ping(comp.port)
    if name == "s3":
        return s3mod._ready(comp.port)
    if name == "router":
        return caddy._admin_ready(comp.admin_port)
    return wk.ready(comp.port)


def _ensure(state: st.LocalState, name: str) -> st.Component:
    comp = state.components.get(name)
    if comp is None:
        comp = st.Component(port=procs.free_port())
        if name == "router":
            comp.admin_port = procs.free_port()
        state.components[name] = comp
    return comp


def _start(name: str, state: st.LocalState, env: Environment) -> None:
    comp = _ensure(state, name)
    log = state.log(name)
    if name == "postgres":
        comp.pid = pg.start(state.data("postgres"), comp.port, log)
        pg.ensure_database(comp.port, env.database.name, env.database.user)
        comp.version = pg.version(comp.port)
    elif name == "redis":
        comp.pid = rd.start(state.data("redis"), comp.port, log)
        comp.version = rd.version(comp.port)
    elif name == "s3":
        comp.pid = s3mod.start(comp.port, log)
        s3mod.load(s3mod.endpoint(comp.port), state.data("s3"))
        s3mod.ensure_buckets(s3mod.endpoint(comp.port), [env.buckets.audio, env.buckets.backups])
        comp.version = f"moto {dist_version('moto')}"
    elif name == "router":
        upstream = state.components[wk.name(state.active_color)].port
        comp.pid = caddy.start(state.data("caddy"), comp.port, comp.admin_port, upstream,
                               state.active_color, env.deploy.drain_timeout, log)
        comp.version = f"caddy {caddy.version()}"


def _start_worker(state: st.LocalState, env: Environment) -> None:
    color = state.active_color
    previous = state.components.get(wk.name(color))
    wk.assemble_model()
    settings = previous.settings if previous else {}
    version = (previous.version if previous and previous.version else None) or dist_version("transcription-worker")
    wk.migrate(wk.environment(state, env, color, version, settings))
    wk.start(state, env, color, version, settings, env.deploy.ready_timeout)


def up(project: Project, env: Environment | None = None, progress: Progress | None = None) -> UpResult:
    env = _local_env(project, env)
    notify = progress or (lambda _c, _s: None)
    folder = st.folder_for(project.root)
    with st.locked(folder):
        state = st.load(folder)
        result = UpResult(router_url="")
        for name in ORDER:
            key = wk.name(state.active_color) if name == "worker" else name
            notify(name, "checking")
            if _healthy(name, state.components.get(key)):
                result.kept.append(name)
                notify(name, "kept")
                continue
            notify(name, "starting")
            began = time.monotonic()
            try:
                if name == "worker":
                    _start_worker(state, env)
                else:
                    _start(name, state, env)
            except OperationFailed as exc:
                state.save()
                raise OperationFailed(f"{name}: {exc}") from None
            finally:
                result.seconds[name] = round(time.monotonic() - began, 2)
            state.save()
            result.started.append(name)
            notify(name, "ok")
        router = state.components["router"]
        upstream = state.components[wk.name(state.active_color)].port
        if caddy.current_upstream(router.admin_port) != f"{procs.HOST}:{upstream}":
            caddy.switch(router.admin_port, upstream, state.active_color)
        result.router_url = f"http://{procs.HOST}:{router.port}"
        return result


def status(project: Project) -> list[ComponentStatus]:
    state = st.load(st.folder_for(project.root))
    rows = []
    names = ["postgres", "redis", "s3"] + [wk.name(c) for c in st.COLORS] + ["router"]
    for name in names:
        comp = state.components.get(name)
        if comp is None:
            if not name.startswith("worker-"):
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
        rows.append(ComponentStatus(name, comp.pid if procs.alive(comp.pid) else None, comp.port,
                                    healthy, comp.version, str(state.log(name)), note))
    return rows


def down(project: Project, purge: bool = False) -> list[str]:
    """Stop what `up` started, by recorded PID; keep the data unless `purge`."""
    folder = st.folder_for(project.root)
    stopped: list[str] = []
    with st.locked(folder):
        state = st.load(folder)
        comps = state.components
        if "router" in comps and caddy.stop(comps["router"].pid, comps["router"].admin_port):
            stopped.append("router")
        for color in st.COLORS:
            if wk.stop(comps.get(wk.name(color))):
                stopped.append(wk.name(color))
        s3c = comps.get("s3")
        if s3c and procs.alive(s3c.pid, "moto"):
            if not purge:
                _save_s3(s3mod.endpoint(s3c.port), state.data("s3"))
            procs.stop(s3c.pid, 10, "moto")
            stopped.append("s3")
        if "redis" in comps and rd.stop(comps["redis"].pid, comps["redis"].port):
            stopped.append("redis")
        if "postgres" in comps and pg.stop(comps["postgres"].pid):
            stopped.append("postgres")
        for comp in comps.values():
            comp.pid = None
        if purge:
            shutil.rmtree(folder / "data", ignore_errors=True)
            shutil.rmtree(folder / "logs", ignore_errors=True)
            state.path.unlink(missing_ok=True)
        else:
            state.save()
    return stopped


def _save_s3(endpoint: str, target: Path) -> None:
    """Save into a fresh folder and swap it in, so a failed save keeps the previous copy."""
    tmp = target.with_name(target.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    s3mod.save(endpoint, tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def log_path(project: Project, component: str) -> Path:
    state = st.load(st.folder_for(project.root))
    known = set(ORDER) - {"worker"} | {wk.name(c) for c in st.COLORS}
    if component == "worker":
        component = wk.name(state.active_color)
    if component not in known:
        raise UsageError(f"unknown component '{component}'; one of: {', '.join(sorted(known))}")
    return state.log(component)


def follow(path: Path, lines: int = 50, poll: float = 0.5) -> Iterator[str]:
    """The last `lines`, then new lines as they are written (like tail -f)."""
    yield from procs.tail(path, lines).splitlines()
    with open(path, errors="replace") as handle:
        handle.seek(0, 2)
        while True:
            line = handle.readline()
            if line:
                yield line.rstrip("\n")
            else:
                time.sleep(poll)
