"""The ops root and its `opsctl.yaml`: where opsctl finds what environments exist.

The ops root is found like git finds a repository (walk up from the current directory),
so every command works from any subfolder, and `--root`/`OPSCTL_ROOT` point elsewhere.
Settings that hold secrets only ever name an environment variable: the file is committed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opsctl.errors import UsageError
from opsctl.health.settings import INT32_MAX, HealthSettings, SecretFreeUrl

# Where a secret goes instead of a URL in opsctl.yaml (the file is committed): the line
# refusing a URL with credentials ends with one of these (health.settings.SecretFreeUrl).
_AWS_CHAIN = ("AWS credentials come from the AWS chain (aws.profile, AWS_PROFILE, AWS_ACCESS_KEY_ID/"
              "AWS_SECRET_ACCESS_KEY in the environment); drop them from the URL")
_NO_SECRET = "this setting takes no secret (the URL is written into rendered files too); drop it from the URL"
_PUBLIC_URL = SecretFreeUrl(_NO_SECRET)
_HOURS = 3600.0
_DAY = 86400.0
# A Prometheus duration (model.ParseDuration): units from ms to y, largest first, e.g. 15s, 1m30s
_PROM_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?", re.ASCII)
_PROM_UNITS = (365 * _DAY, 7 * _DAY, _DAY, _HOURS, 60.0, 1.0, 0.001)
# dr.rto and dr.rpo: a number of ASCII digits (an optional fraction) and a unit, at most 30 days
_DR_DURATION = re.compile(r"[0-9]+(?:\.[0-9]+)?[smhd]", re.ASCII)
_DR_MAX_DAYS = 30

CONFIG_NAME = "opsctl.yaml"
STATE_DIR = ".opsctl"
# host:port of a scrape target: a DNS name or IPv4 address, or [IPv6], and a port 1-65535
_TARGET = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}", re.ASCII)


def _http_url(url: str | None, example: str) -> str | None:
    """`url` when it is an http(s) URL with a host (and a port that is one), else ValueError
    naming `example` (breaker 43 S11, 44 T4: 'not a url' or 'http://' loaded, then failed as a
    CRITICAL check or a KEDA serverAddress of 'http://')."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url) if url is not None else None
        ok = parts is None or (parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0)
    except ValueError:  # a port that is not a number or out of range, a bad IPv6 address
        ok = False
    if not ok:
        raise ValueError(f"not an http(s) URL with a host, such as {example}")
    return url


def _target(value: str | None) -> str | None:
    """`value` when it is a scrape target host:port (port 1-65535), else ValueError."""
    if value is not None and not (_TARGET.fullmatch(value) and 1 <= int(value.rsplit(":", 1)[1]) <= 65535):
        raise ValueError("not a host:port scrape target, such as node-exporter.monitoring.svc:9100")
    return value
# RFC 1123 label, as Kubernetes checks namespaces and label-like names (IsDNS1123Label)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# resource names a container may ask for (the API server's IsStandardContainerResourceName, or an
# extended resource: a DNS subdomain prefix, then a name)
_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_EXTENDED_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _dns_label(value: str, what: str) -> str:
    """`value` when it is a DNS-1123 label (the API server's rule), else ValueError saying the rule."""
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise ValueError(f"{what} {value!r} is not a DNS-1123 label: at most 63 characters of lowercase "
                         "letters, digits and '-', starting and ending with a letter or digit")
    return value


# The Quantity grammar of k8s.io/apimachinery (pkg/api/resource/quantity.go): sign, digits,
# optional fraction, then a decimal exponent or a binary/decimal SI suffix. ASCII only: Python's
# Decimal (behind parse_quantity) also takes "Infinity", "1_000" and non-ASCII digits.
_QUANTITY = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+|[KMGTPE]i|[mkMGTPE])?", re.ASCII)


def _parse_quantity(value: str | int):
    """kubernetes.utils.parse_quantity, imported only when a quantity is there to parse: the
    kubernetes package costs ~0.2 s to import, and every command loads a config."""
    from kubernetes.utils import parse_quantity

    return parse_quantity(value)


