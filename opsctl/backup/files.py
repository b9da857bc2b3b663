"""Audio objects: inventoried with their SHA-256, copied server-side into the backup, and back.

Audio is already compressed and is content-addressed by the worker, so it is copied as it
is (S3 to S3 without passing through this machine; downloaded for a file:// repository).
Each object is hashed from the source and copied with CopySourceIfMatch on the ETag that
was hashed, so the recorded checksum is the checksum of the copy. Restore puts back what is
missing or different and leaves newer audio alone.

In the repository an object is stored as `<id>/files/<SHA-256 of its key>`: S3 keys are
not paths (`a/b` and `a/b/c` both exist; `../x` is a legal key), so a key never becomes a
path, two keys never share a name, and the manifest maps names back to keys.
"""

from __future__ import annotations

import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from opsctl.backup import manifest as mf
from opsctl.backup.pipeline import BLOCK, checked
from opsctl.backup.repository import Repository

log = logging.getLogger(__name__)

Advance = Callable[[int], None]
WORKERS = 4


def stored_name(key: str) -> str:
    """The repository file name of an S3 key: one hex word, whatever the key holds."""
    return hashlib.sha256(key.encode()).hexdigest()


# the worker's /v1/uploads keeps each part of an unfinished upload as an object
# `<prefix>upload-parts/upload_<32 hex>/<name>` (before: `<prefix>uploads/upload_<32 hex>.parts/<name>`)
# until complete assembles the file
_UPLOAD_PART = re.compile(r"(^|/)(upload-parts/upload_[0-9a-f]{32}/|uploads/upload_[0-9a-f]{32}\.parts/)")


def inventory(s3, bucket: str, unfinished: set[str] | None = None) -> list[dict]:
    """[{key, size (bytes), etag}] of every completed object in `bucket` (ListObjectsV2, paged):
    parts of multipart uploads still open are not objects and never listed, and the worker's
    upload part objects (`.../upload-parts/upload_<id>/...`, and the older
    `.../uploads/upload_<id>.parts/...`) are left out (issue 26), as are the keys in
    `unfinished` (`unfinished_upload_keys`: what the worker's database says is no upload's file)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [{"key": o["Key"], "size": o["Size"], "etag": o["ETag"]} for p in pages for o in p.get("Contents", [])
            if not _UPLOAD_PART.search(o["Key"]) and o["Key"] not in (unfinished or ())]


def unfinished_upload_keys(s3, bucket: str, database_url: str | None) -> set[str]:
    """The keys in `bucket` that the worker's `uploads` table says hold no upload's file: an
    upload's own key (`s3_key`) or one of its claims' (`s3_key-<n>`) that is not the file its
    row records as completed (`file_key`, or `s3_key` for uploads completed before it was
    recorded). A complete whose worker was killed after S3 assembled the file leaves it in the
    bucket while the upload is still pending (until a retry, a cancel or the expiry), and a
    claim's stale key stays until the keeper's sweep (breaker 57 F1: a backup copied a 40 MiB
    file the database never had).

    Only keys a row names are ever left out: a key no row knows (another prefix, another
    tool's folder named uploads/) is copied (breaker 58 G3), and so is everything when the
    table can't be found or read (no database URL, no `uploads` table on the search path, the
    server down or not answering within 10 s: a warning, breaker 58 G1, G4)."""
    if not database_url:
        return set()
    import psycopg

    from opsctl.backup import postgres as pgb
    from opsctl.errors import fault_text

    try:
        with psycopg.connect(pgb.conninfo(database_url), autocommit=True, connect_timeout=10) as conn:
            table = conn.execute("select to_regclass('uploads')::oid").fetchone()[0]
            if table is None:
                return set()  # no worker's table here: nothing is known to be unfinished
            columns = {c for (c,) in conn.execute(  # the table's own columns, whatever its schema (G2)
                "select attname from pg_attribute where attrelid = %s and attnum > 0 and not attisdropped",
                (table,))}
            file_key = "file_key" if "file_key" in columns else "null"
            rows = conn.execute(f"select s3_key, status, {file_key} from uploads where s3_key is not null").fetchall()
    except psycopg.Error as exc:
        log.warning("could not read the worker's uploads (%s): every upload file in the bucket is copied, including "
                    "any a killed complete left", fault_text(exc))
        return set()
    keys = {o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in p.get("Contents", [])}
    by_upload: dict[str, tuple[str, str | None]] = {}  # an upload's key -> (status, its file)
    for s3_key, status, recorded in rows:
        by_upload[s3_key] = (status, (recorded or s3_key) if status == "completed" else None)
    unfinished = set()
    for key in keys:
        base, _, attempt = key.rpartition("-")
        owner = key if key in by_upload else base if attempt.isdigit() and base in by_upload else None
        if owner is not None and by_upload[owner][1] != key:
            unfinished.add(key)
    if unfinished:
        log.warning("left out %d upload file(s) the worker's database records as no completed upload's file (a "
                    "complete killed after S3 assembled it, or a stale claim's): %s", len(unfinished),
                    ", ".join(sorted(unfinished)))
    return unfinished


def _gone(exc: Exception) -> bool:
    """Whether an S3 error says the object is not there (any more)."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")


