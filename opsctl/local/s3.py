"""The S3 endpoint of the embedded platform: moto in server mode on 127.0.0.1.

moto keeps objects in memory only, so `save` writes every bucket's objects under the state
folder at `down` and `load` puts them back at `up`; the platform's S3 data survives like
its PostgreSQL and Redis data. Other emulated AWS resources are ephemeral.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from opsctl.local import procs

# moto accepts any credentials; these make boto3 sign requests without a real account.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "opsctl-local", "AWS_SECRET_ACCESS_KEY": "opsctl-local",
               "AWS_DEFAULT_REGION": "us-east-1"}


def endpoint(port: int) -> str:
    return f"http://{procs.HOST}:{port}"


def start(port: int, log: Path, timeout: float = 60.0, pidfile: Path | None = None,
          on_spawn: Callable[[int], None] | None = None) -> int:
    """moto's server on 127.0.0.1:port; `pidfile` and `on_spawn` as in procs.spawn / pg.start."""
    pid = procs.spawn([sys.executable, "-m", "moto.server", "-H", procs.HOST, "-p", str(port)], log,
                      pidfile=pidfile)
    if on_spawn is not None:
        on_spawn(pid)
    procs.wait_until(lambda: _ready(port), timeout, "s3 (moto)", log, pid, interval=0.2)
    return pid


def _ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"{endpoint(port)}/moto-api/", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def client(endpoint_url: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


def ensure_buckets(endpoint_url: str, names: list[str]) -> None:
    s3 = client(endpoint_url)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for name in names:
        if name not in existing:
            s3.create_bucket(Bucket=name)


def save(endpoint_url: str, folder: Path) -> int:
    """Write every object of every bucket to folder/<bucket>/<key>; return the count."""
    s3 = client(endpoint_url)
    count = 0
    for bucket in (b["Name"] for b in s3.list_buckets().get("Buckets", [])):
        (folder / bucket).mkdir(parents=True, exist_ok=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                target = folder / bucket / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(target))
                count += 1
    return count


def load(endpoint_url: str, folder: Path) -> int:
    """Upload what `save` wrote; buckets are the first level of folders."""
    if not folder.is_dir():
        return 0
    s3 = client(endpoint_url)
    count = 0
    for bucket_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        ensure_buckets(endpoint_url, [bucket_dir.name])
        for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file()):
            s3.upload_file(str(path), bucket_dir.name, path.relative_to(bucket_dir).as_posix())
            count += 1
    return count
