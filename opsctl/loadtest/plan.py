"""What a run will do, settled and checked before any load is sent.

Every input error (unknown profile, malformed SLO, bad numbers, an unreachable host) is
found here and raised as one UsageError, so CI fails in a second with a line saying what to
fix, not after minutes of load. Nothing here imports locust.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from opsctl.config import Environment, Project
from opsctl.errors import UsageError
from opsctl.loadtest import profiles, slo


STOP_TIMEOUT_S = 30.0  # default --stop-timeout: k6's gracefulStop; Locust's own default kills at once


@dataclass
class Plan:
    """A settled run: target `host`, peak `users`, `spawn_rate` (users/s), `duration_s`
    (seconds), user class weights, the SLO text and its parsed gates, the locustfile, Locust
    worker processes (0: in-process), report paths, the API key (never printed), and the stop
    timeout (seconds users in a request get to finish it at the end; then it is a failure)."""
    env: str
    host: str
    profile: str
    users: int
    spawn_rate: float
    duration_s: float
    classes: dict[str, int]
    slo: str
    gates: list[slo.Gate] = field(repr=False)
    locustfile: Path
    workers: int = 0
    abort_on_fail: bool = False
    html: Path | None = None
    csv_prefix: str | None = None
    junit: Path | None = None
    api_key: str | None = field(default=None, repr=False)  # $<deploy.api_key_env> or $LOADTEST_API_KEY; never printed
    stop_timeout_s: float = 30.0  # at the end, how long users in a request get to finish it (s)

    def headers(self) -> dict[str, str]:
        """What every simulated user sends: `Cache-Control: no-cache` (the worker runs the
        model, never answers from its transcript store) and the API key when one is set."""
        return request_headers(self.api_key)


def request_headers(api_key: str | None) -> dict[str, str]:
    """The headers of every simulated user: no-cache, and the Bearer key when there is one."""
    headers = {"Cache-Control": "no-cache"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def make(project: Project, env: Environment, profile: str = "light", *, users: int | None = None,
         spawn_rate: float | None = None, duration: str | None = None, slo_text: str | None = None,
         host: str | None = None, workers: int = 0, abort_on_fail: bool = False,
         html: str | None = None, csv_prefix: str | None = None, junit: str | None = None,
         locustfile: str | None = None, classes: str | None = None, stop_timeout: str | None = None,
         check: bool = True) -> Plan:
    """Settle and check a run: the profile's values overridden by the arguments, the SLO from
    `slo_text`, else the environment's loadtest.slo, else the profile's. `duration` is text
    ('30s', '5m'), as is `stop_timeout` (default 30s, like k6's gracefulStop). With `check`,
    the host must answer. Raises UsageError, one line, on any bad
    input; nothing is sent."""
    prof = profiles.get(project, profile)
    weights = _classes(classes) if classes is not None else prof.classes
    text = slo_text if slo_text is not None else (env.loadtest.slo or prof.slo or "")
    gates = slo.parse(text) if text.strip() or slo_text is not None else []
    if users is not None and users < 1:
        raise UsageError(f"--users must be at least 1 (got {users})")
    if spawn_rate is not None and spawn_rate <= 0:
        raise UsageError(f"--spawn-rate must be more than 0 users/s (got {spawn_rate})")
    if workers < 0 or workers > 64:
        raise UsageError(f"--workers must be between 0 (in-process) and 64 (got {workers})")
    lf = Path(locustfile).expanduser().resolve() if locustfile else profiles.loadtests_dir(project) / "locustfile.py"
    if not lf.is_file():
        raise UsageError(f"locustfile {lf} not found; pass --locustfile PATH")
    duration_s = profiles.parse_duration(duration, maximum=profiles.MAX_SECONDS) if duration is not None else prof.duration_s
    stop_s = profiles.parse_duration(stop_timeout, "--stop-timeout", profiles.MAX_SECONDS) if stop_timeout is not None else STOP_TIMEOUT_S
    reports = dict(html=_out(html, "--html"), csv_prefix=_csv_prefix(csv_prefix), junit=_out(junit, "--junit"))
    target = _host(project, env, host)
    if check:  # last: the local checks above answer at once
        reachable(target, env, explicit=host is not None)
    return Plan(env=env.name, host=target, profile=prof.name, users=users or prof.users,
                spawn_rate=spawn_rate or prof.spawn_rate,
                duration_s=duration_s,
                classes=weights, slo=",".join(g.text for g in gates), gates=gates, locustfile=lf,
                workers=workers, abort_on_fail=abort_on_fail, **reports, stop_timeout_s=stop_s, api_key=os.environ.get(env.deploy.api_key_env) or os.environ.get("LOADTEST_API_KEY") or None)


def _classes(text: str) -> dict[str, int]:
    """'TranscriptionUser=3,AdminUser' -> {'TranscriptionUser': 3, 'AdminUser': 1}."""
    out = {}
    for term in (t.strip() for t in text.split(",")):
        name, _, weight = term.partition("=")
        if not name.isidentifier() or (weight and not (weight.isdigit() and int(weight) > 0)):
            raise UsageError(f"--classes: bad term '{term}'; write e.g. TranscriptionUser=3,AdminUser=1")
        out[name] = int(weight or 1)
    return out


def _csv_prefix(prefix: str | None) -> str | None:
    """`--csv PREFIX`: Locust writes PREFIX_stats.csv, _failures, _exceptions and
    _stats_history.csv; the longest of them is checked as any report path."""
    if not prefix:
        return None
    longest = _out(f"{prefix}_stats_history.csv", "--csv")
    return str(longest)[:-len("_stats_history.csv")]


def _out(value: str | None, option: str) -> Path | None:
    from opsctl.files import report_path

    return report_path(value, option)


def _host(project: Project, env: Environment, host: str | None) -> str:
    if host is None:
        from opsctl.endpoints import resolve

        host = resolve(project, env).router_url
        if not host:
            raise UsageError(f"environment '{env.name}' has no router_url in opsctl.yaml; set it or pass --host URL")
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--host '{host}' is not an http(s) URL; write e.g. http://127.0.0.1:8080")
    return host.rstrip("/")


def reachable(url: str, env: Environment, explicit: bool) -> None:
    """Any HTTP answer will do (even a 404); no answer at all is a usage error."""
    import httpx

    from opsctl.health.checks.http import bounded_request

    try:  # 5 s in total: a router trickling its answer must not hold the load test's start
        bounded_request("GET", url + "/healthz", timeout=5.0, max_body=64 * 1024)
    except ValueError:
        return  # a body over 64 KiB is an answer all the same
    except httpx.HTTPError as exc:
        if isinstance(exc, httpx.TimeoutException):
            why = "no answer within 5 s"
        elif "refused" in str(exc).lower():
            why = "connection refused"
        else:
            why = f"{type(exc).__name__}: {str(exc)[:120]}"
        fix = ("check the URL" if explicit else "start the platform with 'opsctl local up' or pass --host URL"
               if env.platform == "local" else f"check router_url of '{env.name}' in opsctl.yaml or pass --host URL")
        raise UsageError(f"cannot reach {url} ({why}); {fix}") from None
