"""The two ways an operation can fail, mapped to the exit codes of DESIGN.md.

Core functions raise these; only the CLI layer turns them into a line on stderr and an
exit code, so a runbook step calling the same function sees a plain exception.
"""

from __future__ import annotations

import errno
import sys


class OpsError(Exception):
    """Base of every error opsctl reports as one line instead of a traceback.

    The CLI masks every known secret in that line (opsctl.redact.credentials). `masked=True`
    says the raiser built the message from parts it masked already (a load test's failure texts)
    and from the user's own words and figures: it is written as it is, so a short secret such as
    an API key `2000` does not turn the user's `p95<2000ms` into `p95<***ms` in the last line
    while the table above it shows it (breaker 45 F11).
    """

    exit_code = 1
    masked = False

    def __init__(self, *args: object, masked: bool = False):
        super().__init__(*args)
        self.masked = masked


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


def not_empty(value: str | None, option: str, remedy: str) -> str | None:
    """`value` as given, None when the option was left out. UsageError "`option` is empty;
    `remedy`" when it was given empty or blank: an unset CI variable (`--strategy "$STRATEGY"`)
    expands to "", and taking that for the default or for "all" does other than the caller
    wrote (reviewer 39 R9, R10)."""
    if value is not None and not str(value).strip():
        raise UsageError(f"{option} is empty; {remedy}")
    return value


# OSErrors the machine causes, not opsctl: what the operator does about each (errno(3))
_MACHINE_FAULTS = {
    errno.ENOSPC: "free space on that volume (or use a larger one) and run it again",
    errno.EDQUOT: "free space within the user's disk quota (or raise it) and run it again",
    errno.EFBIG: "the file system or `ulimit -f` caps a file's size; raise the cap or use another volume",
    errno.EROFS: "the file system is mounted read-only; remount it read-write or use another path",
    errno.EACCES: "give the user opsctl runs as access to it, or use another path",
    errno.EPERM: "give the user opsctl runs as access to it, or use another path",
    errno.EIO: "the disk reported an I/O error; check the device (dmesg) before trusting what is on it",
    errno.EMFILE: "the process ran out of file descriptors; raise `ulimit -n` and run it again",
    errno.ENFILE: "the system ran out of file descriptors; close some and run it again",
}


def machine_fault(exc: BaseException, doing: str | None = None) -> OperationFailed | None:
    """The one-line OperationFailed (exit 1) for an OSError the machine caused: a full disk,
    a quota, a file-size cap, a read-only, unreadable or failing file system, no file
    descriptors left (a permission error only when it names a path). `doing` says what was being written ("writing db.dump.zst into the
    backup repository /srv/backups"); without it the error's own file name is used.
    None for any other exception: that one is a fault of opsctl's, reported as such."""
    if not isinstance(exc, OSError) or exc.errno not in _MACHINE_FAULTS:
        return None
    if exc.errno in (errno.EACCES, errno.EPERM) and not (doing or exc.filename):
        return None  # not about a path (os.kill of another user's process): no advice fits
    what = doing or (f"{exc.filename}" if exc.filename else "a file operation")
    reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
    return OperationFailed(f"{what}: {reason}; {_MACHINE_FAULTS[exc.errno]}")


class MachineFaults:
    """A reusable `with` block that raises machine_fault(exc, doing) in place of an OSError
    the machine caused; any other exception passes unchanged."""

    def __init__(self, doing: str):
        self.doing = doing

    def __enter__(self) -> "MachineFaults":
        return self

    def __exit__(self, _type, exc, _tb) -> bool:
        fault = machine_fault(exc, self.doing) if exc is not None else None
        if fault is None:
            return False
        raise fault from exc


def fault_text(exc: BaseException) -> str:
    """What went wrong, for a message that goes on (a warning, a `prune_failed` field, a
    longer error naming what ran): the first line of `exc`'s text without the advice after
    its first ';' (the caller says what to do in its own words), passwords masked
    (redact.credentials); its type's name when it has no text."""
    from opsctl.redact import credentials

    text = str(exc).strip()
    return credentials(text.splitlines()[0].split(";")[0]) if text else type(exc).__name__


def outside_fault(exc: BaseException) -> OperationFailed | None:
    """The one-line OperationFailed for an error from outside opsctl that reached the CLI
    uncaught: the machine's (machine_fault) or an S3 endpoint's (botocore's connection,
    timeout and credential errors); None for anything else, which is an opsctl bug."""
    fault = machine_fault(exc)
    if fault is not None:
        return fault
    boto = sys.modules.get("botocore.exceptions")  # loaded only if S3 was used
    if boto is not None and isinstance(exc, boto.BotoCoreError):
        return OperationFailed(f"{' '.join(str(exc).split())}; check the environment's AWS endpoint "
                               "(aws.endpoint_url in opsctl.yaml), the network and the AWS credentials")
    return None
