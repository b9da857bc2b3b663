"""What a runbook step can do: the same core functions the CLI commands call, plus a few
primitives (wait, approve, http, shell, notify). There is no second implementation of any
capability here: each action adapts a step's `with:` to a core call and its result to
outputs that later steps can read.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed
from opsctl.output import to_jsonable


@dataclass
class Context:
    project: Project
    env: Environment
    yes: bool


Action = Callable[..., dict]
ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn
    return register


def _driver(ctx: Context):
    from opsctl.deploy.drivers import driver_for

    return driver_for(ctx.project, ctx.env)


def _record(record) -> dict:
    doc = to_jsonable(record)
    return {k: doc[k] for k in ("id", "version", "to_color", "from_color", "from_version", "outcome", "reason")}


@action("deploy")
def deploy(ctx: Context, image: str, strategy: str | None = None, set: dict | None = None,
           auto_promote: bool = True, analysis: bool = True, wait: bool = True) -> dict:
    from opsctl.deploy import bluegreen
    from opsctl.deploy.model import Release

    release = Release.parse(image, [f"{k}={v}" for k, v in (set or {}).items()])
    driver = _driver(ctx)
    opts = bluegreen.Options(strategy=strategy or ctx.env.deploy.strategy, auto_promote=auto_promote,
                             analysis=analysis)
    record = bluegreen.deploy(driver, ctx.env, release, opts)
    if wait:
        bluegreen.finish_scale_down(driver, record)
    return _record(record)


@action("promote")
def promote(ctx: Context) -> dict:
    from opsctl.deploy import bluegreen

    return _record(bluegreen.promote(_driver(ctx), ctx.env, bluegreen.Options()))


@action("rollback")
def rollback(ctx: Context, to: str | None = None) -> dict:
    from opsctl.deploy import bluegreen
    from opsctl.deploy import rollback as rb

    return _record(rb.rollback(_driver(ctx), ctx.env, to, bluegreen.Options()))


@action("deploy-status")
def deploy_status(ctx: Context) -> dict:
    from opsctl.deploy import rollback as rb

    doc = to_jsonable(rb.status(_driver(ctx), last=5))
    active = doc["active_color"]
    return {"active_color": active, "version": doc["colors"][active]["version"] if active else None,
            "deploys": doc["deploys"]}


@action("wait")
def wait(ctx: Context, seconds: float) -> dict:
    time.sleep(float(seconds))
    return {"waited": float(seconds)}


@action("approve")
def approve(ctx: Context, message: str) -> dict:
    from opsctl.output import confirm

    confirm(message, ctx.yes)
    return {"approved": True}


@action("http")
def http(ctx: Context, url: str, method: str = "GET", expect_status: int | list = 200,
         json: Any = None, headers: dict | None = None, timeout: float = 30) -> dict:
    resp = httpx.request(method, url, json=json, headers=headers, timeout=timeout)
    wanted = expect_status if isinstance(expect_status, list) else [expect_status]
    if resp.status_code not in wanted:
        raise OperationFailed(f"{method} {url} answered {resp.status_code}, expected {wanted}")
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text[:2000]
    return {"status": resp.status_code, "body": body}


@action("shell")
def shell(ctx: Context, command: str, env: dict | None = None, timeout: float | None = None) -> dict:
    import os

    proc = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=ctx.project.root,
                          env={**os.environ, **{k: str(v) for k, v in (env or {}).items()}}, timeout=timeout)
    if proc.returncode != 0:
        raise OperationFailed(f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return {"stdout": proc.stdout.strip(), "exit_code": proc.returncode}


@action("notify")
def notify(ctx: Context, message: str, level: str = "info") -> dict:
    """A line in the run's log; with alert sinks configured, also sent to them."""
    import logging

    logging.getLogger("opsctl.runbook").log(logging.WARNING if level != "info" else logging.INFO, message)
    return {"message": message, "sent_to": []}