def _quantity(value: str | int, where: str) -> str | int:
    """`value` when the API server would take it as a resource quantity (the Quantity grammar in
    _QUANTITY, then kubernetes.utils.parse_quantity for its amount, which must not be negative),
    else ValueError."""
    try:
        if isinstance(value, bool) or not _QUANTITY.fullmatch(str(value)) or _parse_quantity(value) < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a Kubernetes quantity such as 2, 500m, 8Gi or 512Mi") from None
    return value


class _Model(BaseModel):
    # Unknown keys are errors: a typo in a threshold must not silently fall back to a default.
    # NaN and infinities are refused in every float (`.nan` made alert rules that never fire,
    # `.inf` an OverflowError in int(): breaker 38 H3); each number has a range besides.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


_Percent = Annotated[float, Field(gt=0, le=100)]
_Count = Annotated[int, Field(ge=0, le=INT32_MAX)]


class AwsSettings(_Model):
    """`aws:` of an environment: region, credential profile and an endpoint other than AWS's
    (moto on `local`); credentials come from the AWS chain, never from this file."""

    region: str = "us-east-1"
    profile: str | None = None
    endpoint_url: SecretFreeUrl(_AWS_CHAIN) | None = Field(None, description="an S3/AWS endpoint other than AWS's own")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, url: str | None) -> str | None:
        return _http_url(url, "http://127.0.0.1:5000")  # breaker 44 T4: any text loaded


class PulumiSettings(_Model):
    """`pulumi:` of an environment: stack name (default: the environment's), the program's
    folder in the ops root, and the state backend URL."""

    stack: str | None = None
    program: str = "stacks"
    backend: SecretFreeUrl("set PULUMI_BACKEND_URL in the environment instead (it overrides this), or use "
                           "the backend's own credentials (the AWS chain, PULUMI_ACCESS_TOKEN)") | None = Field(
        None, description="state backend (PULUMI_BACKEND_URL), e.g. s3://bucket/pulumi")


# Addresses no one on the internet has (RFC 6890 special-purpose blocks, documentation ranges;
# for IPv6 everything outside global unicast 2000::/3): a set of allowed ranges that covers all
# the rest admits the whole internet, however it is split (0.0.0.0/1 + 128.0.0.0/1).
_NOT_PUBLIC = {4: ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                   "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
                   "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3"),
               6: ("::/3", "4000::/2", "8000::/1", "2001:db8::/32")}


def _internet_wide(cidrs: list[str]) -> list[str]:
    """The entries of `cidrs` that together admit every public IPv4 or every public IPv6
    address (collapsed with ipaddress.collapse_addresses); [] when no family is covered.
    Entries that are not CIDR blocks are left out (validated elsewhere)."""
    import ipaddress

    wide: list[str] = []
    for version, special in _NOT_PUBLIC.items():
        nets = []
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except (TypeError, ValueError):
                continue
            if net.version == version:
                nets.append((cidr, net))
        reserved = [ipaddress.ip_network(s) for s in special]
        everything = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
        if nets and list(ipaddress.collapse_addresses([n for _, n in nets] + reserved)) == [everything]:
            # name the one range that is the whole internet by itself, else every range of the set
            alone = [c for c, n in nets if list(ipaddress.collapse_addresses([n, *reserved])) == [everything]]
            wide += alone or [c for c, _ in nets]
    return wide


class KubernetesSettings(_Model):
    """`kubernetes:` of an environment: kubeconfig context and file, the namespace opsctl
    deploys into, and who may reach the EKS API (CIDRs; a /0 is refused)."""

    context: str | None = None
    namespace: str = "transcribe"
    kubeconfig: str | None = None
    api_allowed_cidrs: list[str] = Field(
        default_factory=list, description="who may reach the EKS API from the internet; empty: private only")

    @field_validator("api_allowed_cidrs")
    @classmethod
    def _no_open_api(cls, cidrs: list[str]) -> list[str]:
        import ipaddress

        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR block such as 203.0.113.0/24") from None
        if wide := _internet_wide(cidrs):  # 0.0.0.0/0, or 0.0.0.0/1 + 128.0.0.0/1: the same
            raise ValueError(f"{', '.join(wide)} {'opens' if len(wide) == 1 else 'open'} the cluster API to the "
                             "whole internet; list your office, VPN or CI egress ranges, or none (private)")
        return cidrs

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_label(cls, namespace: str) -> str:
        return _dns_label(namespace, "namespace")


