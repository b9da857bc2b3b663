"""Starting and stopping the embedded platform's server processes.

Servers are started detached (their own session) so they outlive the `opsctl local up`
that started them, log to a file the user is told about, and are stopped only by the PID
opsctl recorded: `down` never kills a process it did not start.
"""

from __future__ import annotations

import locale
import os
import re
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Sequence

import psutil

from opsctl.errors import OperationFailed

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (chosen by the kernel)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# Writes the shell's PID (which `exec` hands on to the server) to "$0", atomically, before
# the server starts: the PID file exists as soon as the process does, whatever happens to the
# opsctl that started it.
_PIDFILE_SH = 'echo $$ > "$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"'


# names of environment variables that hold a secret: keys, tokens, passwords, credentials, and
# URLs (a database, Redis, webhook or Slack URL carries its password or token). What opsctl
# itself reads is among them: OPSCTL_BACKUP_KEY, OPSCTL_WORKER_API_KEY, OPSCTL_DATABASE_URL,
# OPSCTL_REDIS_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, PGPASSWORD,
# the alert sinks' *_URL / ROUTING_KEY / SMTP password variables.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|"
                          r"WEBHOOK|DSN|URLS?$|URIS?$|^PGPASS|^AWS_|^PULUMI_CONFIG|^KUBECONFIG$", re.I)
_secret_names: set[str] = set()  # named by the project's opsctl.yaml (`*_env` settings)


def remember_secrets(env) -> None:
    """Remember the environment variables environment `env` (opsctl.config.Environment) names
    as holding a secret (every `*_env` setting: backup.key_env, deploy.api_key_env, the sinks'
    url_env/password_env...), so `spawn` keeps them from child processes whatever their name."""
    from opsctl.runbook.secrets import environment_secret_names

    _secret_names.update(environment_secret_names(env, {}))


def is_secret(name: str, value: str = "") -> bool:
    """Whether environment variable `name` holds (or may hold) a secret: its name says so
    (_SECRET_NAME, runbook.secrets' KNOWN_SECRET_ENV), the configuration named it
    (remember_secrets), or `value` holds one (a URL with a password, a key=value password, a
    value opsctl.redact remembered)."""
    from opsctl.redact import credentials
    from opsctl.runbook.secrets import KNOWN_SECRET_ENV, SECRET_NAME

    if name in _secret_names or name in KNOWN_SECRET_ENV:
        return True
    # a key's hashes (the worker's WORKER_API_KEY_HASHES) are what a server checks keys against,
    # not a key: a worker started by `local up` still inherits them
    named = not name.endswith("_HASHES") and bool(_SECRET_NAME.search(name) or SECRET_NAME.search(name))
    if named and _worker_setting(name):  # breaker 57 F4: WORKER_PART_MEMORY_KEY_PERCENT was dropped as a secret
        named = False
    return named or (bool(value) and credentials(value) != value)


def _worker_setting(name: str) -> bool:
    """Whether `name` is one of the worker settings a deploy may set (WORKER_<KEY> of
    deploy.model.WORKER_SETTINGS): a setting even when a secret's word is in its name (the
    share of part memory one API KEY may hold), checked by name alone, so no other variable
    passes through it whatever its value (breaker 58 G5: any name ending in a unit did)."""
    from opsctl.deploy.model import WORKER_SETTINGS

    return name.startswith("WORKER_") and name[len("WORKER_"):].lower() in WORKER_SETTINGS


def inherited_environment(secrets: bool = False) -> dict[str, str]:
    """This process's environment for a child: without the variables that hold a secret
    (is_secret) unless `secrets` (the archiver: it seals WAL with the backup key and writes to
    the repository)."""
    return {k: v for k, v in os.environ.items() if secrets or not is_secret(k, v)}


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, user: str | None = None, pidfile: Path | None = None,
          secrets: bool = False) -> int:
    """Start a server in its own session, appending its output to `log`; return its PID.

    It inherits this process's environment without the secrets it holds (is_secret: the backup
    key, API keys, cloud credentials, URLs with passwords): a server never needs them, and
    PostgreSQL's superuser could read them from /proc/<pid>/environ. `env`'s variables are
    passed as given (the caller chose them); `secrets=True` keeps the inherited ones (only the
    archiver, which uses the backup key and the repository's credentials).

    With `pidfile`, the PID is written there by the process itself before the server runs
    (a `/bin/sh` that `exec`s it), so an opsctl killed right after the fork still leaves a
    trace the next `opsctl local up` or `down` finds (`read_pidfile`).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [str(a) for a in argv]
    if pidfile is not None:
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        args = ["/bin/sh", "-c", _PIDFILE_SH, str(pidfile), *args]
    # logs and whatever the server writes (Redis's dump.rdb, moto's saves) are private:
    # they hold the platform's data
    with open(log, "ab", opener=_private_file) as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**inherited_environment(secrets), **(env or {})}, cwd=cwd, start_new_session=True, user=user,
            umask=0o077,
        )
    return proc.pid


def _private_file(name: str, flags: int) -> int:
    fd = os.open(name, flags, 0o600)
    os.fchmod(fd, 0o600)  # a log from before keeps its old mode otherwise
    return fd


def read_pidfile(path: Path) -> int | None:
    """The PID on the first line of a PID file (ours or PostgreSQL's postmaster.pid), or None."""
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first) if first.isdigit() else None
    except (OSError, IndexError, ValueError):
        return None


def pidfile_owner(path: Path, cmd_hint: str | None = None) -> int | None:
    """The live process a PID file names, or None. A process that started after the file was
    written is a reuse of that PID by someone else (the file is written by the process itself,
    right after it starts), never ours."""
    pid = read_pidfile(path)
    if not alive(pid, cmd_hint):
        return None
    try:
        if psutil.Process(pid).create_time() > path.stat().st_mtime + 1.0:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return None
    return pid


