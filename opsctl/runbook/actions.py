"""What a runbook step can do: the same core functions the CLI commands call, plus a few
primitives (wait, approve, http, shell, notify). There is no second implementation of any
capability here: each action adapts a step's `with:` to a core call and its result to
outputs that later steps can read.

An action is `fn(ctx, **with)`; `runbook validate` checks a step's `with:` against its
signature. Arguments named in `code_args` are code (shell text): no template may reach
them, and `env:` is the way to pass data.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pathlib import Path

from opsctl import httpclient
from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError
from opsctl.output import to_jsonable
from opsctl.runbook.paths import confine, protected_for
from opsctl.signals import deferred


def _no_mask(value: Any) -> Any:
    return value


@dataclass
class Context:
    """What an action gets besides its arguments. An action runs in the runbook's own thread
    (the main one from the CLI), so Ctrl-C and SIGTERM reach its core as they reach its command
    (opsctl.runbook.engine). `cancel` is set when the step timed out (which also interrupts
    the action as SIGTERM does, in the main thread): actions that wait poll it and stop (the
    shell action kills its process group). `mask` hides the run's secrets in text an action
    sends out itself."""

    project: Project
    env: Environment
    yes: bool
    cancel: threading.Event = field(default_factory=threading.Event)
    mask: Callable[[Any], Any] = _no_mask


Action = Callable[..., dict]
ACTIONS: dict[str, Action] = {}


class StepInterrupted(KeyboardInterrupt):
    """An action's core stopped by Ctrl-C or SIGTERM, with what it reported: its message (the
    step's detail) and `outputs` (the journal's record of the interrupted step). Still a
    KeyboardInterrupt: the run stops as a Ctrl-C stops it."""

    def __init__(self, message: str, outputs: dict):
        super().__init__(message)
        self.outputs = outputs


def action(name: str, code_args: tuple[str, ...] = (), code_env: tuple[str, ...] = (),
           code_paths: tuple[str, ...] = (), out_paths: tuple[str, ...] = (),
           check: Callable[..., None] | None = None) -> Callable[[Action], Action]:
    """Register `fn` as the action `name`; `code_args` are its arguments that are code (no
    template may reach them), `code_env` its mappings of environment variables (a template
    may not set one the shell or loader reads as code), `code_paths` its arguments naming
    a file it executes and `out_paths` those naming a file it writes (both confined to the
    ops root: opsctl.runbook.paths). `check(ctx, **some_with)` refuses (UsageError) what the
    core would refuse of the arguments known before the run starts (those that use no step
    output; the others are left out): the engine calls it before any step runs."""
    def register(fn: Action) -> Action:
        fn.code_args = code_args  # type: ignore[attr-defined]
        fn.code_env = code_env  # type: ignore[attr-defined]
        fn.code_paths = code_paths  # type: ignore[attr-defined]
        fn.out_paths = out_paths  # type: ignore[attr-defined]
        fn.check = check  # type: ignore[attr-defined]
        ACTIONS[name] = fn
        return fn
    return register


def _driver(ctx: Context):
    from opsctl.deploy.drivers import driver_for

    return driver_for(ctx.project, ctx.env)


def _record(record) -> dict:
    doc = to_jsonable(record)
    return {k: doc[k] for k in ("id", "version", "to_color", "from_color", "from_version", "outcome", "reason")}


def _settings(values: dict | None) -> list[str]:
    return [f"{k}={v}" for k, v in (values or {}).items()]


def _check_deploy(ctx: Context, image: str | None = None, strategy: str | None = None, set: dict | None = None,
                  load_gate: str | None = None, load_gate_duration: str = "10s", **_known: Any) -> None:
    """The deploy step's inputs, through the check `opsctl deploy` and its dry run make
    (operation.check), when its image is known before the run."""
    from opsctl.deploy import operation

    if image is not None:
        operation.check(ctx.project, ctx.env.name, image, strategy=strategy, settings=_settings(set),
                        load_gate=load_gate, load_gate_duration=load_gate_duration)


def _check_rollback(ctx: Context, to: str | None = None, **_known: Any) -> None:
    """The rollback step's `to`, as `opsctl rollback --to` checks it."""
    from opsctl.deploy import reference

    if to is not None:
        reference.version(to, "--to")


