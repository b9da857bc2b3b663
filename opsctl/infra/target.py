"""Which Pulumi program and stack an environment uses, and whether it is safe to run them.

opsctl.yaml and `stacks/Pulumi.<stack>.yaml` both name the environment's region, buckets,
database and cache. They must agree: a stack that creates `x-audio` while opsctl backs up to
`y-audio` fails silently months later, so opsctl refuses to run until they match.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from opsctl.config import CONFIG_NAME, Environment, Project
from opsctl.errors import UsageError

INSTALL_URL = "https://www.pulumi.com/docs/install/"
PROJECT_NS = "transcribe"


@dataclass(frozen=True)
class Target:
    """Where an environment's infrastructure lives: its Pulumi stack name, the program folder
    (absolute) and whether the environment is protected."""

    environment: str
    stack: str
    program_dir: Path
    protected: bool

    @property
    def stack_file(self) -> Path:
        """The stack's config file, `<program_dir>/Pulumi.<stack>.yaml`."""
        return self.program_dir / f"Pulumi.{self.stack}.yaml"


def target(project: Project, env: Environment) -> Target:
    """The stack and program of a kubernetes environment; a one-line error for anything else."""
    if env.platform != "kubernetes":
        raise UsageError(f"'{env.name}' is a {env.platform} environment: opsctl infra is for kubernetes "
                         "environments (the embedded platform comes up with 'opsctl local up')")
    program_dir = (project.root / env.pulumi.program).resolve()
    stack = env.pulumi.stack or env.name
    if not (program_dir / "Pulumi.yaml").is_file():
        raise UsageError(f"{program_dir} holds no Pulumi.yaml; point environments.{env.name}.pulumi.program "
                         f"in {project.root / CONFIG_NAME} at the Pulumi program's folder")
    found = Target(env.name, stack, program_dir, env.protected)
    if not found.stack_file.is_file():
        raise UsageError(f"no {found.stack_file.name} in {program_dir}: create the stack's config there "
                         f"(copy Pulumi.staging.yaml) or fix environments.{env.name}.pulumi.stack")
    return found


def stack_config(t: Target) -> dict[str, Any]:
    """The `config:` mapping of the stack's file ({} when it has none); encrypted values stay
    as the file holds them ({"secure": ...})."""
    from opsctl import yamltext

    try:
        doc = yamltext.load(yamltext.read(t.stack_file)) or {}
    except yamltext.YamlFault as exc:
        raise UsageError(f"{t.stack_file}: not valid YAML ({exc}); fix it") from None
    # breaker 45 F6: `config: [1, 2]` or a list as the file ended on "unexpected AttributeError"
    if not isinstance(doc, dict):
        raise UsageError(f"{t.stack_file}: a Pulumi stack file is a mapping (config: ...), not "
                         f"{type(doc).__name__}; fix it")
    config = doc.get("config")
    if not isinstance(config, dict | None):
        raise UsageError(f"{t.stack_file}: `config:` must be a mapping of key: value, not "
                         f"{type(config).__name__}; fix it")
    return config or {}


def refused_config(t: Target, why: str) -> UsageError:
    """The one line for a stack config value the program cannot take: the stack file and why."""
    return UsageError(f"{t.stack_file}: the Pulumi program refuses this stack's config ({why}); fix the value it names")


def check_consistency(t: Target, env: Environment) -> None:
    """Refuse to run when opsctl.yaml and the stack config name different things: UsageError
    naming both for the first pair that differs. `transcribe:environment` (the name in every
    resource's name and tags) must be the environment's name in opsctl.yaml (breaker 45 F7:
    `environment: production` in the staging stack named everything transcribe-production-*);
    a stack that leaves it out is refused by the program (a required key)."""
    config = stack_config(t)
    env_key = f"{PROJECT_NS}:environment"
    if env_key in config and config[env_key] != env.name:
        raise UsageError(f"{t.stack_file.name} sets {env_key}={config[env_key]!r} but opsctl.yaml names this "
                         f"environment {env.name!r} (environments.{env.name}); make them the same")
    pairs = [
        ("aws:region", env.aws.region, "aws.region"),
        (f"{PROJECT_NS}:audioBucket", env.buckets.audio, "buckets.audio"),
        (f"{PROJECT_NS}:backupsBucket", env.buckets.backups, "buckets.backups"),
        (f"{PROJECT_NS}:namespace", env.kubernetes.namespace, "kubernetes.namespace"),
        (f"{PROJECT_NS}:dbIdentifier", env.database.rds_instance, "database.rds_instance"),
        (f"{PROJECT_NS}:cacheReplicationGroupId", env.redis.replication_group, "redis.replication_group"),
        (f"{PROJECT_NS}:production", env.protected, "protected"),
        (f"{PROJECT_NS}:apiAllowedCidrs", env.kubernetes.api_allowed_cidrs, "kubernetes.api_allowed_cidrs"),
    ]
    for key, ours, where in pairs:
        if ours is None:  # opsctl.yaml does not say: the stack decides
            continue
        theirs = config.get(key)
        if isinstance(ours, bool):
            theirs = str(theirs).lower() == "true"
        elif isinstance(ours, list):  # unset in both is the same empty list
            theirs = theirs or []
        if theirs != ours:
            raise UsageError(f"{t.stack_file.name} sets {key}={theirs!r} but opsctl.yaml has "
                             f"environments.{env.name}.{where}={ours!r}; make them the same")
    check_gpu_capacity(t, env, config)


