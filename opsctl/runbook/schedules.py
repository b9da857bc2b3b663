"""Scheduled runbooks as Kubernetes CronJobs (`opsctl render schedules --env E`).

A runbook that declares `schedule:` (5-field cron, UTC, checked with croniter at validate)
runs by itself in the cluster: one CronJob per runbook, running its pinned version
(`NAME@N`) with the opsctl image, `concurrencyPolicy: Forbid` (a run never overlaps the
previous one, as Rundeck and StackStorm schedules do) and no pod retries (the runbook has
its own). The pod reads its secrets (database and Redis URLs, backup key) from the Secret
`opsctl-<env>` and keeps its journal in an emptyDir under the ops root baked in the image.

Built as data and dumped with PyYAML, like Caddy's config: every value is a YAML scalar
quoted by the dumper, so no runbook name or cron text can change the manifest's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import yaml

from opsctl.config import Environment, Project
from opsctl.errors import UsageError
from opsctl.runbook import catalog

OPS_ROOT = "/ops"  # where the opsctl image holds the ops root (opsctl.yaml, runbooks/)
RUN_DEADLINE_SECONDS = 3 * 3600  # a hung run is stopped after 3 hours


@dataclass
class Scheduled:
    """One runbook that runs on a schedule: NAME@VERSION and its cron expression (UTC)."""

    ref: str
    name: str
    cron: str


def scheduled(project: Project, actions: Mapping[str, Callable]) -> list[Scheduled]:
    """The latest version of each runbook that declares a schedule; that version must be
    valid (UsageError with file:line otherwise)."""
    found = []
    for name in catalog.names(project.root):
        book = catalog.load(project.root, name, actions)
        if book.schedule:
            found.append(Scheduled(book.ref, book.name, book.schedule))
    return found


def default_image(env: Environment) -> str:
    """`<registry of the worker image>/opsctl:<opsctl version>`, e.g. ghcr.io/example/opsctl:0.1.0."""
    from opsctl import __version__

    registry = env.worker.image.rsplit(":", 1)[0].rpartition("/")[0]
    return f"{registry}/opsctl:{__version__}" if registry else f"opsctl:{__version__}"


def _cronjob(item: Scheduled, env: Environment, image: str) -> dict:
    """The CronJob (batch/v1) that runs `item` in `env`'s namespace."""
    labels = {"app.kubernetes.io/name": "opsctl", "app.kubernetes.io/component": "schedule",
              "opsctl.dev/runbook": item.name, "opsctl.dev/environment": env.name}
    container = {
        "name": "opsctl",
        "image": image,
        "args": ["--log-format", "json", "runbook", "run", item.ref, "--env", env.name, "--yes"],
        "workingDir": OPS_ROOT,
        "env": [{"name": "OPSCTL_ROOT", "value": OPS_ROOT}, {"name": "CI", "value": "true"}],
        "envFrom": [{"secretRef": {"name": f"opsctl-{env.name}"}}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "state", "mountPath": f"{OPS_ROOT}/.opsctl"}],
    }
    pod = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "serviceAccountName": "opsctl",
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "state", "emptyDir": {}}],
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": f"opsctl-{item.name}"[:52], "namespace": env.kubernetes.namespace,
                     "labels": dict(labels)},
        "spec": {
            "schedule": item.cron,
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 5,
            "jobTemplate": {"metadata": {"labels": dict(labels)}, "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": RUN_DEADLINE_SECONDS,
                "ttlSecondsAfterFinished": 7 * 86400,
                "template": pod}},
        },
    }


def service_account(env: Environment, role_arn: str | None) -> dict:
    """The ServiceAccount the CronJobs' pods run as; with `role_arn`, its IRSA annotation
    (the IAM role that reaches the backup bucket)."""
    meta: dict = {"name": "opsctl", "namespace": env.kubernetes.namespace,
                  "labels": {"app.kubernetes.io/name": "opsctl", "opsctl.dev/environment": env.name}}
    if role_arn:
        meta["annotations"] = {"eks.amazonaws.com/role-arn": role_arn}
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def render(project: Project, env: Environment, actions: Mapping[str, Callable], image: str | None = None,
           role_arn: str | None = None) -> str:
    """A multi-document YAML: the ServiceAccount `opsctl` and one CronJob per scheduled
    runbook. UsageError for an environment that is not on kubernetes (locally, cron runs
    `opsctl runbook run`)."""
    if env.platform != "kubernetes":
        raise UsageError(f"environment '{env.name}' is platform {env.platform}: schedules run as Kubernetes "
                         "CronJobs; on this machine put 'opsctl runbook run NAME' in cron instead")
    items = scheduled(project, actions)
    image = image or default_image(env)
    header = "\n".join(["# Scheduled runbooks of environment %s, rendered by `opsctl render schedules`." % env.name,
                        *(f"#   {i.ref}: {i.cron} (UTC)" for i in items),
                        f"# The pods run {image} and read their secrets from the Secret opsctl-{env.name}:",
                        f"#   keys {env.database.url_env}, {env.redis.url_env}, {env.backup.key_env}, "
                        f"{env.deploy.api_key_env} "
                        "(create it yourself; opsctl never writes secrets)."])
    docs = [service_account(env, role_arn)] + [_cronjob(i, env, image) for i in items] if items else []
    return header + "\n" + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True) if docs else header + "\n"

