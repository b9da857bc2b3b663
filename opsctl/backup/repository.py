"""Where backups live: `s3://bucket/prefix` (any S3 endpoint) or `file:///path`, one interface.

Everything above this module (create, list, verify, prune, restore) speaks only `put`,
`get`, `names`, `delete_prefix`, and the two object copies for audio, so both kinds of
repository go through the same pipeline and the same tests. An unfinished write is a
multipart upload (S3) or a `.partial` file (posix): `open_uploads` finds both, and
`abort_uploads` removes them, which is how an interrupted backup leaves nothing behind.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

from opsctl.backup.direct_io import DirectFile
from opsctl.backup.pipeline import BLOCK, IterReader
from opsctl.errors import UsageError

PARTIAL = ".partial"


class NotFound(Exception):
    pass


class Repository(ABC):
    url: str
    key = None  # the backup key of the environment that opened it (catalog checks trust with it)

    @abstractmethod
    def put(self, name: str, chunks: Iterable[bytes]) -> None: ...
    @abstractmethod
    def get(self, name: str) -> Iterator[bytes]: ...
    @abstractmethod
    def names(self, prefix: str = "") -> dict[str, int]: ...
    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...
    @abstractmethod
    def open_uploads(self, prefix: str = "") -> list[str]: ...
    @abstractmethod
    def abort_uploads(self, prefix: str = "") -> int: ...
    @abstractmethod
    def copy_in(self, s3, bucket: str, key: str, name: str, etag: str) -> None: ...
    @abstractmethod
    def copy_out(self, name: str, s3, bucket: str, key: str) -> None: ...

    def delete_names(self, names: list[str]) -> None:
        for name in names:
            self.delete_prefix(name)

    def folders(self) -> tuple[set[str], set[str]]:
        """(top-level folder names, top-level file names): one listing that does not descend."""
        folders, files = set(), set()
        for name in self.names():
            top, sep, _ = name.partition("/")
            (folders if sep else files).add(top)
        return folders, files

    def put_bytes(self, name: str, data: bytes) -> None:
        self.put(name, [data])

    def get_bytes(self, name: str) -> bytes:
        return b"".join(self.get(name))

    def ids(self) -> list[str]:
        return sorted({n.split("/", 1)[0] for n in self.names() if "/" in n})


class S3Repository(Repository):
    def __init__(self, client, bucket: str, prefix: str, url: str, part_size: int = 8 << 20, concurrency: int = 4):
        self.s3, self.bucket, self.prefix, self.url = client, bucket, prefix.strip("/"), url
        self.part_size, self.concurrency = part_size, concurrency

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, chunks: Iterable[bytes]) -> None:
        from boto3.s3.transfer import TransferConfig

        # parts go up in parallel; each part is buffered in memory, so botocore retries a
        # failed part (with backoff) instead of failing the whole backup
        config = TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
                                max_concurrency=self.concurrency)
        try:
            self.s3.upload_fileobj(IterReader(chunks), self.bucket, self._key(name), Config=config)
        except BaseException:
            self.abort_uploads(name)
            raise

    def get(self, name: str) -> Iterator[bytes]:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except self.s3.exceptions.NoSuchKey:
            raise NotFound(name) from None
        try:
            yield from body.iter_chunks(BLOCK)
        finally:
            body.close()

    def names(self, prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        base = self._key("")
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(base):]] = obj["Size"]
        return out

    def folders(self) -> tuple[set[str], set[str]]:
        folders, files = set(), set()
        base = self._key("")
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
            folders |= {p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])}
            files |= {o["Key"][len(base):] for o in page.get("Contents", [])}
        return folders, files

    def delete_prefix(self, prefix: str) -> int:
        names = list(self.names(prefix))
        self.delete_names(names)
        return len(names)

    def delete_names(self, names: list[str]) -> None:
        keys = [self._key(n) for n in names]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket,
                                   Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def _uploads(self, prefix: str) -> list[dict]:
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        return [u for page in pages for u in page.get("Uploads", [])]

    def open_uploads(self, prefix: str = "") -> list[str]:
        return [u["Key"] for u in self._uploads(prefix)]

    def abort_uploads(self, prefix: str = "") -> int:
        uploads = self._uploads(prefix)
        for u in uploads:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
        return len(uploads)

    def copy_in(self, s3, bucket: str, key: str, name: str, etag: str) -> None:
        # server-side (UploadPartCopy for large objects): audio never passes through this machine;
        # CopySourceIfMatch makes sure the copy is the version that was hashed
        self.s3.copy({"Bucket": bucket, "Key": key}, self.bucket, self._key(name),
                     ExtraArgs={"CopySourceIfMatch": etag})

    def copy_out(self, name: str, s3, bucket: str, key: str) -> None:
        s3.copy({"Bucket": self.bucket, "Key": self._key(name)}, bucket, key)


class FileRepository(Repository):
    """Objects as files under `root`: created 0600 in 0700 folders; a name from data (a
    manifest, an id) is resolved and must stay inside `root`, or nothing is read or written."""

    def __init__(self, root: Path, url: str):
        self.root, self.url = root, url

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
            raise UsageError(f"object name {name!r} would leave the repository folder {self.root}; refused")
        return self.root.joinpath(*parts)

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for f in reversed(missing):
            try:
                f.mkdir(mode=0o700)
            except FileExistsError:
                pass

    def put(self, name: str, chunks: Iterable[bytes]) -> None:
        target = self._path(name)
        self._mkdirs(target.parent)
        partial = target.with_name(target.name + PARTIAL)
        out = None
        try:
            out = DirectFile(partial)
            for chunk in chunks:
                out.write(chunk)
            out.close()
            os.replace(partial, target)  # a file exists under its name only once it is whole
        except BaseException:
            if out is not None:
                out.abort()
            partial.unlink(missing_ok=True)
            raise

    def get(self, name: str) -> Iterator[bytes]:
        path = self._path(name)
        if not path.is_file():
            raise NotFound(name)
        with open(path, "rb") as fh:
            while block := fh.read(BLOCK):
                yield block

    def _walk(self, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
        """(name, entry) of every file under `prefix`, walking only the folder the prefix is
        in (os.scandir: deleting or listing one backup never walks the repository)."""
        head, _, tail = prefix.rpartition("/")
        folder = os.path.join(self.root, *head.split("/")) if head else str(self.root)
        base = head + "/" if head else ""
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        stack = [(base, e) for e in entries if e.name.startswith(tail)]
        while stack:
            rel, entry = stack.pop()
            if entry.is_dir(follow_symlinks=False):
                stack.extend((rel + entry.name + "/", e) for e in os.scandir(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield rel + entry.name, entry

    def _files(self, prefix: str) -> Iterator[Path]:
        for name, entry in self._walk(prefix):
            yield Path(entry.path)

    def names(self, prefix: str = "") -> dict[str, int]:
        return {name: entry.stat(follow_symlinks=False).st_size
                for name, entry in self._walk(prefix) if not name.endswith(PARTIAL)}

    def folders(self) -> tuple[set[str], set[str]]:
        folders, files = set(), set()
        if self.root.is_dir():
            for entry in os.scandir(self.root):
                if entry.is_dir(follow_symlinks=False):
                    folders.add(entry.name)
                elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(PARTIAL):
                    files.add(entry.name)
        return folders, files

    def delete_prefix(self, prefix: str) -> int:
        files = list(self._files(prefix))
        for path in files:
            path.unlink(missing_ok=True)
        for folder in sorted({p.parent for p in files}, key=lambda p: len(p.parts), reverse=True):
            while folder != self.root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        return len(files)

    def open_uploads(self, prefix: str = "") -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self._files(prefix) if p.name.endswith(PARTIAL)]

    def abort_uploads(self, prefix: str = "") -> int:
        names = self.open_uploads(prefix)
        for name in names:
            self._path(name).unlink(missing_ok=True)
        return len(names)

    def copy_in(self, s3, bucket: str, key: str, name: str, etag: str) -> None:
        body = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"]
        self.put(name, body.iter_chunks(BLOCK))

    def copy_out(self, name: str, s3, bucket: str, key: str) -> None:
        s3.upload_file(str(self._path(name)), bucket, key)


def open_repository(url: str | None, project, endpoints) -> Repository:
    """The repository an environment's `backup.repository` names (default: its backup bucket)."""
    url = url or f"s3://{endpoints.backup_bucket}/opsctl"
    parsed = urlparse(url)
    if parsed.scheme == "file":
        raw = (parsed.netloc + parsed.path) if parsed.netloc else parsed.path
        path = Path(raw).expanduser()
        return FileRepository(path if path.is_absolute() else project.root / path, url)
    if parsed.scheme == "s3" and parsed.netloc:
        client = endpoints.s3_client()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client.head_bucket(Bucket=parsed.netloc)
        except ClientError:
            raise UsageError(f"backup repository {url}: bucket '{parsed.netloc}' does not exist or is not "
                             "accessible; create it or fix backup.repository in opsctl.yaml") from None
        except BotoCoreError as exc:
            raise UsageError(f"backup repository {url} is unreachable ({exc}); check the S3 endpoint") from None
        return S3Repository(client, parsed.netloc, parsed.path, url)
    raise UsageError(f"backup.repository '{url}' is not s3://bucket/prefix or file:///path; fix it in opsctl.yaml")


def for_environment(project, env) -> Repository:
    """The repository of an environment, with its endpoints resolved."""
    from opsctl.backup import keys
    from opsctl.endpoints import resolve

    repo = open_repository(env.backup.repository, project, resolve(project, env))
    repo.key = keys.load(project, env, required=False)
    return repo