def _sha256(s3, bucket: str, key: str, etag: str) -> str:
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"]
    for chunk in body.iter_chunks(BLOCK):
        digest.update(chunk)
    return digest.hexdigest()


def backup(s3, bucket: str, repo: Repository, backup_id: str, advance: Advance | None = None,
           unfinished: set[str] | None = None) -> mf.FilesPart:
    """Copy every completed object of `bucket` (`inventory`, less `unfinished`) into
    `<backup_id>/files/` (names from `stored_name`), each hashed and copied at the ETag it was
    listed with (a changed object fails the copy rather than mixing versions); `advance(bytes)`
    per object. An object deleted after the listing (the worker retires and cleans up audio at
    any hour) is left out and logged: it was not there to keep (breaker 57 F2: the nightly
    backup failed with NoSuchKey)."""
    def one(obj: dict) -> mf.AudioObject | None:
        name = f"{backup_id}/files/{stored_name(obj['key'])}"
        try:
            sha = _sha256(s3, bucket, obj["key"], obj["etag"])
            repo.copy_in(s3, bucket, obj["key"], name, obj["etag"])
        except Exception as exc:
            if not _gone(exc):
                raise
            repo.delete_names([name])  # a copy the deletion cut short (none where it never began)
            log.info("audio object %s was deleted while the backup ran: left out", obj["key"])
            return None
        if advance:
            advance(obj["size"])
        return mf.AudioObject(key=obj["key"], size=obj["size"], sha256=sha, name=name, etag=obj["etag"])

    listed = inventory(s3, bucket, unfinished)
    with ThreadPoolExecutor(WORKERS) as pool:
        objects = [o for o in pool.map(one, listed) if o is not None]
    if len(objects) < len(listed):
        log.warning("%d audio object(s) were deleted while the backup ran and are not in it", len(listed) - len(objects))
    return mf.FilesPart(bucket=bucket, objects=objects)


def check(repo: Repository, part: mf.FilesPart, advance: Advance | None = None) -> None:
    """Read every backed-up object and raise unless size and SHA-256 match the manifest."""
    def one(obj: mf.AudioObject) -> None:
        for _ in checked(repo.get(obj.name), obj.name, obj.sha256, obj.size, advance):
            pass

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, part.objects))


def differing(s3, bucket: str, part: mf.FilesPart) -> tuple[list[mf.AudioObject], int]:
    """(objects to put back, how many of them would replace an existing object)."""
    live = {o["key"]: o for o in inventory(s3, bucket)}
    todo = [o for o in part.objects if o.key not in live or live[o.key]["size"] != o.size
            or (o.etag and live[o.key]["etag"] != o.etag)]
    return todo, sum(o.key in live for o in todo)


def restore(s3, bucket: str, repo: Repository, objects: list[mf.AudioObject], advance: Advance | None = None) -> int:
    """Put `objects` (from `differing`) back into `bucket` under their keys; returns how many."""
    def one(obj: mf.AudioObject) -> None:
        repo.copy_out(obj.name, s3, bucket, obj.key)
        if advance:
            advance(obj.size)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, objects))
    return len(objects)
