"""What a deploy is made of, and what it leaves in the history.

The history record is written at the start of a deploy and after every step, so a deploy
killed half-way leaves a record that the next one finds and finishes or cleans up.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import asdict, dataclass, field
from typing import Annotated, ContextManager, Literal, Protocol

from pydantic import Field

from opsctl.errors import UsageError

COLORS = ("blue", "green")

# The worker settings a deploy may change (`--set KEY=VALUE`), as WORKER_<KEY> variables, with
# the values the worker accepts for each (worker/transcription_worker/config.py's Settings:
# the same types, choices and bounds), so a deploy and its dry run refuse at validate what the
# worker would refuse at start-up, after the bring-up began (breaker 38 H7).
_HEX64 = r"^[0-9a-f]{64}(,[0-9a-f]{64})*$"
_MAX_SECONDS = 30 * 86400.0  # the worker's MAX_SECONDS: a lease, expiry or timeout past 30 days is a typo
_SECONDS = Annotated[float, Field(gt=0, le=_MAX_SECONDS, allow_inf_nan=False)]
WORKER_SETTINGS: dict[str, tuple[object, str]] = {
    "model_path": (str, "a path"),
    "model_name": (str, "a name"),
    "device": (Literal["cpu", "cuda"], "cpu or cuda"),
    "compute_type": (str, "a CTranslate2 compute type, e.g. int8"),
    "concurrency": (Annotated[int, Field(ge=1, le=64)], "a whole number from 1 to 64"),
    "cpu_threads": (Annotated[int, Field(ge=0, le=1024)], "a whole number from 0 to 1024 (0: shared out by the worker)"),
    "beam_size": (Annotated[int, Field(ge=1, le=10)], "a whole number from 1 to 10"),
    "queue_size": (Annotated[int, Field(ge=0)], "a whole number, 0 or more"),
    "max_upload_mb": (Annotated[int, Field(ge=1)], "a whole number, 1 or more"),
    "rate_limit_rpm": (Annotated[int, Field(ge=0)], "a whole number, 0 or more (0: unlimited)"),
    "rate_limit_concurrent_uploads": (Annotated[int, Field(ge=0)], "a whole number, 0 or more (0: unlimited)"),
    "rate_limit_daily_audio_seconds": (Annotated[int, Field(ge=0)], "a whole number, 0 or more (0: unlimited)"),
    # the Uploads API's (issue 26; breaker 57 F3: none could be set, so on Kubernetes every
    # per-key upload limit stayed off)
    "max_upload_total_mb": (Annotated[int, Field(ge=1)], "a whole number, 1 or more"),
    "max_part_mb": (Annotated[int, Field(ge=1)], "a whole number, 1 or more"),
    "part_memory_mb": (Annotated[int, Field(ge=1)], "a whole number, 1 or more"),
    "part_memory_key_percent": (Annotated[int, Field(ge=1, le=100)], "a whole number from 1 to 100"),
    "part_body_timeout_seconds": (_SECONDS, f"seconds above 0, at most {_MAX_SECONDS:.0f} (30 days)"),
    "part_min_rate_kbps": (Annotated[float, Field(gt=0, allow_inf_nan=False)], "a number above 0"),
    "part_busy_rate_kbps": (Annotated[float, Field(gt=0, allow_inf_nan=False)], "a number above 0"),
    "upload_expiry_seconds": (_SECONDS, f"seconds above 0, at most {_MAX_SECONDS:.0f} (30 days)"),
    "upload_retention_hours": (Annotated[float, Field(ge=0, le=87_600, allow_inf_nan=False)],
                               "hours from 0 to 87600 (0: kept)"),
    "upload_lease_seconds": (_SECONDS, f"seconds above 0, at most {_MAX_SECONDS:.0f} (30 days)"),
    "rate_limit_open_uploads": (Annotated[int, Field(ge=0)], "a whole number, 0 or more (0: unlimited)"),
    "rate_limit_parts_per_minute": (Annotated[int, Field(ge=0)], "a whole number, 0 or more (0: unlimited)"),
    "rate_limit_daily_upload_mb": (Annotated[int, Field(ge=0)], "a whole number, 0 or more (0: unlimited)"),
    "log_level": (Literal["debug", "info", "warning", "error"], "debug, info, warning or error"),
    "api_key_hashes": (Annotated[str, Field(pattern=_HEX64)],
                       "comma-separated SHA-256 hex digests (64 lowercase hex characters each)"),
}


def worker_setting(key: str, value: str) -> str:
    """`value` (text, as the WORKER_<KEY> variable will hold it) checked as the worker checks
    it at start-up; returns it stripped. UsageError naming the setting and what it takes: an
    unknown key, an empty value (never taken for the worker's default), one out of range, or
    one holding a control character (`output.first_control`: a newline, tab, CR, ESC, NEL,
    U+2028 or a bidirectional override) anywhere but the whitespace stripped around it. A
    free-text setting (model_path, model_name) took those: a newline in a variable is never
    meant, and the dry run printed `WORKER_MODEL_PATH=/a` over a forged line of its own
    (`WORKER_API_KEY_HASHES=`, auth seemingly off)."""
    from pydantic import TypeAdapter, ValidationError

    from opsctl.deploy.reference import shown
    from opsctl.output import first_control

    if key not in WORKER_SETTINGS:
        raise UsageError(f"--set {key}: unknown worker setting; one of {', '.join(sorted(WORKER_SETTINGS))}")
    kind, wanted = WORKER_SETTINGS[key]
    text = value.strip()
    if not text:
        raise UsageError(f"--set {key}= is empty; give {wanted}, or leave the --set out for the default")
    bad = first_control(text)
    if bad is not None:
        raise UsageError(f"--set {key}={shown(text)} holds the control character {bad!r}; the worker takes "
                         f"{wanted}, as one line of printable text (it becomes WORKER_{key.upper()})")
    if key == "api_key_hashes":
        text = ",".join(h.strip().lower() for h in text.split(",") if h.strip())
    try:
        TypeAdapter(kind).validate_python(text, strict=False)
    except ValidationError:
        raise UsageError(f"--set {key}={text!r}: the worker takes {wanted}") from None
    return text


class Outcome(enum.StrEnum):
    """A deploy record's outcome (str values: JSON and saved records hold these words)."""

    IN_PROGRESS = "in-progress"  # no verdict yet; with the deploy lock free, its process died (bluegreen.settle)
    AWAITING_PROMOTION = "awaiting-promotion"  # --no-auto-promote: the preview is ready, 'opsctl promote' switches
    PROMOTED = "promoted"  # traffic on the new color, post-promotion analysis passed
    FAILED = "failed"  # failed before the switch (traffic never moved), or after it with no color to return to
    ROLLED_BACK = "rolled-back"  # failed after the switch: traffic returned to the previous color
    INTERRUPTED = "interrupted"  # stopped before the switch (Ctrl-C, or a dead process cleaned up later)
    ABORTED = "aborted"  # ended by 'opsctl abort' or replaced by a newer deploy while awaiting promotion


class StepStatus(enum.StrEnum):
    """A deploy step's status (str values, as saved)."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM in the step: no verdict, as a process killed there


def other(color: str | None) -> str:
    """The other color of blue/green; "blue" when `color` is None (nothing deployed yet)."""
    return "green" if color == "blue" else "blue"


def now() -> str:
    """The current UTC time as ISO 8601 text, to the second (records' started_at/finished_at)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Release:
    """What gets deployed: the image (its tag is the version) and worker settings."""

    image: str
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The image's tag (a digest after '@' left out; the whole last path segment when a
        record from before references were checked has no tag)."""
        tail = self.image.split("@", 1)[0].rsplit("/", 1)[-1]
        return tail.split(":", 1)[1] if ":" in tail else tail

    @property
    def name(self) -> str:
        """The image without its tag and digest (registry host and port kept): what another
        version of the same image is named after."""
        head = self.image.split("@", 1)[0]
        return head.rsplit(":", 1)[0] if ":" in head.rsplit("/", 1)[-1] else head

    @staticmethod
    def parse(image: str, sets: list[str]) -> "Release":
        """A release from `--image NAME:TAG[@DIGEST]` (opsctl.deploy.reference: the
        distribution reference grammar; a tag is required, it is the version) and `--set
        KEY=VALUE` texts (keys among WORKER_SETTINGS, case-insensitive; values the worker
        accepts: worker_setting). Raises UsageError
        naming the bad input."""
        from opsctl.deploy import reference

        image = str(reference.parse(image))
        settings: dict[str, str] = {}
        for item in sets:
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep or not key:
                raise UsageError(f"--set '{item}' is not KEY=VALUE")
            settings[key] = worker_setting(key, value)
        return Release(image, settings)


@dataclass
class Step:
    """One step of a deploy: its name, status, wall time in seconds and a one-line detail."""

    name: str
    status: StepStatus = StepStatus.RUNNING
    seconds: float = 0.0
    detail: str = ""


@dataclass
class DeployRecord:
    """One deploy (or rollback, or abort) as kept in the platform's history: what was
    deployed, from which color and version to which color, the outcome and its reason, and
    the steps. `env` is the environment's name; times are ISO 8601 UTC text except
    `standby_until` (epoch seconds)."""

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
    outcome: Outcome = Outcome.IN_PROGRESS
    reason: str = ""
    standby_until: float | None = None  # epoch seconds: when the old color is scaled down
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The record as plain JSON-able data (enums as their str values)."""
        doc = asdict(self)
        doc["outcome"] = str(self.outcome)
        for step in doc["steps"]:
            step["status"] = str(step["status"])
        return doc

    @staticmethod
    def from_dict(doc: dict) -> "DeployRecord":
        """A record from `to_dict`'s data. Raises ValueError/TypeError on a damaged record."""
        doc = dict(doc)
        steps = [Step(**{**s, "status": StepStatus(s.get("status", "running"))}) for s in doc.pop("steps", [])]
        return DeployRecord(**{**doc, "outcome": Outcome(doc.get("outcome", "in-progress"))}, steps=steps)


KEEP_RECORDS = 100  # deploy records a driver's history keeps, the newest


def upsert(records: list[DeployRecord], record: DeployRecord) -> list[DeployRecord]:
    """`records` (oldest first) with `record` saved: it replaces the record of its id in place
    (a save never reorders history) or is appended; the last KEEP_RECORDS are returned.
    What every driver's `save` writes."""
    records = list(records)
    at = next((i for i, r in enumerate(records) if r.id == record.id), None)
    if at is None:
        records.append(record)
    else:
        records[at] = record
    return records[-KEEP_RECORDS:]


@dataclass
class ColorState:
    """One color as the driver sees it now: the version it runs (None: never deployed),
    whether its process/pods run and answer ready, and its direct URL (None: not reachable
    from here)."""

    color: str
    version: str | None
    running: bool
    ready: bool
    url: str | None = None
    detail: str = ""


class Driver(Protocol):
    """What the blue-green algorithm needs from a platform; nothing more.

    Implemented by drivers.local.LocalDriver (worker processes behind Caddy) and
    drivers.kubernetes.KubernetesDriver (a Deployment per color behind Services). Colors are
    "blue" and "green"; timeouts are seconds. Platform errors are raised as OperationFailed
    (exit 1) with a message already redacted, bad configuration as UsageError (exit 2).
    """

    name: str  # "local" | "kubernetes"

    def lock(self) -> ContextManager[None]:
        """Hold the environment's deploy lock for the `with` block (a file lock, a Lease).
        Raises OperationFailed at once when another deploy holds it."""

    def deploy_running(self) -> bool:
        """True when a live deploy holds the lock right now (read-only; takes nothing)."""

    def active_color(self) -> str | None:
        """The color traffic goes to, asked of the router/Service itself (not of the
        records: a killed deploy may not have written its switch down); None before the
        first deploy of a platform that has no color yet."""

    def colors(self) -> dict[str, ColorState]:
        """Both colors as they are now, keyed by color."""

    def bring_up(self, color: str, release: Release, timeout: float) -> None:
        """Start `color` with `release` (replacing what that color ran; never the active
        color: OperationFailed). Returns once it started; `wait_ready` waits for readiness.
        `timeout` (seconds) bounds the call on every driver (Kubernetes: all its API
        requests together; it starts the color at deploy.preview_replicas)."""

    def wait_ready(self, color: str, timeout: float) -> None:
        """Return once `color` answers ready; OperationFailed after `timeout` seconds or when
        it dies."""

    def switch_size(self, color: str) -> tuple[int, int] | None:
        """(preview replicas, active replicas) when `color` is smaller than the active color
        and must be scaled before the switch; None when it already has the active size."""

    def scale(self, color: str, replicas: int) -> None:
        """Set `color` to `replicas` replicas (OperationFailed where the platform cannot)."""

    def switch(self, color: str) -> None:
        """Send all traffic to `color`; returns once the router/Service applied it. In-flight
        requests finish on the color that took them."""

    def scale_down(self, color: str) -> None:
        """Stop `color` (draining in-flight requests); refuses the active color
        (OperationFailed)."""

    def url(self, color: str) -> str | None:
        """The base URL analysis reaches `color` at directly; None when it is not reachable
        from here (then analysis through it is recorded as skipped)."""

    def router_url(self) -> str | None:
        """The base URL of the router (what clients call); None when not reachable from here."""

    def history(self) -> list[DeployRecord]:
        """The deploy records, oldest first (the platform keeps the last 100 or
        deploy.keep_versions worth). UsageError when the stored history is damaged."""

    def save(self, record: DeployRecord) -> None:
        """Store `record`, replacing the one with its id in place (a new id is appended): a
        save never reorders history."""

    def render(self, release: Release, color: str) -> str:
        """What `bring_up(color, release)` would apply, as text for a person (manifests, or
        the local process's environment without secrets)."""