def gpu_demand(env: Environment) -> tuple[int, float]:
    """(pods per color at most, GPUs per pod) of the worker: the autoscaler's maximum (with
    worker.autoscaling off, worker.replicas) and the nvidia.com/gpu limit of its merged resources
    (1 by default with `worker.gpu`; counted whatever `worker.gpu` says, 0 when there is none)."""
    from kubernetes.utils import parse_quantity

    from opsctl.deploy import manifests as mf

    per_pod = float(parse_quantity(mf.resources(env)["limits"].get(mf.GPU_RESOURCE, 0)))
    if not per_pod:
        return 0, 0.0
    pods = mf.autoscaling_bounds(env)[1] if env.worker.autoscaling.enabled else env.worker.replicas
    return pods, per_pod


def program_defaults(program_dir: Path) -> Any | None:
    """The Pulumi program's GPU defaults module (`transcribe_infra/defaults.py`: GPU_MAX_SIZE,
    GPU_INSTANCE_TYPES, GPUS_PER_INSTANCE_TYPE), loaded from its file; None when the program has
    none (another program: then opsctl knows no default to compare against)."""
    import importlib.util

    path = program_dir / "transcribe_infra" / "defaults.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"_opsctl_program_defaults_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_max_size(t: Target, config: dict[str, Any], defaults: Any | None) -> int | None:
    """transcribe:gpuMaxSize as the program reads it (settings._count: unset -> the program's
    default; an explicit 0 stays 0, which the program refuses); UsageError when it is not a
    whole number."""
    key = f"{PROJECT_NS}:gpuMaxSize"
    value = config.get(key)
    if value is None:
        return getattr(defaults, "GPU_MAX_SIZE", None)
    try:
        if isinstance(value, bool) or isinstance(value, float) or int(str(value)) < 0:
            raise ValueError
        return int(str(value))
    except ValueError:
        raise UsageError(f"{t.stack_file.name} sets {key}={value!r}: not a whole number of GPUs; "
                         f"write the GPUs the NodePool may run at once, e.g. {key}: 6") from None