class DatabaseSettings(_Model):
    """`database:` of an environment: the env var holding the PostgreSQL URL (never the URL
    itself), the database and role names, and the RDS instance and read replica ids."""

    url_env: str = Field("OPSCTL_DATABASE_URL", description="env var holding the PostgreSQL URL")
    name: str = "transcribe"
    user: str = "transcribe"
    rds_instance: str | None = None
    replica_instance: str | None = Field(None, description="the RDS read replica 'opsctl failover' promotes")


class RedisSettings(_Model):
    """`redis:` of an environment: the env var holding the Redis URL and the ElastiCache
    replication group id (native snapshots)."""

    url_env: str = "OPSCTL_REDIS_URL"
    replication_group: str | None = None


class Buckets(_Model):
    """`buckets:` of an environment: the S3 bucket names of audio uploads and of backups."""

    audio: str = "transcribe-audio"
    backups: str = "transcribe-backups"


class AutoscalingSettings(_Model):
    """The worker's KEDA ScaledObject (kubernetes): it scales the active color on the work per
    pod, `worker_queue_depth` + `worker_transcriptions_in_progress` (opsctl.deploy.manifests)."""

    enabled: bool = True
    min_replicas: int | None = Field(None, ge=0, le=INT32_MAX, description="default worker.replicas; 0 (scale to zero) only "
                                     "where the environment is not protected, and with wake_query")
    max_replicas: int | None = Field(None, ge=1, le=INT32_MAX, description="default 3 x worker.replicas")
    target_per_pod: float | None = Field(None, gt=0, le=INT32_MAX, description="transcriptions queued + running per pod "
                                         "(default worker.concurrency)")
    prometheus_url: _PUBLIC_URL = Field("http://prometheus-operated.monitoring.svc:9090", pattern=r"^https?://")
    polling_interval: int = Field(15, ge=1, le=INT32_MAX, description="seconds between KEDA's queries")
    cooldown_period: int = Field(300, ge=0, le=INT32_MAX, description="seconds idle before scaling to zero")
    wake_query: str | None = Field(None, description="PromQL counting work that arrives while no worker pod runs "
                                   "(e.g. the ingress's requests); needed for min_replicas 0")

    @field_validator("prometheus_url")
    @classmethod
    def _prometheus(cls, url: str) -> str:
        return _http_url(url, "http://prometheus-operated.monitoring.svc:9090")  # 'http://' was a serverAddress


class WorkerSettings(_Model):
    """`worker:` of an environment: the transcription worker's image, replicas per color,
    Whisper model, device and compute type, requests per replica, Kubernetes resources and
    whether it demands API keys (`auth`; None: `api-keys` on kubernetes, `none` on local)."""

    image: str = "transcription-worker:latest"
    replicas: int = Field(1, ge=1, le=INT32_MAX)
    model: str = "base"
    device: Literal["cpu", "cuda"] = "cpu"
    compute_type: str = "int8"
    concurrency: int = Field(1, ge=1, le=INT32_MAX)
    gpu: bool = False
    resources: dict[Literal["requests", "limits"], dict[str, str | int]] = Field(
        default_factory=dict, description="Kubernetes requests/limits, each key over the defaults")
    auth: Literal["api-keys", "none"] | None = Field(
        None, description="api-keys: the worker refuses to start without key hashes (default on kubernetes); "
                          "none: open access, written out on purpose (default on local)")
    autoscaling: AutoscalingSettings = AutoscalingSettings()

    @field_validator("resources")
    @classmethod
    def _quantities(cls, resources: dict) -> dict:
        for part, values in resources.items():
            for name, value in values.items():
                if not (name in _CONTAINER_RESOURCES or name.startswith("hugepages-") or _EXTENDED_RESOURCE.match(name)):
                    raise ValueError(f"{part}.{name}: not a container resource; use cpu, memory, ephemeral-storage, "
                                     "hugepages-<size> or a domain-prefixed name such as nvidia.com/gpu")
                _quantity(value, f"{part}.{name}")
        return resources

    @model_validator(mode="after")
    def _not_overcommitable(self) -> WorkerSettings:
        # The API server: "Limit must be set for non overcommitable resources" (hugepages-* and
        # extended resources such as nvidia.com/gpu); the GPU limit defaults to 1 with `gpu`.
        requests, limits = self.resources.get("requests", {}), self.resources.get("limits", {})
        for name in requests:
            if (name.startswith("hugepages-") or "/" in name) and name not in limits \
                    and not (name == "nvidia.com/gpu" and self.gpu):
                raise ValueError(f"requests.{name} has no limits.{name}; the API server needs a limit for "
                                 f"hugepages and extended resources: set limits.{name} (equal for extended ones)")
        gpus = {**requests, **limits}.get("nvidia.com/gpu")
        if not self.gpu and gpus is not None and _parse_quantity(gpus) != 0:
            raise ValueError(f"resources ask for nvidia.com/gpu: {gpus} but gpu is false (no GPU node selector "
                             "or toleration: the pods would stay Pending); set worker.gpu: true or drop the GPU")
        return self


