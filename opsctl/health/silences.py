"""Silences: a maintenance window during which the health monitor holds some checks.

`opsctl health silence --check NAME --for 30m` writes one; an operation that knows it
disturbs a check (a deploy replacing a color, a restore) opens one for its own duration with
`maintenance(...)`. A held check is still run and shown (with "silenced until …"), but the
alerter neither fires, reminds nor resolves on it until the silence ends, as an
Alertmanager silence suppresses notifications; counting starts afresh afterwards.

Kept per environment in `.opsctl/health/silences-<env>.json` (0600, written whole and
renamed), read again before and after every sweep, so a silence set from another terminal
applies to a monitor already running, and a failure a sweep observed while a silence was in
force stays held when the silence ends before the sweep is judged (opsctl.health.monitor). Expired silences are dropped when the file is next written.
Where `monitoring.alertmanager_url` is set, the same silence is created in Alertmanager
(API v2, matchers env and check), so the rendered rules' alerts for the check are held too.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import logging
import secrets
import socket
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from opsctl.errors import OperationFailed, UsageError
from opsctl.files import write_json
from opsctl.redact import credentials, redact

_log = logging.getLogger("opsctl.health")
#: the longest silence (seconds): 30 days, as far as a maintenance window reasonably reaches
MAX_SECONDS = 30 * 86400


@dataclass
class Silence:
    """One silence: `check` is a check name or kind pattern (glob, as `--check`); `until`
    and `created_at` are ISO 8601 UTC; `reason` is free text."""

    id: str
    check: str
    until: str
    reason: str
    created_at: str
    alertmanager_id: str | None = None  # the Alertmanager silence on label `check`, when one was created
    # and the one on label `kind`: holds() matches the name OR the kind, Alertmanager's matchers
    # of one silence are ANDed, so a pattern takes two silences there
    alertmanager_kind_id: str | None = None
    # an operation's maintenance window: the process holding it (PID, its start time in epoch
    # seconds, host); it ends with that process, whatever its `until` (orphaned)
    owner_pid: int | None = None
    owner_started: float | None = None
    owner_host: str | None = None

    def orphaned(self) -> bool:
        """True when this is an operation's window whose process, on this host, is gone (killed:
        its `finally` never released it). Another host's owner can't be asked: never orphaned."""
        if self.owner_pid is None or self.owner_host != socket.gethostname():
            return False
        import psutil

        try:
            owner = psutil.Process(self.owner_pid)
            return abs(owner.create_time() - (self.owner_started or 0.0)) >= 1.0 or \
                owner.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    @property
    def ends(self) -> dt.datetime:
        """`until` as an aware UTC datetime."""
        return dt.datetime.fromisoformat(self.until)

    def holds(self, name: str, kind: str = "") -> bool:
        """True when this silence's pattern matches check `name` or its `kind`."""
        return fnmatch.fnmatch(name, self.check) or bool(kind) and fnmatch.fnmatch(kind, self.check)


