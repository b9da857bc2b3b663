"""The worker's Kubernetes manifests, rendered from `templates/kubernetes/` without a cluster.

Rendering is offline on purpose: `opsctl render` (GitOps users commit its output) and
`deploy --dry-run` must work on a laptop with no kubeconfig. The Kubernetes driver applies
the very same documents, so what a person reviews is what the cluster receives.

Blue-green uses one Deployment per color, so bringing up the preview is a separate object
from what serves traffic and can never rescale it (argo-rollouts#4552), plus two Services:
`transcription-worker` (active, where the router sends traffic) and
`transcription-worker-preview` (what analysis probes); each selects one color. The KEDA
ScaledObject `transcription-worker` scales the active color only: the driver re-points it at
each switch (see scaled_object).

Secrets never appear here: database and Redis URLs come from the Secret
`transcription-worker` (keys database-url, redis-url, api-key-hashes), which the Pulumi stack
creates in the worker namespace from the RDS and ElastiCache outputs (stacks/, workloads.py).
API keys are required (WORKER_REQUIRE_API_KEYS=true, the api-key-hashes key not optional)
unless opsctl.yaml says `worker: {auth: none}`; Prometheus scrapes the separate, keyless
metrics port (container port "metrics").
"""

from __future__ import annotations

import json
import re
from pathlib import Path


from opsctl.config import Environment, Project
from opsctl.deploy.model import Release
from opsctl.templating import render

APP = "transcription-worker"
COLOR_LABEL = "app.kubernetes.io/color"  # the label monitoring's scrape config reads too
VERSION_ANNOTATION = "opsctl.io/version"  # the exact version (labels cannot hold every tag)
SETTINGS_ANNOTATION = "opsctl.io/settings"
ROLE_ANNOTATION = "opsctl.io/role"
ACTIVE_SERVICE = APP
PREVIEW_SERVICE = f"{APP}-preview"
SECRET = APP
SCALED_OBJECT = APP  # the KEDA ScaledObject; it follows the active color
KEDA_API = ("keda.sh", "v1alpha1", "scaledobjects")  # group, version, plural
# the work a worker pod holds: waiting for a model slot + running (worker/.../metrics.py)
LOAD_METRICS = ("worker_queue_depth", "worker_transcriptions_in_progress")
# the wake trigger's per-pod target: so high it never asks for a second pod (KEDA takes the
# largest replica count of its triggers), so it only wakes a color from zero
WAKE_ONLY_THRESHOLD = "1000000"
SERVICE_ACCOUNT = APP  # created by the Pulumi stack (IRSA for S3)
PORT = 8000
# The worker's second listener, serving only /metrics without a key (WORKER_METRICS_PORT),
# exposed as the container port named "metrics" that the PodMonitor scrapes.
METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"
GPU_RESOURCE = "nvidia.com/gpu"
# The GPU node group carries this label and the taint below (EKS GPU nodes, NVIDIA device plugin).
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
SPREAD_KEYS = ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
# (worker variable, secret key): what holds credentials comes from the Secret. None of them is
# optional: a missing api-key-hashes key keeps the pod from starting (CreateContainerConfigError)
# instead of silently serving without keys; only `worker.auth: none` makes that key optional.
SECRET_ENV = (("WORKER_DATABASE_URL", "database-url"), ("WORKER_REDIS_URL", "redis-url"),
              ("WORKER_API_KEY_HASHES", "api-key-hashes"))


def auth_required(env: Environment) -> bool:
    """API keys are on unless opsctl.yaml writes `worker: {auth: none}`; on `local` they are off
    unless it writes `auth: api-keys`."""
    return (env.worker.auth or ("none" if env.platform == "local" else "api-keys")) == "api-keys"


def deployment_name(color: str | None) -> str:
    """`transcription-worker-<color>`; the single rolling Deployment's name with color None."""
    return f"{APP}-{color}" if color else APP


