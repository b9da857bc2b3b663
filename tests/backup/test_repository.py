"""The S3 repository against moto's S3 over HTTP: a failed part is retried, not fatal."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from opsctl.backup.pipeline import StreamStats, pack, unpack
from opsctl.backup.keys import BackupKey
from opsctl.backup.repository import S3Repository

pytestmark = pytest.mark.integration


def test_failed_part_is_retried_and_backup_completes(s3):
    from botocore.exceptions import ConnectionClosedError

    client = s3.client()
    bucket = s3.make_bucket("bk")
    failures = {"UploadPart": 0}

    def fail_first_part_twice(request, **_):
        if failures["UploadPart"] < 2:
            failures["UploadPart"] += 1
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register("before-send.s3.UploadPart", fail_first_part_twice)
    repo = S3Repository(client, bucket, "opsctl", f"s3://{bucket}/opsctl", part_size=5 << 20)
    data = os.urandom(12 << 20)
    key = BackupKey(b"r" * 32)
    stats = StreamStats()
    repo.put("b1/db.dump.zst", pack(io.BytesIO(data), 1, key, stats))

    assert failures["UploadPart"] == 2  # two attempts really failed
    assert repo.open_uploads() == []
    stored = repo.get_bytes("b1/db.dump.zst")
    assert hashlib.sha256(stored).hexdigest() == stats.sha256
    assert b"".join(unpack(repo.get("b1/db.dump.zst"), "db", stats.sha256, stats.stored_bytes, key)) == data
