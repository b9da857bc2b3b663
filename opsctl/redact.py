"""One redaction step for everything that turns a driver's or a child's error into output.

Two kinds of secret reach error text:

- URLs: a Slack webhook's path *is* its secret, and a database URL carries its password
  (libpq repeats a malformed URI word for word, password included). `redact` masks a URL
  for display; `credentials` finds every URL inside free text and masks its password.
- libpq `key=value` conninfo (`password=…`, `sslpassword=…`) and the like.

Every path that prints, logs, stores or sends an error text (tables, `--json`, JUnit,
alerts, journals) passes it through `credentials` first, so no caller has to know which
driver might echo a password.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"
_MIN_SECRET = 4  # shorter values would mask ordinary words

# secrets this process has read (passwords of the URLs it resolved, keys from the
# environment), masked wherever they appear: libpq repeats a malformed password on its own,
# quoted, where no URL pattern can tell it is one
_known: set[str] = set()

# scheme://user:password@host — the password ends at the last '@' before the host
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@'\"]*):(?P<pw>[^\s'\"]*)@")
# key=value conninfo (libpq) and query parameters: password=…, sslpassword=…, token=…
# (presigned S3 URLs carry X-Amz-Signature and X-Amz-Credential, Azure SAS URLs sig=)
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:ssl)?pass(?:word)?|\b(?:[\w-]*api_?key|[\w-]*token|[\w-]*secret|auth_token|sig"
    r"|x-amz-(?:security-token|signature|credential))"
    r")(?P<sep>\s*=\s*)(?P<val>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,]+)",
    re.IGNORECASE)
# query parameters that carry a secret: tokens, keys, passwords, signatures (presigned S3
# X-Amz-Signature/-Credential, Azure SAS sig), session and auth codes
_SECRET_PARAM = re.compile(r"pass|secret|token|signature|credential|api_?key|^key$|^sig$|auth|session",
                           re.IGNORECASE)
# webhook URLs whose path is the secret itself: whoever has the URL can post
_SECRET_PATH_HOSTS = (("hooks.slack.com", "/"), ("discord.com", "/api/webhooks/"),
                      ("discordapp.com", "/api/webhooks/"), (".webhook.office.com", "/"),
                      ("chat.googleapis.com", "/"), ("hooks.zapier.com", "/hooks/"))


def redact(url: str | None, keep_path: bool = False) -> str:
    """The URL with its secrets masked, for showing which endpoint a message is about.

    Everything after the host (path, query, credentials) is masked; `keep_path` keeps the
    path for probes, whose paths hold none. Text that is not a URL becomes `***`.
    """
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    if keep_path:
        return f"{parts.scheme}://{host}{port}{parts.path}" + (f"?{MASK}" if parts.query else "")
    hidden = f"/{MASK}" if (parts.path not in ("", "/") or parts.query or parts.username) else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def url_secret(url: str | None) -> str | None:
    """What secret `url` carries, in words that never repeat it, or None: credentials in its
    userinfo ('user:password@', or a token as the user name), a query or fragment parameter
    named like a secret (`token=`, `X-Amz-Signature=`, `sig=`, `api_key=`...), or a webhook
    URL whose path is its own secret (hooks.slack.com/services/..., Discord, Teams, Google
    Chat, Zapier). A value with no scheme is read as `host:port` (an exporter target).
    For settings a committed file holds: opsctl.config refuses such URLs at load time."""
    if not url:
        return None
    text = url.strip()
    split = text if "://" in text else "//" + text
    try:
        parts = urlsplit(split)
        host = (parts.hostname or "").lower()
    except ValueError:  # 'http://[::1' and the like: judge the authority by hand
        authority = split.split("//", 1)[-1].split("/", 1)[0]
        return "credentials ('user:password@')" if "@" in authority else None
    if "@" in parts.netloc:
        return "credentials ('user:password@' or a token as the user name)"
    for where, part in (("query", parts.query), ("fragment", parts.fragment)):
        for name, _ in parse_qsl(part, keep_blank_values=True):
            if _SECRET_PARAM.search(name):  # the name only when it is a plain key=: no value in it
                plain = len(name) <= 40 and re.fullmatch(r"[\w.-]+", name) and f"{name}=" in part
                return f"a secret in its {where}" + (f" (parameter '{name}')" if plain else "")
    for suffix, path in _SECRET_PATH_HOSTS:
        if (host == suffix or host.endswith(suffix if suffix.startswith(".") else "." + suffix)) \
                and parts.path.startswith(path) and parts.path.strip("/"):
            return f"a secret in its path (a {host} webhook URL is itself the secret)"
    return None


def url_password(url: str | None) -> str | None:
    """The password in a URL's userinfo, read leniently (a malformed URL has one too), or None.

    `postgresql://app:"p w"@[::1/x` gives `"p w"`: everything between the first ':' after
    the scheme's '//' and the last '@' of the authority. A `password=` query parameter counts.
    """
    if not url or "://" not in url:
        return None
    rest = url.split("://", 1)[1]
    found = None
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if "/" in userinfo:  # an '@' in the path: the authority ends at the first '/'
            authority = rest.split("/", 1)[0]
            userinfo = authority.rsplit("@", 1)[0] if "@" in authority else ""
        if ":" in userinfo:
            found = userinfo.split(":", 1)[1] or None
    query = re.search(r"[?&]password=([^&#]*)", url)
    return found or (query.group(1) if query else None)


def remember(*secrets: str | None) -> None:
    """Mask these values (and their quoted, percent-encoded and decoded forms) from now on.

    Called where opsctl reads a secret: the URLs the endpoint resolver hands out, keys read
    from the environment. Values shorter than 4 characters are ignored.
    """
    for secret in secrets:
        if not secret:
            continue
        forms = {secret, secret.strip("'\""), unquote(secret), quote(secret, safe="")}
        _known.update(f for f in forms if len(f) >= _MIN_SECRET)


def credentials(text: str | None) -> str:
    """`text` with every password in it masked: URL userinfo and `key=value` pairs alike.

    `postgresql://app:s3cret@db/x` becomes `postgresql://app:***@db/x`;
    `host=db password='a b' user=app` becomes `host=db password=*** user=app`.
    Every value given to `remember` is masked too, in any position.
    The user name and host stay, so the message still says which connection failed.
    """
    if not text:
        return text or ""
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with each known secret (and its URL form) replaced, then `credentials` applied.

    For an exception's text when the caller knows the secret it used (a webhook URL, an
    SMTP password); unknown credentials in URLs and conninfo are masked as well.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact(secret) if "://" in secret else MASK)
    return credentials(text)


def masked(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, str, numbers) with every string through `credentials`."""
    if isinstance(value, str):
        return credentials(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value
