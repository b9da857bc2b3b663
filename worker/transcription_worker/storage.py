"""Audio in S3 (or any S3-compatible endpoint: MinIO, moto), stored by content.

Objects are keyed by the audio's SHA-256, so a retried or repeated upload writes nothing new
and a job row only needs the key. A /v1/uploads file is `{prefix}uploads/{upload_id}` (or
`...{upload_id}-{n}`, the n-th claim's: the row's `file_key`), made at complete from its part
objects by S3 itself. Part objects live under a prefix of their own,
`{prefix}upload-parts/{upload_id}/`, which no completed file shares, so a bucket lifecycle rule
can expire whatever a crash left there (stacks/transcribe_infra/storage.py); uploads made
before that keep theirs at `{prefix}uploads/{upload_id}.parts/` (`legacy_parts_prefix`).
Uploads go through boto3's transfer manager (multipart for large files); credentials come from
the standard AWS chain (AWS_* variables, IRSA, profiles).
"""

from __future__ import annotations

import io
import re
from typing import BinaryIO

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
    """The audio bucket (`bucket` at `endpoint_url`, None for AWS) under `prefix`, through
    boto3 (3 attempts, 30 s read timeout, 20 pooled connections: `assemble` copies 8 parts
    at a time beside the requests in flight). botocore's ClientError propagates."""

    def __init__(self, bucket: str, endpoint_url: str | None, prefix: str = "audio/"):
        self.bucket, self.prefix = bucket, prefix
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            connect_timeout=3, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=20))
        # part PUTs carry their SHA-256 in x-amz-checksum-sha256, a signed header S3 checks the
        # body against, so the SigV4 payload hash (botocore computes it over the whole body on
        # http:// endpoints, a second SHA-256 pass per part) is left out: UNSIGNED-PAYLOAD, as
        # botocore does itself on https with a checksum
        self._parts = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            connect_timeout=3, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=20, s3={"payload_signing_enabled": False}))
        # presigned URLs with SigV4, which signs the Content-Length a URL was made for (SigV2
        # query auth, botocore's default for some endpoints, signs no header)
        self._presigner = boto3.client("s3", endpoint_url=endpoint_url, config=Config(signature_version="s3v4"))
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
        """Store `data` at `key` unless an object is already there (keys are content hashes)."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return  # same bytes already stored
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        extra = {"ContentType": content_type} if content_type else None
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, ExtraArgs=extra)

    def download(self, key: str) -> tuple[BinaryIO, str, int]:
        """The object at `key` copied, 1 MiB at a time, into an anonymous temporary file (on
        disk, gone when closed), rewound; with its SHA-256 (hex) and size in bytes. Memory
        stays flat whatever the object's size (a /v1/uploads file may be 2 GB)."""
        import hashlib
        import tempfile

        sha, size = hashlib.sha256(), 0
        out = tempfile.TemporaryFile(prefix="worker-audio-")
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(1024 * 1024):
                sha.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out, sha.hexdigest(), size

    def check(self) -> None:
        """Raises unless the bucket is reachable with our credentials (for /readyz)."""
        self._probe.head_bucket(Bucket=self.bucket)

    # --- the /v1/uploads API: one object per part, assembled server-side at complete ---

    def upload_key(self, upload_id: str) -> str:
        """`{prefix}uploads/{upload_id}`; raises ValueError unless `upload_id` is one the worker made."""
        if not re.fullmatch(r"upload_[0-9a-f]{32}", upload_id):
            raise ValueError("an upload key is made from an upload id")
        return f"{self.prefix}uploads/{upload_id}"

    def parts_prefix(self, upload_id: str) -> str:
        """Where an upload's part objects live: `{prefix}upload-parts/{upload_id}/`, a prefix no
        completed file shares (a lifecycle rule expires what is left there); raises ValueError
        unless `upload_id` is one the worker made."""
        self.upload_key(upload_id)
        return f"{self.prefix}upload-parts/{upload_id}/"

    @staticmethod
    def legacy_parts_prefix(upload_key: str) -> str:
        """Where uploads made before `parts_prefix` keep their part objects: `{upload_key}.parts/`."""
        return f"{upload_key}.parts/"

    @staticmethod
    def part_key(parts_prefix: str, name: str) -> str:
        """The key of one part object under `parts_prefix`: `name` is a worker part id (`part_`
        + 32 hex) or a presigned part's number (`n00001`); nothing the client sent."""
        if not re.fullmatch(r"part_[0-9a-f]{32}|n[0-9]{5}", name):
            raise ValueError("a part key is made from a part id or number")
        return parts_prefix + name

    def put_checked(self, key: str, data: bytes, sha256_b64: str) -> str:
        """Store `data` as the object at `key`, checked by S3 against its SHA-256 (base64, in a
        signed header; the payload itself is not hashed again for the signature); returns its ETag."""
        return self._parts.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256",
                                      ChecksumSHA256=sha256_b64)["ETag"]

    def assemble(self, key: str, content_type: str, sources: list[str], metadata: dict[str, str],
                 threads: int = 8) -> None:
        """Write the object at `key` as the concatenation of the objects `sources` (in that
        order; one may repeat) with S3's server-side UploadPartCopy, so no byte passes through
        this process: CreateMultipartUpload (with `metadata`), one copy per source (`threads`
        at a time), CompleteMultipartUpload. Every source but the last must hold at least
        5 MiB (S3's minimum part). On an error the multipart upload is aborted and the error
        raised; if this process dies instead, `abort_multiparts(key)` finds what it left."""
        from concurrent.futures import ThreadPoolExecutor

        mpu = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type,
                                                  Metadata=metadata)["UploadId"]
        try:
            def copy(numbered: tuple[int, str]) -> dict:
                n, source = numbered
                out = self.client.upload_part_copy(Bucket=self.bucket, Key=key, UploadId=mpu, PartNumber=n,
                                                   CopySource={"Bucket": self.bucket, "Key": source})
                return {"PartNumber": n, "ETag": out["CopyPartResult"]["ETag"]}

            with ThreadPoolExecutor(max(1, min(threads, len(sources)))) as pool:
                parts = list(pool.map(copy, enumerate(sources, start=1)))
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=mpu,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            self.abort_multipart(key, mpu)
            raise

    def presign_part_puts(self, parts_prefix: str, sizes: list[int], expires: int) -> list[str]:
        """Presigned PutObject URLs for parts 1..len(sizes) (objects `part_key(parts_prefix,
        "n00001")`...), valid `expires` seconds, each signed with its part's exact
        Content-Length (`sizes[n - 1]` bytes), so S3 refuses a body of any other size."""
        return [self._presigner.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self.part_key(parts_prefix, f"n{n:05d}"),
                                  "ContentLength": size}, ExpiresIn=expires)
            for n, size in enumerate(sizes, start=1)]

    def presigned_parts(self, parts_prefix: str) -> list[dict]:
        """The parts clients PUT at presigned URLs under `parts_prefix`: [{PartNumber, ETag,
        Size}] by number."""
        found = []
        for obj in self.objects(parts_prefix):
            name = obj["Key"].rsplit("/", 1)[-1]
            if re.fullmatch(r"n[0-9]{5}", name):
                found.append({"PartNumber": int(name[1:]), "ETag": obj["ETag"], "Size": obj["Size"]})
        return sorted(found, key=lambda p: p["PartNumber"])

    def uploads_prefix(self) -> str:
        """`{prefix}uploads/`: where completed /v1/uploads files (and their claim attempts' keys) live."""
        return f"{self.prefix}uploads/"

    def objects_page(self, prefix: str, start_after: str = "", max_keys: int = 1000) -> tuple[list[dict], str]:
        """One page of ListObjectsV2 under `prefix`, keys after `start_after` (at most
        `max_keys`): (objects, the key to start the next page after; "" when the listing ended)."""
        after = {"StartAfter": start_after} if start_after else {}
        out = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=max_keys, **after)
        found = out.get("Contents", [])
        return found, (found[-1]["Key"] if out.get("IsTruncated") and found else "")

    def objects(self, prefix: str) -> list[dict]:
        """The objects under `prefix` (ListObjectsV2, paged): Key, Size, ETag..."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o for page in pages for o in page.get("Contents", [])]

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (DeleteObjects, 1,000 a call); returns how many."""
        keys = [o["Key"] for o in self.objects(prefix)]
        for start in range(0, len(keys), 1000):
            out = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
            if out.get("Errors"):
                err = out["Errors"][0]
                raise RuntimeError(f"S3 could not delete {err.get('Key')}: {err.get('Code')}")
        return len(keys)

    def multiparts(self, prefix: str) -> list[dict]:
        """The multipart uploads open under `prefix` (ListMultipartUploads, paged): Key, UploadId..."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        return [u for page in pages for u in page.get("Uploads", [])]

    def abort_multiparts(self, key: str) -> int:
        """Abort every multipart upload open at exactly `key` (what a killed `assemble` left);
        returns how many."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=key)
        open_ = [u for page in pages for u in page.get("Uploads", []) if u["Key"] == key]
        for u in open_:
            self.abort_multipart(key, u["UploadId"])
        return len(open_)

    def abort_multipart(self, key: str, s3_upload_id: str) -> None:
        """Abort the multipart upload and drop its parts; one S3 no longer knows is not an error."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=s3_upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    def head(self, key: str) -> tuple[int, dict[str, str]] | None:
        """(size in bytes, user metadata) of the object at `key`, or None when there is none."""
        try:
            out = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(out["ContentLength"]), out.get("Metadata", {})

    def size_of(self, key: str) -> int | None:
        """The size in bytes of the object at `key`, or None when there is none."""
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def digests(self, key: str) -> tuple[str, str, int]:
        """(sha256 hex, md5 hex, size) of a stored object, read in 1 MiB pieces."""
        import hashlib

        sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(1024 * 1024):
            sha.update(chunk), md5.update(chunk)
            size += len(chunk)
        return sha.hexdigest(), md5.hexdigest(), size

    def delete(self, key: str) -> None:
        """Delete the object at `key`."""
        self.client.delete_object(Bucket=self.bucket, Key=key)
