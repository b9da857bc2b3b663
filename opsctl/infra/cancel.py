"""A Pulumi operation that Ctrl-C or SIGTERM cancels the way pulumi's own Ctrl-C does.

The pulumi CLI takes a first SIGINT as "cancel": it starts no new resource operation, lets
the ones in flight finish, saves the checkpoint and exits; a second SIGINT stops it at once
(Pulumi docs, "pulumi cancel" and the CLI's interrupt handling). The Automation API runs the
CLI with piped output from the caller's thread, so an interrupt raised in that thread closed
the pipes (Popen.__exit__ on KeyboardInterrupt) and the CLI died of SIGPIPE at its next line,
mid-update: pending operations in the checkpoint, a lock on a self-managed backend. A SIGTERM
(a CI cancel, `timeout`) did not reach the CLI at all (reviewer 39 R7).

So the operation runs in a thread of its own, its pipes drained to the end, while the main
thread waits and turns each interrupt into a SIGINT for every pulumi process opsctl started
(once per interrupt; one the terminal's Ctrl-C already reached, being in the terminal's
foreground process group, is not sent a second one, which would be pulumi's "stop at once").
A pulumi process started after the first interrupt (the Automation API runs several in turn)
is cancelled as it appears. When the operation has ended the caller gets Interrupted (exit
130) saying what pulumi was left doing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable, TypeVar

import psutil

from opsctl.errors import Interrupted

T = TypeVar("T")
log = logging.getLogger("opsctl.infra")

POLL_S = 0.2  # how often new pulumi processes are looked for once cancelling


def run_cancellable(work: Callable[[], T], what: str) -> T:
    """`work()` (Pulumi Automation API calls) with interrupts forwarded as above; its value,
    or what it raised. Raises Interrupted once `work` has ended if Ctrl-C or SIGTERM came
    while it ran (`what`, e.g. "pulumi up of stack staging", names it in the message).
    At the first and second interrupt a warning on the `opsctl.infra` log says what happens
    now. Off the main thread (no signals there) `work` just runs."""
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the main thread as it is
            outcome["error"] = exc

    from opsctl.signals import arrived

    received: list[int] = []

    def take(signum, _frame) -> None:
        received.append(signum)
        arrived(signum)

    handlers = {s: signal.signal(s, take) for s in (signal.SIGINT, signal.SIGTERM)}
    sent: dict[int, int] = {}  # pulumi pid -> interrupts it has had
    worker = threading.Thread(target=body, name=what, daemon=True)
    try:
        worker.start()
        handled = 0
        while worker.is_alive():
            worker.join(POLL_S)  # a signal's handler runs here, in the main thread
            while handled < len(received):
                handled += 1
                if handled <= 2:
                    log.warning(_said(what, handled))
                _forward(received[handled - 1], handled, sent)
            if received:  # one started since is cancelled as it appears
                _forward(None, handled, sent)
    finally:
        for s, previous in handlers.items():
            signal.signal(s, previous)
    if received:
        raise Interrupted(_ended(what, outcome, len(received))) from None
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _said(what: str, interrupts: int) -> str:
    if interrupts == 1:
        return (f"cancelling {what}: resource operations in flight finish first and the state is saved "
                "(interrupt again to stop them at once)")
    return f"stopping {what} at once: resources being changed now may be left pending"


def _ended(what: str, outcome: dict, interrupts: int) -> str:
    if "error" not in outcome:
        return f"interrupted; {what} had finished"
    if interrupts == 1:
        return f"{what} cancelled; operations in flight finished and the state is saved"
    return (f"{what} stopped at once; resources being changed may be pending: check with "
            "'opsctl infra refresh' (and 'pulumi stack export' for pending_operations)")


def _forward(signum: int | None, interrupts: int, sent: dict[int, int]) -> None:
    """Bring every pulumi process opsctl started up to `interrupts` SIGINTs (at most 2) for
    interrupt `signum` (None: none new, only catch up the processes started since). A SIGINT
    opsctl got while pulumi is in the terminal's foreground process group was Ctrl-C, which
    reached pulumi too: counted, not sent again."""
    wanted = min(interrupts, 2)
    fg = _terminal_foreground() if signum == signal.SIGINT else None
    for child in _pulumi_children():
        had = sent.get(child.pid, 0)
        if fg is not None and had < wanted and _group(child.pid) == fg:
            had += 1
        while had < wanted:
            try:
                child.send_signal(signal.SIGINT)
            except psutil.Error:
                break
            had += 1
        sent[child.pid] = had


def _pulumi_children() -> list[psutil.Process]:
    """opsctl's child processes that are the pulumi CLI (its path or name, as the shell runs
    a script: argv[0] or argv[1] ends in /pulumi)."""
    found = []
    for child in psutil.Process().children():
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if any(os.path.basename(a) == "pulumi" for a in argv[:2]):
            found.append(child)
    return found


def _terminal_foreground() -> int | None:
    """The foreground process group of opsctl's controlling terminal; None without one."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return None
    try:
        return os.tcgetpgrp(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
