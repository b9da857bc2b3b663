"""preview, up, destroy, refresh, outputs and policy for one environment: the core functions.

The CLI and runbook steps call these; they print nothing themselves (the caller passes an
`on_event` listener, or a `watch` factory of listeners, to show progress) and raise
UsageError / OperationFailed, never exit. `up` and `destroy` own their whole sequence
(target check, preview, approval, run); approval is a callable the caller passes.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError
from opsctl.infra import target as tg
from opsctl.infra.events import Tracker

log = logging.getLogger("opsctl.infra")

OPERATIONS = ("preview", "up", "destroy", "refresh")
# The stack outputs other opsctl commands read; the program must export every one of them.
OUTPUTS = ("region", "databaseEndpoint", "databaseSecretArn", "redisEndpoint", "redisAuthSecretArn",
           "audioBucket", "backupsBucket", "clusterName", "kubeconfig", "workerNamespace",
           "workerServiceAccount", "workerRoleArn")
SECRET_MASK = "[secret]"
DESTROY_VERB = ("destroy it", "destroying it", "destroyed")
# approve(question): returns when approved, raises UsageError (nothing changed) when not
Approve = Callable[[str], None]
# watch(operation) -> a context manager yielding the engine-event listener of that operation
# (the CLI's LiveView); entered around each Pulumi operation, left before any question
Watch = Callable[[str], ContextManager[Callable[[Tracker], None]]]


@dataclass
class InfraResult:
    """What preview, up, destroy or refresh did: changes per operation, the changed resources,
    the outputs after `up` (secrets masked as SECRET_MASK), duration in seconds, engine warnings."""

    environment: str
    stack: str
    operation: str
    changes: dict[str, int]  # operation (create, update, delete, replace, same...) -> resources
    steps: list[dict[str, str]]  # every resource that changed: type, name, op, status
    outputs: dict[str, Any] = field(default_factory=dict)  # after up; secrets masked
    duration_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        """How many resources were (or, for a preview, would be) created, updated, replaced or deleted."""
        return sum(n for op, n in self.changes.items() if op != "same")


@dataclass
class OutputsResult:
    """`opsctl infra outputs`: the stack's outputs, secrets masked, and which OUTPUTS it lacks."""

    environment: str
    stack: str
    outputs: dict[str, Any]  # secrets masked
    missing: list[str]  # outputs opsctl reads that the stack does not (yet) export


@dataclass
class StackOutputs:
    """What other commands read: the environment's endpoints and names. Holds no secret value."""

    region: str
    database_endpoint: str
    database_secret_arn: str
    redis_endpoint: str
    redis_auth_secret_arn: str
    audio_bucket: str
    backups_bucket: str
    cluster_name: str
    kubeconfig: str
    worker_namespace: str
    worker_service_account: str
    worker_role_arn: str


@dataclass
class PolicyResult:
    """`opsctl infra policy`: how many resources the program declared (run offline against
    Pulumi's mocks) and one line per rule violation."""

    environment: str
    stack: str
    resources: int
    violations: list[str]

    @property
    def ok(self) -> bool:
        """No violation."""
        return not self.violations


def _prepare(project: Project, env: Environment) -> tg.Target:
    t = tg.target(project, env)
    tg.check_consistency(t, env)
    return t


def _program_modules(program_dir: Path):
    """Import the program's own offline harness and policy from `program_dir`."""
    for name in [m for m in sys.modules if m == "transcribe_infra" or m.startswith("transcribe_infra.")]:
        origin = getattr(sys.modules[name], "__file__", "") or ""
        if not Path(origin).resolve().is_relative_to(program_dir):
            del sys.modules[name]  # another copy of the program was imported before: forget it
    if str(program_dir) not in sys.path:
        sys.path.insert(0, str(program_dir))
    try:
        return importlib.import_module("transcribe_infra.offline"), importlib.import_module("transcribe_infra.policy")
    except ModuleNotFoundError as exc:
        raise UsageError(f"{program_dir} has no transcribe_infra package ({exc}); "
                         "the policy checks need the program in this repository's stacks/") from None


