"""What a run will do, settled and checked before any load is sent.

Every input error (unknown profile, malformed SLO, bad numbers, an unreachable host) is
found here and raised as one UsageError, so CI fails in a second with a line saying what to
fix, not after minutes of load. Nothing here imports locust.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from opsctl.config import Environment, Project
from opsctl.errors import UsageError, not_empty
from opsctl.loadtest import profiles, slo


STOP_TIMEOUT_S = 30.0  # default --stop-timeout: k6's gracefulStop; Locust's own default kills at once
# bounds of a run from this machine (bigger tests run in the cluster: opsctl render locust)
MAX_USERS = 10_000       # peak users (--users, a profile's users)
MAX_SPAWN_RATE = 1_000   # users started per second (--spawn-rate, a profile's spawn_rate)
MAX_WEIGHT = 1_000       # a user class's weight (--classes, a profile's classes)


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
    classes_from: str = ""  # where `classes` came from, for messages: "--classes" or "profile 'light'"

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
    ('30s', '5m'), as is `stop_timeout` (default 30s, like k6's gracefulStop): 1 s to 7 days
    (profiles.parse_duration). Users 1..MAX_USERS, spawn_rate in (0, MAX_SPAWN_RATE] users/s
    and class weights 1..MAX_WEIGHT, whether given or the profile's. The host (`host`, else
    the environment's router_url) is checked by `target_url`: no credentials in it. With
    `check`, the host must answer. Raises UsageError, one line naming the option (or the
    profile), on any bad input; nothing is sent."""
    prof = profiles.get(project, profile)
    weights = _classes(classes) if classes is not None else prof.classes
    source = f"profile '{prof.name}'"
    if classes is None:
        for name, weight in weights.items():
            _within(weight, 1, MAX_WEIGHT, f"{source}: the weight of {name}")
    text = slo_text if slo_text is not None else (env.loadtest.slo or prof.slo or "")
    gates = slo.parse(text) if text.strip() or slo_text is not None else []
    bigger = "bigger tests run in the cluster ('opsctl render locust')"
    users = _within(users if users is not None else prof.users, 1, MAX_USERS,
                    "--users" if users is not None else f"{source}: users", too_big=bigger)
    spawn_rate = _within(spawn_rate if spawn_rate is not None else prof.spawn_rate, 0, MAX_SPAWN_RATE,
                         "--spawn-rate" if spawn_rate is not None else f"{source}: spawn_rate", " users/s",
                         above=True, too_big=bigger)
    if workers < 0 or workers > 64:
        raise UsageError(f"--workers must be between 0 (in-process) and 64 (got {workers})")
    not_empty(locustfile, "--locustfile", "give the path of a locustfile, or leave --locustfile out for the "
                                          "project's loadtests/locustfile.py")
    lf = (Path(locustfile).expanduser().resolve() if locustfile is not None
          else profiles.loadtests_dir(project) / "locustfile.py")
    if not lf.is_file():
        raise UsageError(f"locustfile {lf} not found; pass --locustfile PATH")
    duration_s = profiles.parse_duration(duration, maximum=profiles.MAX_SECONDS) if duration is not None else prof.duration_s
    stop_s = profiles.parse_duration(stop_timeout, "--stop-timeout", profiles.MAX_SECONDS) if stop_timeout is not None else STOP_TIMEOUT_S
    reports = dict(html=_out(html, "--html", "report.html"), csv_prefix=_csv_prefix(csv_prefix), junit=_out(junit, "--junit"))
    target = _host(project, env, host)
    if check:  # last: the local checks above answer at once
        reachable(target, env, explicit=host is not None)
    return Plan(env=env.name, host=target, profile=prof.name, users=users, spawn_rate=spawn_rate,
                duration_s=duration_s,
                classes=weights, slo=",".join(g.text for g in gates), gates=gates, locustfile=lf,
                workers=workers, abort_on_fail=abort_on_fail, **reports, stop_timeout_s=stop_s,
                api_key=os.environ.get(env.deploy.api_key_env) or os.environ.get("LOADTEST_API_KEY") or None,
                classes_from="--classes" if classes is not None else source)