def check_gpu_capacity(t: Target, env: Environment, config: dict[str, Any] | None = None) -> None:
    """UsageError when the stack's GPU pool cannot run the worker: a pod asks for more GPUs
    (nvidia.com/gpu limit) than any of transcribe:gpuInstanceTypes has (GPUS_PER_INSTANCE_TYPE of
    the program's defaults.py, from AWS's instance type docs), or the NodePool's GPU limit
    (transcribe:gpuMaxSize, the program's default when unset) cannot hold both colors at the
    autoscaler's maximum: a deploy grows the preview to the active color's size before the switch,
    so pods past the limit stay Pending and it times out."""
    config = stack_config(t) if config is None else config
    defaults = program_defaults(t.program_dir)
    limit = _gpu_max_size(t, config, defaults)
    pods, per_pod = gpu_demand(env)
    if not per_pod:
        return
    table = getattr(defaults, "GPUS_PER_INSTANCE_TYPE", None)
    types = config.get(f"{PROJECT_NS}:gpuInstanceTypes")  # unset -> the defaults; [] is the program's to refuse
    types = list(getattr(defaults, "GPU_INSTANCE_TYPES", [])) if types is None else types
    if not isinstance(types, list):  # breaker 45 F6: `gpuInstanceTypes: 7` ended on "unexpected TypeError"
        raise refused_config(t, f"{PROJECT_NS}:gpuInstanceTypes is {types!r}, not a list of instance types")
    if table is not None and types and all(str(x) in table for x in types):
        biggest = max(table[str(x)] for x in types)
        if per_pod > biggest:
            raise UsageError(f"environments.{env.name}.worker.resources.limits.nvidia.com/gpu is {per_pod:g} GPUs per "
                             f"pod, but the largest of {PROJECT_NS}:gpuInstanceTypes in {t.stack_file.name} "
                             f"({', '.join(map(str, types))}) has {biggest}; lower the limit or add an instance "
                             "type with more GPUs")
    need = 2 * pods * per_pod
    if limit is None or limit >= need:
        return
    fits = int(limit // (2 * per_pod))
    lower = f" or lower worker.autoscaling.max_replicas to {fits}" if fits >= 1 else ""
    shown = f"{limit}" if config.get(f"{PROJECT_NS}:gpuMaxSize") is not None else f"{limit} (the program's default: unset)"
    raise UsageError(f"{t.stack_file.name} sets {PROJECT_NS}:gpuMaxSize={shown}, but environments.{env.name} needs "
                     f"{need:g} GPUs during a deploy (both colors at max_replicas {pods} x {per_pod:g} GPU per pod); "
                     f"raise gpuMaxSize to {need:g}{lower}")


def check_gpu_capacity_of(project: Project, env: Environment) -> None:
    """check_gpu_capacity against the environment's stack file when the ops root has one (render
    and deploy run without a Pulumi program too: then there is nothing to compare)."""
    try:
        t = target(project, env)
    except UsageError:
        return
    check_gpu_capacity(t, env)


def find_cli() -> Path | None:
    """The pulumi CLI: on PATH, or where get.pulumi.com installs it (~/.pulumi/bin)."""
    found = shutil.which("pulumi")
    if found:
        return Path(found)
    home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
    candidate = home / "bin" / "pulumi"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def require_cli() -> Path:
    """The pulumi CLI's path (find_cli); UsageError naming where to install it when absent."""
    cli = find_cli()
    if cli is None:
        raise UsageError(f"the pulumi CLI is not installed (opsctl infra runs it through Pulumi's Automation API); "
                         f"install it from {INSTALL_URL}, then rerun")
    return cli


def workspace_env(env: Environment) -> dict[str, str]:
    """What the pulumi process needs besides our environment: our Python, the AWS account, state."""
    out = {
        # run the program with this interpreter: it has pulumi, pulumi-aws and pulumi-kubernetes
        "PULUMI_PYTHON_CMD": sys.executable,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "AWS_REGION": env.aws.region,
    }
    if env.aws.profile and not (os.environ.get("AWS_PROFILE") or os.environ.get("AWS_ACCESS_KEY_ID")):
        out["AWS_PROFILE"] = env.aws.profile
    if env.pulumi.backend and not os.environ.get("PULUMI_BACKEND_URL"):
        out["PULUMI_BACKEND_URL"] = env.pulumi.backend
    return out


@contextlib.contextmanager
def without_opsctl_secrets(env: Environment, project: Project | None = None) -> Iterator[list[str]]:
    """Within the block, the secrets opsctl itself holds are out of this process's environment,
    so the pulumi CLI, its language host and its plugins (children that inherit it whole:
    the Automation API runs them with os.environ) never get them: the backup key, the worker
    API key, database and Redis URLs, sink URLs (every `*_env` opsctl.yaml names, and any
    variable whose name says secret). What pulumi itself needs stays: cloud and tool
    credentials (AWS_*, PULUMI_*, runbook.secrets.KNOWN_SECRET_ENV), as the platform's own
    servers get only what they need (procs.spawn; breaker 43 S15). With `project`, the names
    every environment of it gives are withheld, not only `env`'s (breaker 44 T2: production's
    database URL reached the pulumi of staging). Yields the names withheld."""
    from opsctl.runbook.secrets import KNOWN_SECRET_ENV, environment_secret_names

    envs = list(project.config.environments.values()) if project is not None else [env]
    found = set().union(*(environment_secret_names(e) for e in envs))
    names = sorted(n for n in found if n in os.environ and n not in KNOWN_SECRET_ENV
                   and not n.startswith(("AWS_", "PULUMI_")))
    kept = {n: os.environ.pop(n) for n in names}
    try:
        yield names
    finally:
        os.environ.update(kept)


def open_stack(t: Target, env: Environment, cli: Path, create: bool):
    """The Automation API stack for the local program in `t.program_dir`."""
    from pulumi import automation as auto

    try:  # runs `pulumi version`, and checks it against the SDK's minimum
        command = auto.PulumiCommand(root=str(cli.parent.parent)) if cli.parent.name == "bin" else auto.PulumiCommand()
    except (OSError, subprocess.CalledProcessError, auto.InvalidVersionError) as exc:
        raise UsageError(f"the pulumi CLI at {cli} does not run or is too old ({exc}); "
                         f"install a current one from {INSTALL_URL}") from None
    opts = auto.LocalWorkspaceOptions(work_dir=str(t.program_dir), env_vars=workspace_env(env),
                                      pulumi_command=command)
    try:
        if create:
            return auto.create_or_select_stack(t.stack, work_dir=str(t.program_dir), opts=opts)
        return auto.select_stack(t.stack, work_dir=str(t.program_dir), opts=opts)
    except auto.StackNotFoundError:
        raise UsageError(f"stack '{t.stack}' does not exist yet; "
                         f"create it with 'opsctl infra up --env {t.environment}'") from None
    except auto.CommandError as exc:
        raise UsageError(f"pulumi could not open stack '{t.stack}': {last_line(str(exc))} "
                         "(logged in? 'pulumi login' or set pulumi.backend in opsctl.yaml)") from None


def last_line(text: str) -> str:
    """The line of a pulumi error output worth one line: its last `error…` line, else its last
    non-empty line (the `code:` line aside), else "(no output)"."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(" code:")]
    errors = [line for line in lines if line.lower().startswith("error")]
    return (errors or lines or ["(no output)"])[-1]
