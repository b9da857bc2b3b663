"""Running a runbook: templates, conditions, approvals, retries, timeouts, failure routing.

Steps run in order; a step named in some `on_failure` is a handler and runs only when that
failure happens; `on_failure: [alert, continue]` runs the handler, then the steps after (the
run still ends failed). A step that refuses its input after another step did its work is a
failed step like any other (before any did, the whole run is refused: exit 2). Each step's
outcome goes to the journal before the next starts, so a run killed half-way resumes (`--resume RUN_ID`) at the first step that did not finish, with
the outputs of the finished ones, and never repeats them.

Values are typed, never re-read from text: a `with:` value that is one `{{ expression }}`
is the expression's value (`model.evaluate`), and each argument must fit the action's
annotation before the action is called. Retries are tenacity's (`retries: {count,
backoff}`: waits of backoff × 2^(n-1) seconds).

An action runs in the thread that runs the runbook, the main one from the CLI: only there do
Ctrl-C and SIGTERM arrive, so a step's core takes them as its command does (a backup aborts
its uploads, a drill tears down and reports itself cancelled, a load test saves its partial
run). Breaker 64 F19: actions ran in a worker thread, the interrupt never reached the drill,
the run recorded no step, and the process waited at exit for the drill, which then reported
success. An interrupted step is journaled `interrupted` with what it said, and the run stops
there (no `end` record: `--resume` runs that step again). A step's `timeout` cancels the
attempt the same way (`_Deadline`: SIGTERM's handler run in the main thread, and
`Context.cancel`); an interrupt from outside stays an interrupt. The next attempt starts only
once the previous one has ended. Secret parameter
values are masked on every output path (`secrets.Masker`).
"""

from __future__ import annotations

import contextlib
import enum
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Mapping, Sequence

import jinja2
import tenacity

from opsctl.config import Environment, Project
from opsctl.errors import Interrupted, OperationFailed, UsageError, fault_text
from opsctl.runbook import journal as jr
from opsctl.runbook.actions import ACTIONS, Context
from opsctl.runbook.catalog import digest, locate
from opsctl.runbook.model import CONTINUE, Runbook, template_refs, condition, evaluate, misfit
from opsctl.runbook.secrets import Masker, masking_logs
from opsctl.signals import deferred