def path(project, env_name: str) -> Path:
    """The silences file of `env_name`: .opsctl/health/silences-<env>.json under the ops root."""
    return project.state_dir / "health" / f"silences-{env_name}.json"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _read(file: Path) -> list[Silence]:
    try:
        doc = json.loads(file.read_text())
        return [Silence(**s) for s in doc.get("silences", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{file} is unreadable ({exc}); remove it to clear every silence") from None


def _write(file: Path, silences: list[Silence]) -> None:
    # 0600 in a 0700 folder, fsynced, whole or not at all (callers hold _locked(file))
    write_json(file, {"silences": [asdict(s) for s in silences]}, indent=1, private=True)


@contextmanager
def _locked(file: Path) -> Iterator[None]:
    from filelock import FileLock

    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with FileLock(file.with_suffix(".lock"), timeout=10, mode=0o600):
        yield


def active(project, env_name: str, now: dt.datetime | None = None) -> list[Silence]:
    """The silences of `env_name` still in force at `now`, soonest to end first: an operation's
    window whose process died (kill -9, OOM) ends with it (breaker 18 F7: a killed restore held
    `postgres` and `wal archive` for its whole bound, longer than the RPO)."""
    now = now or _now()
    return sorted((s for s in _read(path(project, env_name)) if s.ends > now and not s.orphaned()),
                  key=lambda s: s.ends)


def add(project, env_name: str, check: str, seconds: float, reason: str = "",
        now: dt.datetime | None = None, alertmanager: str | None = None, owned: bool = False) -> Silence:
    """Hold checks matching `check` (name or kind, glob) for `seconds` from now.

    With `alertmanager` (its base URL, monitoring.alertmanager_url) a silence with the same
    end is created there too, for alerts labelled env=<env_name> and check matching `check`,
    and a second one for kind matching it (the health exporter's alerts carry all three), before anything is written here. Raises
    UsageError for an empty or multi-line pattern or a duration not in (0, MAX_SECONDS], and
    OperationFailed when Alertmanager refuses (nothing is silenced then). `owned`: the
    silence ends with this process too (Silence.orphaned), as an operation's window does."""
    check = (check or "").strip()
    if not check or any(c in check for c in "\n\r\t"):
        raise UsageError("--check: give a check name or kind (glob allowed), e.g. --check worker-green")
    if not seconds > 0:
        raise UsageError("--for: a silence must last more than 0 seconds, e.g. --for 30m")
    if seconds > MAX_SECONDS:
        raise UsageError(f"--for: a silence lasts at most {MAX_SECONDS // 86400} days (30d = 720h); "
                         "renew it when it ends rather than silencing a check for good")
    now = now or _now()
    ends = now + dt.timedelta(seconds=seconds)
    silence = Silence(secrets.token_hex(4), check, ends.isoformat(), reason.strip(), now.isoformat())
    if owned:
        import psutil

        me = psutil.Process()
        silence.owner_pid, silence.owner_started, silence.owner_host = me.pid, me.create_time(), socket.gethostname()
    if alertmanager:
        silence.alertmanager_id = _alertmanager_create(alertmanager, env_name, silence, now, "check")
        try:
            silence.alertmanager_kind_id = _alertmanager_create(alertmanager, env_name, silence, now, "kind")
        except OperationFailed:
            try:  # nothing silenced: the check silence made a moment ago goes too
                _alertmanager_expire(alertmanager, silence, silence.alertmanager_id)
            except OperationFailed:
                pass  # the refusal of the kind silence is the error to show
            raise
    file = path(project, env_name)
    with _locked(file):
        _write(file, [*[s for s in _read(file) if s.ends > now and not s.orphaned()], silence])
    return silence


def remove(project, env_name: str, check: str, alertmanager: str | None = None) -> list[Silence]:
    """End the silences whose pattern is `check` (or whose id is `check`); returns them.
    Their Alertmanager silences are expired too (OperationFailed, after the local ones are
    gone, when Alertmanager cannot be told)."""
    file = path(project, env_name)
    with _locked(file):
        now = _now()
        current = [s for s in _read(file) if s.ends > now]
        gone = [s for s in current if check in (s.check, s.id)]
        if not gone:
            listed = ", ".join(f"{s.check} ({s.id})" for s in current) or "none"
            raise UsageError(f"no silence of '{check}' in '{env_name}'; active: {listed}")
        _write(file, [s for s in current if s not in gone])
    if alertmanager:
        for s in gone:
            for remote in (s.alertmanager_id, s.alertmanager_kind_id):
                if remote:
                    _alertmanager_expire(alertmanager, s, remote)
    return gone


def _re_char(c: str) -> str:
    """One literal character for Go's regexp (Alertmanager's): ASCII punctuation escaped."""
    return "\\" + c if c.isascii() and not c.isalnum() and c != "_" else c


def _glob_regex(pattern: str) -> str:
    """A check glob as the anchored regex Alertmanager matches label values with (Go's RE2
    syntax: no lookaround, no atomic groups), matching exactly what fnmatch.fnmatch matches
    locally: `*` any run, `?` one character, `[seq]`, `[!seq]` and ranges `[a-z]` a class
    (a reversed range is empty, as in fnmatch), a `[` without its `]` a literal, everything
    else literal. Written here rather than taken from fnmatch.translate, whose output uses
    Python-only syntax (`(?>...)`, `\\Z`) that Alertmanager refuses."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '[', as fnmatch reads it
                out.append("\\[")
                continue
            body, i = pattern[i:j], j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            items, k = [], 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    lo, hi = body[k], body[k + 2]
                    if lo <= hi:  # fnmatch drops a reversed range
                        items.append(f"{_re_char(lo)}-{_re_char(hi)}")
                    k += 3
                else:
                    items.append(_re_char(body[k]))
                    k += 1
            if items:
                out.append(("[^" if negate else "[") + "".join(items) + "]")
            else:  # an empty class: nothing matches it ([!] with nothing left: any character)
                out.append("." if negate else "[^\\s\\S]")
        else:
            out.append(_re_char(c))
    return "".join(out)


def _alertmanager_create(url: str, env_name: str, silence: Silence, now: dt.datetime, label: str) -> str:
    """POST /api/v2/silences (Alertmanager's API v2) matching env=`env_name` and `label`
    (check or kind, the health exporter's alert labels) against the pattern; returns the
    silence id."""
    import httpx

    from opsctl.health.checks.http import bounded_request

    is_glob = any(c in silence.check for c in "*?[")
    body = {"matchers": [{"name": "env", "value": env_name, "isRegex": False, "isEqual": True},
                         {"name": label, "value": _glob_regex(silence.check) if is_glob else silence.check,
                          "isRegex": is_glob, "isEqual": True}],
            "startsAt": now.isoformat(), "endsAt": silence.until, "createdBy": "opsctl",
            "comment": silence.reason or f"opsctl health silence --check {silence.check}"}
    try:
        resp = bounded_request("POST", f"{url.rstrip('/')}/api/v2/silences", json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()["silenceID"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:  # TypeError: JSON, not an object
        raise OperationFailed(f"Alertmanager at {redact(url)} did not take the silence "
                              f"({credentials(str(exc))[:200]}); nothing was silenced") from None


def _alertmanager_expire(url: str, silence: Silence, remote_id: str) -> None:
    import httpx

    from opsctl.health.checks.http import bounded_request

    try:
        bounded_request("DELETE", f"{url.rstrip('/')}/api/v2/silence/{remote_id}",
                        timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise OperationFailed(f"the silence of {silence.check} ended here, but Alertmanager at {redact(url)} "
                              f"could not be told ({credentials(str(exc))[:200]}); it ends there at "
                              f"{silence.until}") from None


def unmatched(project, env, check: str) -> str | None:
    """A one-line warning when pattern `check` matches no check (name or kind) the sweep of
    `env` runs now, None when it does. A silence of such a pattern is still written (a
    worker color not running yet may be silenced ahead of a deploy): the warning catches
    the typo that would otherwise hold nothing. When the checks cannot be listed (e.g. the
    local platform is not up) the warning says so."""
    from opsctl.endpoints import resolve
    from opsctl.health import checks

    try:
        planned = checks.plan(project, env, resolve(project, env))
    except UsageError as exc:
        return f"warning: cannot list the checks of '{env.name}' to compare --check {check!r} ({exc})"
    probe = Silence("", check, "", "", "")
    if any(probe.holds(c.name, c.kind) for c in planned):
        return None
    known = ", ".join(c.name for c in planned)
    return f"warning: --check {check!r} matches no check of '{env.name}' now (checks: {known}); silenced anyway"


def silence(project, env, check: str, seconds: float, reason: str = "",
            now: dt.datetime | None = None) -> tuple[Silence, str | None]:
    """The whole `opsctl health silence` operation: `add` the silence in `env` (an
    Environment; its monitoring.alertmanager_url gets one too), then `unmatched` on its
    pattern. Returns (the silence written, the one-line warning or None); raises as `add`."""
    made = add(project, env.name, check, seconds, reason, now=now, alertmanager=env.monitoring.alertmanager_url)
    return made, unmatched(project, env, made.check)


def holding(silences: list[Silence], name: str, kind: str = "") -> Silence | None:
    """The silence that ends last among those holding check `name` (of `kind`), if any."""
    matching = [s for s in silences if s.holds(name, kind)]
    return max(matching, key=lambda s: s.ends) if matching else None


@contextmanager
def maintenance(project, env_name: str, checks: list[str], seconds: float, reason: str,
                alertmanager: str | None = None, strict: bool = True) -> Iterator[list[Silence]]:
    """A maintenance window for an operation: its checks held while it runs (bounded by
    `seconds`), released when it ends, or when its process dies (Silence.orphaned: the local
    hold; Alertmanager's ends at its bound); in Alertmanager too when `alertmanager` is
    given. Yields the silences opened.

    `strict` (the default) raises as `add` does. With `strict=False` (operations, whose
    notifications must never fail them) an Alertmanager that refuses still leaves the local
    silence (the health monitor is held; the rendered rules' alerts are not), and a silence
    that cannot be written at all is skipped; each such problem is logged as a warning."""
    opened = []
    for check in checks:
        try:
            opened.append(add(project, env_name, check, seconds, reason, alertmanager=alertmanager, owned=True))
        except (UsageError, OperationFailed, OSError) as exc:
            if strict:
                _release(project, env_name, opened, alertmanager)
                raise
            _log.warning("maintenance window of %s: %s", check, credentials(str(exc)))
            if alertmanager and isinstance(exc, OperationFailed):
                try:
                    opened.append(add(project, env_name, check, seconds, reason, owned=True))
                except (UsageError, OSError) as again:
                    _log.warning("maintenance window of %s: %s", check, credentials(str(again)))
    try:
        yield opened
    finally:
        _release(project, env_name, opened, alertmanager)


def _release(project, env_name: str, opened: list[Silence], alertmanager: str | None) -> None:
    for silence in opened:
        try:
            remove(project, env_name, silence.id, alertmanager=alertmanager if silence.alertmanager_id else None)
        except (UsageError, OperationFailed, OSError) as exc:
            # already expired or removed by hand; Alertmanager's ends on its own at `until`
            _log.info("silence %s of %s not ended: %s", silence.id, silence.check, credentials(str(exc)))