def selector(color: str | None) -> dict[str, str]:
    """The label selector of a color's pods (of every worker pod with color None)."""
    return {"app.kubernetes.io/name": APP, **({COLOR_LABEL: color} if color else {})}


def label_value(text: str) -> str:
    """A Kubernetes label value: 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:63].strip("_.-") or "unknown"


def labels(color: str | None, version: str | None) -> dict[str, str]:
    """The app.kubernetes.io labels of an object, plus the version (label_value) and color when given."""
    out = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": deployment_name(color),
           "app.kubernetes.io/component": "worker", "app.kubernetes.io/part-of": "transcribe",
           "app.kubernetes.io/managed-by": "opsctl"}
    if version:
        out["app.kubernetes.io/version"] = label_value(version)
    if color:
        out[COLOR_LABEL] = color
    return out


def worker_env(env: Environment, release: Release, color: str | None) -> list[dict]:
    """The WORKER_* variables: opsctl.yaml's worker settings, then the release's `--set`s."""
    plain = {
        "WORKER_COLOR": color or "none",
        "WORKER_VERSION": release.version,
        "WORKER_DEVICE": env.worker.device,
        "WORKER_COMPUTE_TYPE": env.worker.compute_type,
        "WORKER_CONCURRENCY": str(env.worker.concurrency),
        "WORKER_MODEL_NAME": env.worker.model,
        "WORKER_S3_BUCKET": env.buckets.audio,
        "WORKER_LOG_FORMAT": "json",
        "WORKER_METRICS_PORT": str(METRICS_PORT),
    }
    if auth_required(env):
        plain["WORKER_REQUIRE_API_KEYS"] = "true"
    if env.aws.endpoint_url:
        plain["WORKER_S3_ENDPOINT_URL"] = env.aws.endpoint_url
    plain.update({f"WORKER_{k.upper()}": str(v) for k, v in release.settings.items()})
    items = [{"name": k, "value": v} for k, v in plain.items()]
    for name, key in SECRET_ENV:
        if name not in plain:
            optional = name == "WORKER_API_KEY_HASHES" and not auth_required(env)
            ref = {"name": SECRET, "key": key, **({"optional": True} if optional else {})}
            items.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
    return items


def resources(env: Environment) -> dict:
    """Sizes that fit Whisper base, overridden key by key by `worker.resources` in opsctl.yaml."""
    if env.worker.gpu:  # one GPU per pod; requests default to the limits for extended resources
        out = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "12Gi", GPU_RESOURCE: 1}}
    else:
        out = {"requests": {"cpu": str(max(1, env.worker.concurrency)), "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    for part, values in env.worker.resources.items():
        out[part].update(values)
    _check_resources(env, out)
    return out


def _check_resources(env: Environment, res: dict) -> None:
    """UsageError for what the API server refuses in a container's resources once opsctl.yaml's
    values are merged over the defaults: a request above its limit, and an extended resource
    (nvidia.com/gpu) that is fractional or whose request differs from its limit."""
    from kubernetes.utils import parse_quantity

    from opsctl.errors import UsageError

    where = f"environments.{env.name}.worker.resources"
    requests, limits = res.get("requests", {}), res.get("limits", {})
    for name in {**requests, **limits}:
        req, lim = requests.get(name), limits.get(name)
        extended = "/" in name and not name.startswith("kubernetes.io/")
        for part, value in (("requests", req), ("limits", lim)):
            if extended and value is not None and parse_quantity(value) % 1:
                raise UsageError(f"{where}.{part}.{name}: {value!r} is fractional; an extended resource is "
                                 "counted in whole units")
        if req is None or lim is None:
            continue
        if extended and parse_quantity(req) != parse_quantity(lim):
            raise UsageError(f"{where}: requests.{name} {req} differs from limits.{name} {lim}; an extended "
                             "resource cannot be overcommitted, so set them equal (or set only the limit)")
        if parse_quantity(req) > parse_quantity(lim):
            raise UsageError(f"{where}: requests.{name} {req} is above limits.{name} {lim} (defaults included: "
                             "'opsctl render' shows them); lower the request or raise the limit")


def deployment(project: Project, env: Environment, release: Release, color: str | None,
               replicas: int | None = None) -> str:
    """One color's Deployment (or, with color None, the single rolling-update Deployment)."""
    notes = {VERSION_ANNOTATION: release.version, SETTINGS_ANNOTATION: json.dumps(release.settings, sort_keys=True)}
    return render(
        "kubernetes/worker-deployment.yaml.j2", project.root,
        resource_name=deployment_name(color), namespace=env.kubernetes.namespace,
        labels=labels(color, release.version), annotations=notes, selector=selector(color),
        replicas=env.worker.replicas if replicas is None else replicas, rolling=color is None,
        image=release.image, env=worker_env(env, release, color), resources=resources(env),
        service_account=SERVICE_ACCOUNT, grace_seconds=int(env.deploy.drain_timeout) + 10, port=PORT,
        metrics_port=METRICS_PORT, metrics_port_name=METRICS_PORT_NAME,
        node_selector=GPU_NODE_SELECTOR if env.worker.gpu else {},
        tolerations=[GPU_TOLERATION] if env.worker.gpu else [], spread_keys=SPREAD_KEYS)


