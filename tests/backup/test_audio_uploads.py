"""The backup of the audio bucket copies completed objects only (issue 26): the parts of a
multipart upload still open there (a recording being uploaded in chunks) are not objects
yet; the backup neither copies them nor touches the upload, and succeeds."""

from __future__ import annotations

import hashlib
import json
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


def _upload_row(conn, upload_id: str, status: str, s3_key: str, file_key: str | None) -> None:
    conn.execute("insert into uploads (id, api_key_id, filename, bytes, mime_type, purpose, status, s3_key, "
                 "expires_at, file_key) values (%s, 'k', 'ep.mp3', 1, 'audio/mpeg', 'transcription', %s, %s, "
                 "now() + interval '1 hour', %s)", (upload_id, status, s3_key, file_key))


def test_an_upload_file_the_database_does_not_call_completed_is_left_out(benv, seeded, runner):
    """Breaker 57 F1: a complete whose worker was killed after S3 assembled the file left it in
    the bucket while the upload was still pending (until a retry, a cancel or the expiry), and
    the audio backup copied it: 40 MiB the database never had as a file. Only the file a
    completed upload records (`file_key`, or `s3_key` for uploads completed before it) is
    copied; a stale attempt key of a completed upload is left out too."""
    import psycopg

    from opsctl.backup import catalog
    from opsctl.backup.keys import parse
    from transcription_worker import db as worker_db

    s3 = benv.endpoints().s3_client()
    worker_db.migrate(seeded.db_url)  # the worker's own schema, as a worker running here makes it
    done, killed, old = (f"upload_{uuid.uuid4().hex}" for _ in range(3))
    keys = {"done": f"audio/uploads/{done}-2", "stale": f"audio/uploads/{done}",  # its attempt 1, not its file
            "killed": f"audio/uploads/{killed}", "old": f"audio/uploads/{old}",
            # breaker 58 G3: keys of the same form that no row names (another tool's folder) are kept
            "foreign": f"archive/2024/uploads/upload_{uuid.uuid4().hex}", "root": f"uploads/{done}-3"}
    for key in keys.values():
        s3.put_object(Bucket=seeded.bucket, Key=key, Body=key.encode() * 1000)
    try:
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            _upload_row(conn, done, "completed", keys["stale"], keys["done"])
            _upload_row(conn, killed, "pending", keys["killed"], None)
            _upload_row(conn, old, "completed", keys["old"], None)  # completed before file_key was recorded
        result = runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "files", "--json"])
        made = ok(result)
        said = " ".join(result.stderr.split())
        # the pending upload's file is named; the stale claim key may already be gone: a worker
        # running on this platform sweeps an ended upload's stray keys on its own (its keeper)
        assert "upload file(s) the worker's database records as no completed" in said and keys["killed"] in said, said
        manifest = catalog.load(benv.repo(), made["id"], parse(KEY, "test"))
        backed_up = {o.key for o in manifest.files.objects}
        assert set(seeded.audio) <= backed_up
        assert {keys["done"], keys["old"], keys["foreign"], keys["root"]} <= backed_up, backed_up
        assert not {keys["stale"], keys["killed"]} & backed_up, backed_up
    finally:
        for key in keys.values():
            s3.delete_object(Bucket=seeded.bucket, Key=key)
        with psycopg.connect(seeded.db_url, autocommit=True) as conn:
            conn.execute("delete from uploads where id = any(%s)", ([done, killed, old],))


def test_an_audio_object_deleted_while_the_backup_runs_is_left_out_and_the_backup_stands(benv, seeded, runner,
                                                                                          monkeypatch):
    """Breaker 57 F2: the worker deletes audio at any hour (retention, expiry, a retried
    complete's clean-up, the orphan sweep); an object listed and then deleted before its copy
    failed the whole backup with "unexpected NoSuchKey". It is left out and the backup stands."""
    from opsctl.backup import catalog, files
    from opsctl.backup.keys import parse

    s3 = benv.endpoints().s3_client()
    doomed = f"bktest/retired-{uuid.uuid4().hex[:8]}.mp3"
    s3.put_object(Bucket=seeded.bucket, Key=doomed, Body=b"x" * 4096)
    listed = files.inventory

    def inventory_then_retire(*args, **kwargs):  # the worker's retention deletes it right after the listing
        objects = listed(*args, **kwargs)
        assert doomed in {o["key"] for o in objects}
        s3.delete_object(Bucket=seeded.bucket, Key=doomed)
        return objects

    monkeypatch.setattr(files, "inventory", inventory_then_retire)
    made = runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "files", "--json"])
    assert made.exit_code == 0, made.output
    assert "were deleted while the backup ran" in " ".join(made.stderr.split()), made.stderr
    manifest = catalog.load(benv.repo(), json.loads(made.stdout)["id"], parse(KEY, "test"))
    backed_up = {o.key for o in manifest.files.objects}
    assert doomed not in backed_up and set(seeded.audio) <= backed_up
    ok(runner.invoke(app, ["backup", "verify", manifest.id, "--env", benv.name, "--json"]))
