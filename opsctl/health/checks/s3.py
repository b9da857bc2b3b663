"""S3: every bucket reachable, and a canary object written, read back and removed.

A bucket that answers HEAD can still refuse writes (a policy, a full quota, a read-only
replica): only a real round trip of a small object shows that the worker can store audio.
The client is kept between sweeps (creating one costs more CPU than the check itself) and
never retries: a retry would hide exactly the slowness a health check is for.
"""

from __future__ import annotations

import functools
import time
import uuid

from opsctl.health.model import CheckResult, Judge, Status

CANARY_PREFIX = ".opsctl-health/"


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, region: str, profile: str | None, timeout: float,
            key_id: str | None, secret: str | None):
    import boto3
    from botocore.config import Config

    session = boto3.Session(profile_name=profile) if profile else boto3.Session()
    creds = {"aws_access_key_id": key_id, "aws_secret_access_key": secret} if key_id else {}
    return session.client("s3", endpoint_url=endpoint, region_name=region, **creds,
                          config=Config(connect_timeout=timeout, read_timeout=timeout,
                                        retries={"max_attempts": 1, "mode": "standard"}))


def client(endpoints, timeout: float):
    """A boto3 S3 client for an environment's resolved endpoints (opsctl.endpoints): its
    endpoint URL, region, profile and credentials, `timeout` seconds to connect and to read,
    one attempt (a check reports, it does not retry). Cached per those values."""
    creds = endpoints.aws_credentials
    return _client(endpoints.s3_endpoint_url, endpoints.aws_region, endpoints.aws_profile, timeout,
                   creds.get("AWS_ACCESS_KEY_ID"), creds.get("AWS_SECRET_ACCESS_KEY"))


def s3(endpoints, timeout: float, slow_ms: float) -> CheckResult:
    """Each bucket of the environment is reachable, and a canary object is written, read
    back and deleted; value in ms; WARNING when slower than `slow_ms`."""
    from botocore.exceptions import BotoCoreError, ClientError

    creds = endpoints.aws_credentials
    client = _client(endpoints.s3_endpoint_url, endpoints.aws_region, endpoints.aws_profile, timeout,
                     creds.get("AWS_ACCESS_KEY_ID"), creds.get("AWS_SECRET_ACCESS_KEY"))
    buckets = [endpoints.audio_bucket, endpoints.backup_bucket]
    key = f"{CANARY_PREFIX}canary-{uuid.uuid4().hex}"
    payload = uuid.uuid4().bytes
    began = time.perf_counter()
    step = "HEAD bucket"
    try:
        for bucket in buckets:
            step = f"HEAD {bucket}"
            client.head_bucket(Bucket=bucket)
        step = f"PUT canary in {buckets[0]}"
        client.put_object(Bucket=buckets[0], Key=key, Body=payload)
        step = "GET canary"
        read = client.get_object(Bucket=buckets[0], Key=key)["Body"].read()
        step = "DELETE canary"
        client.delete_object(Bucket=buckets[0], Key=key)
    except (BotoCoreError, ClientError) as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
        return CheckResult("", "s3", Status.CRITICAL, f"{step} failed: {code or type(exc).__name__}",
                           details={"buckets": buckets})
    ms = (time.perf_counter() - began) * 1000
    judge = Judge()
    if read != payload:
        judge.add(Status.CRITICAL, "canary read back differs from what was written")
    judge.over("canary round trip", round(ms, 1), slow_ms, " ms")
    return CheckResult("", "s3", judge.status(),
                       judge.message(f"{len(buckets)} buckets, canary round trip in {ms:.0f} ms"),
                       round(ms, 1), "ms", details={"buckets": buckets})