class DeploySettings(_Model):
    """Timeouts are Kamal-like (30 s) and every one of them is a setting."""

    strategy: Literal["blue-green", "rolling"] = "blue-green"
    ready_timeout: float = Field(120.0, ge=1, le=_DAY)
    drain_timeout: float = Field(30.0, ge=0, le=_DAY)
    scale_down_delay: float = Field(30.0, ge=0, le=_DAY)
    analysis_window: float = Field(30.0, ge=0, le=_DAY)
    auto_promote: bool = True
    keep_versions: int = Field(5, ge=1, le=INT32_MAX)
    max_error_rate_percent: float = Field(5.0, ge=0, le=100)
    max_p95_ms: float = Field(2000.0, gt=0, le=_HOURS * 1000)
    api_key_env: str = Field("OPSCTL_WORKER_API_KEY", description="env var with a worker API key for analysis")
    preview_replicas: int = Field(1, ge=1, le=INT32_MAX, description="replicas of the preview color (Kubernetes); brought "
                                  "up to the active color's size before the switch")


class Retention(_Model):
    """`backup.retention`: how many backups prune keeps (last N, and the newest per day,
    ISO week and month); None leaves a rule out."""

    keep_last: int | None = Field(None, ge=1, le=INT32_MAX)
    keep_daily: _Count | None = None
    keep_weekly: _Count | None = None
    keep_monthly: _Count | None = None


class ArchiveServer(_Model):
    """A self-managed PostgreSQL (one opsctl does not run) whose WAL opsctl archives:
    `url_env` names the env var with a superuser connection URL (for ALTER SYSTEM), `queue`
    the folder on the server's host its archive_command queues WAL into (owned by the
    server's OS user), drained by `opsctl backup wal-push --server NAME`."""

    url_env: str
    queue: str = Field(..., pattern=r"^/[A-Za-z0-9_./+-]+$", description="absolute path on the server's host")


class BackupSettings(_Model):
    """`backup:` of an environment: repository URL (s3:// or file://), where the key comes
    from (env var, or a key file), zstd level 1-22, retention, and WAL archiving's
    `archive_timeout` (seconds) and `archive_queue` (segments); `base_wal_wait` (seconds): how
    long a base backup waits for its WAL to be archived before it fails."""

    repository: SecretFreeUrl(_AWS_CHAIN) | None = Field(None, description="s3://bucket/prefix or file:///path")
    key_env: str = "OPSCTL_BACKUP_KEY"
    key_file: str | None = None
    compress_level: int = Field(1, ge=1, le=22)
    retention: Retention = Retention()
    archive_timeout: float = Field(30.0, ge=1, le=3600, description="seconds: WAL archiving's bound on lost commits")
    archive_queue: int = Field(64, ge=1, le=INT32_MAX, description="WAL segments queued locally before new ones are dropped")
    base_wal_wait: float = Field(60.0, ge=0, le=3600, allow_inf_nan=False, strict=True, description="seconds a base backup waits for the WAL it "
                                 "needs to reach the repository (pgBackRest's archive-timeout); 0: no wait")
    archive_servers: dict[str, ArchiveServer] = Field(default_factory=dict,
                                                      description="self-managed servers whose WAL opsctl archives")

    @field_validator("repository")
    @classmethod
    def _a_repository(cls, url: str | None) -> str | None:
        """Refused when read, not at the first backup or health check (breaker 43 S11): the URL
        must be one opsctl.backup.repository opens (location.check_url, which reaches nothing)."""
        if url is None:
            return url
        if not url.strip():
            raise ValueError("empty; leave it out for the default s3://<buckets.backups>/opsctl, or give "
                             "s3://bucket/prefix or file:///path")
        from opsctl.backup.location import check_url

        try:
            check_url(url)
        except UsageError:
            raise ValueError("not s3://bucket/prefix or file:///path") from None
        return url


