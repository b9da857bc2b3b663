"""Configuration, read once from `WORKER_*` environment variables.

The worker runs as a container and as a supervised local process; in both the environment is
the one interface opsctl controls, so every setting lives here, is validated at start-up and
a bad value stops the process with one line on stderr (exit 2) instead of failing later
under traffic.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


EMPTY_KEY_HASH = hashlib.sha256(b"").hexdigest()


def default_model_dir() -> Path:
    """Where `assemble-model` puts Whisper base: the user cache, overridable by XDG_CACHE_HOME."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "transcription-worker" / "models" / "whisper-base"


MAX_SECONDS = 30 * 86400.0  # a lease, expiry or timeout longer than 30 days is a typo (and overflows dates)


def usable_cores() -> int:
    """The CPUs this process may use, at least 1: the fewest of the host's, its affinity
    mask's and its cgroup's CPU quota (a Kubernetes CPU limit, rounded up), as loky.cpu_count
    reads them. os.cpu_count() counts the host's: a pod limited to 2 CPUs on a 64-core node
    started 64 CTranslate2 threads and sized its batches for 64 cores."""
    from loky import cpu_count

    return cpu_count()


class Settings(BaseSettings):
    """The worker's settings, read from WORKER_* environment variables (README lists them).
    Raises pydantic's ValidationError on a bad value; `load_settings` words it for a user."""

    # no setting takes nan or inf: WORKER_UPLOAD_LEASE_SECONDS=inf was a start-up traceback, a
    # lease or expiry of inf killed the job keeper or made every upload a 500 (reviewer 39 R8)
    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore", allow_inf_nan=False)

    # model and inference
    model_path: Path = Field(default_factory=default_model_dir)
    model_name: str = ""  # reported by /version and verbose_json; default: the directory name
    device: Literal["cpu", "cuda"] = "cpu"
    compute_type: str = "int8"
    concurrency: int = Field(1, ge=1, le=64)
    cpu_threads: int = Field(0, ge=0, le=1024)  # 0: cores divided among the concurrent transcriptions
    beam_size: int = Field(5, ge=1, le=10)
    batch_size: int = Field(0, ge=0, le=256)  # batched pipeline; 0: sized from the device
    # sync audio this long or longer is batched (jobs always); <0: never. Finite: nan compared
    # false both ways and meant "never" without a word (breaker 29 F8)
    batched_min_seconds: float = Field(60, allow_inf_nan=False)
    queue_size: int = Field(8, ge=0)  # waiting transcriptions on top of `concurrency` running
    # a transcription is stopped once it has run this many times its audio's duration (speech runs
    # at 0.05-0.1 of it on 2 cores; audio that makes Whisper loop, at 1-6 times: breaker 29 F5)...
    transcription_budget_factor: float = Field(1.0, gt=0, allow_inf_nan=False)
    # ...or this many seconds, whichever is longer (short clips have a fixed cost)
    transcription_budget_min_seconds: float = Field(120, gt=0, allow_inf_nan=False)
    job_lease_seconds: float = Field(60, gt=0, le=MAX_SECONDS)  # a job whose worker stopped renewing is adopted after this
    job_max_attempts: int = Field(3, ge=1)  # workers that may die running one job before it fails
    # jobs accepted while every worker's queue is full wait in PostgreSQL, unowned, for the first
    # worker with room (all workers together; a soft cap: concurrent creates may pass it by a few)
    job_backlog: int = Field(1000, ge=0)
    # a job waits for an idle model thread, so sync requests keep the queue; one that has waited
    # this long takes a free queue place anyway, so steady sync traffic cannot hold it forever
    job_patience_seconds: float = Field(60, ge=0, allow_inf_nan=False)
    max_upload_mb: int = Field(25, ge=1)  # OpenAI's own limit
    max_upload_total_mb: int = Field(2048, ge=1)  # one file through /v1/uploads
    max_part_mb: int = Field(64, ge=1)  # one part of it (OpenAI's part limit)
    # /v1/uploads part bodies this worker holds in memory at once (all keys); beyond it 503
    part_memory_mb: int = Field(256, ge=1)
    # the share of it one API key may hold (a key holding nothing may always send one part);
    # beyond it 429, so one key cannot keep every other key's parts out
    part_memory_key_percent: int = Field(50, ge=1, le=100)
    # a part's body must keep arriving at `part_min_rate_kbps` or more over any this many seconds
    # (the first of them its grace); else 408 and its memory is freed, so a client that stalls or
    # trickles bytes cannot hold it, while a slow but steady one is never cut off
    part_body_timeout_seconds: float = Field(30, gt=0, le=MAX_SECONDS)
    # KiB per second per part in flight (parallel parts divide the link): 1 KiB/s is 8.2 kbit/s of
    # payload, Apache mod_reqtimeout's MinRate is 500 B/s; a trickle of a byte now and then fails it
    part_min_rate_kbps: float = Field(1, gt=0)
    # the floor rises with the part memory held: from `part_min_rate_kbps` while it is at most half
    # full to this at full (Apache mod_qos's QS_SrvMinDataRate: the required rate grows with the
    # load), so slow parts cannot keep fast ones out: a full worker sheds them within a window
    part_busy_rate_kbps: float = Field(64, gt=0)
    upload_expiry_seconds: float = Field(3600, gt=0, le=MAX_SECONDS)  # an upload not completed by then is aborted in S3
    # an ended upload's row, and a completed one's file in S3, are deleted this long after it
    # ended (completed, or past its expiry), unless a queued or running job reads the file; 0 = kept
    upload_retention_hours: float = Field(168, ge=0, le=87_600, allow_inf_nan=False)  # 7 days; at most 10 years
    max_audio_seconds: float = Field(14_400, gt=0)  # 4 h; checked from the container, then while decoding

    # dependencies (each optional: without it the features that need it answer 503)
    database_url: str | None = None
    redis_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "audio/"

    # identity
    color: str = "none"
    version: str = ""

    # access control and per-key limits (0 = unlimited)
    api_key_hashes: Annotated[list[str], NoDecode] = []
    rate_limit_rpm: int = Field(0, ge=0)
    rate_limit_concurrent_uploads: int = Field(0, ge=0)
    rate_limit_daily_audio_seconds: int = Field(0, ge=0)
    rate_limit_open_uploads: int = Field(0, ge=0)  # /v1/uploads not yet completed, per key
    rate_limit_parts_per_minute: int = Field(0, ge=0)  # /v1/uploads parts, moving one-minute window
    rate_limit_daily_upload_mb: int = Field(0, ge=0)  # /v1/uploads bytes declared per UTC day
    upload_lease_seconds: float = Field(60, gt=0, le=MAX_SECONDS)  # a concurrent-upload slot of a dead worker frees after this
    require_api_keys: bool = False  # refuse to start without WORKER_API_KEY_HASHES (production)
    metrics_port: int = Field(0, ge=0, le=65535)  # a second listener serving only /metrics; 0 = off
    docs_enabled: bool | None = None  # /docs and /openapi.json; default: on only when keys are off

    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split_hashes(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _check_hashes(cls, value: list[str]) -> list[str]:
        for h in value:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ValueError("each entry must be a SHA-256 hex digest (64 hex characters)")
            if h == EMPTY_KEY_HASH:  # `printf %s "$KEY" | sha256sum` with KEY unset
                raise ValueError("an entry is the SHA-256 of an empty key (was the key variable"
                                 " unset when it was hashed?); hash the real key")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        if not self.model_name:
            self.model_name = self.model_path.name
        if not self.version:
            from . import __version__

            self.version = __version__
        if self.docs_enabled is None:
            self.docs_enabled = not self.api_key_hashes
        if self.cpu_threads == 0:
            self.cpu_threads = max(1, usable_cores() // self.concurrency)
        return self

    @property
    def max_upload_bytes(self) -> int:
        """WORKER_MAX_UPLOAD_MB in bytes: the largest single-form upload."""
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_upload_total_bytes(self) -> int:
        """WORKER_MAX_UPLOAD_TOTAL_MB in bytes: the largest /v1/uploads file."""
        return self.max_upload_total_mb * 1024 * 1024

    @property
    def max_part_bytes(self) -> int:
        """WORKER_MAX_PART_MB in bytes: the largest part of a /v1/uploads upload."""
        return self.max_part_mb * 1024 * 1024

    @cached_property
    def key_ids(self) -> dict[str, str]:
        """Configured key hash -> short id used in Redis keys, job rows and logs (never the key)."""
        return {h: h[:12] for h in self.api_key_hashes}

    def key_id_for(self, token: str) -> str | None:
        """The short id of the configured key `token` is, or None (an empty token never is)."""
        if not token:
            return None
        return self.key_ids.get(hashlib.sha256(token.encode()).hexdigest())

    @property
    def jobs_enabled(self) -> bool:
        """True when PostgreSQL and S3 are both configured (jobs and uploads need both)."""
        return bool(self.database_url and self.s3_bucket)


class ConfigError(Exception):
    """A configuration problem, worded for one stderr line."""


def load_settings() -> Settings:
    """Settings from the environment; raises ConfigError with one line naming the variable
    (key material is never echoed)."""
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]).upper() if err["loc"] else "SETTINGS"
        message = f"invalid WORKER_{field}: {err['msg']}"
        if field != "API_KEY_HASHES" and "input" in err:  # never echo key material
            message += f" (got {err['input']!r})"
        raise ConfigError(message) from None
