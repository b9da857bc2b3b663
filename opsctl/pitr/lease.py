"""The environment's deploy lease, held by the PITR operations that change the live database.

`opsctl failover` and an in-place `opsctl restore --to-time/--to-lsn` take the same lease
deploy, promote, abort, rollback and scale-down take (opsctl.deploy.model.Driver.lock):
on the embedded platform the file lock `.opsctl/local/deploy.lock` (released by the OS when
its holder dies), on kubernetes the Lease `opsctl-deploy` of the environment's namespace
(renewed in the background, taken over after a crashed holder's duration). So a failover
racing a deploy, a restore or a second failover of the same environment is refused at once,
as a second deploy is: one line naming the holder, exit 2, nothing changed.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from typing import Iterator

from opsctl.config import Environment, Project
from opsctl.errors import OperationFailed, UsageError

LOCK = "deploy.lock"  # opsctl.deploy.drivers.local.LocalDriver.lock's file
OWNER = "deploy.lock.pid"  # its holder's PID (LocalDriver.deploy_running reads it)
OPERATION = "deploy.lock.operation"  # which PITR operation holds it: {"pid", "operation"}


def _busy(env: Environment, operation: str, holder: str) -> UsageError:
    return UsageError(f"{operation} refused: env '{env.name}' is busy, {holder} holds its deploy lease; "
                      "nothing was changed; wait for it to end, then re-run")


@contextmanager
def _local(project: Project, env: Environment, operation: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    from opsctl.deploy.drivers.local import lock_holder
    from opsctl.files import write_json
    from opsctl.local import state as st

    folder = st.folder_for(project.root)
    if not folder.is_dir():  # never started: no deploy can hold it, and the operation refuses itself
        yield
        return
    lock = FileLock(str(folder / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _busy(env, operation, lock_holder(folder)) from None
    try:
        # the folder stays 0711: PostgreSQL's system user passes through it to its data directory
        write_json(folder / OPERATION, {"pid": os.getpid(), "operation": operation}, private=True,
                   folder_mode=st.FOLDER_MODE)
        write_json(folder / OWNER, os.getpid(), private=True,  # after: a reader never sees our PID unnamed
                   folder_mode=st.FOLDER_MODE)
        yield
    finally:
        (folder / OWNER).unlink(missing_ok=True)
        (folder / OPERATION).unlink(missing_ok=True)
        lock.release()


@contextmanager
def held(project: Project, env: Environment, operation: str) -> Iterator[None]:
    """Hold `env`'s deploy lease for the block (`operation`, e.g. "failover", names the holder
    for whoever is refused). UsageError (exit 2) at once when a deploy, restore or failover
    holds it; OperationFailed when the lease can't be read (a Kubernetes API out of reach)."""
    if env.platform == "local":
        with _local(project, env, operation):
            yield
        return
    from opsctl.deploy.drivers.kubernetes import KubernetesDriver

    with ExitStack() as stack:
        try:
            stack.enter_context(KubernetesDriver(project, env).lock())
        except OperationFailed as exc:
            if " is held by " not in str(exc):  # the API itself failed: not a refusal
                raise
            holder = str(exc).split(" is held by ", 1)[1].split("; wait", 1)[0]
            raise _busy(env, operation, f"{holder} (Lease opsctl-deploy)") from None
        yield