class DrSettings(_Model):
    """Disaster-recovery targets, durations such as 90s, 30m, 1.5h, 7d (the platform's written
    targets: RPO 1 h, RTO 4 h). The WAL archive health check judges its lag against `rpo`
    (Environment refuses an `rpo` below `backup.archive_timeout` where that bounds the lag)."""

    rto: str = "4h"
    rpo: str = "1h"

    @field_validator("rto", "rpo")
    @classmethod
    def _a_target(cls, value: str) -> str:
        # ASCII digits only (a pattern's \d, str.isdigit and float() take ١٠ too), and at most
        # 30 days: 300 digits made float('inf') seconds, an alert rule `> inf` that never fires
        from opsctl.pitr.health import seconds

        if not _DR_DURATION.fullmatch(value):
            raise ValueError("not a duration such as 90s, 30m, 1.5h or 7d (digits 0-9, optionally a fraction such "
                             "as .5, then s, m, h or d)")
        # a 0 RPO would make the WAL archive check always critical, and so does one under a
        # second (breaker 44 T5: 0.0000001s rendered an alert rule `> 1e-07` that always fires)
        if not 1 <= seconds(value) <= _DR_MAX_DAYS * _DAY:
            raise ValueError(f"no target; give a duration from 1s to at most {_DR_MAX_DAYS}d, such as 90s, 30m, 4h or 7d")
        return value


class Thresholds(_Model):
    """One source of truth for `opsctl health` and the rendered alert rules."""

    cpu_percent: _Percent = 80.0
    memory_percent: _Percent = 85.0
    disk_percent: _Percent = 90.0
    response_time_ms: float = Field(2000.0, gt=0, le=_HOURS * 1000)
    error_rate_percent: float = Field(5.0, ge=0, le=100)  # 0: any error alerts
    queue_depth: _Count = 1000
    backup_age_hours: float = Field(26.0, gt=0, le=366 * 24)
    connections_percent: _Percent = 80.0  # PostgreSQL connections against max_connections
    long_query_seconds: float = Field(300.0, gt=0, le=_DAY)
    locks_waiting: _Count = 10
    replication_lag_seconds: float = Field(30.0, gt=0, le=_DAY)


