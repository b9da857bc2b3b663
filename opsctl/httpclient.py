"""httpx's one-call functions (get, post, put, request) with one TLS context per process.

`httpx.get(url)` builds a Client for the call, and every Client loads the CA bundle into a
new SSL context, even for a plain-http URL: 62 ms of CPU per request on this project's
2-core machines, against 1.7 ms with the context built once. opsctl polls its servers
(`/readyz` every 0.1 s while a worker loads its model), so each poll took about 60 % of a
core from the server it was waiting for. These functions take the same arguments as
httpx's and verify TLS the same way (certifi's bundle, or $SSL_CERT_FILE / $SSL_CERT_DIR,
read once); nothing else is shared between calls (no pooled connections: a server polled
here is often one that was just restarted on the same port).
"""

from __future__ import annotations

import functools
from typing import Any

import httpx


@functools.lru_cache(maxsize=1)
def tls_context():
    """The verifying ssl.SSLContext httpx would build for a call (httpx.create_ssl_context), built once."""
    return httpx.create_ssl_context()


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """httpx.request with the process's TLS context unless `verify` is given."""
    kwargs.setdefault("verify", tls_context())
    return httpx.request(method, url, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    """httpx.get with the process's TLS context unless `verify` is given."""
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    """httpx.post with the process's TLS context unless `verify` is given."""
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> httpx.Response:
    """httpx.put with the process's TLS context unless `verify` is given."""
    return request("PUT", url, **kwargs)
