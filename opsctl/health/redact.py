"""Secrets in URLs are never printed: a Slack webhook's path *is* its secret.

Everything after the host (path, query, credentials) is masked; the host stays so a person
can still tell which sink or endpoint a message is about.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def redact(url: str | None, keep_path: bool = False) -> str:
    """The URL with its secrets masked; `keep_path` for probes, whose paths hold none."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    if keep_path:
        return f"{parts.scheme}://{host}{port}{parts.path}" + ("?***" if parts.query else "")
    hidden = "/***" if (parts.path not in ("", "/") or parts.query or parts.username) else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def scrub(text: str, *secrets: str | None) -> str:
    """Replace each secret (and its URL form) in a message, e.g. an exception's text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact(secret) if "://" in secret else "***")
    return text
