"""The backup of the audio bucket copies completed objects only (issue 26): the parts of a
multipart upload still open there (a recording being uploaded in chunks) are not objects
yet; the backup neither copies them nor touches the upload, and succeeds."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from backup_support import KEY, ok
from opsctl.cli import app

pytestmark = pytest.mark.slow


def test_an_open_multipart_upload_in_the_audio_bucket_is_left_out(benv, seeded, runner):
    from opsctl.backup import catalog
    from opsctl.backup.keys import parse

    s3 = benv.endpoints().s3_client()
    key = f"bktest/uploading-{uuid.uuid4().hex[:8]}.mp3"
    part = os.urandom(5 << 20)  # S3's smallest part that may be followed by others
    upload = s3.create_multipart_upload(Bucket=seeded.bucket, Key=key)["UploadId"]
    try:
        s3.upload_part(Bucket=seeded.bucket, Key=key, PartNumber=1, UploadId=upload, Body=part)
        made = ok(runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "files", "--json"]))
        repo = benv.repo()
        manifest = catalog.load(repo, made["id"], parse(KEY, "test"))
        backed_up = {o.key: o for o in manifest.files.objects}
        assert set(seeded.audio) <= set(backed_up)  # the completed recordings are there
        assert key not in backed_up
        digest = hashlib.sha256(part).hexdigest()
        assert all(o.sha256 != digest and o.size != len(part) for o in manifest.files.objects)
        stored = repo.names(f"{made['id']}/")
        assert len(part) not in stored.values() and len(stored) == len(manifest.files.objects) + 2  # + manifest, start record
        # the upload is still open, its part in place: the backup neither completed nor aborted it
        open_ = s3.list_multipart_uploads(Bucket=seeded.bucket, Prefix=key).get("Uploads", [])
        assert [u["UploadId"] for u in open_] == [upload]
        parts = s3.list_parts(Bucket=seeded.bucket, Key=key, UploadId=upload)["Parts"]
        assert [p["Size"] for p in parts] == [len(part)]
        assert "Contents" not in s3.list_objects_v2(Bucket=seeded.bucket, Prefix=key)
        ok(runner.invoke(app, ["backup", "verify", made["id"], "--env", benv.name, "--json"]))
    finally:
        s3.abort_multipart_upload(Bucket=seeded.bucket, Key=key, UploadId=upload)