class StepStatus(enum.StrEnum):
    """What became of a step (journal, --json, JUnit and the step table use these values)."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # its `when` was false
    DONE_BEFORE = "done-before"  # finished in the run being resumed
    PLANNED = "planned"  # dry run
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM stopped it; the run stopped there


REFUSED = "refused"  # a journaled run's end status when a step refused its input before anything ran


class RunStatus(enum.StrEnum):
    """The outcome of a run; only FAILED exits 1."""

    SUCCEEDED = "succeeded"
    SUCCEEDED_WITH_FAILURES = "succeeded with failures"  # a step with on_failure: continue failed
    FAILED = "failed"
    PLANNED = "planned"


@dataclass
class StepOutcome:
    """One step's result: status, attempts made, seconds (wall time of all attempts), detail
    (masked) and outputs (masked)."""
    id: str
    status: StepStatus
    attempts: int = 0
    seconds: float = 0.0
    detail: str = ""
    outputs: dict = field(default_factory=dict)


@dataclass
class RunResult:
    """A run's result: its id (None for a dry run), NAME@N, status and the step outcomes in
    order."""
    run_id: str | None
    runbook: str
    status: RunStatus
    steps: list[StepOutcome]


Notify = Callable[[StepOutcome], None]


class _Placeholder:
    """Stands for a value only a real run knows (an earlier step's output) in a dry run."""

    def __init__(self, path: str):
        self._path = path

    def __getattr__(self, name: str) -> "_Placeholder":
        return _Placeholder(f"{self._path}.{name}")

    __getitem__ = __getattr__

    def __iter__(self):
        """One element standing for them all (`| join`, `for`): without it Python iterated by
        __getitem__(0, 1, ...), which never ends, and a dry run's `join` took the host's memory
        (breaker 27 F5)."""
        return iter([_Placeholder(f"{self._path}[*]")])

    __reversed__ = __iter__  # `| last`

    def planned_length(self) -> "_Placeholder":
        """What `| length` of it renders as (model.TEMPLATES' length filter asks for this)."""
        return _Placeholder(f"{self._path} | length")

    def __str__(self) -> str:
        return f"<{self._path}>"

    __repr__ = __str__

    def _same(self, *args: Any) -> "_Placeholder":  # a dry run's `when: steps.x.outputs.n > 2` is planned
        return self

    __lt__ = __le__ = __gt__ = __ge__ = __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same
    __truediv__ = __rtruediv__ = __mod__ = __neg__ = _same


INTERRUPTED_DETAIL = "interrupted (Ctrl-C or SIGTERM)"  # an interrupted step's detail when its core said nothing


class _Deadline:
    """A step attempt's timeout. `seconds` after it was made (in the main thread), a thread of
    its own wakes the main thread with WAKE, a real signal (one that waits in a system call, a
    socket read, wakes up), whose handler decides there and then: unless an interrupt from
    outside came first (`outside`), the attempt is `expired`, its `cancel` set (the actions
    that poll it stop: shell, wait), and SIGTERM's handler of the moment is run, so the core
    is stopped as a CI cancel stops it and cleans up as then: its own handler, the run's
    (`signals.sigterm_as_interrupt`), a held one (`signals.deferred`), or none while a core
    ignores SIGTERM (`pitr.restore._signals_held`: the attempt goes on to its end).

    An interrupt from outside is one an opsctl handler takes that this did not run
    (`signals.noticing`), or one being handled when WAKE comes: it stays an interrupt (the
    step journaled interrupted, no retry, no on_failure handler), where one that came near the
    timeout or while a timed-out attempt was being stopped was taken for the timeout (breaker
    66 G5: retried, paged, exit 1). Off the main thread only `cancel` is set.

    A context manager around the attempt. On leaving: `ended = True` (a plain store, which no
    interrupt can cut in before; nothing is sent after it), then a WAKE sent as the attempt
    ended is taken, never by the engine's code after it, and WAKE's handler is put back."""

    WAKE = signal.SIGURG  # ignored by default: one that came after the handler was put back is harmless

    def __init__(self, seconds: float, cancel: threading.Event):
        self.seconds = seconds
        self.expired = False  # the deadline passed and the attempt was cancelled
        self.outside = False  # an interrupt from outside came during the attempt
        self.ended = False
        self._running_sigterm = False
        self._sent = False
        self._lock = threading.Lock()
        self._cancel = cancel
        self._main = threading.current_thread() is threading.main_thread()
        self._woken = threading.Event()
        self._before = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "_Deadline":
        from opsctl.signals import noticing

        self._stack.enter_context(noticing(self._noticed))
        if self._main:
            self._before = signal.signal(self.WAKE, self._expire)
        threading.Thread(target=self._wait, name="runbook step timeout", daemon=True).start()
        return self

    def _noticed(self, _signum: int) -> None:
        if not self._running_sigterm:
            self.outside = True

    def _wait(self) -> None:
        self._woken.wait(self.seconds)
        with self._lock:
            if self.ended or self.outside:
                return
            if self._main:
                self._sent = True
                signal.pthread_kill(threading.main_thread().ident, self.WAKE)
            else:
                self.expired = True
                self._cancel.set()

    def _expire(self, _signum, frame) -> None:
        """WAKE's handler, in the main thread (see the class)."""
        if self.ended or self.outside or self.expired:
            return
        if isinstance(sys.exc_info()[1], (KeyboardInterrupt, Interrupted)):  # an interrupt's clean-up runs
            self.outside = True
            return
        self.expired = True
        self._cancel.set()
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            self._running_sigterm = True
            try:
                handler(signal.SIGTERM, frame)
            finally:
                self._running_sigterm = False

    def __exit__(self, *_exc) -> None:
        """Waits out a send under way and takes its WAKE if it is still pending (an interrupt
        it raises then is dropped: the attempt is over), then puts back what it changed."""
        self.ended = True
        try:
            self._woken.set()
            with self._lock:
                pass
            if self._sent:
                time.sleep(0.01)  # a system call: the signal, if still pending, is taken at its end
        except KeyboardInterrupt:
            if not self.expired:
                raise
        finally:
            if self._main:
                signal.signal(self.WAKE, self._before)
            self._stack.close()


def _render(value: Any, ctx: dict) -> Any:
    if isinstance(value, dict):
        return {k: _render(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, ctx) for v in value]
    if not isinstance(value, str) or "{" not in value:
        return value
    return evaluate(value, ctx)


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, _Placeholder):
        return True
    if isinstance(value, dict):
        return any(_has_placeholder(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_placeholder(v) for v in value)
    return False


class _Runner:
    """Runs one runbook with resolved parameters in an environment; `notify` is called with
    each step outcome (the live table), `dry_run` plans without side effects or journal."""
    def __init__(self, project: Project, env: Environment, book: Runbook, params: dict,
                 yes: bool = False, notify: Notify | None = None, dry_run: bool = False):
        self.project, self.env, self.book, self.params = project, env, book, params
        self.yes, self.dry_run = yes, dry_run
        self._notify = notify or (lambda outcome: None)
        self.outputs: dict[str, dict] = {}
        self.secret_names = book.secrets()
        declared = {n for n, spec in book.parameters.items() if spec.get("secret")}
        self.mask = Masker(params[n] for n in declared if params.get(n) not in (None, jr.REDACTED))
        self.mask.add_environment(env)  # the secrets opsctl.yaml names (backup key, API key, …)
        for name in sorted(self.secret_names - declared):  # computed from a secret: a secret too
            if params.get(name) not in (None, jr.REDACTED):
                self.mask.add(str(params[name]))
        self.journal = None if dry_run else jr.new(project.root, self.mask)
        if self.journal:
            self._mirror(self.journal)
        self.steps: list[StepOutcome] = []
        self._late = ""  # the running step's note when its attempt finished after its timeout

    def _mirror(self, journal: jr.Journal) -> None:
        """A kubernetes environment's journals also go to its backup bucket (history.py)."""
        from opsctl.runbook import history

        store = history.for_env(self.project, self.env)
        if store is not None:
            journal.mirror = store.save

    def context(self) -> dict:
        """The template context: params, steps (outputs of finished steps; placeholders in a
        dry run), run (id) and env."""
        steps: Any = {k: {"outputs": v} for k, v in self.outputs.items()}
        if self.dry_run:
            steps = {s["id"]: steps.get(s["id"]) or {"outputs": _Placeholder(f"steps.{s['id']}.outputs")}
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

    def _shown(self, step: dict, inputs: dict) -> dict:
        """The inputs as output may show them: a value whose template uses a secret parameter
        is masked whole (whatever filter transformed it), the rest by the masker."""
        return self._shown_value(step.get("with") or {}, inputs)

    def _shown_value(self, source: Any, value: Any) -> Any:
        if isinstance(source, dict) and isinstance(value, dict):
            return {k: self._shown_value(source.get(k), v) for k, v in value.items()}
        if isinstance(source, list) and isinstance(value, list) and len(source) == len(value):
            return [self._shown_value(s, v) for s, v in zip(source, value)]
        if isinstance(source, str) and "{" in source and self.secret_names:
            with contextlib.suppress(jinja2.TemplateError):
                if template_refs(source)[1] & self.secret_names:
                    if isinstance(value, str):
                        self.mask.add(value)  # built from a secret: masked wherever it shows up
                    return jr.REDACTED
        return self.mask(value)

    def _record(self, outcome: StepOutcome, **extra) -> None:
        """Journal `outcome` and show it; an interrupt meanwhile waits until it is written
        (signals.deferred): the journal never loses what a step did to a Ctrl-C that came
        after it."""
        with deferred():
            self._write(outcome, **extra)

    def _write(self, outcome: StepOutcome, **extra) -> None:
        outcome = replace(outcome, detail=self.mask(outcome.detail), outputs=self.mask(outcome.outputs))
        self.steps.append(outcome)
        self._notify(outcome)
        if self.journal:
            try:
                self.journal.write("step", id=outcome.id, status=outcome.status, attempts=outcome.attempts,
                                   seconds=outcome.seconds, detail=outcome.detail, outputs=outcome.outputs, **extra)
            except OperationFailed as exc:  # a full disk: say what ran unrecorded and how to go on (breaker 34 F9)
                raise OperationFailed(
                    f"run {self.journal.run_id} stopped: {fault_text(exc)}; step '{outcome.id}' ended "
                    f"({outcome.status}) but is not recorded. Free space, then 'opsctl runbook run {self.book.name} "
                    f"--resume {self.journal.run_id}' goes on from there and runs '{outcome.id}' again") from None

    def _call(self, step: dict, inputs: dict) -> dict:
        """One attempt, run in this thread (see the module's docstring); returns once the
        action has ended. A timed-out attempt that raised fails with OperationFailed (retried
        as any failure); one that finished after its deadline stands, said in `_late`."""
        action = ACTIONS[step["action"]]
        ctx = Context(self.project, self.env, self.yes, mask=self.mask)
        if step.get("timeout") is None:
            return action(ctx, **inputs) or {}
        deadline = _Deadline(float(step["timeout"]), ctx.cancel)
        try:
            with deadline:
                outputs = action(ctx, **inputs) or {}
        except BaseException as exc:
            if not deadline.expired or deadline.outside:
                raise
            said = "" if isinstance(exc, KeyboardInterrupt) and not str(exc) else f": {exc}"
            raise OperationFailed(f"timed out after {step['timeout']}s{said}") from None
        if deadline.expired:
            self._late = f"finished after its timeout of {step['timeout']}s: its cancel came too late to stop it"
        return outputs

    def _misfits(self, step: dict, inputs: dict) -> list[str]:
        fn = ACTIONS[step["action"]]
        found = []
        for key, value in inputs.items():
            if _has_placeholder(value):
                continue
            why = misfit(fn, key, value)
            if why:
                found.append(f"with.{key}: action '{step['action']}' {why}")
        return found

    def _confine_paths(self, step: dict, inputs: dict) -> None:
        """The step's path arguments (code it runs, files it writes) inside the ops root
        (opsctl.runbook.paths); UsageError (exit 2) otherwise."""
        from opsctl.runbook.paths import confine, protected_for

        fn = ACTIONS[step["action"]]
        for kind, args in (("code", getattr(fn, "code_paths", ())), ("output", getattr(fn, "out_paths", ()))):
            for arg in args:
                value = inputs.get(arg)
                if value is None or _has_placeholder(value):
                    continue
                try:
                    confine(self.project.root, str(value), arg, kind, protected_for(self.env))
                except UsageError as exc:
                    raise UsageError(self.mask(f"step {step['id']}: {exc}")) from None

    def preflight(self, not_run: Collection[str] = ()) -> None:
        """Before any step runs: path arguments whose templates use no step output are
        rendered and confined now, and so are the arguments an action checks up front (its
        `check`: the deploy step's image, strategy, settings and load gate) of every step
        that will run (not a handler, not in `not_run`: done before or before --from-step; no
        `when`, or one that params and env make true), so a bad `-p` is refused before
        anything happens, in a dry run too."""
        ctx = self.context()
        for step in self.book.steps:
            fn = ACTIONS.get(step["action"])
            given = step.get("with") or {}
            args = [a for a in (*getattr(fn, "code_paths", ()), *getattr(fn, "out_paths", ())) if a in given]
            early = {}
            for arg in args:
                source = given[arg]
                with contextlib.suppress(jinja2.TemplateError):
                    if isinstance(source, str) and not template_refs(source)[2] and "steps" not in template_refs(source)[0]:
                        early[arg] = _render(source, ctx)
            self._confine_paths(step, early)
        handlers = self.book.handlers()
        for step in self.book.steps:
            check = getattr(ACTIONS.get(step["action"]), "check", None)
            if check is not None and step["id"] not in handlers and step["id"] not in not_run:
                self._check_early(step, check, {**ctx, "steps": {}})

    def _check_early(self, step: dict, check: Callable[..., None], ctx: dict) -> None:
        """`check` over the step's arguments that `ctx` (no step outputs) renders to values
        that fit the action; skipped when its `when` is false, or depends on a step's outputs
        (the step may never run). UsageError naming the step."""
        fn = ACTIONS[step["action"]]
        try:
            if "when" in step and not condition(step["when"], ctx):
                return
        except (jinja2.TemplateError, TypeError, ValueError):
            return
        known = {}
        for key, source in (step.get("with") or {}).items():
            with contextlib.suppress(jinja2.TemplateError, TypeError, ValueError):
                value = _render(source, ctx)
                if not _has_placeholder(value) and not misfit(fn, key, value):
                    known[key] = value
        try:
            check(Context(self.project, self.env, self.yes, mask=self.mask), **known)
        except UsageError as exc:
            raise UsageError(self.mask(f"step {step['id']}: {exc}")) from None

    def run_step(self, step: dict) -> bool:
        """Run (or plan) one step: condition, rendering, type check, approval, attempts.
        Records the outcome; returns False when the step failed. Raises UsageError when
        approval is refused."""
        ctx = self.context()
        try:
            if "when" in step and not condition(step["when"], ctx):
                self._record(StepOutcome(step["id"], StepStatus.SKIPPED, detail=f"when: {step['when']}"))
                return True
            inputs = _render(step.get("with", {}), ctx)
            approval = step.get("approval")
            wanted = approval and condition(approval.get("when", True), ctx)
            question = str(_render(approval["message"], ctx)) if wanted else ""
        except (jinja2.TemplateError, TypeError, ValueError) as exc:  # a filter given what it can't take
            self._record(StepOutcome(step["id"], StepStatus.FAILED, detail=f"template: {exc}"))
            return False
        self._confine_paths(step, inputs)
        misfits = self._misfits(step, inputs)
        shown = self._shown(step, inputs)  # also registers values derived from secrets with the masker
        if self.dry_run:
            # its arguments as JSON: what a person reads and copies (a dict's repr was Python's)
            detail = f"{step['action']} {json.dumps(shown, default=str)}" + (" (needs approval)" if approval else "")
            if misfits:
                detail += "; " + "; ".join(misfits)
            self._record(StepOutcome(step["id"], StepStatus.PLANNED, detail=detail))
            return True
        if misfits:
            self._record(StepOutcome(step["id"], StepStatus.FAILED, detail="; ".join(misfits)), inputs=shown)
            return False
        if wanted:
            from opsctl.approval import confirm

            try:
                confirm(self.mask(question), self.yes)
            except UsageError as exc:
                raise UsageError(self.mask(str(exc))) from None
        retries = step.get("retries", {})
        began, attempts = time.monotonic(), 0
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(retries.get("count", 0) + 1),
            wait=tenacity.wait_exponential(multiplier=retries.get("backoff", 1.0), exp_base=2, min=0),
            retry=tenacity.retry_if_not_exception_type((UsageError, Interrupted, KeyboardInterrupt)),
            reraise=True)
        outputs: dict | None = None  # set once an attempt's action has returned
        self._late = ""
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    outputs = self._call(step, inputs)
        except UsageError as exc:
            raise UsageError(self.mask(str(exc))) from None
        except (KeyboardInterrupt, Interrupted) as exc:
            # Ctrl-C or SIGTERM, taken by the step's core (cleaned up as its command does) or
            # between attempts: journaled with what the step said, then the run stops. One that
            # came once the action had returned leaves its success standing: what it did is done
            if outputs is None:
                self._record(StepOutcome(step["id"], StepStatus.INTERRUPTED, attempts,
                                         round(time.monotonic() - began, 2), str(exc) or INTERRUPTED_DETAIL,
                                         getattr(exc, "outputs", None) or {}), inputs=shown)
            else:
                self._succeeded(step, outputs, attempts, began, shown)
            raise
        except Exception as exc:  # any failure of the action is the step's failure
            self._record(StepOutcome(step["id"], StepStatus.FAILED, attempts, round(time.monotonic() - began, 2),
                                     str(exc) or type(exc).__name__), inputs=shown)
            return False
        self._succeeded(step, outputs, attempts, began, shown)
        return True

    def _succeeded(self, step: dict, outputs: dict, attempts: int, began: float, shown: dict) -> None:
        self.outputs[step["id"]] = outputs
        # an action may sum its outcome up in outputs["summary"] (notify: where the message went)
        summary = outputs.get("summary") if isinstance(outputs, dict) else None
        notes = ["succeeded on attempt %d" % attempts if attempts > 1 else "", self._late,
                 summary if isinstance(summary, str) else ""]
        self._record(StepOutcome(step["id"], StepStatus.OK, attempts, round(time.monotonic() - began, 2),
                                 "; ".join(n for n in notes if n), outputs),
                     inputs=shown)

    def execute(self, done: dict[str, dict] | None = None, start_at: str | None = None) -> RunResult:
        """Run the steps (from `start_at`, skipping those in `done`). SIGTERM (CI cancelling
        the job) is taken as Ctrl-C: the running step's core takes it (its shell processes
        stopped, its drill torn down), the step is journaled `interrupted`, and the run ends
        without an `end` record, so `--resume` can continue it."""
        from opsctl.signals import sigterm_as_interrupt

        ids = [s["id"] for s in self.book.steps]
        not_run = (set(done or ()) | set(ids[:ids.index(start_at)] if start_at in ids else ())) - {start_at}
        with masking_logs(self.mask), sigterm_as_interrupt():
            self.preflight(not_run)
            try:
                return self._execute(done, start_at)
            except (KeyboardInterrupt, Interrupted) as exc:
                raise self._interrupted(exc) from None

    def _interrupted(self, exc: BaseException) -> BaseException:
        """What an interrupted run ends on: Interrupted (exit 130) naming the run, the step it
        stopped at and the command that goes on (breaker 66 G6: "interrupted", and the run id
        had to be looked up in the history); the interrupt as it came without a journal."""
        if not self.journal:
            return exc
        at = next((o.id for o in reversed(self.steps) if o.status == StepStatus.INTERRUPTED), None)
        run_id = self.journal.run_id
        return Interrupted(f"{self.book.ref} interrupted{f' at step {at!r}' if at else ''} (run {run_id}); "
                           f"'opsctl runbook run {self.book.name} --resume {run_id}' goes on from there")

    def _execute(self, done: dict[str, dict] | None, start_at: str | None) -> RunResult:
        done = done or {}
        handlers = self.book.handlers()
        by_id = {s["id"]: s for s in self.book.steps}
        if self.journal and not done:
            params = {k: jr.REDACTED if k in self.secret_names else v for k, v in self.params.items()}
            self.journal.write("run", runbook=self.book.name, version=self.book.version, env=self.env.name,
                               hash=digest(self.book.path), params=params)
        status = RunStatus.SUCCEEDED
        started = start_at is None
        for step in self.book.steps:
            sid = step["id"]
            started = started or sid == start_at
            if sid in handlers:
                continue
            if not started or (sid in done and start_at != sid):
                if sid in done:
                    self.outputs[sid] = done[sid]
                    self.steps.append(StepOutcome(sid, StepStatus.DONE_BEFORE, outputs=self.mask(done[sid])))
                    self._notify(self.steps[-1])
                continue
            try:
                if self.run_step(step):
                    continue
            except UsageError as exc:
                # refused before anything ran: bad input (exit 2, nothing done). Once a step did
                # its work, a step that can't take its input is a failed step, routed like any
                # other, so its alert is sent (breaker 28 F3: a config without retention ended the
                # nightly at its prune step, exit 2, no alert, its later steps never run)
                if not done and not any(o.status == StepStatus.OK for o in self.steps):
                    if self.journal:  # journaled as refused with why, never listed as "interrupted" (brk42 R16)
                        try:
                            self.journal.write("end", status=REFUSED, step=sid, reason=self.mask(str(exc)))
                        except OperationFailed:  # a full disk: the refusal is still what is said
                            pass
                    raise
                self._record(StepOutcome(sid, StepStatus.FAILED, detail=str(exc)))
            route = step.get("on_failure", "abort")
            if route == "continue":
                if status == RunStatus.SUCCEEDED:
                    status = RunStatus.SUCCEEDED_WITH_FAILURES
                continue
            targets = route if isinstance(route, list) else []
            for handler in targets:
                if handler == CONTINUE:
                    continue
                try:
                    self.run_step(by_id[handler])
                except UsageError as exc:  # a handler runs after a failure: its refusal is its own failure
                    self._record(StepOutcome(handler, StepStatus.FAILED, detail=str(exc)))
            status = RunStatus.FAILED
            if targets and targets[-1] == CONTINUE:  # [alert, continue]: the rest still runs; the run failed
                continue
            break
        if self.journal:
            self.journal.write("end", status=status)
        return RunResult(self.journal.run_id if self.journal else None, self.book.ref,
                         RunStatus.PLANNED if self.dry_run else status, self.steps)


def resume(project: Project, env: Environment, book: Runbook, run_id: str, yes: bool,
           notify: Notify | None, from_step: str | None, given: dict | None = None) -> RunResult:
    """Continue run `run_id` of `book`; secret parameters are asked for again (-p)."""
    import os

    from opsctl.runbook.model import default_value, env_var, given_from_environment, given_value

    local = jr.runs_dir(project.root) / f"{jr.check_run_id(run_id)}.jsonl"
    if not local.exists() and env.platform == "kubernetes":  # a run from CI or a CronJob
        from opsctl.runbook import history

        history.BucketHistory(project, env).fetch(run_id, local)
    records = jr.read(project.root, run_id)
    head = next((r for r in records if r["type"] == "run"), None)
    if head is None:  # its first line cut short by a crash, or edited: what ran is not known
        raise UsageError(f"run {run_id}'s journal ({local}) has no readable start record, so what it ran can't "
                         "be told; it can't be resumed: start a new run")
    if head["runbook"] != book.name or head["version"] != book.version:
        raise UsageError(f"run {run_id} is not a run of {book.ref}")
    if head["hash"] != digest(locate(project.root, book.ref)):
        raise UsageError(f"{book.ref} changed since run {run_id}; resume needs the very same runbook")
    if from_step and from_step not in {s["id"] for s in book.steps}:
        raise UsageError(f"--from-step {from_step}: {book.ref} has no such step")
    done = {r["id"]: r.get("outputs", {}) for r in records if r["type"] == "step" and r["status"] in (StepStatus.OK, StepStatus.SKIPPED)}
    params = dict(head["params"])
    secrets = book.secrets()
    for name, spec in book.parameters.items():  # secrets are never journaled: ask for them again
        if name not in secrets or params.get(name) != jr.REDACTED:
            continue
        given = given_from_environment(book, dict(given or {}), os.environ)
        if name in given:
            params[name] = given_value(book.ref, name, spec, given[name], True)
        elif not spec.get("secret") and isinstance(spec.get("default"), str):  # computed from a secret: again
            params[name] = default_value(book, name, params)
        else:
            raise UsageError(f"run {run_id} had secret parameter '{name}'; set {env_var(name)} again")
    runner = _Runner(project, env, book, params, yes, notify)
    runner.journal = jr.Journal(local, runner.mask)
    runner._mirror(runner.journal)
    runner.journal.write("resume", from_step=from_step, done=sorted(done))
    return runner.execute(done, from_step)


def run(project: Project, env: Environment, ref: str, given: Mapping[str, str] | Sequence[str], *, yes: bool = False,
        dry_run: bool = False, resume_id: str | None = None, from_step: str | None = None,
        junit: str | None = None, view: Callable[[str], Any] | None = None,
        env_vars: dict[str, str] | None = None) -> RunResult:
    """`opsctl runbook run` as one operation: load and validate `ref` (NAME or NAME@N), type
    the parameters (`given` from -p: {NAME: VALUE}, or the `-p` texts "NAME=VALUE", each
    parameter once (model.parse_given); then OPSCTL_PARAM_<NAME> from `env_vars`, then the
    defaults), run, resume (`resume_id`) or plan (`dry_run`) it, and write the JUnit report.

    `view(title)` is a context manager yielding the notify callback (the live step table).
    Raises UsageError (exit 2) before any step runs for a bad runbook, parameter or option.
    """
    import logging
    import os

    from opsctl.runbook import catalog, report
    from opsctl.runbook.model import env_var, parse_given, resolve_params

    from opsctl.files import report_path

    given = dict(given) if isinstance(given, Mapping) else parse_given(given)
    # checked before any step: an empty one (an unset CI variable) wrote no report, and a
    # folder or an unwritable place failed only after the whole run
    junit_path = report_path(junit, "--junit") if junit is not None else None
    book = catalog.load(project.root, ref, ACTIONS)
    if resume_id is not None:  # "" (an unset $RUN_ID) started a fresh run that repeated every step
        jr.check_run_id(resume_id)
        if dry_run:  # a resume's preview ran the remaining steps for real (reviewer 39 R1)
            raise UsageError("--dry-run plans a new run; it does not combine with --resume (run "
                             "'opsctl runbook history --run ID' to see where that run stopped)")
    if from_step is not None and (resume_id is None or not from_step.strip()):
        raise UsageError("--from-step STEP goes with --resume RUN_ID and names a step of the runbook")
    on_argv = sorted(set(given) & book.secrets())
    if on_argv:
        logging.getLogger("opsctl.runbook").warning(
            "parameter '%s' is secret: set %s instead of -p, a command line is readable by every local user",
            on_argv[0], env_var(on_argv[0]))
    env_vars = os.environ if env_vars is None else env_vars
    params = None if resume_id else resolve_params(book, given, env_vars)
    title = f"{book.ref} on {env.name}" + (" (dry run)" if dry_run else "")
    with (view(title) if view else contextlib.nullcontext(None)) as notify:
        if resume_id:
            result = resume(project, env, book, resume_id, yes, notify, from_step, given)
        else:
            result = _Runner(project, env, book, params, yes, notify, dry_run).execute()
    if junit_path is not None:
        report.write_junit(result, str(junit_path))
    return result
