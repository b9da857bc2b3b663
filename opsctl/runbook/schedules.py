"""Scheduled runbooks as Kubernetes CronJobs (`opsctl render schedules --env E`).

A runbook that declares `schedule:` (5-field cron, UTC, checked at validate by `cron_problem`:
the grammar GitHub and Kubernetes share, at most every 5 minutes) runs by itself in the
cluster: one CronJob per runbook (a DNS-1123 name of <= 52 characters, hashed when cut; the
full NAME@N in an annotation), running its pinned version
(`NAME@N`) with the opsctl image, `concurrencyPolicy: Forbid` (a run never overlaps the
previous one, as Rundeck and StackStorm schedules do) and no pod retries (the runbook has
its own). The pod reads its secrets (database and Redis URLs, backup key) from the Secret
`opsctl-<env>` and keeps its journal in an emptyDir under the ops root baked in the image.
The ServiceAccount `opsctl` gets a Role with what the scheduled runbooks' actions call in the
API (`rbac`: read-only for a health sweep, plus nodes cluster-wide on GPU environments).

Built as data and dumped with PyYAML, like Caddy's config: every value is a YAML scalar
quoted by the dumper, so no runbook name or cron text can change the manifest's shape.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import yaml

from opsctl.config import Environment, Project
from opsctl.errors import UsageError, not_empty
from opsctl.runbook import catalog

OPS_ROOT = "/ops"  # where the opsctl image holds the ops root (opsctl.yaml, runbooks/)
RUN_DEADLINE_SECONDS = 3 * 3600  # a hung run is stopped after 3 hours


@dataclass
class Scheduled:
    """One runbook that runs on a schedule: NAME@VERSION and its cron expression (UTC)."""

    ref: str
    name: str
    cron: str
    actions: tuple[str, ...] = ()  # the actions its steps use: what its RBAC must grant


def scheduled(project: Project, actions: Mapping[str, Callable]) -> list[Scheduled]:
    """The latest version of each runbook that declares a schedule; that version must be
    valid (UsageError with file:line otherwise)."""
    found = []
    for name in catalog.names(project.root):
        book = catalog.load(project.root, name, actions)
        if book.schedule:
            found.append(Scheduled(book.ref, book.name, book.schedule,
                                   tuple(sorted({str(st.get("action")) for st in book.steps}))))
    return found


# --- the cron grammar GitHub Actions and Kubernetes both accept -------------------------------
# The 5-field grammar itself is opsctl.health.settings.parse_cron, shared with the health
# monitor's --cron, health.cron and heartbeats; a runbook schedule also runs at most every
# MIN_INTERVAL_MINUTES minutes, as GitHub does.
MIN_INTERVAL_MINUTES = 5  # GitHub runs a scheduled workflow at most every 5 minutes


def cron_problem(expr: str) -> str | None:
    """Why `expr` is not a schedule both GitHub Actions and a Kubernetes CronJob run, in one
    line, or None: not the standard 5-field grammar (opsctl.health.settings.parse_cron), or it runs
    more often than every MIN_INTERVAL_MINUTES minutes."""
    from opsctl.health.settings import parse_cron

    sets, problem = parse_cron(expr)
    if problem:
        return f"schedule {problem}"
    minutes, hours = sorted(sets[0]), sets[1]
    gaps = [b - a for a, b in zip(minutes, minutes[1:])]
    if any((h + 1) % 24 in hours for h in hours):  # the next hour runs too: the gap across the hour
        gaps.append(60 - minutes[-1] + minutes[0])
    if gaps and min(gaps) < MIN_INTERVAL_MINUTES:
        return (f"schedule '{expr}' runs every {min(gaps)} minute(s); GitHub runs schedules at most every "
                f"{MIN_INTERVAL_MINUTES} minutes: e.g. '*/{MIN_INTERVAL_MINUTES} * * * *'")
    return None


def longest_gap_seconds(expr: str) -> float:
    """The longest time between two consecutive runs of the valid schedule `expr` (UTC), in
    seconds: what an alert on a scheduled job's last run waits for before it says a run is
    missing. Exact: runs on the same day are `expr`'s hours and minutes, the same every day it
    fires (their largest gap within the day), and the days it fires are walked with croniter
    one day at a time, over four years from 2024-01-01 so a leap day's schedule counts."""
    import datetime as dt

    from croniter import croniter

    from opsctl.health.settings import parse_cron

    sets, problem = parse_cron(expr)
    if problem:
        raise UsageError(problem)
    times = sorted(h * 60 + m for h in sets[1] for m in sets[0])  # minutes of the day it runs at
    longest = max((b - a for a, b in zip(times, times[1:])), default=0) * 60.0
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    end = start + dt.timedelta(days=4 * 365 + 1)
    first = croniter(expr, start - dt.timedelta(seconds=1)).get_next(dt.datetime)
    while first <= end:
        last = first.replace(hour=0, minute=0) + dt.timedelta(minutes=times[-1])  # that day's last run
        first = croniter(expr, last).get_next(dt.datetime)  # the next day it runs: its first run
        longest = max(longest, (first - last).total_seconds())
    return longest


