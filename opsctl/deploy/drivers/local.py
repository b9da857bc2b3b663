"""The local driver: a color is a worker process, the switch is Caddy's admin API.

History lives beside the platform's state (`.opsctl/local/deploys.json`), the deploy lock
is a file lock the OS releases when the deploying process dies, so a killed deploy never
blocks the next one.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from opsctl.config import Environment, Project
from opsctl.deploy.model import ColorState, DeployRecord, Release, upsert
from opsctl.errors import LeaseHeld, OperationFailed, UsageError, fault_text
from opsctl.files import write_json
from opsctl.local import caddy, procs
from opsctl.local import state as st
from opsctl.local import worker as wk
from opsctl.local.platform import live_pid, point_router


def _stop_color(state: st.LocalState, color: str, timeout: float = 30.0) -> bool:
    """SIGTERM (uvicorn drains in-flight requests) to the color's process, found by the state
    or by its PID file (a deploy killed right after starting it may not have recorded it)."""
    pid = live_pid(state, wk.name(color))
    if pid is None:
        return False
    procs.stop(pid, timeout, "transcription-worker")
    state.pidfile(wk.name(color)).unlink(missing_ok=True)
    return True


LOCK = "deploy.lock"  # the embedded platform's deploy lock, in its state folder
OWNER = "deploy.lock.pid"  # its holder's PID (LocalDriver.deploy_running reads it)
OPERATION = "deploy.lock.operation"  # which non-deploy operation holds it: {"pid", "operation"}


@contextmanager
def deploy_lock(folder: Path, operation: str | None = None) -> Iterator[None]:
    """Hold the file lock `folder/deploy.lock` (released by the OS when the process dies),
    with the holder's PID beside it and, for an operation other than a deploy (`operation`,
    e.g. "failover"), its name, written first so a reader never sees the PID unnamed. When
    the disk can't take those notes the lock is held all the same (logged): lock_holder then
    names no holder.
    LeaseHeld (naming the holder, lock_holder) at once when someone else holds it."""
    lock = FileLock(str(folder / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = lock_holder(folder)
        what = "another deploy" if holder.startswith("a deploy") else holder
        raise LeaseHeld(f"{what} is running on env 'local' (deploy.lock is held); "
                        "wait for it or check 'opsctl status'", holder) from None
    try:
        try:
            # the folder stays 0711: PostgreSQL's system user passes through it to its data directory
            if operation:
                write_json(folder / OPERATION, {"pid": os.getpid(), "operation": operation}, private=True,
                           folder_mode=st.FOLDER_MODE)
            write_json(folder / OWNER, os.getpid(), private=True, folder_mode=st.FOLDER_MODE)
        except OperationFailed as exc:  # a full disk (errors.MachineFaults): the file lock is the lease
            # the holder's name is a note for others; `local down` must still run (breaker 33 B6)
            (folder / OPERATION).unlink(missing_ok=True)
            logging.getLogger("opsctl.local").warning("holding the deploy lease unnamed: %s", fault_text(exc))
        yield
    finally:
        (folder / OWNER).unlink(missing_ok=True)
        (folder / OPERATION).unlink(missing_ok=True)
        lock.release()


def lock_holder(folder: Path) -> str:
    """Who holds the embedded platform's deploy lock (`deploy.lock` in `folder`), as its files
    tell: "a failover (pid 123)" when a PITR operation (opsctl.pitr.lease) wrote its name
    beside its PID, "a deploy (pid 123)", or "another deploy, restore or failover" when the
    holder has not written its PID yet."""
    pid = procs.pidfile_owner(folder / OWNER)
    try:
        doc = json.loads((folder / OPERATION).read_text())
    except (OSError, ValueError):
        doc = {}
    if pid is not None and isinstance(doc, dict) and doc.get("pid") == pid:
        return f"a {doc.get('operation', 'PITR operation')} (pid {pid})"
    return f"a deploy (pid {pid})" if pid is not None else "another deploy, restore or failover"


class LocalDriver:
    """The Driver (opsctl.deploy.model.Driver) of `platform: local`: each color is a worker
    process of the embedded platform, the router is its Caddy. Raises UsageError when the
    platform of the ops root is not up."""

    name = "local"

    def __init__(self, project: Project, env: Environment):
        self.env = env
        self.folder = st.folder_for(project.root)
        state = st.load(self.folder)
        if "router" not in state.components:
            raise UsageError(f"the local platform of {project.root} is not up; run 'opsctl local up'")

    @property
    def _history_path(self) -> Path:
        return self.folder / "deploys.json"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The file lock `.opsctl/local/deploy.lock` (deploy_lock); LeaseHeld (an
        OperationFailed) at once when another deploy, a restore or a failover holds it."""
        with deploy_lock(self.folder):
            yield

    def deploy_running(self) -> bool:
        """True when a live process holds the deploy lock now. Read from the holder's PID file
        (`deploy.lock.pid`, written after taking the lock): a reader never takes the lock itself,
        so `watch opsctl status` can never make a deploy find it held."""
        return procs.pidfile_owner(self.folder / OWNER) is not None

    def _state(self) -> st.LocalState:
        return st.load(self.folder)

    def _following_router(self) -> st.LocalState:
        """The state, its active color set to where the router sends traffic (a deploy killed
        between Caddy's switch and the state write leaves the file one color behind: the color
        that serves must never be taken for a free one). Call with the state lock held."""
        state = self._state()
        active = self.active_color()
        if active is not None and active != state.active_color:
            state.active_color = active
            state.save()
        return state

    def active_color(self) -> str | None:
        """The color the router sends traffic to, asked of Caddy itself: a deploy killed between
        the switch and the state write leaves the state file behind the router."""
        state = self._state()
        router = state.components.get("router")
        dial = caddy.current_upstream(router.admin_port) if router and router.admin_port else None
        for color in st.COLORS:
            comp = state.components.get(wk.name(color))
            if dial and comp and dial == f"{procs.HOST}:{comp.port}":
                return color
        return state.active_color

    def colors(self) -> dict[str, ColorState]:
        """Each color's recorded version, whether its process lives (state or PID file) and
        answers /readyz, and its URL."""
        state = self._state()
        out = {}
        for color in st.COLORS:
            comp = state.components.get(wk.name(color))
            running = bool(comp) and live_pid(state, wk.name(color)) is not None
            out[color] = ColorState(color, comp.version if comp else None, running,
                                    running and wk.ready(comp.port), wk.base_url(comp.port) if comp else None)
        return out

    def bring_up(self, color: str, release: Release, timeout: float) -> None:
        """A fresh process for the color; the active color's process is never touched."""
        with st.locked(self.folder):
            state = self._following_router()
            if color == state.active_color:
                raise OperationFailed(f"refusing to replace the active color {color}")
            _stop_color(state, color)
            wk.migrate(wk.environment(state, self.env, color, release.version, release.settings))
            try:
                wk.start(state, self.env, color, release.version, release.settings, timeout)
            finally:
                state.save()

    def wait_ready(self, color: str, timeout: float) -> None:
        """Poll /readyz until 200; OperationFailed after `timeout` seconds or if it dies."""
        comp = self._state().components[wk.name(color)]
        procs.wait_until(lambda: wk.ready(comp.port), timeout, f"worker-{color}", None, comp.pid)

    def switch_size(self, color: str) -> tuple[int, int] | None:
        """Always None: one process per color."""
        return None  # one process per color: the preview already has the active color's size

    def scale(self, color: str, replicas: int) -> None:
        """Not possible locally: OperationFailed (never called, as switch_size is None)."""
        raise OperationFailed("the local driver runs one process per color; it does not scale")

    def switch(self, color: str) -> None:
        """Point Caddy at the color (opsctl.local.platform.point_router) and record it."""
        with st.locked(self.folder):
            point_router(self._state(), color)

    def scale_down(self, color: str) -> None:
        """SIGTERM the color's process and wait up to deploy.drain_timeout seconds for its
        in-flight requests (then SIGKILL); refuses the active color (OperationFailed)."""
        with st.locked(self.folder):
            state = self._following_router()
            if color == state.active_color:
                raise OperationFailed(f"refusing to stop the active color {color}")
            _stop_color(state, color, timeout=self.env.deploy.drain_timeout or 30)

    def url(self, color: str) -> str | None:
        """http://127.0.0.1:<port> of the color's process; None when it was never started."""
        comp = self._state().components.get(wk.name(color))
        return wk.base_url(comp.port) if comp else None

    def router_url(self) -> str | None:
        """http://127.0.0.1:<port> of Caddy."""
        return f"http://{procs.HOST}:{self._state().components['router'].port}"

    def history(self) -> list[DeployRecord]:
        """The records of `.opsctl/local/deploys.json`, oldest first; UsageError when damaged."""
        if not self._history_path.exists():
            return []
        try:
            return [DeployRecord.from_dict(d) for d in json.loads(self._history_path.read_text())]
        except (ValueError, TypeError, AttributeError) as exc:
            raise UsageError(f"{self._history_path} is damaged ({exc}); move it aside to start a new "
                                  "deploy history (traffic and colors are not affected)") from None

    def save(self, record: DeployRecord) -> None:
        """Replace the record with its id (in place; a new one is appended); the last 100 are kept, written
        atomically and fsynced."""
        records = upsert(self.history(), record)
        write_json(self._history_path, [r.to_dict() for r in records], indent=1)

    def render(self, release: Release, color: str) -> str:
        """The process the local driver would start, as a person would read it."""
        state = self._state()
        variables = wk.environment(state, self.env, color, release.version, release.settings)
        lines = [f"# local worker process for color {color}"]
        lines += [f"{k}={v}" for k, v in sorted(variables.items()) if not procs.is_secret(k, v)]  # G7: not by "KEY"
        lines.append(f"transcription-worker serve --host {procs.HOST} --port <kept port of worker-{color}>")
        return "\n".join(lines)
