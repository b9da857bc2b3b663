"""Where backups live: `s3://bucket/prefix` (any S3 endpoint) or `file:///path`, one interface.

Everything above this module (create, list, verify, prune, restore) speaks only `put`,
`get`, `names`, `delete_prefix`, and the two object copies for audio, so both kinds of
repository go through the same pipeline and the same tests. An unfinished write is a
multipart upload (S3) or a `.partial` file (posix): `open_uploads` finds both, and
`abort_uploads` removes them, which is how an interrupted backup leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

from opsctl.backup.crypto import IntegrityError
from opsctl.backup.direct_io import DirectFile
from opsctl.backup.location import check_url
from opsctl.backup.pipeline import BLOCK, IterReader
from opsctl.errors import MachineFaults, OperationFailed, UsageError

PARTIAL = ".partial"


class NotFound(Exception):
    """The object named does not exist (or, on file://, is not a regular file)."""


class Repository(ABC):
    """Where backups live, as named objects: the interface every backup operation uses.

    Names are relative to the repository (`<backup id>/manifest.json`), '/'-separated, never
    starting with '/' nor holding '.' or '..' parts. Sizes are bytes. Writes are whole or
    absent: an object exists under its name only once `put` finished."""
    url: str
    key = None  # the backup key of the environment that opened it (catalog checks trust with it)
    # {name: stamp} of the objects the last names() listed: the S3 ETag, or the file's size,
    # inode and change time (ctime can't be set back), so the catalog notices a replaced
    # object without reading it (catalog.scan)
    tags: dict[str, str]

    def tag(self, name: str) -> str | None:
        """The stamp of `name` from the last `names()` that listed it (S3: size and ETag;
        file://: size, inode, mtime, ctime and mode), or None when not listed since."""
        return getattr(self, "tags", {}).get(name)

    @abstractmethod
    def stamp(self, name: str) -> str | None:
        """The stamp `names()` would list for the object `name` (same format as `tag`), read
        for that one object (S3: a HEAD; file://: an lstat), or None when it does not
        exist: cheaper than listing its folder where a listing costs what the bucket holds."""

    def _tags(self) -> dict[str, str]:
        tags = self.__dict__.setdefault("tags", {})
        if len(tags) > 100_000:  # a long-lived process (the WAL archiver) lists ever new names
            tags.clear()
        return tags

    @abstractmethod
    def put(self, name: str, chunks: Iterable[bytes]) -> None:
        """Store the bytes of `chunks` as `name`, replacing it; streamed (multipart upload or
        a `.partial` file renamed when whole), never held whole in memory. On any failure
        nothing is left under `name` and the unfinished upload is removed."""

    @abstractmethod
    def get(self, name: str) -> Iterator[bytes]:
        """The bytes of `name` in blocks of up to 1 MiB; NotFound when it does not exist."""

    @abstractmethod
    def names(self, prefix: str = "") -> dict[str, int]:
        """{name: size in bytes} of every whole object whose name starts with `prefix` (a
        folder when it ends with '/'; "" lists everything), unfinished uploads excluded;
        records each one's stamp for `tag`."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete the object named `prefix`, or every object in the folder `prefix` ends
        with '/' naming; never names that merely start like it. Returns how many were
        deleted; UsageError for "" (the whole repository)."""

    @abstractmethod
    def open_uploads(self, prefix: str = "") -> list[str]:
        """Unfinished writes under `prefix` (S3 multipart uploads, `.partial` files)."""

    @abstractmethod
    def abort_uploads(self, prefix: str = "") -> int:
        """Abort (remove) the unfinished writes in `prefix` (an object or a folder as in
        `delete_prefix`); returns how many."""

    @abstractmethod
    def copy_in(self, s3, bucket: str, key: str, name: str, etag: str) -> None:
        """Copy object `key` of `bucket` (boto3 client `s3`) to `name`, only if its ETag is
        still `etag` (the version that was hashed); server-side on S3."""

    @abstractmethod
    def copy_out(self, name: str, s3, bucket: str, key: str) -> None:
        """Copy `name` to object `key` of `bucket` (boto3 client `s3`)."""

    def delete_names(self, names: list[str]) -> None:
        """Delete exactly these objects (names as `names()` returns them)."""
        for name in names:
            self.delete_prefix(name)

    def folders(self) -> tuple[set[str], set[str]]:
        """(top-level folder names, top-level file names): one listing that does not descend."""
        folders, files = set(), set()
        for name in self.names():
            top, sep, _ = name.partition("/")
            (folders if sep else files).add(top)
        return folders, files

    def folder_names(self, folders: list[str]) -> dict[str, int]:
        """`names()` of several top-level folders together ({name: size in bytes})."""
        out: dict[str, int] = {}
        for folder in folders:
            out.update(self.names(f"{folder}/"))
        return out

    def names_after(self, folder: str, below: str = ":") -> dict[str, int]:
        """`names()` of the top-level folders whose names sort after `folder` and before
        `below` ({name: size in bytes}). Backup ids sort by time, so these are the backups
        newer than `folder`: the catalog finds what its index misses at a cost that grows
        with what is missing, not with the repository."""
        folders, _ = self.folders()
        out: dict[str, int] = {}
        for f in sorted(f for f in folders if folder < f < below):
            out.update(self.names(f"{f}/"))
        return out

    def put_bytes(self, name: str, data: bytes) -> None:
        """`put` of one small object held in memory (records, manifests, the index)."""
        self.put(name, [data])

    def get_bytes(self, name: str) -> bytes:
        """The whole object `name` in memory (small objects only); NotFound when absent."""
        return b"".join(self.get(name))

    def ids(self) -> list[str]:
        """Top-level folder names holding at least one object, sorted (not only backup ids)."""
        return sorted({n.split("/", 1)[0] for n in self.names() if "/" in n})


class S3Repository(Repository):
    """Objects under `prefix` in an S3 bucket (any endpoint): multipart uploads of `part_size`
    bytes, `concurrency` parts at a time."""

    def __init__(self, client, bucket: str, prefix: str, url: str, part_size: int = 8 << 20, concurrency: int = 4):
        self.s3, self.bucket, self.prefix, self.url = client, bucket, prefix.strip("/"), url
        self.part_size, self.concurrency = part_size, concurrency

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, chunks: Iterable[bytes]) -> None:
        """Repository.put as a multipart upload, parts sent in parallel and retried by botocore; aborted on failure."""
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
        """Repository.get: one GET, streamed in 1 MiB blocks."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except self.s3.exceptions.NoSuchKey:
            raise NotFound(name) from None
        try:
            yield from body.iter_chunks(BLOCK)
        finally:
            body.close()

    def names(self, prefix: str = "") -> dict[str, int]:
        """Repository.names: a paged ListObjectsV2; stamps are size and ETag."""
        out: dict[str, int] = {}
        base = self._key("")
        tags = self._tags()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(base):]] = obj["Size"]
                tags[obj["Key"][len(base):]] = f"{obj['Size']}:{obj.get('ETag', '')}"
        return out

    def folder_names(self, folders: list[str]) -> dict[str, int]:
        """Repository.folder_names in one paged listing from the first folder (StartAfter)
        to the last: `backup list --limit N` reads the newest N backups in one request where
        a listing per folder would cost N (each as much as the bucket holds on some servers)."""
        if not folders:
            return {}
        wanted, base, tags = set(folders), self._key(""), self._tags()
        last = self._key(max(folders)) + "/\uffff"
        out: dict[str, int] = {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base,
                                                                  StartAfter=self._key(min(folders)))
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"] > last:
                    return out
                name = obj["Key"][len(base):]
                if name.partition("/")[0] in wanted:
                    out[name] = obj["Size"]
                    tags[name] = f"{obj['Size']}:{obj.get('ETag', '')}"
        return out

    def names_after(self, folder: str, below: str = ":") -> dict[str, int]:
        """Repository.names_after in one paged listing starting after the folder `folder`
        (ListObjectsV2 StartAfter) and stopping at the first key at or past `below`."""
        base, tags = self._key(""), self._tags()
        start = self._key(folder + "0") if folder else base  # "/" < "0": past every key of `folder`
        kwargs = {"StartAfter": start} if start else {}
        out: dict[str, int] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base, **kwargs):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(base):]
                top, sep, _ = name.partition("/")
                if top >= below:
                    return out
                if sep and top > folder:
                    out[name] = obj["Size"]
                    tags[name] = f"{obj['Size']}:{obj.get('ETag', '')}"
        return out

    def stamp(self, name: str) -> str | None:
        """Repository.stamp: one HeadObject (size and ETag, as ListObjectsV2 gives them)."""
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return f"{head['ContentLength']}:{head.get('ETag', '')}"

    def folders(self) -> tuple[set[str], set[str]]:
        """Repository.folders with one delimited listing (CommonPrefixes): no key below the top level is listed."""
        folders, files = set(), set()
        base = self._key("")
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
            folders |= {p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])}
            files |= {o["Key"][len(base):] for o in page.get("Contents", [])}
        return folders, files

    def delete_prefix(self, prefix: str) -> int:
        """Delete the object named `prefix`, or, when it ends with '/', every object in that
        folder: never other keys that merely start like it."""
        if not prefix:
            raise UsageError("refusing to delete the whole repository")
        names = [n for n in self.names(prefix) if _within(n, prefix)]
        self.delete_names(names)
        return len(names)

    def delete_names(self, names: list[str]) -> None:
        """Repository.delete_names in DeleteObjects batches of 1,000."""
        keys = [self._key(n) for n in names]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket,
                                   Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def _uploads(self, prefix: str) -> list[dict]:
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        base = self._key("")
        return [u for page in pages for u in page.get("Uploads", []) if _within(u["Key"][len(base):], prefix)]

    def open_uploads(self, prefix: str = "") -> list[str]:
        """The keys of the multipart uploads open under `prefix` (ListMultipartUploads)."""
        return [u["Key"] for u in self._uploads(prefix)]

    def abort_uploads(self, prefix: str = "") -> int:
        """AbortMultipartUpload of each upload open in `prefix`; returns how many."""
        uploads = self._uploads(prefix)
        for u in uploads:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
        return len(uploads)

    def copy_in(self, s3, bucket: str, key: str, name: str, etag: str) -> None:
        """Repository.copy_in, server-side (CopyObject/UploadPartCopy) with CopySourceIfMatch."""
        # server-side (UploadPartCopy for large objects): audio never passes through this machine;
        # CopySourceIfMatch makes sure the copy is the version that was hashed
        self.s3.copy({"Bucket": bucket, "Key": key}, self.bucket, self._key(name),
                     ExtraArgs={"CopySourceIfMatch": etag})

    def copy_out(self, name: str, s3, bucket: str, key: str) -> None:
        """Repository.copy_out, server-side from this bucket."""
        s3.copy({"Bucket": self.bucket, "Key": self._key(name)}, bucket, key)


class FileRepository(Repository):
    """Objects as files under `root`: created 0600 in 0700 folders; a name from data (a
    manifest, an id) is resolved and must stay inside `root`, or nothing is read or written.

    No symbolic link inside `root` is ever followed: every folder on the way to an object is
    opened with O_NOFOLLOW|O_DIRECTORY relative to its parent's descriptor (openat), objects
    are opened with O_NOFOLLOW, and a `.partial` file is created with O_EXCL after a stale
    one is unlinked (unlink removes a link, not its target). A link met on the way is
    refused (IntegrityError); in a listing it is an entry of its own, never descended, so a
    linked backup folder is foreign. (`root` itself may be a link the operator chose.)"""

    _DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, root: Path, url: str):
        self.root, self.url = root, url

    def _parts(self, name: str) -> list[str]:
        parts = name.split("/")
        if not name or name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
            raise UsageError(f"object name {name!r} would leave the repository folder {self.root}; refused")
        return parts

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*self._parts(name))

    def _linked(self, name: str) -> IntegrityError:
        return IntegrityError(f"{self.root}/{name} is a symbolic link (or not a folder where one belongs): opsctl "
                              "never follows links inside its repository; remove it")

    def _open_dir(self, parts: list[str], create: bool = False, made: list[list[str]] | None = None) -> int:
        """A descriptor of the folder root/parts..., each step opened without following a link.
        UsageError when the root is there but is no readable folder (_root_is_folder). With
        `create`, missing folders are made, and each one's parts appended to `made`."""
        if not self._root_is_folder() and create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = os.open(part, self._DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        if made is not None:
                            made.append(parts[:i + 1])
                    except FileExistsError:
                        pass
                    nfd = os.open(part, self._DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        if exc.errno == errno.ENOTDIR and not create and not os.path.islink(
                                os.path.join(self.root, *parts[:i + 1])):
                            raise  # a file where the folder would be: nothing under it
                        raise self._linked("/".join(parts[:i + 1])) from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def put(self, name: str, chunks: Iterable[bytes]) -> None:
        """Repository.put into `name.partial` (O_DIRECT, created O_EXCL in a folder opened
        without following links), renamed to `name` when whole; folders created 0700."""
        parts = self._parts(name)
        writing = MachineFaults(f"writing {name} into the backup repository {self.root}")
        made: list[list[str]] = []
        try:
            with writing:  # a full disk, a quota, a read-only folder: one line naming the repository
                folder = self._open_dir(parts[:-1], create=True, made=made)
        except BaseException:
            self._remove_empty(made)
            raise
        leaf, partial = parts[-1], parts[-1] + PARTIAL
        out = None
        try:
            with writing:  # a read-only volume refuses the unlink of even a missing file
                try:
                    os.unlink(partial, dir_fd=folder)  # a stale one (or a link planted there): gone, not followed
                except FileNotFoundError:
                    pass
                out = DirectFile(partial, dir_fd=folder)
            for chunk in chunks:  # an error reading the source is the source's, not the repository's
                with writing:
                    out.write(chunk)
            with writing:
                out.close()
                # a file exists under its name only once it is whole; rename replaces a link, never its target
                os.replace(partial, leaf, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            if out is not None:
                out.abort()
            try:
                os.unlink(partial, dir_fd=folder)
            except OSError:
                pass
            os.close(folder)
            self._remove_empty(made)  # a failed put leaves no folder of its own behind (none is foreign)
            raise
        os.close(folder)

    def _remove_empty(self, made: list[list[str]]) -> None:
        """Remove the folders a failed put made (deepest first), each only while empty."""
        for parts in reversed(made):
            try:
                parent = self._open_dir(parts[:-1])
            except (OSError, IntegrityError):
                continue
            try:
                os.rmdir(parts[-1], dir_fd=parent)
            except OSError:  # another writer's object arrived in it meanwhile: it stays
                pass
            finally:
                os.close(parent)

    def get(self, name: str) -> Iterator[bytes]:
        """Repository.get of a regular file opened with O_NOFOLLOW; a link is refused (IntegrityError)."""
        parts = self._parts(name)
        try:
            folder = self._open_dir(parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(name) from None
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                         dir_fd=folder)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(name) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._linked(name) from None
            raise
        finally:
            os.close(folder)
        try:
            fh = os.fdopen(fd, "rb")
        except BaseException:  # IsADirectoryError for a folder: fdopen leaves an fd it refused open
            os.close(fd)
            raise
        with fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise NotFound(name)
            while block := fh.read(BLOCK):
                yield block

    def _root_is_folder(self) -> bool:
        """True when the repository's folder exists, False when it does not (an empty
        repository); UsageError when something else is there (a file, a dangling link): a
        repository that can't be read, never "no backups yet" (breaker 25 F13)."""
        try:
            if stat.S_ISDIR(os.stat(self.root).st_mode):
                return True
            why = "is not a folder"
        except FileNotFoundError:
            if not os.path.lexists(self.root):
                return False
            why = "is not a folder"  # a dangling link
        except NotADirectoryError:  # a file where one of its parent folders belongs (breaker 27 F8)
            why = "is not a folder (a file is where one of its parent folders belongs)"
        except OSError as exc:  # a loop of links, no permission
            why = f"can't be read ({exc.strerror})"
        raise UsageError(f"backup repository {self.url}: {self.root} {why}; move it aside "
                         "or point backup.repository at the repository's folder")

    def _walk(self, prefix: str, exact: bool = False) -> Iterator[tuple[str, os.stat_result]]:
        """(name, lstat) of every file or link under `prefix` (`exact`: the object named
        `prefix`, or every one in the folder `prefix` ending in '/'), walking only the folder
        the prefix is in (deleting or listing one backup never walks the repository). Each
        folder is opened through _open_dir (no link followed) and listed by its descriptor;
        links are entries, never descended; so is a folder below the prefix's that can't be
        opened (EACCES: breaker 52 K7, an unreadable `pitr` failed every listing of the
        repository), which leaves it to whoever reads it by name to say so. A root that is not a
        folder is refused by _open_dir."""
        head, _, tail = prefix.rpartition("/")
        stack = [(head.split("/") if head else [], tail, exact, None)]
        while stack:
            parts, tail, exact, entry = stack.pop()
            try:
                fd = self._open_dir(parts)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError:
                if entry is None:  # the folder asked for: the caller says it can't be read
                    raise
                yield "/".join(parts), entry
                continue
            found = []
            try:
                with os.scandir(fd) as it:
                    for e in it:
                        if not (e.name == tail if exact and tail else e.name.startswith(tail)):
                            continue
                        if e.is_dir(follow_symlinks=False):
                            try:
                                stack.append((parts + [e.name], "", False, e.stat(follow_symlinks=False)))
                            except FileNotFoundError:  # removed since the scan
                                continue
                        elif e.is_file(follow_symlinks=False) or e.is_symlink():
                            try:
                                found.append(("/".join(parts + [e.name]), e.stat(follow_symlinks=False)))
                            except FileNotFoundError:  # renamed or removed since the scan (a put's temporary)
                                continue
            finally:
                os.close(fd)
            yield from found

    def _unlink(self, name: str) -> None:
        """Remove one object (or a link, never its target) through its folder's descriptor;
        `name` comes from a listing (_walk), so it has no '.' or '..' parts."""
        parts = name.split("/")
        try:
            folder = self._open_dir(parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            with MachineFaults(f"deleting {name} from the backup repository {self.root}"):
                try:
                    os.unlink(parts[-1], dir_fd=folder)
                except FileNotFoundError:
                    pass
        finally:
            os.close(folder)

    def names(self, prefix: str = "") -> dict[str, int]:
        """Repository.names, walking only the folder `prefix` is in (no link descended);
        stamps are size, inode, mtime, ctime and mode."""
        out: dict[str, int] = {}
        tags = self._tags()
        for name, st in self._walk(prefix):
            if not name.endswith(PARTIAL):
                out[name] = st.st_size
                tags[name] = f"{st.st_size}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_mode}"
        return out

    def stamp(self, name: str) -> str | None:
        """Repository.stamp: an lstat through its folder's descriptor (no link followed)."""
        parts = self._parts(name)
        try:
            folder = self._open_dir(parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            os.close(folder)
        return f"{st.st_size}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_mode}"

    def folders(self) -> tuple[set[str], set[str]]:
        """Repository.folders: one scandir of the root; links count as files, never as opsctl's folders."""
        folders, files = set(), set()
        if self._root_is_folder():
            for entry in os.scandir(self.root):
                if entry.is_dir(follow_symlinks=False):
                    folders.add(entry.name)
                elif not entry.name.endswith(PARTIAL):
                    files.add(entry.name)  # files, and links (to folders too): never one of opsctl's folders
        return folders, files

    def delete_prefix(self, prefix: str) -> int:
        """Delete the object named `prefix`, or, when it ends with '/', every object in that
        folder (and the folders it leaves empty): never other names that merely start like
        it. Links are removed, never followed."""
        if not prefix:
            raise UsageError("refusing to delete the whole repository")
        files = [name for name, _ in self._walk(prefix, exact=True)]
        for name in files:
            self._unlink(name)
        for parts in sorted({tuple(n.split("/")[:-1]) for n in files}, key=len, reverse=True):
            parts = list(parts)
            while parts:  # rmdir removes only an empty folder, and never follows a link
                try:
                    parent = self._open_dir(parts[:-1])
                except (OSError, IntegrityError):
                    break
                try:
                    os.rmdir(parts[-1], dir_fd=parent)
                except OSError:
                    break
                finally:
                    os.close(parent)
                parts = parts[:-1]
        return len(files)

    def open_uploads(self, prefix: str = "") -> list[str]:
        """The `.partial` files under `prefix` (writes cut short)."""
        return [name for name, _ in self._walk(prefix) if name.endswith(PARTIAL)]

    def abort_uploads(self, prefix: str = "") -> int:
        """Unlink the `.partial` files in `prefix` (an object or a folder); returns how many."""
        names = [n for n in self.open_uploads(prefix) if _within(n[:-len(PARTIAL)], prefix)]
        for name in names:
            self._unlink(name)
        return len(names)

    def copy_in(self, s3, bucket: str, key: str, name: str, etag: str) -> None:
        """Repository.copy_in: a GET with IfMatch streamed into `put`."""
        body = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"]
        self.put(name, body.iter_chunks(BLOCK))

    def copy_out(self, name: str, s3, bucket: str, key: str) -> None:
        """Repository.copy_out: read through `get` (no link followed), uploaded with upload_fileobj."""
        s3.upload_fileobj(IterReader(self.get(name)), bucket, key)  # through get(): no link followed


def _within(name: str, prefix: str) -> bool:
    """`name` is the object `prefix` names, or lies in the folder `prefix` (ending in '/')."""
    return not prefix or name == prefix or (prefix.endswith("/") and name.startswith(prefix))


def open_repository(url: str | None, project, endpoints) -> Repository:
    """The repository an environment's `backup.repository` names (default: its backup bucket)."""
    url = url or f"s3://{endpoints.backup_bucket}/opsctl"
    check_url(url)
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
            # the endpoint's or the credentials' fault, not the command's: exit 1 (breaker 33 B11)
            raise OperationFailed(f"backup repository {url} is unreachable ({' '.join(str(exc).split())}); check the "
                                  "environment's AWS endpoint (aws.endpoint_url in opsctl.yaml), the network and "
                                  "the AWS credentials") from None
        return S3Repository(client, parsed.netloc, parsed.path, url)
    raise AssertionError(url)  # check_url let through a scheme this function does not open


def for_environment(project, env) -> Repository:
    """The repository of an environment, with its endpoints resolved when it is in S3 (a
    file:// one needs none: it is read on a new host, before `opsctl local up`, too)."""
    from opsctl.backup import keys
    from opsctl.endpoints import resolve

    url = env.backup.repository
    endpoints = None if url and url.startswith("file:") else resolve(project, env)
    repo = open_repository(url, project, endpoints)
    repo.key = keys.load(project, env, required=False)
    return repo