# --- names and labels the API server accepts ----------------------------------------------------
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CRONJOB_NAME_MAX = 52  # the CronJob controller appends an 11-character suffix to its Jobs' names (63)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def k8s_name(text: str, limit: int = CRONJOB_NAME_MAX) -> str:
    """`text` as a DNS-1123 label of at most `limit` characters: as is when it already is one;
    otherwise cut, cleaned and suffixed with 8 hex of its SHA-256, so two long names that
    share a prefix stay distinct."""
    if len(text) <= limit and _DNS_LABEL.match(text):
        return text
    base = re.sub(r"[^a-z0-9-]+", "-", text.lower())[: limit - 9].strip("-")
    return f"{base}-{_digest(text)}" if base else f"x{_digest(text)}"


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value (<= 63 characters, alphanumeric at both ends): as is
    when valid, otherwise cut and suffixed with 8 hex of its SHA-256 (the full text then goes
    in an annotation)."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:54].strip("-_.")
    return f"{base}-{_digest(text)}" if base else _digest(text)


def default_image(env: Environment) -> str:
    """`<registry of the worker image>/opsctl:<opsctl version>`, e.g. ghcr.io/example/opsctl:0.1.0."""
    from opsctl import __version__

    registry = env.worker.image.rsplit(":", 1)[0].rpartition("/")[0]
    return f"{registry}/opsctl:{__version__}" if registry else f"opsctl:{__version__}"


def _cronjob(item: Scheduled, env: Environment, image: str) -> dict:
    """The CronJob (batch/v1) that runs `item` in `env`'s namespace."""
    labels = {"app.kubernetes.io/name": "opsctl", "app.kubernetes.io/component": "schedule",
              "opsctl.dev/runbook": label_value(item.name), "opsctl.dev/environment": env.name}
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
        "metadata": {"name": k8s_name(f"opsctl-{item.name}"), "namespace": env.kubernetes.namespace,
                     "labels": dict(labels), "annotations": {"opsctl.dev/runbook": item.ref}},
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


# an IAM role ARN (IAM User Guide, "IAM identifiers": arn:PARTITION:iam::ACCOUNT:role/PATH/NAME,
# a path of ASCII 0x21-0x7E between slashes, a name of 1-64 of [A-Za-z0-9+=,.@_-])
ROLE_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:iam::\d{12}:role/(?:[!-~]+/)?[\w+=,.@-]{1,64}", re.ASCII)


def check_role_arn(role_arn: str | None) -> str | None:
    """`role_arn` when it is an IAM role ARN (`ROLE_ARN`), None when not given; UsageError for
    an empty one (an unset `$ROLE_ARN` in CI dropped the annotation, and the CronJobs failed
    only when they fired: reviewer 39 R9) or anything else."""
    from opsctl.deploy.reference import shown

    not_empty(role_arn, "--role-arn", "give the IAM role the pods assume (arn:aws:iam::ACCOUNT:role/NAME), "
                                      "or leave it out for pods without an AWS role")
    if role_arn is not None and not ROLE_ARN.fullmatch(role_arn):
        raise UsageError(f"--role-arn {shown(role_arn)} is not an IAM role ARN; give "
                         "arn:aws:iam::123456789012:role/NAME (as 'aws iam get-role' shows it)")
    return role_arn


def service_account(env: Environment, role_arn: str | None) -> dict:
    """The ServiceAccount the CronJobs' pods run as; with `role_arn`, its IRSA annotation
    (the IAM role that reaches the backup bucket)."""
    meta: dict = {"name": "opsctl", "namespace": env.kubernetes.namespace,
                  "labels": {"app.kubernetes.io/name": "opsctl", "opsctl.dev/environment": env.name}}
    if role_arn:
        meta["annotations"] = {"eks.amazonaws.com/role-arn": role_arn}
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


