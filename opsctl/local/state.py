"""The embedded platform's one state file: ports, PIDs, versions and data paths.

Ports are chosen once and kept, so URLs handed out earlier (to the worker, to a shell, to
CI) stay valid across `down`/`up`. Writes are atomic and durable (temp file, fsync, rename,
fsync of the folder: opsctl.files.write_json) and every change happens under a file lock, so
a crashed or concurrent `opsctl` never leaves half a file. A component's port is written
before its process starts, and its PID as soon as the process exists.
"""

from __future__ import annotations

import errno
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from opsctl.errors import UsageError
from opsctl.files import write_json

COLORS = ("blue", "green")


@dataclass
class Component:
    """One process of the platform: its kept port(s), PID, version, worker settings, and
    `ready` (False from its spawn until its start-up finished)."""
    port: int
    pid: int | None = None
    version: str | None = None
    admin_port: int | None = None
    settings: dict = field(default_factory=dict)
    ready: bool = True  # False from the spawn until the start-up finished (then "kept" by `up`)
    metrics_port: int | None = None  # a worker's unauthenticated /metrics listener (WORKER_METRICS_PORT)


@dataclass
class LocalState:
    """The state file's content: components by name, and the color the router serves."""
    folder: Path
    components: dict[str, Component] = field(default_factory=dict)
    active_color: str = "blue"

    @property
    def path(self) -> Path:
        """The state file, state.json in the folder."""
        return self.folder / "state.json"

    def log(self, name: str) -> Path:
        """The log file of component `name`."""
        return self.folder / "logs" / f"{name}.log"

    def data(self, name: str) -> Path:
        """The data folder of component `name`."""
        return self.folder / "data" / name

    def pidfile(self, name: str) -> Path:
        """Where a component's process writes its PID (PostgreSQL: its own postmaster.pid)."""
        if name == "postgres":
            return self.data("postgres") / "postmaster.pid"
        return self.folder / "run" / f"{name}.pid"

    def save(self) -> None:
        """Write the state file atomically and durably (0600, folders FOLDER_MODE)."""
        write_json(self.path, {"version": 1, "active_color": self.active_color,
                               "components": {k: asdict(v) for k, v in self.components.items()}},
                   private=True, folder_mode=FOLDER_MODE)


# Others may pass through (PostgreSQL runs as its own system user when opsctl is root and
# must reach its data folder inside) but never list or read: files inside are 0600.
FOLDER_MODE = 0o711


def folder_for(root: Path) -> Path:
    """The embedded platform's folder, `.opsctl/local` under the ops root."""
    return root / ".opsctl" / "local"


def load(folder: Path) -> LocalState:
    """The state of `folder` (empty when there is none); UsageError when the file is damaged."""
    path = folder / "state.json"
    try:
        if path.exists():
            path.read_bytes()
    except OSError as exc:  # anything but these (a folder where the file belongs) is damage, said below
        if isinstance(exc, PermissionError) or exc.errno == errno.EIO:
            # the file may well be whole: never advise --purge (it deletes the platform's data)
            raise UsageError(f"{path} cannot be read ({exc.strerror or exc}): run opsctl as the user that owns "
                             f"{folder} (see 'ls -l {folder}') or give this user access; nothing was changed") from None
    state, problem = load_lenient(folder)
    if problem:
        # never --purge first (breaker 43 S9): it deletes the databases, Redis and the WAL queue,
        # and what is damaged is a file of ports and PIDs
        raise UsageError(f"{problem}; move it aside (mv {path} {path}.damaged), then 'opsctl local up' finds "
                         "the servers by their PID files and restarts them on the data they keep") from None
    return state


def load_lenient(folder: Path) -> tuple[LocalState, str | None]:
    """The state, or an empty one and what is wrong with the file (for `down`, which must
    work whatever the file holds: it finds the processes by their PID files then)."""
    path = folder / "state.json"
    if not path.exists():
        return LocalState(folder), None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("components", {}), dict):
            raise ValueError("not a JSON object with an object of components")
        comps = {k: _component(k, v) for k, v in doc.get("components", {}).items()}
        color = doc.get("active_color", "blue")
        if color not in COLORS:
            raise ValueError(f"active_color {color!r}")
        return LocalState(folder, comps, color), None
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        return LocalState(folder), f"{path} is damaged ({exc})"


def _component(name: str, doc: object) -> Component:
    """A Component from the state file, every field's type checked (ValueError naming it): a
    file a crash, an older opsctl or a hand edit left never reaches a process call as a PID of
    -1, "123" or 1.5."""
    if not isinstance(doc, dict):
        raise ValueError(f"component {name!r} is not an object")
    known = set(Component.__dataclass_fields__)
    if "port" not in doc or set(doc) - known:
        raise ValueError(f"component {name!r} " + (f"has unknown fields {sorted(set(doc) - known)}" if set(doc) - known
                                                    else "has no port"))
    comp = Component(**doc)

    def number(field: str, value: object, optional: bool, low: int, high: int) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name}.{field} {value!r}")

    number("port", comp.port, False, 0, 65535)  # 0: no port (the WAL archiver)
    number("pid", comp.pid, True, 1, 2**31 - 1)
    number("admin_port", comp.admin_port, True, 1, 65535)
    number("metrics_port", comp.metrics_port, True, 1, 65535)
    if comp.version is not None and not isinstance(comp.version, str):
        raise ValueError(f"{name}.version {comp.version!r}")
    if not isinstance(comp.settings, dict) or not isinstance(comp.ready, bool):
        raise ValueError(f"{name}.settings/ready")
    return comp


@contextmanager
def locked(folder: Path, timeout: float = 600.0, what: str = "the local platform") -> Iterator[None]:
    """One mutation of the local platform at a time (up, down, a deploy's switch)."""
    from opsctl.files import private_dir

    private_dir(folder.parent, FOLDER_MODE)  # .opsctl
    private_dir(folder, FOLDER_MODE)
    try:
        with FileLock(str(folder / "lock"), timeout=timeout):
            yield
    except Timeout:
        raise UsageError(f"another opsctl is changing {what} (lock {folder / 'lock'}); wait for it") from None
