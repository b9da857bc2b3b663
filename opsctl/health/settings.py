"""`environments.<name>.health` in opsctl.yaml: extra checks, alert sinks, flap protection.

Thresholds are not here: they live in `environments.<name>.thresholds`, shared with the
rendered Prometheus alert rules, so a sweep and an alert never disagree. Sink secrets are
only named (`url_env`, `routing_key_env`, `password_env`): opsctl.yaml is committed.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# --- the cron grammar GitHub Actions and Kubernetes both accept --------------------------------
# Here, not in opsctl.runbook.schedules, because opsctl.yaml's health settings need it at load
# time and that module would bring jinja2 and jsonschema (~50 ms) to every command.
# Kubernetes' CronJob controller and actionlint (which mirrors GitHub) parse with robfig/cron's
# standard parser; croniter accepts more (L, W, #, R, a 7 for Sunday, seconds, descriptors),
# which either of them refuses. So a schedule is the plain 5-field grammar: `*`, numbers,
# ranges, steps, lists, and month/weekday names; nothing else.
_FIELDS = (("minute", 0, 59, None), ("hour", 0, 23, None), ("day of month", 1, 31, None),
           ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
           ("day of week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")))
# str.isdigit() and int() take any Unicode digit ('\u0663'); GitHub's and Kubernetes' parsers
# (strconv.Atoi) take ASCII 0-9 only
_ASCII_NUMBER = re.compile(r"[0-9]+\Z")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February 29 comes in leap years


def _never_fires(fields: list[str], days: set[int], months: set[int], weekdays: set[int]) -> bool:
    """True when no date matches: cron ANDs day of month and month, and ORs day of month with
    day of week only when both are restricted (a day of week starting with '*' and covering
    every day leaves the day of month alone in charge, as in robfig/cron and Vixie cron)."""
    if not (fields[4].startswith("*") and weekdays == set(range(7))):
        return False  # a restricted day of week: some weekday in any month always comes
    return not any(d <= _MONTH_DAYS[m - 1] for m in months for d in days)


def _cron_value(text: str, low: int, high: int, names) -> int:
    if names and text.lower() in names:
        return names.index(text.lower()) + low
    if not _ASCII_NUMBER.match(text) or not low <= int(text) <= high:  # robfig/cron: strconv.Atoi, ASCII only
        raise ValueError(f"'{text}' is not a number in {low}-{high}" + (f" or a name ({names[0].upper()}-"
                                                                          f"{names[-1].upper()})" if names else ""))
    return int(text)


def _cron_field(text: str, what: str, low: int, high: int, names) -> set[int]:
    """The values of one field; ValueError naming what is wrong."""
    try:
        return _cron_items(text, what, low, high, names)
    except ValueError as exc:
        raise ValueError(str(exc) if str(exc).startswith(what) else f"{what} {exc}") from None


def _cron_items(text: str, what: str, low: int, high: int, names) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _ASCII_NUMBER.match(step_text) or int(step_text) < 1:
                raise ValueError(f"{what}: step '{step_text}' is not a positive number")
            step = int(step_text)
        if base == "*":
            lo, hi = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            lo, hi = _cron_value(a, low, high, names), _cron_value(b, low, high, names)
            if lo > hi:
                raise ValueError(f"{what}: range '{base}' runs backwards")
        else:
            if slash:
                raise ValueError(f"{what}: a step goes after '*' or a range, not '{item}'")
            lo = hi = _cron_value(base, low, high, names)
        values.update(range(lo, hi + 1, step))
    return values


def standard_cron_problem(expr: str) -> str | None:
    """What is wrong with `expr` as a standard 5-field cron expression, in one line that
    starts with the expression itself (a caller puts the option or key it came from in front:
    "schedule '...' ...", "--cron '...' ..."), or None. Minute hour day-of-month month
    day-of-week; `*`, numbers, `a-b` ranges, `/n` steps, `,` lists, JAN-DEC and SUN-SAT:
    croniter's extensions (seconds or years as a 6th/7th field, L, W, #, R, ?, 7 for Sunday,
    @daily) are refused, as is an expression no date matches ('0 0 31 2 *'). Shared by
    runbook schedules (opsctl.runbook.schedules.cron_problem) and the health monitor
    (`--cron`, health.cron, heartbeats: `cron_problem`)."""
    return parse_cron(expr)[1]


def parse_cron(expr: str) -> tuple[list[set[int]] | None, str | None]:
    """(the values of the five fields, None), or (None, what `standard_cron_problem` says):
    runbook schedules (opsctl.runbook.schedules.cron_problem) add their own rule on the values."""
    fields = str(expr).split()
    if len(fields) != 5:
        return None, (f"'{expr}' is not a 5-field cron expression (minute hour day month weekday), "
                      "e.g. '0 2 * * *'")
    try:
        sets = [_cron_field(f, what, low, high, names) for f, (what, low, high, names) in zip(fields, _FIELDS)]
    except ValueError as exc:
        return None, (f"'{expr}' is not a 5-field cron expression GitHub and Kubernetes accept ({exc}); "
                      "use numbers, ranges, steps, lists and names only, e.g. '0 2 * * *'")
    if _never_fires(fields, sets[2], sets[3], sets[4]):
        return None, (f"'{expr}' never fires: no month in it has that day of month; "
                      "pick a day every chosen month has, e.g. '0 2 28 2 *'")
    return sets, None


def cron_problem(cron: str) -> str | None:
    """Why `cron` cannot drive a heartbeat or the scheduled monitor, in one line starting with
    the expression, or None: not the standard 5-field cron runbook schedules take
    (`standard_cron_problem`: croniter alone also reads seconds and years as a 6th/7th
    field, so `--cron '* * * * * * *'` swept every second: breaker 37 G12), or one that
    never fires (a date no month has, such as '0 0 31 2 *')."""
    from croniter import CroniterBadDateError, croniter

    problem = standard_cron_problem(cron)
    if problem:
        return problem
    try:  # the loop and the heartbeat check read it with croniter: it must too
        croniter(cron).get_next(float)
        croniter(cron).get_prev(float)
    except CroniterBadDateError:
        return f"'{cron}' never fires (no month has that day); pick a date that comes, e.g. '0 2 28 2 *'"
    except (ValueError, KeyError) as exc:
        return f"'{cron}' is not a cron expression croniter reads ({exc}), e.g. '0 2 * * *'"
    return None


# --- bounds shared by every model of opsctl.yaml (opsctl.config imports them) ---------------
# The lowest `health.interval` (and the monitor's `--interval`): a sweep runs every check, each
# with its own timeout of seconds, so sweeping faster than once a second only piles sweeps up;
# and the monitor's schedule adds the interval to a wall clock of ~1.7e9 s, where a step below
# ~2e-7 s is lost to rounding and the loop spins for ever (breaker 38 H4).
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 86400.0  # a day: the longest a continuous monitor waits between sweeps
INT32_MAX = 2**31 - 1  # Kubernetes' int32 fields (replicas, KEDA's periods)
MAX_TIMEOUT_S = 3600.0  # an hour: the longest one check or one alert delivery may take
MAX_MINUTES = 525600.0  # a year, in minutes: grace and reminder periods


def _refuse_url_secret(remedy: str):
    def check(value: str | None) -> str | None:
        from opsctl.redact import url_secret

        found = url_secret(value) if value is not None else None
        if found:  # the value itself is never echoed (config._describe leaves out url_secret input)
            raise PydanticCustomError("url_secret", "{reason}", {
                "reason": f"the URL carries {found}; opsctl.yaml is committed, so it only names secrets, "
                          f"never holds them: {remedy}"})
        return value
    return AfterValidator(check)


def SecretFreeUrl(remedy: str):  # noqa: N802 (a type, used as one)
    """`str` for a URL-valued setting, refused at load time when it carries a secret
    (opsctl.redact.url_secret: 'user:password@', `?token=`, `X-Amz-Signature=`, a Slack-style
    webhook path) with one line ending in `remedy`: where the secret goes instead."""
    return Annotated[str, _refuse_url_secret(remedy)]


class _Model(BaseModel):
    # NaN and infinities are refused in every float: `.nan` made alert rules that never fire
    # and `.inf` an OverflowError in int() (breaker 38 H3); each number also has a range.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


_Seconds = Annotated[float, Field(le=MAX_TIMEOUT_S)]  # and positive: HealthSettings._positive


class HttpCheck(_Model):
    """An HTTP endpoint judged by Gatus-style conditions."""

    name: str = Field(min_length=1)
    url: SecretFreeUrl("check an endpoint that needs no secret (a health or status path)") = Field(
        pattern=r"^https?://")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    conditions: list[str] = Field(default_factory=lambda: ["[STATUS] == 200"], min_length=1)
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S, description="seconds; default: health.timeout")
    severity: Literal["warning", "critical"] = "critical"
    follow_redirects: bool = Field(True, description="follow redirects and judge the final answer (as Gatus)")
    max_body_bytes: int | None = Field(None, ge=1, le=INT32_MAX,
                                       description="bytes of body read at most; default: health.max_body_bytes")

    @field_validator("conditions")
    @classmethod
    def _parse(cls, conditions: list[str]) -> list[str]:
        from opsctl.health.conditions import parse

        for text in conditions:
            parse(text)  # ValueError -> pydantic error naming the key
        return conditions


class Heartbeat(_Model):
    """An event that must happen on a schedule, e.g. the nightly backup.

    `source: push` counts `opsctl health --beat NAME` calls; `source: backup` counts the
    newest complete backup. CRITICAL when the last one is older than the latest time the
    cron expression says it should have happened, plus `grace_minutes`.
    """

    name: str = Field(min_length=1)
    cron: str = Field(description="when the event is expected, e.g. '0 2 * * *'")
    grace_minutes: float = Field(60.0, ge=0, le=MAX_MINUTES)
    source: Literal["push", "backup"] = "push"

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        problem = cron_problem(cron)
        if problem:
            raise ValueError(problem)
        return cron


class Sink(_Model):
    """Where alerts go. Secrets are read from the named environment variables at send time.

    A Slack sink takes `url_env` only: a Slack incoming-webhook URL (hooks.slack.com/services/
    T.../B.../...) is itself the secret, and opsctl.yaml is committed. Its `url:` used to be
    taken and shown in clear by `config show` (breaker 38 H1); refusing it, with the line
    saying to use url_env, breaks no documented setup (README and tests name Slack by url_env).
    A webhook sink may keep `url:` for an endpoint with no secret in it (an Alertmanager or
    an internal receiver, as tests and README use), but one that carries a secret (userinfo,
    `?token=`, a Slack/Discord/Teams webhook path: opsctl.redact.url_secret) is refused. A
    generic webhook's path may still be a token no rule can recognise, so `config show`
    prints a sink's URL with its path masked (opsctl.redact.redact).
    """

    type: Literal["slack", "pagerduty", "webhook", "email"]
    name: str = ""
    url_env: str | None = Field(None, description="env var holding the webhook URL")
    url: SecretFreeUrl("put the URL in an environment variable and name it with url_env") | None = Field(
        None, description="a URL with no secret in it (webhook: e.g. Alertmanager's; PagerDuty: events endpoint)")
    routing_key_env: str | None = Field(None, description="PagerDuty: env var with the integration key")
    smtp_host: str = "localhost"
    smtp_port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="e-mail: starttls (the default: refuse a server that does not offer it), "
                                "tls (implicit TLS, port 465) or none (plain text, only when written here)")
    starttls: bool | None = Field(None, description="older spelling: true = security starttls, false = none")
    ca_file: str | None = Field(None, description="e-mail: a CA bundle to trust for the SMTP server's certificate")
    username_env: str | None = None
    password_env: str | None = None
    sender: str = "opsctl@localhost"
    to: list[str] = Field(default_factory=list)
    send_resolved: bool = True
    timeout: float = Field(10.0, gt=0, le=MAX_TIMEOUT_S)
    operations: bool | None = Field(
        None, description="also send operation start/end events (deploys, restores, failovers, drills); "
                          "default: yes for slack, pagerduty (as change events) and webhook, no for email")

    @model_validator(mode="after")
    def _complete(self) -> "Sink":
        if self.type == "slack" and self.url:
            raise ValueError("a slack sink's URL is itself the secret (whoever has it can post), and opsctl.yaml "
                             "is committed: put it in an environment variable and name it with url_env")
        if self.type in ("slack", "webhook") and not (self.url_env or self.url):
            raise ValueError(f"a {self.type} sink needs url_env (the env var holding its URL)")
        if self.type == "pagerduty" and not self.routing_key_env:
            raise ValueError("a pagerduty sink needs routing_key_env (the env var holding the integration key)")
        if self.type == "email" and not self.to:
            raise ValueError("an email sink needs 'to: [address, ...]'")
        if self.starttls is not None and "security" not in self.model_fields_set:
            self.security = "starttls" if self.starttls else "none"
        self.name = self.name or self.type
        if self.operations is None:
            self.operations = self.type != "email"
        return self


class AlertSettings(_Model):
    """Gatus's defaults: 3 failures to fire, 2 successes to resolve, resolves sent."""

    failure_threshold: int = Field(3, ge=1, le=INT32_MAX)
    success_threshold: int = Field(2, ge=1, le=INT32_MAX)
    send_resolved: bool = True
    reminder_minutes: float | None = Field(60.0, gt=0, le=MAX_MINUTES,
                                           description="repeat while down; null: never")
    fail_on: Literal["critical", "warning"] = Field("critical", description="lowest status that counts as a failure")


