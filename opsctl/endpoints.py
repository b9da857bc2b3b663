"""Where an environment's services answer: one resolver for every capability.

Backup, restore, health and load tests all need the same URLs. For `platform: local` they
come from the embedded platform's state file (ports chosen at first `opsctl local up`);
for kubernetes environments from opsctl.yaml and the environment variables it names, so
secrets never pass through opsctl.yaml.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from opsctl.config import Environment, Project
from opsctl.errors import UsageError


@dataclass
class Endpoints:
    """Where one environment's services answer (see `resolve`). `env` is the environment's
    name; URLs hold passwords (redacted in every error, never printed); `workers` maps a
    color to its worker's base URL (local only: the live ones), `active_color` is the
    color the router serves (local only; None: unknown here). `aws_credentials` are the
    embedded S3's only; cloud environments use the AWS credential chain."""

    env: str
    platform: str
    database_url: str | None
    redis_url: str | None
    s3_endpoint_url: str | None
    audio_bucket: str
    backup_bucket: str
    router_url: str | None
    workers: dict[str, str] = field(default_factory=dict)  # color -> base URL
    active_color: str | None = None
    aws_region: str = "us-east-1"
    aws_profile: str | None = None
    # credentials for the embedded S3 only; cloud environments use the AWS credential chain
    aws_credentials: dict[str, str] = field(default_factory=dict, repr=False)

    def s3_client(self, retries: int = 8, timeout: float | None = None):
        """A boto3 S3 client for this environment (its endpoint, region, profile or embedded
        credentials), retrying in adaptive mode up to `retries` times after the first attempt
        (botocore's `max_attempts`, which does not count the first); `timeout`: seconds to
        connect and to wait for each read (botocore's defaults, 60 s, when None)."""
        from botocore.config import Config

        session = aws_session(self.aws_profile)
        kwargs = {}
        if self.aws_credentials:
            kwargs = {"aws_access_key_id": self.aws_credentials["AWS_ACCESS_KEY_ID"],
                      "aws_secret_access_key": self.aws_credentials["AWS_SECRET_ACCESS_KEY"]}
        times = {"connect_timeout": timeout, "read_timeout": timeout} if timeout is not None else {}
        return session.client("s3", endpoint_url=self.s3_endpoint_url, region_name=self.aws_region,
                              config=Config(retries={"max_attempts": retries, "mode": "adaptive"}, **times),
                              **kwargs)


def resolve(project: Project, env: Environment) -> Endpoints:
    """The URLs of `env`'s services; their passwords are remembered by `opsctl.redact`.

    Raises UsageError when the embedded platform of a `local` environment was never started,
    or when the database URL is one libpq would misread (check_database_url).
    """
    if env.platform == "local":
        return _local(project, env)
    from opsctl.redact import remember, url_password

    database_url, redis_url = os.environ.get(env.database.url_env), os.environ.get(env.redis.url_env)
    remember(url_password(database_url), url_password(redis_url))  # masked in every error
    check_database_url(database_url, env.database.url_env)
    return Endpoints(
        env=env.name, platform=env.platform,
        database_url=database_url, redis_url=redis_url,
        s3_endpoint_url=env.aws.endpoint_url,
        audio_bucket=env.buckets.audio, backup_bucket=env.buckets.backups,
        router_url=env.router_url, aws_region=env.aws.region, aws_profile=env.aws.profile,
    )


def libpq_parts(url: str) -> tuple[str, str, str, str] | None:
    """A postgres URL split where libpq splits it: (scheme, userinfo, host list, the rest: path
    and query); None for anything else. libpq ends the userinfo at the first '@' met before any
    '/' and the hosts at '/' or '?' (fe-connect.c, conninfo_uri_parse_options); urllib ends the
    authority at '?' and '#' too, so a password holding one of those split elsewhere."""
    scheme, sep, rest = url.partition("://")
    if not sep or not (scheme in ("postgres", "postgresql") or scheme.startswith("postgresql+")):
        return None
    end = next((i for i, ch in enumerate(rest) if ch in "@/"), len(rest))
    userinfo, hosts = (rest[:end], rest[end + 1:]) if rest[end:end + 1] == "@" else ("", rest)
    cut = next((i for i, ch in enumerate(hosts) if ch in "/?"), len(hosts))
    return scheme, userinfo, hosts[:cut], hosts[cut:]


# after the '/' that ends the hosts: an '@' followed by what reads as `host:port` or `host/db`
_HOST_AFTER_AT = re.compile(r"@[^/]*:[0-9]+(?:/|$)|@[^/]*/")