def disruption_budget(project: Project, env: Environment, color: str | None) -> str:
    """One color's PodDisruptionBudget: node drains take its pods one at a time."""
    return render("kubernetes/worker-pdb.yaml.j2", project.root, resource_name=deployment_name(color),
                  namespace=env.kubernetes.namespace, labels=labels(color, None), selector=selector(color))


def service(project: Project, env: Environment, role: str, color: str | None) -> str:
    """The active or the preview Service, selecting `color`."""
    name = ACTIVE_SERVICE if role == "active" else PREVIEW_SERVICE
    return render("kubernetes/worker-service.yaml.j2", project.root, resource_name=name,
                  namespace=env.kubernetes.namespace, labels=labels(None, None),
                  annotations={ROLE_ANNOTATION: role}, selector=selector(color))


def autoscaling_bounds(env: Environment) -> tuple[int, int]:
    """(minReplicaCount, maxReplicaCount) of the ScaledObject: worker.autoscaling's, by default
    worker.replicas and three times that. The config's validator already refused a minimum
    below worker.replicas on a protected environment, and 0 without a wake query."""
    a = env.worker.autoscaling
    low = env.worker.replicas if a.min_replicas is None else a.min_replicas
    return low, a.max_replicas or max(3 * env.worker.replicas, low, 1)


def load_query(env: Environment, color: str | None) -> str:
    """PromQL: the work (queued + running transcriptions) of one color's pods, summed. The
    labels are those of the PodMonitor (`job="worker"`, `color`; Prometheus Operator adds
    `namespace`); KEDA divides the sum by the pod count (metricType AverageValue)."""
    names = "|".join(LOAD_METRICS)
    return (f'sum({{__name__=~"{names}",job="worker",namespace="{env.kubernetes.namespace}",'
            f'color="{color or ""}"}})')