def check_policy(project: Project, env: Environment) -> PolicyResult:
    """Run the program against Pulumi's mocks and check every resource it declares. No cloud.

    UsageError when the program refuses the stack's config: Pulumi's own ConfigTypeError and
    ConfigMissingError (a `get_int` of `yes`, a `require`d key unset: pulumi.RunError), and the
    ValueError/TypeError the program's components raise for values they cannot build from
    (too short a retention, an unknown instance type, a number where a list belongs), and the
    SDK's AssertionError for an input of the wrong type (a mapping where a tag value goes). Each
    is the stack file's fault, so the line names it; `preview` and `up` call this first, so
    pulumi never starts on such a config.
    """
    import pulumi

    t = _prepare(project, env)
    offline, policy = _program_modules(t.program_dir)
    try:
        run_ = offline.run_stack(t.program_dir, t.stack)
    except (pulumi.RunError, ValueError, TypeError, AssertionError) as exc:  # the SDK asserts input types
        raise tg.refused_config(t, " ".join(str(exc).split()) or type(exc).__name__) from None
    production = str(tg.stack_config(t).get(f"{tg.PROJECT_NS}:production", False)).lower() == "true"
    found = policy.check(run_, production=production)
    return PolicyResult(env.name, t.stack, len(run_.resources), [str(v) for v in found])


def _mask(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (SECRET_MASK if getattr(v, "secret", False) else getattr(v, "value", v)) for k, v in values.items()}


def run(project: Project, env: Environment, operation: str,
        on_event: Callable[[Tracker], None] | None = None, policy: bool = True) -> InfraResult:
    """One Pulumi operation on the environment's stack, after the offline policy checks.

    Ctrl-C or SIGTERM while pulumi runs cancels it as pulumi's own Ctrl-C does (in-flight
    resource operations finish, the state is saved; a second one stops it at once), then
    raises Interrupted (opsctl.infra.cancel), saying each step of that on the log.

    opsctl passes the program no secret: secrets the stack needs (the Redis AUTH token) are
    generated inside the program with pulumi_random, so none is ever on a child's command line.
    """
    if operation not in OPERATIONS:
        raise UsageError(f"unknown infra operation '{operation}'; one of {', '.join(OPERATIONS)}")
    t = _prepare(project, env)
    cli = tg.require_cli()
    if policy and operation in ("preview", "up"):
        verdict = check_policy(project, env)
        if not verdict.ok:
            raise OperationFailed(f"{len(verdict.violations)} policy violation(s), nothing was changed; first: "
                                  f"{verdict.violations[0]} (all: 'opsctl infra policy --env {env.name}')")
    from pulumi import automation as auto

    from opsctl.infra.cancel import run_cancellable

    tracker = Tracker(listener=on_event)
    started = time.monotonic()
    common = {"on_event": tracker, "color": "never"}

    def operate() -> tuple[dict, dict[str, Any]]:
        stack = tg.open_stack(t, env, cli, create=operation in ("preview", "up"))
        if operation == "preview":
            return stack.preview(**common).change_summary, {}
        if operation == "up":
            result = stack.up(**common)
            return result.summary.resource_changes, _mask(result.outputs)
        if operation == "refresh":
            return stack.refresh(**common).summary.resource_changes, {}
        return stack.destroy(**common).summary.resource_changes, {}

    try:  # Ctrl-C and SIGTERM cancel it as pulumi's own Ctrl-C does (opsctl.infra.cancel)
        with tg.without_opsctl_secrets(env, project):
            changes, outputs = run_cancellable(operate, f"pulumi {operation} of stack '{t.stack}'")
    except auto.CommandError as exc:
        reason = tracker.errors[-1] if tracker.errors else tg.last_line(str(exc))
        raise OperationFailed(f"pulumi {operation} of stack '{t.stack}' failed: {reason}") from None
    return InfraResult(
        environment=env.name, stack=t.stack, operation=operation,
        changes={getattr(k, "value", str(k)): v for k, v in (changes or tracker.summary).items() if v},
        steps=[{"type": s.type, "name": s.name, "op": s.op, "status": s.status} for s in tracker.snapshot()],
        outputs=outputs, duration_seconds=round(time.monotonic() - started, 1),
        warnings=tracker.warnings)