#: the actions whose runs call the Kubernetes API, and the namespaced rules each needs (the
#: health check reads the worker's pods and KEDA ScaledObject; deploy-like actions apply what
#: opsctl.deploy.drivers.kubernetes applies, hold its Lease and keep its history ConfigMap).
#: Backup, verify, prune, restore and the drill reach the database and bucket only (Secret,
#: IRSA), never the API. Read-only verbs where reading is all an action does.
_READ = ["get", "list", "watch"]
_WRITE = ["get", "list", "watch", "create", "patch", "update"]
_DEPLOY_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": _READ},
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": _WRITE},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _WRITE},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _WRITE},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": _WRITE},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": [*_WRITE, "delete"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": _READ},
]
_RULES: dict[str, list[dict]] = {
    "health": [{"apiGroups": [""], "resources": ["pods"], "verbs": _READ},
               {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _READ},
               {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": _READ}],
    "deploy-status": [{"apiGroups": [""], "resources": ["pods", "services", "configmaps"], "verbs": _READ},
                      {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _READ},
                      {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": _READ}],
    **{a: _DEPLOY_RULES for a in ("deploy", "promote", "rollback", "scale-down")},
}


def rbac(env: Environment, items: list[Scheduled]) -> list[dict]:
    """Least-privilege RBAC for the ServiceAccount `opsctl`: a Role and RoleBinding in the
    namespace with the union of the rules the scheduled runbooks' actions need (_RULES), and,
    when a health sweep runs on a GPU environment (the check lists nodes), a ClusterRole and
    ClusterRoleBinding to read nodes. Nothing when no scheduled action calls the API."""
    ns = env.kubernetes.namespace
    labels = {"app.kubernetes.io/name": "opsctl", "opsctl.dev/environment": env.name}
    used = {a for i in items for a in i.actions}
    rules: list[dict] = []
    for action in sorted(used & set(_RULES)):
        for rule in _RULES[action]:
            if rule not in rules:
                rules.append(rule)
    # merge the verbs of rules on the same resources (deploy's write verbs cover health's reads)
    merged: dict[tuple, set[str]] = {}
    for rule in rules:
        for resource in rule["resources"]:
            merged.setdefault((rule["apiGroups"][0], resource), set()).update(rule["verbs"])
    docs: list[dict] = []
    subject = [{"kind": "ServiceAccount", "name": "opsctl", "namespace": ns}]
    if merged:
        order = ["get", "list", "watch", "create", "patch", "update", "delete"]
        docs += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "opsctl-schedules", "namespace": ns, "labels": dict(labels)},
             "rules": [{"apiGroups": [group], "resources": [resource], "verbs": [v for v in order if v in verbs]}
                       for (group, resource), verbs in sorted(merged.items())]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "opsctl-schedules", "namespace": ns, "labels": dict(labels)},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "opsctl-schedules"},
             "subjects": subject}]
    if "health" in used and env.worker.gpu:
        name = k8s_name(f"opsctl-{ns}-read-nodes", 63)  # cluster-wide: the namespace keeps it apart
        docs += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": name, "labels": dict(labels)},
             "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": name, "labels": dict(labels)},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": subject}]
    return docs


def render(project: Project, env: Environment, actions: Mapping[str, Callable], image: str | None = None,
           role_arn: str | None = None) -> str:
    """A multi-document YAML: the ServiceAccount `opsctl`, its RBAC (`rbac`) and one CronJob per scheduled
    runbook. UsageError for an environment that is not on kubernetes (locally, cron runs
    `opsctl runbook run`), an `image` that is not NAME:TAG, a `role_arn` that is not an IAM
    role ARN (`check_role_arn`), either given empty."""
    if env.platform != "kubernetes":
        raise UsageError(f"environment '{env.name}' is platform {env.platform}: schedules run as Kubernetes "
                         "CronJobs; on this machine put 'opsctl runbook run NAME' in cron instead")
    from opsctl.deploy.reference import parse as parse_image

    check_role_arn(role_arn)
    image = not_empty(image, "--image", "give the opsctl image as NAME:TAG, or leave it out for "
                                        f"{default_image(env)}")
    image = str(parse_image(image)) if image is not None else default_image(env)
    items = scheduled(project, actions)
    header = "\n".join(["# Scheduled runbooks of environment %s, rendered by `opsctl render schedules`." % env.name,
                        *(f"#   {i.ref}: {i.cron} (UTC)" for i in items),
                        f"# The pods run {image} and read their secrets from the Secret opsctl-{env.name}:",
                        f"#   keys {env.database.url_env}, {env.redis.url_env}, {env.backup.key_env}, "
                        f"{env.deploy.api_key_env} "
                        "(create it yourself; opsctl never writes secrets)."])
    docs = ([service_account(env, role_arn), *rbac(env, items)] + [_cronjob(i, env, image) for i in items]
            if items else [])
    return header + "\n" + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True) if docs else header + "\n"