class MonitoringSettings(_Model):
    """What `opsctl render monitoring` needs beyond the thresholds (which it shares with health)."""

    scrape_interval: str = Field("15s", description="a Prometheus duration from 1s to 5m, e.g. 15s or 1m30s")
    # exporters the environment runs, by kind (node, postgres, redis): host:port targets
    exporters: dict[Literal["node", "postgres", "redis"], _PUBLIC_URL] = Field(default_factory=dict)
    runbook_url: _PUBLIC_URL = Field("runbooks", description="base of the runbook links in alerts")
    # where `opsctl health --mode continuous --metrics-port` serves its check results
    health_exporter: _PUBLIC_URL | None = None
    worker_cores: int | None = Field(None, ge=1, le=INT32_MAX, description="CPU cores per worker (default: this host's)")
    # health silences (`opsctl health silence`) are also created there, for the rendered rules
    alertmanager_url: _PUBLIC_URL | None = Field(None, pattern=r"^https?://", description="Alertmanager's base URL")
    archive_lag_warning: float = Field(0.5, gt=0, lt=1, description="the WAL archive lag warns above this "
                                       "fraction of dr.rpo (and is critical above dr.rpo itself)")

    @field_validator("exporters")
    @classmethod
    def _exporters(cls, targets: dict) -> dict:
        for value in targets.values():
            _target(value)
        return targets

    @field_validator("health_exporter")
    @classmethod
    def _health_exporter(cls, value: str | None) -> str | None:
        return _target(value)

    @field_validator("alertmanager_url")
    @classmethod
    def _alertmanager(cls, url: str | None) -> str | None:
        return _http_url(url, "http://alertmanager-operated.monitoring.svc:9093")

    @field_validator("scrape_interval")
    @classmethod
    def _prometheus_duration(cls, value: str) -> str:
        # Prometheus reads it as a duration (model.ParseDuration); 1s at least (it is the rule
        # evaluation interval too), 5m at most (its staleness: a series unscraped for 5 minutes
        # goes stale, so longer intervals leave gaps that resolve and refire alerts)
        match = _PROM_DURATION.fullmatch(value) if value and len(value) <= 40 else None  # int() refuses 4300+ digits
        seconds = sum(int(n) * unit for n, unit in zip(match.groups(), _PROM_UNITS) if n) if match else None
        if seconds is None or not 1 <= seconds <= 300:
            raise ValueError(f"{value!r} is not a Prometheus duration from 1s to 5m; write e.g. 15s, 30s or 1m")
        return value


class LoadtestSettings(_Model):
    """SLO gates differ per environment (a CPU laptop is not a GPU cluster): this overrides
    the profile's `slo` in loadtests/profiles.yaml; `--slo` overrides both."""

    slo: str | None = Field(None, description='gates, e.g. "p95<2000ms,error_rate<5%,rps>=10"')

    @field_validator("slo")
    @classmethod
    def _gates(cls, text: str | None) -> str | None:
        """Parsed when read (opsctl.loadtest.slo.parse, the `--slo` parser), so a bad gate names
        this key, not a `--slo` the user never gave (breaker 43 S11)."""
        if text is None:
            return text
        from opsctl.loadtest import slo

        try:
            slo.parse(text)
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("--slo: ")) from None
        return text


class Environment(_Model):
    """One environment of `opsctl.yaml` (`environments.<name>`), defaults filled in; `name`
    is its key there. Secrets are only named (env vars), never held."""

    name: str = ""
    platform: Literal["local", "kubernetes"] = "kubernetes"
    description: str = ""
    protected: bool = Field(False, description="destructive operations ask for the name typed")
    router_url: SecretFreeUrl("opsctl sends the worker API key from the variable deploy.api_key_env names; "
                              "drop them from the URL") | None = None
    aws: AwsSettings = AwsSettings()
    pulumi: PulumiSettings = PulumiSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    buckets: Buckets = Buckets()
    worker: WorkerSettings = WorkerSettings()
    deploy: DeploySettings = DeploySettings()
    backup: BackupSettings = BackupSettings()
    thresholds: Thresholds = Thresholds()
    monitoring: MonitoringSettings = MonitoringSettings()
    health: HealthSettings = Field(default_factory=HealthSettings, description="extra checks and alert sinks")
    loadtest: LoadtestSettings = LoadtestSettings()
    dr: DrSettings = DrSettings()

    @field_validator("router_url")
    @classmethod
    def _router_url(cls, url: str | None) -> str | None:
        """An http(s) URL with a host (breaker 43 S11: 'not a url' was a CRITICAL router check)."""
        return _http_url(url, "https://transcribe.example.com")

    @model_validator(mode="after")
    def _rpo_reachable(self) -> "Environment":
        """An `rpo` below `backup.archive_timeout` is never met where opsctl archives WAL (the
        embedded platform, `backup.archive_servers`): a commit may wait that long for its segment
        to be switched out, so every health sweep and drill would fail (breaker F16)."""
        from opsctl.pitr.health import seconds

        timeout = self.backup.archive_timeout
        if (self.platform == "local" or self.backup.archive_servers) and seconds(self.dr.rpo) < timeout:
            raise ValueError(f"dr.rpo {self.dr.rpo} is below backup.archive_timeout ({timeout:g} s), so it can never "
                             f"be met: a commit may wait that long to be archived; raise dr.rpo to at least "
                             f"{timeout:g}s or lower backup.archive_timeout")
        return self

    @model_validator(mode="after")
    def _autoscaling_bounds(self) -> "Environment":
        a, replicas = self.worker.autoscaling, self.worker.replicas
        if a.min_replicas is not None and a.min_replicas < replicas and self.protected:
            raise ValueError(f"worker.autoscaling.min_replicas {a.min_replicas} is below worker.replicas {replicas} "
                             "on a protected environment; raise it (or leave it out)")
        if a.min_replicas == 0 and not a.wake_query:
            raise ValueError("worker.autoscaling.min_replicas 0 needs worker.autoscaling.wake_query (the worker's "
                             "own metrics vanish with its last pod, so nothing would wake it)")
        low = replicas if a.min_replicas is None else a.min_replicas
        if a.max_replicas is not None and a.max_replicas < max(low, 1):
            raise ValueError(f"worker.autoscaling.max_replicas {a.max_replicas} is below min_replicas {low}; raise it")
        return self