def _raw_outputs(project: Project, env: Environment) -> tuple[tg.Target, dict[str, Any]]:
    t = _prepare(project, env)
    with tg.without_opsctl_secrets(env, project):
        stack = tg.open_stack(t, env, tg.require_cli(), create=False)
        return t, stack.outputs()


def outputs(project: Project, env: Environment) -> OutputsResult:
    """The stack's outputs for people: secret values masked, missing ones named."""
    t, values = _raw_outputs(project, env)
    return OutputsResult(env.name, t.stack, _mask(values), [k for k in OUTPUTS if k not in values])


def read_outputs(project: Project, env: Environment) -> StackOutputs:
    """The outputs for other commands (deploy, backup, health): never printed by this function."""
    t, values = _raw_outputs(project, env)
    missing = [k for k in OUTPUTS if k not in values]
    if missing:
        raise UsageError(f"stack '{t.stack}' does not export {', '.join(missing)}; "
                         f"run 'opsctl infra up --env {env.name}' first")
    return StackOutputs(**{field_name(k): values[k].value for k in OUTPUTS})


def field_name(output: str) -> str:
    """databaseSecretArn -> database_secret_arn: a stack output's StackOutputs field."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in output)


def approve(operation: str, env: Environment, *, yes: bool, confirm_env: str | None, interactive: bool,
            ask_yes_no: Callable[[str], bool], ask_text: Callable[[str], str], question: str) -> None:
    """Who may run `up` and `destroy`: destroy is the destructive one (see opsctl.approval)."""
    from opsctl.approval import approve as decide

    decide(question, env, yes=yes, confirm_env=confirm_env, destructive=operation == "destroy",
           interactive=interactive, ask_yes_no=ask_yes_no, ask_text=ask_text,
           verb=DESTROY_VERB)


def terminal_approval(operation: str, env: Environment, yes: bool, confirm_env: str | None = None) -> Approve:
    """The approval `up` and `destroy` take, asked at the terminal (opsctl.approval.terminal):
    `--yes` or a person's answer; destroying a protected environment also needs its name
    (`confirm_env`, or typed). The callable raises UsageError on a refusal."""
    def decide(question: str) -> None:
        from opsctl.approval import terminal

        approve(operation, env, yes=yes, confirm_env=confirm_env, question=question, **terminal())

    return decide


def _watched(project: Project, env: Environment, operation: str, watch: Watch | None) -> InfraResult:
    if watch is None:
        return run(project, env, operation)
    with watch(operation) as listener:
        return run(project, env, operation, on_event=listener)


def up(project: Project, env: Environment, approve: Approve, *, preview_first: bool = False,
       watch: Watch | None = None, on_preview: Callable[[InfraResult], None] | None = None) -> InfraResult:
    """Create or update the environment's stack: the whole sequence of `opsctl infra up`.

    The target is checked first (a local environment or a missing program fails before any
    question). With `preview_first` (a person at a terminal), a preview runs, is handed to
    `on_preview`, and when it would change nothing it is returned as is (operation
    "preview"): nothing asked, nothing run. Then `approve(question)` (raises UsageError to
    refuse: nothing changed), then `pulumi up`. Raises UsageError / OperationFailed as `run`.
    """
    t = tg.target(project, env)
    if preview_first:
        planned = _watched(project, env, "preview", watch)
        if on_preview is not None:
            on_preview(planned)
        if not planned.changed:
            return planned
        approve(f"apply these {planned.changed} changes to '{env.name}'?")
    else:
        approve(f"update '{env.name}' (stack {t.stack})")
    return _watched(project, env, "up", watch)


def destroy(project: Project, env: Environment, approve: Approve, *, watch: Watch | None = None) -> InfraResult:
    """Delete every resource of the environment's stack: target check, `approve(question)`
    (for a protected environment use terminal_approval("destroy", ...): its name, not --yes
    alone), then `pulumi destroy`. Raises UsageError / OperationFailed as `run`."""
    tg.target(project, env)
    approve(f"destroy every resource of '{env.name}'?")
    return _watched(project, env, "destroy", watch)
