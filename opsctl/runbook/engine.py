"""Running a runbook: templates, conditions, approvals, retries, timeouts, failure routing.

Steps run in order; a step named in some `on_failure` is a handler and runs only when that
failure happens. Each step's outcome goes to the journal before the next starts, so a run
killed half-way resumes (`--resume RUN_ID`) at the first step that did not finish, with
the outputs of the finished ones, and never repeats them.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError
from opsctl.runbook import journal as jr
from opsctl.runbook.actions import ACTIONS, Context
from opsctl.runbook.catalog import digest, locate
from opsctl.runbook.model import TEMPLATES, Runbook


@dataclass
class StepOutcome:
    id: str
    status: str  # ok | failed | skipped | done-before | planned
    attempts: int = 0
    seconds: float = 0.0
    detail: str = ""
    outputs: dict = field(default_factory=dict)


@dataclass
class RunResult:
    run_id: str | None
    runbook: str
    status: str  # succeeded | failed | planned
    steps: list[StepOutcome]


Notify = Callable[[StepOutcome], None]


class Placeholder:
    """Stands for a value only a real run knows (an earlier step's output) in a dry run."""

    def __init__(self, path: str):
        self._path = path

    def __getattr__(self, name: str) -> "Placeholder":
        return Placeholder(f"{self._path}.{name}")

    __getitem__ = __getattr__

    def __str__(self) -> str:
        return f"<{self._path}>"


def _render(value: Any, ctx: dict) -> Any:
    if isinstance(value, dict):
        return {k: _render(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, ctx) for v in value]
    if not isinstance(value, str) or "{" not in value:
        return value
    text = TEMPLATES.from_string(value).render(**ctx)
    stripped = value.strip()
    if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
        try:  # a lone expression keeps its type: numbers, booleans, lists
            return yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            return text
    return text


def _truthy(text: Any) -> bool:
    return str(text).strip().lower() not in ("", "false", "0", "no", "none", "null")


class Runner:
    def __init__(self, project: Project, env: Environment, book: Runbook, params: dict,
                 yes: bool = False, notify: Notify | None = None, dry_run: bool = False):
        self.project, self.env, self.book, self.params = project, env, book, params
        self.yes, self.dry_run = yes, dry_run
        self.notify = notify or (lambda outcome: None)
        self.outputs: dict[str, dict] = {}
        secrets = {str(params[n]) for n, s in book.parameters.items() if s.get("secret") and params.get(n)}
        self.journal = None if dry_run else jr.new(project.root, secrets)
        self.steps: list[StepOutcome] = []

    def context(self) -> dict:
        steps: Any = {k: {"outputs": v} for k, v in self.outputs.items()}
        if self.dry_run:
            steps = {s["id"]: steps.get(s["id"]) or {"outputs": Placeholder(f"steps.{s['id']}.outputs")}
                     for s in self.book.steps}
        return {"params": self.params, "steps": steps, "run": {"id": self.journal.run_id if self.journal else "dry-run"},
                "env": self.env_view}

    @property
    def env_view(self) -> dict:
        """What templates may read of the environment: its name and where it answers."""
        if not hasattr(self, "_env_view"):
            from opsctl.endpoints import resolve

            view = {"name": self.env.name, "platform": self.env.platform, "router_url": self.env.router_url,
                    "database": self.env.database.name}
            try:
                view["router_url"] = resolve(self.project, self.env).router_url or view["router_url"]
            except UsageError:  # the local platform is not up: templates that need it will say so
                pass
            self._env_view = view
        return self._env_view

    def _record(self, outcome: StepOutcome, **extra) -> None:
        self.steps.append(outcome)
        self.notify(outcome)
        if self.journal:
            self.journal.write("step", id=outcome.id, status=outcome.status, attempts=outcome.attempts,
                               seconds=outcome.seconds, detail=outcome.detail, outputs=outcome.outputs, **extra)

    def _call(self, step: dict, inputs: dict) -> dict:
        action = ACTIONS[step["action"]]
        ctx = Context(self.project, self.env, self.yes)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            future = pool.submit(action, ctx, **inputs)
            return future.result(timeout=step.get("timeout")) or {}
        except concurrent.futures.TimeoutError:
            raise OperationFailed(f"timed out after {step['timeout']}s") from None
        finally:
            pool.shutdown(wait=False)

    def run_step(self, step: dict) -> bool:
        ctx = self.context()
        if "when" in step and not _truthy(_render(step["when"], ctx)):
            self._record(StepOutcome(step["id"], "skipped", detail=f"when: {step['when']}"))
            return True
        inputs = _render(step.get("with", {}), ctx)
        approval = step.get("approval")
        if self.dry_run:
            detail = f"{step['action']} {inputs}" + (" (needs approval)" if approval else "")
            self._record(StepOutcome(step["id"], "planned", detail=detail))
            return True
        if approval and _truthy(_render(approval.get("when", "true"), ctx)):
            from opsctl.output import confirm

            confirm(_render(approval["message"], ctx), self.yes)
        retries = step.get("retries", {})
        attempts, began, error = retries.get("count", 0) + 1, time.monotonic(), ""
        for attempt in range(1, attempts + 1):
            try:
                outputs = self._call(step, inputs)
                self.outputs[step["id"]] = outputs
                self._record(StepOutcome(step["id"], "ok", attempt, round(time.monotonic() - began, 2),
                                         "succeeded on attempt %d" % attempt if attempt > 1 else "", outputs),
                             inputs=inputs)
                return True
            except UsageError:
                raise
            except Exception as exc:  # any failure of the action is the step's failure
                error = str(exc) or type(exc).__name__
                if attempt < attempts:
                    time.sleep(retries.get("backoff", 1.0) * 2 ** (attempt - 1))
        self._record(StepOutcome(step["id"], "failed", attempts, round(time.monotonic() - began, 2), error),
                     inputs=inputs)
        return False

    def execute(self, done: dict[str, dict] | None = None, start_at: str | None = None) -> RunResult:
        done = done or {}
        handlers = self.book.handlers()
        by_id = {s["id"]: s for s in self.book.steps}
        if self.journal and not done:
            self.journal.write("run", runbook=self.book.name, version=self.book.version, env=self.env.name,
                               hash=digest(self.book.path), params=self.params)
        status = "succeeded"
        started = start_at is None
        for step in self.book.steps:
            sid = step["id"]
            started = started or sid == start_at
            if sid in handlers:
                continue
            if not started or (sid in done and start_at != sid):
                if sid in done:
                    self.outputs[sid] = done[sid]
                    self.steps.append(StepOutcome(sid, "done-before", outputs=done[sid]))
                    self.notify(self.steps[-1])
                continue
            if self.run_step(step):
                continue
            route = step.get("on_failure", "abort")
            if route == "continue":
                status = "succeeded with failures"
                continue
            for handler in route if isinstance(route, list) else []:
                self.run_step(by_id[handler])
            status = "failed"
            break
        if self.journal:
            self.journal.write("end", status=status)
        return RunResult(self.journal.run_id if self.journal else None, self.book.ref,
                         "planned" if self.dry_run else status, self.steps)


def resume(project: Project, env: Environment, book: Runbook, run_id: str, yes: bool,
           notify: Notify | None, from_step: str | None, given: dict | None = None) -> RunResult:
    records = jr.read(project.root, run_id)
    head = next((r for r in records if r["type"] == "run"), None)
    if head is None or head["runbook"] != book.name or head["version"] != book.version:
        raise UsageError(f"run {run_id} is not a run of {book.ref}")
    if head["hash"] != digest(locate(project.root, book.ref)):
        raise UsageError(f"{book.ref} changed since run {run_id}; resume needs the very same runbook")
    if from_step and from_step not in {s["id"] for s in book.steps}:
        raise UsageError(f"--from-step {from_step}: {book.ref} has no such step")
    done = {r["id"]: r.get("outputs", {}) for r in records if r["type"] == "step" and r["status"] in ("ok", "skipped")}
    params = dict(head["params"])
    for name, spec in book.parameters.items():  # secrets are never journaled: ask for them again
        if spec.get("secret") and params.get(name) == jr.REDACTED:
            if not given or name not in given:
                raise UsageError(f"run {run_id} had secret parameter '{name}'; pass -p {name}=VALUE again")
            params[name] = given[name]
    runner = Runner(project, env, book, params, yes, notify)
    runner.journal = jr.Journal(jr.runs_dir(project.root) / f"{run_id}.jsonl", runner.journal.secrets)
    runner.journal.write("resume", from_step=from_step, done=sorted(done))
    return runner.execute(done, from_step)
