"""What a deploy is made of, and what it leaves in the history.

The history record is written at the start of a deploy and after every step, so a deploy
killed half-way leaves a record that the next one finds and finishes or cleans up.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import asdict, dataclass, field
from typing import Protocol

from opsctl.errors import UsageError

COLORS = ("blue", "green")

# The worker settings a deploy may change (`--set KEY=VALUE`), as WORKER_<KEY> variables.
WORKER_SETTINGS = frozenset({
    "model_path", "model_name", "device", "compute_type", "concurrency", "cpu_threads",
    "beam_size", "queue_size", "max_upload_mb", "rate_limit_rpm",
    "rate_limit_concurrent_uploads", "rate_limit_daily_audio_seconds", "log_level",
    "api_key_hashes",
})


def other(color: str | None) -> str:
    return "green" if color == "blue" else "blue"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Release:
    """What gets deployed: the image (its tag is the version) and worker settings."""

    image: str
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        tail = self.image.rsplit("/", 1)[-1]
        return tail.split(":", 1)[1] if ":" in tail else tail

    @staticmethod
    def parse(image: str, sets: list[str]) -> "Release":
        if not image or image.endswith(":") or " " in image:
            raise UsageError(f"--image '{image}' is not an image reference; use NAME:TAG, e.g. worker:1.4.0")
        settings: dict[str, str] = {}
        for item in sets:
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep or not key:
                raise UsageError(f"--set '{item}' is not KEY=VALUE")
            if key not in WORKER_SETTINGS:
                raise UsageError(f"--set {key}: unknown worker setting; one of {', '.join(sorted(WORKER_SETTINGS))}")
            settings[key] = value
        return Release(image, settings)


@dataclass
class Step:
    name: str
    status: str = "running"  # running | ok | failed | skipped
    seconds: float = 0.0
    detail: str = ""


@dataclass
class DeployRecord:
    env: str
    strategy: str
    image: str
    version: str
    settings: dict[str, str]
    to_color: str
    from_color: str | None
    from_version: str | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: str = field(default_factory=now)
    finished_at: str | None = None
    # in-progress | awaiting-promotion | promoted | failed | rolled-back | interrupted | aborted
    # (in-progress with the lock free: the deploying process died; see bluegreen.settle)
    outcome: str = "in-progress"
    reason: str = ""
    standby_until: float | None = None  # epoch seconds: when the old color is scaled down
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(doc: dict) -> "DeployRecord":
        steps = [Step(**s) for s in doc.pop("steps", [])]
        return DeployRecord(**doc, steps=steps)


@dataclass
class ColorState:
    color: str
    version: str | None
    running: bool
    ready: bool
    url: str | None = None
    detail: str = ""


class Driver(Protocol):
    """What the blue-green algorithm needs from a platform; nothing more."""

    name: str

    def lock(self): ...  # context manager; raises OperationFailed when another deploy holds it
    def deploy_running(self) -> bool: ...  # is the lock held by a live deploy right now (read-only)
    def active_color(self) -> str | None: ...
    def colors(self) -> dict[str, ColorState]: ...
    def bring_up(self, color: str, release: Release, timeout: float) -> None: ...
    def wait_ready(self, color: str, timeout: float) -> None: ...
    def switch_size(self, color: str) -> tuple[int, int] | None: ...  # (preview size, active size) when smaller
    def scale(self, color: str, replicas: int) -> None: ...
    def switch(self, color: str) -> None: ...
    def scale_down(self, color: str) -> None: ...
    def url(self, color: str) -> str | None: ...  # where analysis reaches the color directly; None: not from here
    def router_url(self) -> str | None: ...
    def history(self) -> list[DeployRecord]: ...
    def save(self, record: DeployRecord) -> None: ...
    def render(self, release: Release, color: str) -> str: ...
