"""Backups and restores: PostgreSQL, Redis and audio objects into an s3:// or file:// repository.

A backup is a folder `<repository>/<id>/` of objects plus `manifest.json`, written last: a
backup without a manifest is incomplete and is never restored. Streams go through
pipeline.py (zstd, then chunked AES-256-GCM, SHA-256 of what is stored) on their way in
and out, so no full-size plaintext copy ever touches the repository.
"""