class OpsConfig(_Model):
    """A whole `opsctl.yaml` (format `version: 1`); `local` is always among its
    environments."""

    version: Literal[1] = 1
    project: str = "transcribe"
    environments: dict[str, Environment] = Field(default_factory=dict)

    @field_validator("environments")
    @classmethod
    def _names_are_labels(cls, environments: dict) -> dict:
        for name in environments:  # a name becomes label values, Secret and job names, CLI arguments
            _dns_label(name, "environment name")
        return environments

    @model_validator(mode="after")
    def _local_always_present(self) -> "OpsConfig":
        self.environments.setdefault("local", Environment(platform="local"))
        for name, env in self.environments.items():
            env.name = name
        return self


def _one_line(text: str) -> str:
    """`text` as one line of visible characters: opsctl.output.visible's escapes, and a
    newline or tab written as \\n, \\t too (a name given with `--env $'a\\nb'` is one name)."""
    from opsctl.output import visible

    return visible(text).replace("\n", "\\n").replace("\t", "\\t")


class Project:
    """An ops root: its folder and its parsed `opsctl.yaml`."""

    def __init__(self, root: Path, config: OpsConfig):
        self.root = root
        self.config = config

    @property
    def state_dir(self) -> Path:
        """This machine's state for the ops root: `<root>/.opsctl` (git-ignored)."""
        return self.root / STATE_DIR

    def env(self, name: str) -> Environment:
        """The environment called `name`; UsageError (exit 2) naming the known ones if none is."""
        try:
            return self.config.environments[name]
        except KeyError:
            known = ", ".join(sorted(self.config.environments))
            raise UsageError(
                f"unknown environment '{_one_line(name)}' in {self.root / CONFIG_NAME}; known: {known}"
            ) from None


def find_root(start: Path | None = None, override: str | Path | None = None) -> Path | None:
    """The folder holding opsctl.yaml: the override (`--root`), else $OPSCTL_ROOT, else the
    first one walking up. UsageError when the one named holds none, or an opsctl.yaml that
    is no regular file (a folder, a FIFO), or `--root` is given empty (breaker 37 G16, G18)."""
    if override is not None and not str(override).strip():
        raise UsageError("--root is empty; give the folder holding opsctl.yaml, or leave it out to find one "
                         "walking up from here")
    explicit = override or os.environ.get("OPSCTL_ROOT")
    if explicit:
        from opsctl.starter import config_file_problem  # starter imports this module

        if problem := config_file_problem(explicit):
            raise UsageError(problem)
        root = Path(explicit).expanduser().resolve()
        if not (root / CONFIG_NAME).is_file():
            raise UsageError(f"{root} holds no {CONFIG_NAME}; run 'opsctl init {root}' to create one")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    return None


