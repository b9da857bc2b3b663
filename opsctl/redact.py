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
from urllib.parse import urlsplit

MASK = "***"

# scheme://user:password@host — the password ends at the last '@' before the host
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@'\"]*):(?P<pw>[^\s'\"]*)@")
# key=value conninfo (libpq) and query parameters: password=…, sslpassword=…, token=…
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:ssl)?pass(?:word)?|\b(?:api_?key|token|secret|auth_token|x-amz-security-token)"
    r")(?P<sep>\s*=\s*)(?P<val>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,]+)",
    re.IGNORECASE)


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


def credentials(text: str | None) -> str:
    """`text` with every password in it masked: URL userinfo and `key=value` pairs alike.

    `postgresql://app:s3cret@db/x` becomes `postgresql://app:***@db/x`;
    `host=db password='a b' user=app` becomes `host=db password=*** user=app`.
    The user name and host stay, so the message still says which connection failed.
    """
    if not text:
        return text or ""
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