def scaled_object(project: Project, env: Environment, color: str | None, floor: int = 0) -> str:
    """The KEDA ScaledObject scaling `color`'s Deployment (the single Deployment with color
    None). `floor` raises minReplicaCount while a deploy still judges that color (the driver
    passes 1 at a switch), so KEDA never scales a color under analysis to zero."""
    a = env.worker.autoscaling
    low, high = autoscaling_bounds(env)
    target = str(a.target_per_pod or env.worker.concurrency)
    triggers = [{"name": "work-per-pod", "metadata": {
        "serverAddress": a.prometheus_url, "query": load_query(env, color), "threshold": target,
        "activationThreshold": "0", "ignoreNullValues": "true"}}]
    if a.wake_query:  # activation only: any value above 0 wakes the color; its target is too high to size it
        triggers.append({"name": "wake", "metadata": {
            "serverAddress": a.prometheus_url, "query": a.wake_query, "threshold": WAKE_ONLY_THRESHOLD,
            "activationThreshold": "0", "ignoreNullValues": "true"}})
    return render("kubernetes/worker-scaledobject.yaml.j2", project.root, resource_name=SCALED_OBJECT,
                  namespace=env.kubernetes.namespace, labels=labels(None, None),
                  annotations={ROLE_ANNOTATION: "autoscaler"}, target=deployment_name(color),
                  min_replicas=max(low, floor), max_replicas=max(high, floor), polling_interval=a.polling_interval,
                  cooldown_period=a.cooldown_period, triggers=triggers)


def service_url(env: Environment, name: str) -> str:
    """The in-cluster DNS address of a Service (port 80)."""
    return f"http://{name}.{env.kubernetes.namespace}.svc.cluster.local"


def render_all(project: Project, env: Environment, release: Release, color: str | None,
               strategy: str = "blue-green", replicas: int | None = None) -> str:
    """Every manifest of a release onto `color` (default blue), as one multi-document YAML
    stream for a person or GitOps: what the Kubernetes driver applies. Both strategies apply the
    same objects there (a rolling deploy is a switch between colors without the analysis), so
    `strategy` changes nothing in them. `replicas`: the Deployment's size (default worker.replicas;
    a deploy's dry run passes the preview size bring_up applies)."""
    del strategy  # the driver has one shape of objects for both (see the docstring)
    color = color or "blue"
    docs = [deployment(project, env, release, color, replicas), disruption_budget(project, env, color),
            service(project, env, "preview", color), service(project, env, "active", color)]
    if env.worker.autoscaling.enabled:  # as it stands once `color` is active
        docs.append(scaled_object(project, env, color))
    text = "---\n".join(d if d.endswith("\n") else d + "\n" for d in docs)
    parse(text)  # a template that renders broken YAML fails here, not in the cluster
    return text


def parse(text: str) -> list[dict]:
    """The documents of a rendered YAML stream (empty ones dropped); UsageError naming the
    templates folder when a template rendered invalid YAML or a mapping with a key given twice."""
    from opsctl.errors import UsageError

    from opsctl import yamltext

    try:
        return [d for d in yamltext.load_all(text) if d]
    except yamltext.YamlFault as exc:  # a duplicate key too: the cluster would keep only the later one
        raise UsageError(f"a template in {Path('templates/kubernetes')} renders invalid YAML (line {exc.line} "
                         f"of the manifests: {exc.problem}); fix it") from None


def render_env(project: Project, env: Environment, image: str | None = None, color: str | None = None,
               strategy: str | None = None) -> str:
    """`opsctl render manifests`: what a deploy of `image` (default: opsctl.yaml's worker.image)
    applies, offline; for `local`, the local driver's description of the process it starts."""
    from opsctl.errors import UsageError

    from opsctl.errors import not_empty

    strategy = not_empty(strategy, "--strategy", "give blue-green or rolling, or leave it out for the "
                                                 "environment's deploy.strategy") or env.deploy.strategy
    if strategy not in ("blue-green", "rolling"):
        raise UsageError(f"--strategy {strategy}: use blue-green or rolling")
    if color not in (None, "blue", "green"):
        raise UsageError(f"--color {color}: use blue or green")
    image = not_empty(image, "--image", "give NAME:TAG, or leave it out for the environment's worker.image")
    release = Release.parse(image if image is not None else env.worker.image, [])
    if env.platform == "kubernetes":
        from opsctl.infra.target import check_gpu_capacity_of

        check_gpu_capacity_of(project, env)
    if env.platform == "local":
        from opsctl.deploy.drivers.local import LocalDriver

        return LocalDriver(project, env).render(release, color or "blue")
    return render_all(project, env, release, color, strategy)
