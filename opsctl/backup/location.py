"""Where a backup repository is: the one rule for its URL, in a module light enough to check
opsctl.yaml with (opsctl.backup.repository imports the storage code: boto3 for s3://)."""

from __future__ import annotations

from urllib.parse import urlparse

from opsctl.errors import UsageError


def check_url(url: str) -> None:
    """UsageError unless `url` is a repository URL opsctl opens: s3://bucket[/prefix] or
    file:///path (a relative file:path is under the ops root). Its shape only: nothing is
    reached (opsctl.yaml is checked with it when read)."""
    parsed = urlparse(url)
    if not ((parsed.scheme == "file" and (parsed.netloc or parsed.path)) or (parsed.scheme == "s3" and parsed.netloc)):
        raise UsageError(f"backup.repository '{url}' is not s3://bucket/prefix or file:///path; fix it in opsctl.yaml")