def owned(pid: int | None, cmd_hint: str | None, ports: Sequence[int | None] = (),
          pidfile: Path | None = None) -> int | None:
    """The process opsctl started for a component, or None: the recorded `pid` when it still
    runs `cmd_hint` AND listens on one of `ports`, else the live process `pidfile` names (create
    time checked). A recorded PID alone is never proof (the number is reused, and a command line
    merely naming the program is anyone's `tail -f postgres.log`): whatever stops a recorded
    process asks this first."""
    if alive(pid, cmd_hint) and listens(pid, ports):
        return pid
    return pidfile_owner(pidfile, cmd_hint) if pidfile is not None else None


def alive(pid: int | None, cmd_hint: str | None = None) -> bool:
    """True if the PID runs, and (with a hint) still is the program we started, not a reuse."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:  # never raises on odd input
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return cmd_hint is None or cmd_hint in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def listens(pid: int | None, ports: Sequence[int | None]) -> bool:
    """True when process `pid` (or one of its children) listens on one of `ports`: proof that
    a recorded PID is still the server opsctl started there, not a reuse of the number by a
    process whose command line merely names the same program."""
    wanted = {p for p in ports if isinstance(p, int) and not isinstance(p, bool) and p > 0}
    if not wanted or not alive(pid):
        return False
    try:
        proc = psutil.Process(pid)
        for each in [proc, *proc.children(recursive=True)]:
            try:
                if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in wanted
                       for c in each.net_connections(kind="inet")):
                    return True
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None,
               pid: int | None = None, interval: float = 0.1, ports: Sequence[int | None] = ()) -> None:
    """Poll `check` until true; fail naming `what` and its log when it dies or times out.

    With `pid` and `ports`, ready also means that process (or a child) listens on one of the
    ports: an answer on the port from anyone else (a stranger on a kept port) is never taken
    for the server just started, and when it exits while the port answers, the error says the
    port is someone else's."""
    deadline = time.monotonic() + timeout
    wanted = [p for p in ports if p]
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            taken = [p for p in wanted if port_open(p)]
            if taken:
                raise OperationFailed(f"port {taken[0]} kept for {what} is served by another process, not the one "
                                      f"opsctl started; stop that process, or run 'opsctl local down --purge' to "
                                      f"choose new ports")
            raise OperationFailed(f"{what} exited during start-up; read {log}" if log else f"{what} exited")
        if check() and (pid is None or not wanted or listens(pid, wanted)):
            return
        time.sleep(interval)
    hint = f"; read {log}" if log else ""
    raise OperationFailed(f"{what} not ready after {timeout:.0f}s{hint}")


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `pid` to exit (reaping it if it is our child);
    True when it is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def stop(pid: int | None, timeout: float = 15.0, cmd_hint: str | None = None) -> bool:
    """SIGTERM, then SIGKILL after `timeout`: the graceful-then-forceful stop. True if stopped.

    A zombie counts as stopped: the process that started a server (a test run, say) may not
    be the one stopping it, and only a parent can reap.
    """
    if not alive(pid, cmd_hint):
        return False
    try:
        psutil.Process(pid).terminate()
        if not wait_gone(pid, timeout):
            psutil.Process(pid).kill()
            wait_gone(pid, 10)
    except psutil.NoSuchProcess:
        pass
    return True


def line_text(raw: bytes) -> str:
    """One line of a log as read (`read_lines`, `follow`) made text: its ending "\\n" left off,
    and a "\\r" just before it (a CRLF ending: a CR there overwrites nothing); decoded as the
    text file reading before did (the locale's encoding, a byte it can't decode as U+FFFD: a
    log may hold anything a server printed). Any other CR, VT, NEL or U+2028 stays inside
    the line: `output.visible` shows it as an escape."""
    if raw.endswith(b"\n"):
        raw = raw[:-1].removesuffix(b"\r")
    return raw.decode(locale.getpreferredencoding(False), errors="replace")


def read_lines(handle: BinaryIO, lines: int) -> tuple[list[str], bytes]:
    """Read `handle` (a log opened "rb") to its end: its last `lines` whole lines, and the
    bytes after its last "\\n" (a line still being written; b"" when none). Only "\\n" ends a
    line, never the CR, VT, FS, NEL or U+2028 that text files and str.splitlines() split on:
    one line of a log holding them was shown as several (a forged line, a wrong `-n`). Read
    as bytes, so a character a writer split across two writes is decoded whole."""
    kept: deque[bytes] = deque(maxlen=max(lines, 0) + 1)
    kept.extend(handle)  # a binary file's lines end at b"\n" alone
    rest = kept.pop() if kept and not kept[-1].endswith(b"\n") else b""
    while len(kept) > max(lines, 0):
        kept.popleft()
    return [line_text(raw) for raw in kept], rest


def tail_lines(path: Path, lines: int = 20) -> list[str]:
    """The last `lines` lines of a log, as `tail -n` gives them: a last line with no "\\n"
    yet counts as one (`read_lines`: only "\\n" ends a line). [] when the file does not exist
    or `lines` is 0 or less."""
    if not path.exists() or lines <= 0:
        return []
    with open(path, "rb") as handle:
        whole, rest = read_lines(handle, lines)
    return (whole + [line_text(rest)])[-lines:] if rest else whole


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a text file, joined by newlines (`tail_lines`; "" when it
    does not exist, or `lines` is 0: a slice [-0:] would be the whole file)."""
    return "\n".join(tail_lines(path, lines))
