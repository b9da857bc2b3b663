"""The two ways an operation can fail, mapped to the exit codes of DESIGN.md.

Core functions raise these; only the CLI layer turns them into a line on stderr and an
exit code, so a runbook step calling the same function sees a plain exception.
"""

from __future__ import annotations


class OpsError(Exception):
    """Base of every error opsctl reports as one line instead of a traceback."""

    exit_code = 1


class UsageError(OpsError):
    """Bad usage, configuration or input: the user has to change something (exit 2)."""

    exit_code = 2


class OperationFailed(OpsError):
    """The operation ran and failed, or a gate said no (exit 1)."""

    exit_code = 1


class LeaseHeld(OperationFailed):
    """Another operation holds the environment's deploy lease (exit 1); `holder` names it
    ("a failover (pid 123)", a Kubernetes Lease's holderIdentity), for a caller that words
    its own refusal."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


class Interrupted(OpsError):
    """Stopped by Ctrl-C or SIGTERM after saving what could be saved (exit 130, as a shell does)."""

    exit_code = 130