@action("deploy", check=_check_deploy)
def deploy(ctx: Context, image: str, strategy: str | None = None, set: dict | None = None,
           auto_promote: bool = True, analysis: bool = True, backup: bool = False, load_gate: str | None = None,
           load_gate_duration: str = "10s", wait: bool = True) -> dict:
    """`opsctl deploy` as a step, with the same options: a blue-green (or rolling) deploy of
    `image` (NAME:TAG) with `set` as worker settings, an optional pre-deploy database backup
    and a load gate (an SLO judged on the preview, for `load_gate_duration`); waits out the
    scale-down unless `wait` is false. Its inputs known before the run (not from a step's
    outputs) are checked before any step runs. Outputs: the deploy record (id, version,
    to_color, from_color, from_version, outcome, reason)."""
    from opsctl.deploy import operation

    result = operation.deploy(ctx.project, ctx.env.name, image, strategy=strategy,
                              settings=_settings(set), auto_promote=auto_promote,
                              analysis=analysis, backup=backup, load_gate=load_gate,
                              load_gate_duration=load_gate_duration, wait=wait)
    return _record(result.record)


@action("promote")
def promote(ctx: Context, wait: bool = True) -> dict:
    """Promote the preview color of a deploy started with auto_promote false; `wait` as for
    `deploy` (wait out the scale-down delay, then stop the old color). Outputs: the deploy record."""
    from opsctl.deploy import operation

    return _record(operation.promote(ctx.project, ctx.env.name, wait=wait).record)


@action("rollback", check=_check_rollback)
def rollback(ctx: Context, to: str | None = None, wait: bool = True) -> dict:
    """Switch back to the previous color, or to version `to`; `wait` as `opsctl rollback
    --wait/--no-wait` (wait out the scale-down delay, then stop the other color; false leaves
    it to the delay or a `scale-down` step). Outputs: the deploy record."""
    from opsctl.deploy import operation

    return _record(operation.rollback(ctx.project, ctx.env.name, to, wait=wait).record)


@action("deploy-status")
def deploy_status(ctx: Context) -> dict:
    """What serves now. Outputs: active_color, version (of the active color), deploys (the last
    5 records)."""
    from opsctl.deploy import operation

    doc = to_jsonable(operation.status(ctx.project, ctx.env.name, last=5))
    active = doc["active_color"]
    return {"active_color": active, "version": doc["colors"][active]["version"] if active else None,
            "deploys": doc["deploys"]}


def _check_wait(ctx: Context, seconds: float | None = None, **_known: Any) -> None:
    """`seconds` finite and not negative, as the wait action takes it."""
    import math

    if seconds is not None and (not math.isfinite(float(seconds)) or seconds < 0):
        raise UsageError(f"seconds: {seconds}; wait takes a finite number of seconds, 0 or more")


@action("wait", check=_check_wait)
def wait(ctx: Context, seconds: float) -> dict:
    """Sleep `seconds` (finite, not negative); a timed-out or interrupted step stops waiting
    at once."""
    _check_wait(ctx, seconds)
    if ctx.cancel.wait(float(seconds)):
        raise OperationFailed("wait cancelled")
    return {"waited": float(seconds)}


@action("approve")
def approve(ctx: Context, message: str) -> dict:
    """Ask for approval of `message` (opsctl.approval.confirm): --yes or a person at a
    terminal. Outputs: approved. Ctrl-C at the prompt interrupts the run, as at a step's own
    `approval:` prompt: click turns it into Abort, which failed the step and ran its
    on_failure handlers (breaker 66 G1: a page for a person who only pressed Ctrl-C)."""
    import click

    from opsctl.approval import confirm

    try:
        confirm(ctx.mask(message), ctx.yes)
    except click.exceptions.Abort:
        raise KeyboardInterrupt("interrupted at the approval prompt") from None
    return {"approved": True}


@action("http")
def http(ctx: Context, url: str, method: str = "GET", expect_status: int | list = 200,
         json: Any = None, headers: dict | None = None, timeout: float = 30) -> dict:
    """One HTTP request; fails unless the status is `expect_status` (one or a list). `timeout`
    in seconds. Outputs: status, body (JSON, or the first 2000 characters of text)."""
    resp = httpclient.request(method, url, json=json, headers=headers, timeout=timeout)
    wanted = expect_status if isinstance(expect_status, list) else [expect_status]
    if resp.status_code not in wanted:
        raise OperationFailed(f"{method} {url} answered {resp.status_code}, expected {wanted}")
    try:
        body: Any = resp.json()
    except ValueError:
        body = ctx.mask(resp.text)[:2000]  # masked before the cut: no piece of a secret survives it
    return {"status": resp.status_code, "body": body}


