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
    """http://127.0.0.1:<port>: moto's S3 endpoint URL."""
    return f"http://{procs.HOST}:{port}"


def start(port: int, log: Path, timeout: float = 60.0, pidfile: Path | None = None,
          on_spawn: Callable[[int], None] | None = None) -> int:
    """moto's server on 127.0.0.1:port; `pidfile` and `on_spawn` as in procs.spawn / pg.start."""
    pid = procs.spawn([sys.executable, "-m", "moto.server", "-H", procs.HOST, "-p", str(port)], log,
                      pidfile=pidfile)
    if on_spawn is not None:
        on_spawn(pid)
    procs.wait_until(lambda: ready(port), timeout, "s3 (moto)", log, pid, interval=0.2, ports=[port])
    return pid


def ready(port: int) -> bool:
    """True when moto's server on 127.0.0.1:`port` answers its API below 500 (2 s timeout)."""
    import httpx

    from opsctl import httpclient

    try:
        return httpclient.get(f"{endpoint(port)}/moto-api/", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def client(endpoint_url: str, read_timeout: float | None = None):
    """A boto3 S3 client for `endpoint_url` with moto's test credentials (5 retries); with
    `read_timeout` (seconds without a byte), 2 tries and a 5 s connect timeout: a moto that
    stopped answering fails a call within about a minute, not botocore's 5 x 60 s."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}) if read_timeout is None else Config(
        retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=read_timeout)
    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=config,
    )


def ensure_buckets(endpoint_url: str, names: list[str]) -> None:
    """Create the buckets of `names` that do not exist yet."""
    s3 = client(endpoint_url)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for name in names:
        if name not in existing:
            s3.create_bucket(Bucket=name)


INDEX = "index.json"


def _file_name(key: str) -> str:
    """An object's file: the SHA-256 of its key. S3 keys are not paths (`a/b` and `a/b/c`
    coexist, `../x` is legal), so a key never becomes a path and two keys never collide."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def save(endpoint_url: str, folder: Path) -> int:
    """Write every object of every bucket to folder/<bucket>/<sha256 of key> (0600, folders
    0700) and folder/index.json ({bucket: {file: key}}) last; return the count."""
    import json
    import os

    from opsctl.files import fsync_dir

    # `local down` waits on this: a moto stopped mid-save failed it after 6 minutes of silence
    # (botocore's and s3transfer's retries of 60 s reads; breaker 25 F3)
    s3 = client(endpoint_url, read_timeout=20)
    count = 0
    index: dict[str, dict[str, str]] = {}
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for bucket in (b["Name"] for b in s3.list_buckets().get("Buckets", [])):
        files = index.setdefault(bucket, {})
        (folder / bucket).mkdir(mode=0o700, exist_ok=True)  # bucket names are S3-checked: one plain word
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                name = _file_name(obj["Key"])
                target = folder / bucket / name
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    for chunk in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].iter_chunks(1 << 20):
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())  # durable before the index names it (a power loss mid-down)
                files[name] = obj["Key"]
                count += 1
        fsync_dir(folder / bucket)
    fd = os.open(folder / INDEX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(index, fh)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(folder)
    return count


def load(endpoint_url: str, folder: Path) -> int:
    """Upload what `save` wrote (by its index); a folder saved before the index existed is
    read as folder/<bucket>/<key path>, every path resolved inside its bucket folder."""
    import json

    if not folder.is_dir():
        return 0
    s3 = client(endpoint_url)
    count = 0
    if (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())
        for bucket, files in sorted(index.items()):
            if "/" in bucket or bucket in (".", ".."):
                continue
            ensure_buckets(endpoint_url, [bucket])
            for name, key in sorted(files.items()):
                path = folder / bucket / name
                if path.name != name or path.parent != folder / bucket or not path.is_file():
                    continue  # the index names only plain file names in the bucket's folder
                s3.upload_file(str(path), bucket, key)
                count += 1
        return count
    for bucket_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        ensure_buckets(endpoint_url, [bucket_dir.name])
        base = bucket_dir.resolve()
        for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file()):
            if not path.resolve().is_relative_to(base):
                continue
            s3.upload_file(str(path), bucket_dir.name, path.relative_to(bucket_dir).as_posix())
            count += 1
    return count