def _leaves(annotation) -> list:
    """The types `annotation` admits, unwrapped from Annotated, Optional and unions."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _leaves(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _boolean_as_number(annotation, value, key: tuple) -> tuple | None:
    """The dotted key and value of the first boolean in `value` (plain data from YAML) where
    `annotation` takes a number and no boolean, None when there is none. YAML 1.1 reads yes,
    on and true as booleans, which pydantic's lax mode takes for 1 (`keep_last: yes` kept one
    backup: breaker 43 S4). Walks models (config's and health.settings'), dicts and lists."""
    import typing

    leaves = _leaves(annotation)
    if isinstance(value, bool):
        numbers = [t for t in leaves if t in (int, float) or (typing.get_origin(t) is Literal and any(
            type(arg) in (int, float) for arg in typing.get_args(t)))]  # `version: true` was version 1
        if bool not in leaves and typing.Any not in leaves and numbers:
            return key, value
        return None
    for leaf in leaves:
        origin, args = typing.get_origin(leaf), typing.get_args(leaf)
        if isinstance(value, dict):
            if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                for name, item in value.items():
                    field = leaf.model_fields.get(name) if isinstance(name, str) else None
                    if field is not None and (found := _boolean_as_number(field.annotation, item, (*key, name))):
                        return found
            elif origin is dict and len(args) == 2:
                for name, item in value.items():
                    if found := _boolean_as_number(args[1], item, (*key, name)):
                        return found
        elif isinstance(value, list) and origin in (list, tuple, set, frozenset) and args:
            for i, item in enumerate(value):
                if found := _boolean_as_number(args[0], item, (*key, i)):
                    return found
    return None


def _describe(error: ValidationError) -> str:
    """The first error, one line: the key's dotted path, what is wrong, the value (masked by
    redact.credentials; left out when it is a URL refused for carrying a secret)."""
    from opsctl.redact import credentials

    first = error.errors()[0]
    key = _one_line(".".join(str(part) for part in first["loc"])) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling against 'opsctl init' output)"
    elif first["type"] != "url_secret" and "input" in first and not isinstance(first["input"], (dict, list)):
        msg = f"{msg} (got {credentials(repr(first['input']))})"
    more = len(error.errors()) - 1
    return f"{key}: {msg}" + (f" (and {more} more)" if more else "")


def parse_config(path: Path) -> OpsConfig:
    """Read and validate one opsctl.yaml; any problem is one UsageError line naming the file and
    the key or line: bytes that are not UTF-8 (or UTF-16/32 with a byte order mark, YAML 1.2's
    encodings; never the locale's), bad YAML, a key given twice in one mapping (YAML 1.2 keys
    are unique; opsctl.yamltext), or a setting the OpsConfig model refuses."""
    from opsctl import yamltext

    try:
        raw = yamltext.load(yamltext.read(path)) or {}
    except yamltext.YamlFault as exc:
        raise UsageError(f"{path}: line {exc.line}: {exc.problem}; {exc.remedy or 'fix the YAML'}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping with 'environments', got {type(raw).__name__}")
    if found := _boolean_as_number(OpsConfig, raw, ()):
        key, value = found
        raise UsageError(f"{path}: {_one_line('.'.join(str(part) for part in key))}: expected a number, got the "
                         f"boolean {str(value).lower()} (YAML reads yes/no/on/off/true/false as booleans); write "
                         "the number")
    try:
        return OpsConfig.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"{path}: {_describe(exc)}") from None


def shown(env: Environment) -> dict:
    """`env` as `opsctl config show` prints it: JSON types, defaults filled in, and no secret:
    URLs that carry one are refused at load (SecretFreeUrl, breaker 38 H1), every string is
    masked once more (redact.masked), and alert sinks' URLs are shown without their path (a
    webhook's path may be its token, which no rule recognises)."""
    from opsctl.output import to_jsonable
    from opsctl.redact import masked, redact

    doc = masked(to_jsonable(env))
    for sink in doc.get("health", {}).get("sinks", []):
        if sink.get("url"):
            sink["url"] = redact(sink["url"])
    return doc


def load_project(override: str | Path | None = None, start: Path | None = None) -> Project:
    """The ops root around the current directory, or a built-in one with only `local`.

    Without an opsctl.yaml anywhere, opsctl still works on a laptop: the current folder
    becomes the root of a project whose only environment is the embedded `local`.
    """
    root = find_root(start, override)
    if root is None:
        return Project((start or Path.cwd()).resolve(), OpsConfig())
    return Project(root, parse_config(root / CONFIG_NAME))