class UploadLimits(_Model):
    """`health.uploads`: when incomplete chunked uploads (the worker's /v1/uploads) count as
    piling up. The worker aborts an upload after WORKER_UPLOAD_EXPIRY_SECONDS (1 h by default)."""

    incomplete: int = Field(100, ge=0, le=INT32_MAX, description="WARNING above this many incomplete uploads")
    oldest_incomplete_seconds: float = Field(
        7200.0, gt=0, le=MAX_MINUTES * 60, description="WARNING when the oldest incomplete upload is older (seconds): "
                                  "past the worker's expiry, its abort is not running")


class HealthSettings(_Model):
    """`environments.<name>.health`: timeouts (seconds), continuous and scheduled cadence,
    the body cap of HTTP checks (bytes), extra checks, heartbeats, alert sinks and flap protection."""
    timeout: float = Field(5.0, gt=0, le=MAX_TIMEOUT_S, description="seconds each check may take")
    timeouts: dict[str, _Seconds] = Field(default_factory=dict, description="per check name or kind")
    max_body_bytes: int = Field(1024 * 1024, ge=1, le=INT32_MAX, description="HTTP checks read a body only for a [BODY] "
                                "condition, and at most this many bytes; a larger body fails the check")
    interval: float = Field(30.0, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S,
                            description="continuous mode: seconds between sweeps (MIN_INTERVAL_S at least)")
    cron: str | None = Field(None, description="scheduled mode's default schedule")

    @field_validator("cron")
    @classmethod
    def _default_cron(cls, cron: str | None) -> str | None:
        problem = cron_problem(cron) if cron is not None else None
        if problem:
            raise ValueError(problem)
        return cron
    history: str = Field(".opsctl/health/history.jsonl", min_length=1, description="scheduled mode's JSONL, from the ops root")
    skip: list[str] = Field(default_factory=list, description="built-in checks to leave out (names or kinds)")
    http: list[HttpCheck] = Field(default_factory=list)
    heartbeats: list[Heartbeat] = Field(default_factory=list)
    sinks: list[Sink] = Field(default_factory=list)
    alerts: AlertSettings = AlertSettings()
    uploads: UploadLimits = UploadLimits()

    @field_validator("timeouts")
    @classmethod
    def _positive(cls, timeouts: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in timeouts.items() if v <= 0]
        if bad:
            raise ValueError(f"timeouts must be positive seconds (check {', '.join(bad)})")
        return timeouts