@action("shell", code_args=("command",), code_env=("env",))
def shell(ctx: Context, command: str, env: dict | None = None, timeout: float | None = None,
          pass_env: list | None = None) -> dict:
    """Run `command` with /bin/sh in the ops root, in its own process group.

    `command` is code: values reach it as environment variables (`env:`), never pasted in.
    The environment's secret variables (opsctl.runbook.secrets.environment_secret_names:
    the backup key, the worker API key, database URLs, AWS credentials…) are not passed
    on, except those the step names in `pass_env`; their values are masked in its output.
    On `timeout` (seconds) or when the step is cancelled, every process of the step gets
    SIGTERM, then SIGKILL after 2 s, and the action returns only once all are gone, so a
    retry never overlaps the attempt before it. "Every process" includes those that left
    the group (a `setsid` daemon, a double fork): opsctl is a child subreaper while the
    step runs (opsctl.runbook.processes). A step that ends normally has what it left in
    the background stopped too: nothing a step starts outlives it (a long-lived service
    belongs to a service manager, not to a runbook step).
    Outputs: stdout (stripped), exit_code, stopped_background_processes (how many
    processes the command left running were stopped). Raises OperationFailed on a
    non-zero exit.
    """
    from opsctl.runbook.secrets import environment_secret_names

    withheld = environment_secret_names(ctx.env, os.environ) - set(pass_env or ())
    variables = {**{k: v for k, v in os.environ.items()  # parameters come through env:, not OPSCTL_PARAM_*
                    if k not in withheld and (not k.startswith("OPSCTL_PARAM_") or k in (pass_env or ()))},
                 **{str(k): "" if v is None else str(v) for k, v in (env or {}).items()}}
    from opsctl.runbook.processes import StepProcesses, subreaper

    step = StepProcesses()
    with subreaper():
        step.starting()
        proc = None
        try:
            # the shell and the step's record of it together: a command that signals opsctl at
            # once (or a Ctrl-C then) was taken before the clean-up below knew of the shell,
            # which outlived the run
            with deferred():
                proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, cwd=ctx.project.root,
                                        env=step.env(variables), start_new_session=True)
                step.started(proc)
            deadline = time.monotonic() + float(timeout) if timeout else None
            while True:
                try:
                    out, err = proc.communicate(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    step.scan(every=0.5)  # remember descendants whose parent may exit before the end
                    if deadline is not None and time.monotonic() >= deadline:
                        _stop(step, proc)
                        raise OperationFailed(f"timed out after {timeout}s; its processes were stopped") from None
                    if ctx.cancel.is_set():
                        _stop(step, proc)
                        raise OperationFailed("cancelled; its processes were stopped") from None
        except BaseException:
            if proc is not None:
                _stop(step, proc)
            raise
        finally:
            step.finished()
        leftovers = step.stop()  # what the command left running in the background ends with the step
    if proc.returncode != 0:
        raise OperationFailed(f"exit {proc.returncode}: {ctx.mask((err or out).strip())[-500:]}")  # mask, then cut
    return {"stdout": out.strip(), "exit_code": proc.returncode, "stopped_background_processes": leftovers}


def _stop(step, proc: subprocess.Popen, grace: float = 2.0) -> None:
    """Stop every process of the step (opsctl.runbook.processes), then collect the shell's
    output so its pipes are closed. Runs to its end: an interrupt meanwhile (a second Ctrl-C,
    the step's timeout) waits for it (signals.deferred), where one cut the stop short before
    its SIGKILL and the step's processes outlived the run (breaker 66 G5)."""
    with deferred():
        step.stop(grace)
        try:
            proc.communicate(timeout=5)
        except (subprocess.TimeoutExpired, ValueError):
            pass


LEVELS = {"info": "OK", "warning": "WARNING", "critical": "CRITICAL"}  # notify's level: the alert status


def _check_notify(ctx: Context, level: str | None = None, sinks: list | str | None = None, **_known: Any) -> None:
    """`level` one of LEVELS; each of `sinks` the name of one of the environment's health.sinks
    (a mistyped or empty name sent the message to no one, and the step succeeded: reviewer 39 R10)."""
    if level is not None and level not in LEVELS:
        raise UsageError(f"level: {level!r}; use info, warning or critical")
    wanted = _names(sinks, "sinks", "the names of health.sinks to send to, or leave sinks out for all of them")
    known = [s.name for s in ctx.env.health.sinks]
    unknown = [n for n in wanted or [] if n not in known]
    if unknown:
        have = f"its sinks are {', '.join(known)}" if known else "it has no health.sinks in opsctl.yaml"
        raise UsageError(f"sinks: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a sink "
                         f"of environment {ctx.env.name}; {have}")


@action("notify", check=_check_notify)
def notify(ctx: Context, message: str, level: str = "info", sinks: list | str | None = None) -> dict:
    """A line in the log, and a message to the environment's alert sinks (health.sinks),
    all of them or those named. A sink that fails is reported in the outputs and in the
    step's detail (`summary`: "delivered to none of 2 sinks: slack: HTTP 500; ..."), not
    raised: a notification must not turn a good run into a failed one. Except a `critical`
    one that reached none of its sinks: nobody was paged, so the step fails (exit 1, the
    failures in its detail) rather than show `ok` (brk42 R12)."""
    import datetime as dt
    import logging

    from opsctl.health.alerting import Alert
    from opsctl.health.sinks import build

    _check_notify(ctx, level, sinks)
    message = ctx.mask(message)
    status = LEVELS[level]
    logging.getLogger("opsctl.runbook").log(logging.INFO if level == "info" else logging.WARNING, message)
    wanted = _names(sinks, "sinks")
    chosen = [s for s in ctx.env.health.sinks if wanted is None or s.name in wanted]
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    alert = Alert(event="trigger", env=ctx.env.name, check="runbook", kind="runbook", status=status,
                  message=message, value=None, unit="", started_at=now, at=now, failures=0)
    sent, failed = [], {}
    for settings in chosen:
        sender = build(settings)
        try:
            sender.send(alert)
            sent.append(sender.name)
        except Exception as exc:  # reported, never raised (see docstring)
            failed[sender.name] = sender.scrub(str(exc)) or type(exc).__name__
    return {"message": message, "sent_to": sent, "failed": failed, "summary": _delivery(level, len(chosen), sent, failed)}


def _delivery(level: str, count: int, sent: list, failed: dict) -> str:
    """notify's one-line account of where the message went (the step's detail); a WARNING
    log line when a sink failed, and OperationFailed when a critical message reached none."""
    import logging

    from opsctl.errors import OperationFailed

    if not count:
        return "no health.sinks to send to: logged only"
    errors = "; ".join(f"{name}: {why}" for name, why in failed.items())
    if not sent:
        line = f"delivered to none of {count} sink{'s' if count != 1 else ''}: {errors}"
        if level == "critical":
            raise OperationFailed(f"critical message {line}")
        logging.getLogger("opsctl.runbook").warning(line)
        return line
    if failed:
        line = f"delivered to {len(sent)} of {count} sinks ({', '.join(sent)}); not to {errors}"
        logging.getLogger("opsctl.runbook").warning(line)
        return line
    return f"delivered to {', '.join(sent)}"


def _out(ctx: Context, value: str | None, arg: str) -> Path | None:
    """Output path `value` confined to the ops root (`confine`: an empty one is refused, never
    taken for "no report": reviewer 39 R9); None when not given."""
    return confine(ctx.project.root, value, arg, "output", protected_for(ctx.env)) if value is not None else None


FAIL_ON = ("critical", "warning", "unknown", "never")  # health's fail_on: the mildest status that fails the step


def _names(value: list | str | None, arg: str,
           remedy: str = "give names or kinds (a list, or comma-separated), or leave it out") -> list | None:
    """`check`/`sinks` as a list of names: a list, or a comma-separated string; None when not
    given. UsageError for an empty string or list, or an empty name in one: `check: ""` (a
    parameter left empty) swept every check, where `opsctl health --check ""` is refused
    (reviewer 39 R10)."""
    if value is None:
        return None
    names = [str(n).strip() for n in (value.split(",") if isinstance(value, str) else value)]
    if not names or not all(names):
        raise UsageError(f"{arg}: {value!r} is empty or names nothing between its commas; {remedy}")
    return names


def _skipped(value: list | str | None) -> list | None:
    """`skip` as a list of names; empty names left out, and nothing (None) when none is left.
    Unlike `check`, an empty `skip` has one reading, "leave nothing out", and it is what a
    runbook's `skip: "{{ params.skip }}"` renders with the parameter's default "" (the shipped
    health-sweep) or `"backup,{{ params.health_skip }}"` with it empty (breaker 43 S3: both
    were refused, and the scheduled sweep never ran)."""
    if value is None:
        return None
    names = [str(n).strip() for n in (value.split(",") if isinstance(value, str) else value)]
    return [n for n in names if n] or None


def _check_health(ctx: Context, check: list | str | None = None, skip: list | str | None = None,
                  fail_on: str | None = None, **_known: Any) -> None:
    """`fail_on` one of FAIL_ON, and each `check`/`skip` pattern matching a check of the
    environment, as the sweep's own plan refuses them (opsctl.health.checks.plan). The
    patterns are checked when the environment's endpoints are known (a local platform that
    is down now may be started by an earlier step: the sweep then says it)."""
    if fail_on is not None and fail_on not in FAIL_ON:
        raise UsageError(f"fail_on: {fail_on!r}; use one of {', '.join(FAIL_ON)}")
    only, leave = _names(check, "check"), _skipped(skip)
    if not only and not leave:
        return
    from opsctl.endpoints import resolve
    from opsctl.health import checks

    try:
        endpoints = resolve(ctx.project, ctx.env)
    except UsageError:
        return
    checks.plan(ctx.project, ctx.env, endpoints, only, leave)


@action("health", out_paths=("junit", "history"), check=_check_health)
def health(ctx: Context, check: list | str | None = None, skip: list | str | None = None,
           fail_on: str = "critical", junit: str | None = None, history: str | None = None) -> dict:
    """One sweep (`opsctl health --mode once`); fails the step at `fail_on` or worse.
    `check`/`skip` (the command's --check/--skip) take names or kinds, as a list or a comma-separated string; `junit` and
    `history` as the command's --junit and --history (the same core call writes them), paths
    inside the ops root."""
    from opsctl.health import monitor
    from opsctl.health.model import Status

    levels = {"critical": {Status.CRITICAL}, "warning": {Status.CRITICAL, Status.WARNING},
              "unknown": {Status.CRITICAL, Status.WARNING, Status.UNKNOWN}, "never": set()}
    _check_health(ctx, fail_on=fail_on)
    result = monitor.run(ctx.project, ctx.env, "once", only=_names(check, "check"), skip=_skipped(skip),
                         junit=_out(ctx, junit, "junit"), history=_out(ctx, history, "history")).last
    bad = [r for r in result.results if r.status in levels[fail_on]]
    if bad:
        raise OperationFailed(f"health {result.status.name}: " + "; ".join(f"{r.name}: {r.message}" for r in bad))
    return {"status": result.status.name, "checks": {r.name: r.status.name for r in result.results}}


def _check_backup(ctx: Context, type: str | None = None, compress_level: int | None = None,
                  **_known: Any) -> None:
    """`type` and `compress_level` as `opsctl backup create` refuses them (opsctl.backup.create)."""
    from opsctl.backup.create import check_level, components_for

    if type is not None:
        components_for(type, ctx.env)
    if compress_level is not None:
        check_level(compress_level)


@action("backup", check=_check_backup)
def backup(ctx: Context, type: str = "full", label: str | None = None, compress_level: int | None = None,
           no_encrypt: bool = False) -> dict:
    """`opsctl backup create` as a step: a backup (`type`: full, db, redis, files, ...) with an
    optional label; `no_encrypt` stores it unencrypted. Outputs: id, components, raw_bytes,
    stored_bytes, ratio, seconds, pruned, prune_failed (why retention after it failed, or
    None: the backup stands and the step succeeds; a `prune` step fails on it), damaged_kept
    (damaged backups its retention left for a person: a `prune` step removes them)."""
    from opsctl.backup.create import create

    result = to_jsonable(create(ctx.project, ctx.env, type, compress_level, not no_encrypt, label=label))
    return {k: result[k] for k in ("id", "components", "raw_bytes", "stored_bytes", "ratio", "seconds", "pruned",
                                   "prune_failed", "damaged_kept")}


def _check_verify(ctx: Context, id: str | None = None, **_known: Any) -> None:
    """`id` a backup id (opsctl.backup.record.check_id), as `opsctl backup verify` takes it."""
    from opsctl.backup.record import check_id

    if id is not None:
        check_id(id)


@action("verify", check=_check_verify)
def verify(ctx: Context, id: str, restore_test: bool = False) -> dict:
    """Verify backup `id` (checksums, MAC; with restore_test a restore into a scratch
    database). Fails when it does not verify. Outputs: the verify result."""
    from opsctl.backup.verify import verify as check

    result = check(ctx.project, ctx.env, id, restore_test)
    if not result.ok:
        raise OperationFailed(f"backup {id} failed verification")
    return to_jsonable(result)


def _check_base_backup(ctx: Context, kind: str | None = None, **_known: Any) -> None:
    """`kind` one of the base backup kinds (opsctl.pitr.base.check_kind)."""
    from opsctl.pitr.base import check_kind

    if kind is not None:
        check_kind(kind)


@action("base-backup", check=_check_base_backup)
def base_backup(ctx: Context, kind: str = "auto") -> dict:
    """`opsctl backup base` as a step (the same core operation, opsctl.pitr.ops.create_base): a
    physical base backup of the embedded platform's PostgreSQL, `kind` full, incremental, or
    auto (incremental on the newest base backup a restore can use while the full one under it
    is under a week old, else full: opsctl.pitr.base.take). Outputs: id, kind, parent,
    stored_bytes, seconds."""
    from opsctl.pitr.ops import create_base

    b = create_base(ctx.project, ctx.env, kind)
    return {"id": b.id, "kind": b.kind, "parent": b.parent, "stored_bytes": b.stored_bytes, "seconds": b.seconds}


@action("verify-chain")
def verify_chain(ctx: Context, timeline: int | None = None) -> dict:
    """`opsctl backup verify-chain` as a step (the same core operation, opsctl.pitr.ops.verify_chain):
    every base backup and WAL object of the embedded platform's cluster read back and checked,
    and the base backups found damaged kept in the repository for the `wal archive` health
    check and the next incremental base backup (which go by listing). Fails when the chain is
    broken. `timeline`: the windows along that timeline's history. Outputs: ok, base_backups
    (count), checked (objects read), broken_base_backups, newest_restorable, problems."""
    from opsctl.pitr.ops import verify_chain as check

    report = check(ctx.project, ctx.env, timeline=timeline)
    if not report.ok:
        raise OperationFailed(f"the chain is broken: {report.faults()}")
    doc = to_jsonable(report)
    return {"ok": report.ok, "base_backups": len(report.base_backups), "checked": report.checked,
            "broken_base_backups": report.broken_base_backups, "newest_restorable": doc["newest_restorable"],
            "problems": doc["problems"]}


def _check_prune_chain(ctx: Context, keep_full: int | None = None, **_known: Any) -> None:
    """`keep_full` at least 1, as opsctl.pitr.retention refuses it (check_keep_full)."""
    from opsctl.pitr.retention import check_keep_full

    if keep_full is not None:
        check_keep_full(keep_full)


@action("prune-chain", check=_check_prune_chain)
def prune_chain(ctx: Context, keep_full: int = 2, dry_run: bool = False, drop_damaged: bool = False) -> dict:
    """`opsctl backup prune-chain` as a step (the same core operation, opsctl.pitr.ops.prune_chain):
    keep the newest `keep_full` full base backups proven restorable, with their incrementals
    and the WAL they need; remove older ones (`drop_damaged`: the damaged ones too). Removing
    asks as the command does: the runbook's --yes, or a person at a terminal. Outputs: kept,
    removed, wal_removed, damaged, waiting (not counted yet: their WAL still queued), dropped, dry_run."""
    from opsctl.approval import confirm
    from opsctl.pitr.ops import prune_chain as run

    r = run(ctx.project, ctx.env, keep_full, dry_run=dry_run, approve=lambda question: confirm(question, ctx.yes),
            drop_damaged=drop_damaged)
    return {"kept": r.kept, "removed": r.removed, "wal_removed": r.wal_removed, "damaged": r.damaged,
            "waiting": r.waiting, "dropped": r.dropped, "dry_run": dry_run}


def _check_prune(ctx: Context, keep_last: int | None = None, keep_daily: int | None = None,
                 keep_weekly: int | None = None, keep_monthly: int | None = None, **_known: Any) -> None:
    """The keep_* rules as `opsctl backup prune` bounds them (retention.check_rules)."""
    from opsctl.backup.retention import check_rules

    check_rules(keep_last, keep_daily, keep_weekly, keep_monthly)


@action("prune", check=_check_prune)
def prune(ctx: Context, keep_last: int | None = None, keep_daily: int | None = None,
          keep_weekly: int | None = None, keep_monthly: int | None = None, dry_run: bool = False,
          confirm_env: str | None = None) -> dict:
    """Apply retention (the environment's rules, or the keep_* given); `dry_run` lists without
    removing. Removing asks as `opsctl backup prune` does (approval.prune_approval): the
    runbook's --yes, or a person at a terminal; keep_* rules on a protected environment need
    `confirm_env` naming it too. Outputs: removed, kept, dry_run."""
    from opsctl.approval import prune_approval
    from opsctl.backup import retention

    given = any(v is not None for v in (keep_last, keep_daily, keep_weekly, keep_monthly))
    result = retention.prune_environment(ctx.project, ctx.env, keep_last, keep_daily, keep_weekly, keep_monthly,
                                         dry_run=dry_run, approve=prune_approval(ctx.env, ctx.yes, confirm_env, given))
    return {"removed": result.removed, "kept": result.kept, "dry_run": dry_run}


def _check_new_target(ctx: Context, target_db: str, replace_copy: bool = False) -> None:
    """`target_db` a database that does not exist yet (opsctl.backup.restore.check_new_target),
    asked before any step: refused by the restore step itself, the run's clean-up handler would
    drop the database of that name, another application's (breaker 41 Q1). A server that can't
    be reached now is left to the step (an earlier step may start it)."""
    import psycopg

    from opsctl.backup.restore import check_new_target
    from opsctl.endpoints import resolve

    try:
        url = resolve(ctx.project, ctx.env).database_url
    except UsageError:  # a platform not started yet, say: the step says it
        return
    if not url:
        return
    try:
        check_new_target(url, target_db, "target_db", replace_copy=bool(replace_copy))
    except (psycopg.OperationalError, OperationFailed):
        return


def _check_restore(ctx: Context, jobs: int | None = None, target_db: str | None = None,
                   target_instance: str | None = None, role: str | None = None, confirm_env: str | None = None,
                   replace_copy: bool = False, **_known: Any) -> None:
    """`jobs` within pg_restore's bound, as `opsctl restore --jobs` (opsctl.backup.restore);
    `target_db` a database that may be replaced (not empty, not a system database, not the
    live one: opsctl.backup.postgres.check_replaceable), `target_instance`, `role` and
    `confirm_env` not empty (breaker 40 P1: `-p scratch_db=` made a drill's restore an
    in-place one over the live database, and the run "succeeded")."""
    from opsctl.backup.postgres import check_replaceable
    from opsctl.backup.restore import check_jobs
    from opsctl.errors import not_empty

    if jobs is not None:
        check_jobs(jobs)
    if target_db is not None:
        check_replaceable(str(target_db), ctx.env.database.name, "target_db")
        _check_new_target(ctx, str(target_db), replace_copy)
    for arg, value in (("target_instance", target_instance), ("role", role), ("confirm_env", confirm_env)):
        not_empty(value, arg, f"give a value, or leave {arg} out")


@action("restore", check=_check_restore)
def restore(ctx: Context, id: str | None = None, date: str | None = None, latest: bool = False,
            components: list | None = None, target_db: str | None = None, jobs: int = 1,
            confirm_env: str | None = None, target_instance: str | None = None, no_owner: bool = False,
            role: str | None = None, allow_damaged: bool = False, to_time: str | None = None,
            to_lsn: str | None = None, beside: bool = False, timeline: int | None = None,
            replace_copy: bool = False) -> dict:
    """`opsctl restore` as a step (the same core entry point, opsctl.backup.restore.restore_any).
    Restores into `target_db` (and stops there) without approval; over live data it needs
    --yes, and in a protected environment `confirm_env` naming it. A native snapshot goes
    into the new instance `target_instance`. `allow_damaged`: a backup whose verify failed,
    still checked object by object. `to_time`/`to_lsn`/`beside`: a point-in-time recovery
    instead (base backups + WAL), along `timeline` when given; its outputs are the recovery's result.
    `replace_copy`: a `target_db` left by an earlier restore (a drill killed before its clean-up)
    is replaced, any other database there still refused (opsctl.backup.restore.check_new_target)."""
    import datetime as dt

    from opsctl.backup import restore as core

    done = core.restore_any(ctx.project, ctx.env, id, date, latest, components, target_db, target_instance,
                            no_owner, role, allow_damaged, jobs, to_time, to_lsn, beside,
                            approve=core.terminal_approval(ctx.env, ctx.yes, confirm_env), timeline=timeline,
                            replace_copy=replace_copy)
    result = to_jsonable(done)
    if not isinstance(done, core.RestoreResult):  # a point-in-time recovery
        return result
    age = dt.datetime.now(dt.timezone.utc) - done.backup_created_at
    return {**result, "backup_created_at": done.backup_created_at.isoformat(),
            "data_age_seconds": round(age.total_seconds(), 1), "rto_seconds": result["seconds"]}


def _check_loadtest(ctx: Context, profile: str = "light", users: int | None = None, spawn_rate: float | None = None,
                    duration: str | None = None, slo: str | None = None, host: str | None = None,
                    workers: int = 0, classes: str | None = None, locustfile: str | None = None,
                    stop_timeout: str | None = None, **_known: Any) -> None:
    """The load test's options through the check `opsctl loadtest run` makes before any load
    (opsctl.loadtest.plan.make), without asking the host to answer; the environment's own
    router is left to the run (a platform an earlier step starts), the report paths to the
    engine's confinement."""
    from opsctl.loadtest import plan

    code = confine(ctx.project.root, locustfile, "locustfile", "code") if locustfile else None
    plan.make(ctx.project, ctx.env, profile, users=users, spawn_rate=spawn_rate, duration=duration, slo_text=slo,
              host=host if host is not None else "http://127.0.0.1", workers=workers, classes=classes,
              locustfile=str(code) if code else None, stop_timeout=stop_timeout, check=False)


@action("loadtest", code_paths=("locustfile",), out_paths=("html", "csv", "junit"), check=_check_loadtest)
def loadtest(ctx: Context, profile: str = "light", users: int | None = None, spawn_rate: float | None = None,
             duration: str | None = None, slo: str | None = None, host: str | None = None, workers: int = 0,
             abort_on_fail: bool = False, classes: str | None = None, locustfile: str | None = None,
             html: str | None = None, csv: str | None = None, junit: str | None = None,
             stop_timeout: str | None = None) -> dict:
    """`opsctl loadtest run` as a step: the same core operation (opsctl.loadtest.operation.load_test)
    with the same options; fails the step when an SLO gate is breached. `locustfile` (code)
    and the reports `html`, `csv` (a prefix) and `junit` are paths inside the ops root.
    Outputs: run_id, passed, slo, total (the run's totals: requests, failures, p50/p95/p99
    in ms, rps)."""
    from opsctl.loadtest.operation import load_test

    code = confine(ctx.project.root, locustfile, "locustfile", "code") if locustfile else None
    extra = {"stop_timeout": stop_timeout} if stop_timeout is not None else {}
    outcome = load_test(ctx.project, ctx.env, profile, users=users, spawn_rate=spawn_rate, duration=duration,
                        slo=slo, host=host, workers=workers, abort_on_fail=abort_on_fail, classes=classes,
                        locustfile=str(code) if code else None, html=_str(_out(ctx, html, "html")),
                        csv=_str(_out(ctx, csv, "csv")), junit=_str(_out(ctx, junit, "junit")), **extra)
    outcome.raise_if_interrupted()
    if not outcome.passed:
        raise OperationFailed(outcome.verdict())
    doc = to_jsonable(outcome.summary)
    return {"run_id": doc["id"], "passed": True, "slo": doc["slo"], "total": doc["total"]}


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


@action("scale-down")
def scale_down(ctx: Context) -> dict:
    """Stop the standby color now (the end of a verified rollout): what a deploy's
    scale-down delay would do later."""
    from opsctl.deploy import bluegreen

    driver = _driver(ctx)
    with driver.lock():
        return {"stopped": bluegreen.reap(driver, force=True)}


def _check_drop_database(ctx: Context, name: str | None = None, **_known: Any) -> None:
    """Never the environment's live database, a system database or an empty name
    (opsctl.backup.postgres.check_replaceable; breaker 40 P3: a drill given template1 as its
    scratch dropped it)."""
    from opsctl.backup.postgres import check_replaceable

    if name is not None:
        check_replaceable(str(name), ctx.env.database.name, "name")


@action("drop-database", check=_check_drop_database)
def drop_database(ctx: Context, name: str, only_copy: bool = False) -> dict:
    """Remove a scratch database (a restore drill's); the environment's own is refused.
    `only_copy`: drop it only when it is a restore's copy (postgres.copy_mark) that no one is
    connected to (postgres.sessions), else keep it and say so (`kept`, `why`): a drill's
    clean-up after its restore found the name taken by another application while it ran must
    not drop that database (breaker 45 F1), nor end the session of someone who started using
    the old copy meanwhile (breaker 47 F1)."""
    from opsctl.backup import postgres
    from opsctl.endpoints import resolve

    _check_drop_database(ctx, name)
    url = resolve(ctx.project, ctx.env).database_url
    if only_copy:
        if not postgres.database_exists(url, name):  # gone already: nothing to drop, whatever appears next
            return {"dropped": None}
        if not postgres.copy_mark(url, name):
            return {"dropped": None, "kept": name, "why": "not a restore's copy (it is not marked as one)"}
        users = postgres.drop_copy(url, name)  # refused by the server itself while anyone is connected
        if users:
            return {"dropped": None, "kept": name,
                    "why": f"a restore's copy in use ({len(users)} open session{'s' if len(users) > 1 else ''}: "
                           f"{', '.join(users[:3])})"}
        return {"dropped": name}
    postgres.drop_database(url, name)
    return {"dropped": name}


@action("dr-drill", out_paths=("junit", "metrics_file"))
def dr_drill(ctx: Context, junit: str | None = None, metrics_file: str | None = None) -> dict:
    """`opsctl dr drill` as a step (opsctl.pitr.drill): the database restored to the newest
    restorable time into scratch, measured, torn down. Fails the step when dr.rto or dr.rpo
    is missed. `junit`/`metrics_file`: paths in the ops root for the JUnit and Prometheus
    text results. Outputs: rto_seconds, rpo_seconds (the database's), part_rpo_seconds
    ({"redis": s, "audio objects": s} when restored), passed, restored_to, rows, scratch. A
    drill cancelled by Ctrl-C or SIGTERM (torn down, its reports failing) interrupts the run:
    its step is journaled `interrupted` with those outputs, plus error and torn_down."""
    from opsctl.pitr import drill

    try:
        result = drill.drill(ctx.project, ctx.env, junit_path=_out(ctx, junit, "junit"),
                             metrics_path=_out(ctx, metrics_file, "metrics_file"))
    except drill.Cancelled as cancelled:  # torn down and its failing reports written, as `opsctl dr drill`'s
        r = cancelled.result
        raise StepInterrupted(f"dr drill: {r.error}", {**_drill_outputs(r), "error": r.error,
                                                       "torn_down": r.torn_down}) from cancelled
    if not result.passed:
        raise OperationFailed(f"dr drill: {'; '.join(result.problems)}")
    return _drill_outputs(result)


def _drill_outputs(result) -> dict:
    doc = to_jsonable(result)
    return {k: doc[k] for k in ("rto_seconds", "rpo_seconds", "part_rpo_seconds", "passed", "restored_to", "rows",
                                "scratch")}