def _within(value, lowest: float, highest: float, what: str, unit: str = "", above: bool = False,
            too_big: str = ""):
    """`value` when lowest <= value <= highest (lowest < value with `above`), else UsageError
    naming `what` and the range (and `too_big`, what to do instead, for a value over it).
    NaN and infinities are outside every range."""
    if (lowest < value if above else lowest <= value) and value <= highest:
        return value
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    low = f"more than {lowest:g}" if above else f"at least {lowest:g}"
    fix = f"; {too_big}" if too_big and value > highest else ""
    raise UsageError(f"{what} must be {low} and at most {highest:g}{unit} (got {shown}){fix}")


def _classes(text: str) -> dict[str, int]:
    """'TranscriptionUser=3,AdminUser' -> {'TranscriptionUser': 3, 'AdminUser': 1}: weights are
    whole numbers 1..MAX_WEIGHT in ASCII digits (1 when left out); UsageError naming the term."""
    out = {}
    for term in (t.strip() for t in text.split(",")):
        name, _, weight = (part.strip() for part in term.partition("="))
        if not name.isidentifier() or (weight and not re.fullmatch(r"[0-9]+", weight)):
            raise UsageError(f"--classes: bad term '{term}'; write e.g. TranscriptionUser=3,AdminUser=1")
        if name in out:
            raise UsageError(f"--classes: {name} is named twice; give each class once, e.g. "
                             "TranscriptionUser=3,AdminUser=1")
        out[name] = int(_within(int(weight or 1), 1, MAX_WEIGHT, f"--classes: the weight of {name}"))
    return out


def _csv_prefix(prefix: str | None) -> str | None:
    """`--csv PREFIX`: Locust writes PREFIX_stats.csv, _failures, _exceptions and
    _stats_history.csv; each is checked as any report path (breaker 65 G3: only the longest
    was, and PREFIX_stats.csv, a link to opsctl.yaml, replaced the config)."""
    if prefix is None:
        return None
    if not prefix.strip():
        raise UsageError("--csv is empty; give a file name prefix such as reports/run, or leave --csv out "
                         "for no CSV files")
    for kind in CSV_KINDS[:-1]:
        _out(f"{prefix}_{kind}.csv", "--csv")
    longest = _out(f"{prefix}_{CSV_KINDS[-1]}.csv", "--csv")
    return str(longest)[:-len(f"_{CSV_KINDS[-1]}.csv")]


CSV_KINDS = ("stats", "failures", "exceptions", "stats_history")  # Locust's PREFIX_<kind>.csv, the longest last


def _out(value: str | None, option: str, example: str = "report.xml") -> Path | None:
    from opsctl.files import report_path

    return report_path(value, option, example=example)


SHORT_KEY = 12  # characters: a key shorter than this masks ordinary words and figures that hold it


def api_keys(api_key_env: str | None) -> list[str]:
    """Every API key a simulated user may send, from the environment: $`api_key_env`
    (deploy.api_key_env), $LOADTEST_API_KEY and $OPSCTL_WORKER_API_KEY (the locustfile's own
    choice), the set ones only. A key shorter than SHORT_KEY is warned about:
    opsctl masks it wherever it shows, so a key `2000` turns a figure 2000 into `***` in every
    output that may carry a target's text (breaker 45 F11, 47 F5); it is masked all the same."""
    names = dict.fromkeys(filter(None, (api_key_env, "LOADTEST_API_KEY", "OPSCTL_WORKER_API_KEY")))
    found = {name: os.environ[name] for name in names if os.environ.get(name)}
    for name, value in found.items():
        if len(value) < SHORT_KEY:
            logging.getLogger("opsctl.loadtest").warning(
                "$%s is %d characters long: opsctl masks it wherever it shows, so words and figures holding "
                "it read '***' in failure texts and errors; a key of %d or more random characters avoids that",
                name, len(value), SHORT_KEY)
    return list(found.values())


def _host(project: Project, env: Environment, host: str | None) -> str:
    if host is not None:
        return target_url(host, "--host", env.deploy.api_key_env)
    from opsctl.endpoints import resolve

    router = resolve(project, env).router_url
    if not router:
        raise UsageError(f"environment '{env.name}' has no router_url in opsctl.yaml; set it or pass --host URL")
    return target_url(router, f"router_url of '{env.name}' in opsctl.yaml", env.deploy.api_key_env)


