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

from contextlib import ExitStack, contextmanager, nullcontext
from typing import Iterator

from opsctl.config import Environment, Project
from opsctl.errors import LeaseHeld, UsageError


def _busy(env: Environment, operation: str, holder: str) -> UsageError:
    return UsageError(f"{operation} refused: env '{env.name}' is busy, {holder} holds its deploy lease; "
                      "nothing was changed; wait for it to end, then re-run")


@contextmanager
def held(project: Project, env: Environment, operation: str) -> Iterator[None]:
    """Hold `env`'s deploy lease for the block (`operation`, e.g. "failover", names the holder
    for whoever is refused). UsageError (exit 2) at once when a deploy, restore or failover
    holds it; OperationFailed when the lease can't be read (a Kubernetes API out of reach)."""
    with ExitStack() as stack:
        try:
            if env.platform == "local":
                from opsctl.deploy.drivers.local import deploy_lock
                from opsctl.local import state as st

                folder = st.folder_for(project.root)
                if folder.is_dir():  # never started: no deploy can hold it, the operation refuses itself
                    stack.enter_context(deploy_lock(folder, operation))
            else:
                from opsctl.deploy.drivers.kubernetes import KubernetesDriver

                stack.enter_context(KubernetesDriver(project, env).lock())
        except LeaseHeld as exc:
            where = "" if env.platform == "local" else " (Lease opsctl-deploy)"
            raise _busy(env, operation, exc.holder + where) from None
        yield


def for_restore(project: Project, env: Environment, writes_live: bool, notice=None):
    """The lease a logical restore (opsctl.backup.restore) holds: `held(..., "restore")` when it
    writes the environment's live database, Redis or audio bucket (`writes_live`); nothing for
    one that only writes a database beside the live one (`--target-db`) or a new instance
    (`--target-instance`): a deploy neither reads nor changes those. On kubernetes the Lease is
    read through the environment's Kubernetes configuration; where none is usable (a database
    restored by URL from a machine that can't deploy), `notice(text)` says it was not checked
    and the restore goes on. Raises as `held` does."""
    if not writes_live:
        return nullcontext()
    if env.platform != "local":
        from opsctl.deploy.drivers.kubernetes import connect

        try:
            connect(project, env).close()
        except UsageError:
            if notice is not None:
                notice(f"env '{env.name}' has no usable Kubernetes configuration: its deploy Lease was not "
                       "checked; make sure no deploy or failover runs")
            return nullcontext()
    return held(project, env, "restore")