def check_database_url(url: str | None, variable: str) -> None:
    """UsageError (naming `variable`, never its value) when libpq would read the URL in it other
    than as written: a password holding an '@' or '/' that is not percent-encoded.

    libpq ends a URL's userinfo at the first '@' met before any '/' (fe-connect.c,
    conninfo_uri_parse_options): with `postgresql://app:p@ss@db/x` it takes `ss@db` for the host
    name, and with `postgresql://app:pa/ss@db/x` it takes `pa` for the port, and prints either in
    its error, a piece of the password that no mask knew (breaker 53 F2). A host never holds an
    '@', so neither reading can be meant; a key=value conninfo is left to libpq's own quoting."""
    parts = libpq_parts(url) if url else None
    if parts is None:
        return
    _scheme, userinfo, hosts, rest = parts
    said = None
    if userinfo and "@" in hosts:
        said = "an '@' in its password is not percent-encoded (libpq would take the rest for the host name)"
    elif not userinfo and "@" in rest.split("?", 1)[0]:  # no userinfo before the '/', an '@' after it
        port = hosts.rsplit(":", 1)[1] if ":" in hosts and not hosts.endswith("]") else ""
        if port and not port.isdigit():
            said = "a '/' in its password is not percent-encoded (libpq would take part of it for the port)"
        elif _HOST_AFTER_AT.search(rest.split("?", 1)[0]):
            # `postgresql://app:2024/pw@db:5432/x`: a password of digits then '/' reads as a port,
            # and libpq takes `pw@db:5432/x` for the database name (breaker 54 F8b); a database
            # named `d@b` stays taken, one that reads `@host:port` or `@host/...` is not meant
            said = ("a '/' in its password is not percent-encoded (libpq would take the text before it for the "
                    "host and port, and the rest for the database name)")
    if said:
        raise UsageError(f"${variable}: {said}; percent-encode the password's special characters ('@' as %40, "
                         "'/' as %2F, ':' as %3A), e.g. with python3 -c \"import urllib.parse, getpass; "
                         "print(urllib.parse.quote(getpass.getpass(), safe=''))\"")


def _local(project: Project, env: Environment) -> Endpoints:
    from opsctl.local import procs
    from opsctl.local import s3 as s3mod
    from opsctl.local import state as st
    from opsctl.local import worker as wk
    from opsctl.local.platform import live_pid

    state = st.load(st.folder_for(project.root))
    comps = state.components
    missing = [c for c in ("postgres", "redis", "s3", "router") if c not in comps]
    if missing:
        said = "was never started" if len(missing) == 4 else f"has never started its {', '.join(missing)}"
        raise UsageError(f"the local platform of {project.root} {said}; run 'opsctl local up'")
    from urllib.parse import quote

    host = procs.HOST
    # a color is up when its process is still ours (platform.live_pid: it listens on the color's
    # port, or its PID file names it), never on a recorded PID alone: after the color stopped,
    # the PID may run another program, and probing it would page for a color stopped on purpose
    workers = {c: wk.base_url(comps[wk.name(c)].port) for c in st.COLORS
               if wk.name(c) in comps and live_pid(state, wk.name(c)) is not None}
    return Endpoints(
        env=env.name, platform="local",
        # the name percent-encoded: a database called "Ops Media" is a valid URL path segment
        database_url=f"postgresql://postgres@{host}:{comps['postgres'].port}/{quote(env.database.name, safe='')}",
        redis_url=f"redis://{host}:{comps['redis'].port}/0",
        s3_endpoint_url=s3mod.endpoint(comps["s3"].port),
        audio_bucket=env.buckets.audio, backup_bucket=env.buckets.backups,
        router_url=f"http://{host}:{comps['router'].port}",
        workers=workers, active_color=state.active_color,
        aws_region=s3mod.CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_credentials={k: v for k, v in s3mod.CREDENTIALS.items() if k.startswith("AWS_") and "REGION" not in k},
    )


def aws_session(profile: str | None):
    """A boto3 Session for `profile` (aws.profile; None: the default credential chain).
    UsageError (exit 2) when the profile is not configured on this machine: a setting to fix,
    not a failed operation (breaker 65 G8: `dr drill --env staging` without the profile exited 1
    with botocore's text)."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.Session(profile_name=profile) if profile else boto3.Session()
    except ProfileNotFound:
        raise UsageError(f"AWS profile '{profile}' (aws.profile in opsctl.yaml) is not configured on this machine; "
                         f"add it (aws configure --profile {profile}) or set aws.profile to one that is") from None
