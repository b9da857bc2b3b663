"""Audio in S3 (or any S3-compatible endpoint: MinIO, moto), stored by content.

Objects are keyed by the audio's SHA-256, so a retried or repeated upload writes nothing new
and a job row only needs the key. Uploads go through boto3's transfer manager (multipart for
large files); credentials come from the standard AWS chain (AWS_* variables, IRSA, profiles).
"""

from __future__ import annotations

import io
import re

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


_EXTENSION = re.compile(r"[a-z0-9]{1,8}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def safe_extension(filename: str | None) -> str:
    """The extension of a client's filename if it is 1-8 ASCII letters/digits, else `bin`."""
    if not filename or "." not in filename:
        return "bin"
    ext = filename.rsplit(".", 1)[-1].lower()
    return ext if _EXTENSION.fullmatch(ext) else "bin"


class AudioStore:
    def __init__(self, bucket: str, endpoint_url: str | None, prefix: str = "audio/"):
        self.bucket, self.prefix = bucket, prefix
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            connect_timeout=3, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}))
        self._probe = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            connect_timeout=2, read_timeout=2, retries={"max_attempts": 1}))

    def key_for(self, sha256: str, filename: str | None) -> str:
        """`{prefix}{sha[:2]}/{sha}.{ext}`. Nothing the client sent reaches the key but the
        file's extension, and only when it is 1-8 ASCII letters and digits (`wav`, `mp3`, `m4a`);
        anything else (`/`, `\\`, `..`, control characters, spaces, non-ASCII) becomes `bin`."""
        if not _SHA256.fullmatch(sha256):
            raise ValueError("an audio key is made from a SHA-256 hex digest")
        return f"{self.prefix}{sha256[:2]}/{sha256}.{safe_extension(filename)}"

    def put(self, key: str, data: bytes, content_type: str | None) -> None:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return  # same bytes already stored
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        extra = {"ContentType": content_type} if content_type else None
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, ExtraArgs=extra)

    def get(self, key: str) -> bytes:
        buf = io.BytesIO()
        self.client.download_fileobj(self.bucket, key, buf)
        return buf.getvalue()

    def check(self) -> None:
        """Raises unless the bucket is reachable with our credentials (for /readyz)."""
        self._probe.head_bucket(Bucket=self.bucket)