def target_url(url: str, what: str = "--host", api_key_env: str | None = None) -> str:
    """The base URL a load test sends to, checked: http(s), a host, a valid port, no trailing '/'.

    Credentials are refused, not kept and masked: 'user:password@' in the URL, or any query
    or fragment (where tokens ride, '?token=…'; a base URL has no use for either, Locust appends
    paths to it).
    A URL on a command line is already out (ps, shell history, CI logs), and a run copies its
    host into the live view, the table, the HTML/CSV/JUnit reports and the saved record; the
    platform authenticates with an API key anyway, which the simulated users send as
    `Authorization: Bearer` from $LOADTEST_API_KEY or $`api_key_env` (deploy.api_key_env), never
    on a command line. A URL holding one of those keys anywhere (its path: 'http://h/KEY') is
    refused too, in any of the forms `opsctl.redact.forms` knows; the keys are remembered
    (`opsctl.redact.remember`) before anything is checked, so no error line shows one, and every
    later output masks them (a target's error page may echo the Authorization header).
    Raises UsageError, one line naming `what` and never echoing a secret.
    """
    import unicodedata

    from opsctl import redact

    keys = api_keys(api_key_env)
    redact.remember(*keys)
    key_vars = " or ".join(f"${v}" for v in dict.fromkeys(filter(None, (api_key_env, "LOADTEST_API_KEY"))))
    where_key = f"the platform's API key goes in {key_vars} (sent as 'Authorization: Bearer')"
    example = "write e.g. http://127.0.0.1:8080"
    text = url.strip()
    read = _readings(text)
    found = {form for key in keys for form in redact.forms(key) if len(form) >= redact.MIN_SECRET}
    if any(redact.mask_forms(r, found) != r for r in read):
        raise UsageError(f"{what} holds the API key, which a load test refuses (it would show in ps, reports "
                         f"and the run record); give the base URL only, e.g. http://127.0.0.1:8080: {where_key}")
    # any '@', also one NFKC folds into it ('＠') or percent-encoded: a password holding '/' ends
    # the authority early and puts 'user:pass@' in the path
    if any("@" in r for r in read):
        raise UsageError(f"{what} carries credentials ('user:password@'), which a load test refuses (they "
                         f"would show in ps, reports and the run record); drop them: {where_key}")
    if any("?" in r or "#" in r for r in (text, unicodedata.normalize("NFKC", text))):  # '%3F' is a literal '?'
        raise UsageError(f"{what} has a query or fragment ('?…', '#…'), where tokens ride, which a load "
                         f"test refuses; give the base URL only, e.g. http://127.0.0.1:8080; {where_key}")
    # from here the URL is not echoed, nor the parser's text of it (it quotes the netloc)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises for 'http://h:99999' and 'http://h:x')
    except ValueError as exc:
        bad_port = "port" in str(exc).lower()
        raise UsageError(f"{what} has a bad port (a number from 1 to 65535 after the host's ':'); {example}"
                         if bad_port else f"{what} is not a valid URL (a '[' left open, or characters NFKC "
                                          f"folds into ':', '/', '?', '#' or '@'); {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in text):
        raise UsageError(f"{what} is not an http(s) URL with a host and no blanks; {example}")
    return text.rstrip("/")


def _readings(url: str) -> list[str]:
    """`url` as typed, NFKC-folded (IDNA folds a fullwidth host so), then percent-decoded up to
    three times (a router decodes '%2D' before routing), each also folded, and each of those
    without what is drawn as nothing (IDNA drops a soft hyphen or a zero-width space from a
    host; a tab or newline splits no key): every way a secret in it can read (breakers 47 F2,
    F7, 48 F2)."""
    import unicodedata
    from urllib.parse import unquote

    from opsctl.output import without_blanks

    out = [url, unicodedata.normalize("NFKC", url)]
    decoded = url
    for _ in range(3):  # and IIS's %uXXXX (breaker 49 F8)
        decoded = unquote(re.sub(r"%[uU]([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), decoded))
        out += [decoded, unicodedata.normalize("NFKC", decoded)]
    return list(dict.fromkeys(out + [without_blanks(r) for r in out]))


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
