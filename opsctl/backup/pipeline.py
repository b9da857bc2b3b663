"""The stream every dump and snapshot goes through: zstd, AES-256-GCM, SHA-256 — and back.

Nothing is staged in a full-size temporary file: the source is read in blocks of up to
1 MiB by a thread of its own (so pg_dump never waits on a full pipe while a block is sealed or
stored), compressed by zstd's worker threads, sealed frame by frame, hashed as stored, and
handed to the repository (a multipart upload or a file) as an iterator. The reverse path
checks the SHA-256 and size recorded in the manifest before the last block is released,
so a consumer that commits only after the iterator ends never commits damaged data.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

from opsctl.backup import crypto
from opsctl.backup.keys import BackupKey

BLOCK = 1 << 20
GATHER, NAP = 256 << 10, 0.001  # from a pipe: read less than GATHER, wait NAP seconds for more
Advance = Callable[[int], None]


@dataclass
class StreamStats:
    """What `pack` saw: bytes read, bytes stored, and the stored bytes' SHA-256 (hex)."""
    raw_bytes: int = 0
    stored_bytes: int = 0
    sha256: str = ""


def _is_pipe(reader) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(reader.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


class ReadAhead:
    """Blocks of `reader` (up to BLOCK bytes each), read up to `ahead` blocks in advance by a
    background thread that starts at once: `backup create` starts one on pg_dump's output as
    soon as pg_dump runs, so the dump goes on while the repository is opened and checked.

    From a pipe, the thread takes what has arrived (up to BLOCK) and, when that was under
    GATHER, naps for NAP before reading again. pg_dump writes 4 KiB at a time (77,751
    writes for bench_backup's 318 MB dump), and a reader that reads as soon as anything
    arrives wakes for nearly each one (67,400 reads measured): the two processes ping-pong
    through the scheduler. Napping 1 ms lets the 1 MiB pipe gather a few hundred KB per read:
    context switches 36,000 -> 8,000, 0.1 s less system time, 0.08 s less wall time.
    """

    def __init__(self, reader: BinaryIO, ahead: int = 16):
        self._blocks: queue.Queue = queue.Queue(ahead)
        self._stop = threading.Event()
        pipe = _is_pipe(reader)
        self._read = getattr(reader, "read1", reader.read) if pipe else reader.read
        self._pipe = pipe
        threading.Thread(target=self._fill, name="backup-reader", daemon=True).start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                block = self._read(BLOCK)
                while not self._stop.is_set():
                    try:
                        self._blocks.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if not block:
                    return
                if self._pipe and len(block) < GATHER:
                    time.sleep(NAP)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._blocks.put(exc)

    def close(self) -> None:
        """Release the reader thread (it stops at its next block)."""
        self._stop.set()

    def blocks(self, stats: StreamStats, advance: Advance | None) -> Iterator[bytes]:
        """The blocks in order, counted into `stats.raw_bytes`; the source's error is raised here."""
        try:
            while True:
                block = self._blocks.get()
                if isinstance(block, BaseException):
                    raise block
                if not block:
                    return
                stats.raw_bytes += len(block)
                if advance:
                    advance(len(block))
                yield block
        finally:
            self.close()  # a consumer that stops early (error, Ctrl-C) releases the reader thread


# zstd's window at level 1 (the default): 128 KiB instead of the level's 512 KiB. Measured on
# bench_backup's 318 MB dump: 17 % less CPU in zstd (0.62 s against 0.75 s, on a core pg_dump
# needs), the same ratio (3.46); a tar of this repository's sources lost 3 % of its ratio. A
# dump's redundancy is within rows and pages, near at hand. Decompression reads the window from
# the frame header (and needs less memory); other levels keep their own parameters.
FAST_WINDOW_LOG = 17
# and its match-finder hash table at 2**12 entries (16 KiB, within a core's L1 data cache)
# instead of the 2**14 zstd gives level 1: 6-7 % less CPU in zstd on what opsctl compresses,
# at a ratio as good or better (measured here, best of 5, CPU ms per MB and ratio, 14 vs 12:
# a 68 MB dump of bench_backup's tables 1.19-1.23 vs 1.12-1.14 ms/MB, ratio 3.458 vs 3.477;
# 12 segments of insert-heavy WAL 1.17-1.18 vs 1.09-1.12, ratio 3.37 vs 3.43). A tar of this
# repository's sources lost 4 % of its ratio (2.44 vs 2.35). Compression only: a frame
# decompresses the same either way.
FAST_HASH_LOG = 12


def threads_for(level: int) -> int:
    """zstd worker threads for a backup stream at `level`: 0 (compress in the calling thread,
    which releases the GIL meanwhile) at level 1, -1 (one worker per core) above it.

    Level 1 compresses ~640 MB/s on one core here, twice what pg_dump writes, so workers buy
    no speed there and cost CPU on a core pg_dump needs: on bench_backup's 318 MB dump the
    process used 0.06-0.12 s less CPU single-threaded (two alternated series under load,
    user+sys of `backup create`). Levels 3 and up are slower than pg_dump on one core."""
    return 0 if level == 1 else -1


def compressor(level: int, threads: int = -1):
    """zstandard.ZstdCompressor for `level` (1-22) with `threads` worker threads (-1: one per
    core), level 1 with its window capped at 2**FAST_WINDOW_LOG bytes and its hash table at
    2**FAST_HASH_LOG entries."""
    import zstandard

    if level == 1:
        return zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
            1, window_log=FAST_WINDOW_LOG, hash_log=FAST_HASH_LOG, threads=threads))
    return zstandard.ZstdCompressor(level=level, threads=threads)


def pack(reader: BinaryIO | ReadAhead, level: int, key: BackupKey | None, stats: StreamStats,
         advance: Advance | None = None, threads: int = -1) -> Iterator[bytes]:
    """reader (a file, or a ReadAhead already reading one) -> zstd (multi-threaded;
    `compressor`) -> AES-256-GCM frames (when key) -> hashed output blocks. `level`: zstd's 1-22."""
    cobj = compressor(level, threads).compressobj(size=-1)
    source = reader if isinstance(reader, ReadAhead) else ReadAhead(reader)

    def compressed() -> Iterator[bytes]:
        for block in source.blocks(stats, advance):
            out = cobj.compress(block)
            if out:
                yield out
        yield cobj.flush()

    stream = crypto.encrypt(compressed(), key) if key else compressed()
    digest = hashlib.sha256()
    try:
        for out in stream:
            if out:
                digest.update(out)
                stats.stored_bytes += len(out)
                yield out
    finally:  # stopped early (before its first block was even asked for): release the reader
        source.close()
    stats.sha256 = digest.hexdigest()


def checked(chunks: Iterable[bytes], name: str, sha256: str, size: int,
            advance: Advance | None = None) -> Iterator[bytes]:
    """Pass stored bytes through, failing at the end unless SHA-256 and size match the manifest.
    Owns `chunks`: closed (`close_source`) when this ends, fails or is closed."""
    digest = hashlib.sha256()
    seen = 0
    try:
        for chunk in chunks:
            digest.update(chunk)
            seen += len(chunk)
            if seen > size:
                raise crypto.IntegrityError(f"{name} is longer than the manifest says ({seen} > {size} bytes)")
            if advance:
                advance(len(chunk))
            yield chunk
    finally:
        close_source(chunks)
    if seen != size:
        raise crypto.IntegrityError(f"{name} is truncated: {seen} of {size} bytes")
    if digest.hexdigest() != sha256:
        raise crypto.IntegrityError(f"{name} does not match its SHA-256 in the manifest: the object is damaged")


def close_source(chunks: Iterable[bytes]) -> None:
    """Close `chunks` when it can be closed (a generator: Repository.get's stream, which holds
    an open file or an HTTP response until then). Left to the garbage collector, it stayed open
    as long as anything held the frame that held it: an error's traceback does (CliRunner keeps
    the error), and a refused restore kept the damaged base backup's file open after the
    repository removed it."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def unpack(chunks: Iterable[bytes], name: str, sha256: str, size: int, key: BackupKey | None,
           advance: Advance | None = None) -> Iterator[bytes]:
    """Stored bytes -> checked -> decrypted (when key) -> decompressed plaintext blocks."""
    import zstandard

    source = checked(chunks, name, sha256, size, advance)
    stream: Iterable[bytes] = source if key is None else crypto.decrypt(source, key, name)
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        for block in stream:
            out = dobj.decompress(block)
            if out:
                yield out
    except zstandard.ZstdError as exc:
        raise crypto.IntegrityError(f"{name} does not decompress ({exc}); the object is damaged") from None
    finally:
        source.close()  # and with it `chunks`, when decrypt failed or this was closed part-way
    if not dobj.eof:
        raise crypto.IntegrityError(f"{name} ends inside its zstd frame: the object is truncated")


class _Blocks:
    """A read() source over an iterator of byte blocks, each handed over whole (no copy):
    zstandard's stream_reader takes what read() returns as its next input."""

    def __init__(self, blocks: Iterable[bytes]):
        self._it = iter(blocks)

    def read(self, _size: int = -1) -> bytes:
        """The next block, b"" at the end."""
        return next(self._it, b"")

    def rest(self) -> int:
        """Read what is left to its end (so the checks at its end run); bytes found."""
        return sum(len(block) for block in self._it)


def unpack_into(chunks: Iterable[bytes], name: str, sha256: str, size: int, key: BackupKey | None,
                raw_size: int, advance: Advance | None = None, buffers: int = 2,
                piece: int = BLOCK) -> Iterator[memoryview]:
    """As `unpack`, but the plaintext comes as views of `buffers` buffers of `piece` bytes used
    in turn: a view is valid until `buffers - 1` more were taken (a consumer holding one, with a
    queue of up to `buffers - 2` between it and this generator). `raw_size`: the plaintext's
    size (a backup's record, a WAL segment's 16 MiB); any other raises IntegrityError.

    For streams of hundreds of MB: unpack's blocks are new objects of several MB, memory the
    process touches for the first time over and over (on a VM ~2 us a page), and zstandard's
    decompressobj holds the GIL while it decompresses. Its stream_reader, used here, does
    neither; it does not report a frame cut short, hence the size check (the frames it reads
    were authenticated whole, and the stored bytes' SHA-256 checked, before the end)."""
    import zstandard

    checking = checked(chunks, name, sha256, size, advance)
    source = _Blocks(checking if key is None else crypto.decrypt(checking, key, name))
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=False)
    ring = [bytearray(piece) for _ in range(max(1, buffers))]
    seen = turn = 0
    try:
        while True:
            buf = ring[turn % len(ring)]
            turn += 1
            n = reader.readinto(buf)
            if not n:
                break
            seen += n
            if seen > raw_size:
                raise crypto.IntegrityError(f"{name} decompresses to more than the {raw_size} bytes expected; "
                                            "the object is damaged")
            yield memoryview(buf)[:n]
        extra = source.rest()
    except zstandard.ZstdError as exc:
        raise crypto.IntegrityError(f"{name} does not decompress ({exc}); the object is damaged") from None
    finally:
        checking.close()  # and with it `chunks`, when decrypt failed or this was closed part-way
    if extra:
        raise crypto.IntegrityError(f"{name} holds {extra} bytes after its zstd frame; the object is damaged")
    if seen != raw_size:
        raise crypto.IntegrityError(f"{name} decompresses to {seen} bytes where {raw_size} were expected: the "
                                    "object is truncated")


class IterReader:
    """A read()-able file over an iterator of bytes, for APIs that want a file object."""

    def __init__(self, chunks: Iterable[bytes]):
        self._it = iter(chunks)
        self._buf = bytearray()
        self._done = False

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left when negative); b"" at the end."""
        while not self._done and (size < 0 or len(self._buf) < size):
            try:
                self._buf += next(self._it)
            except StopIteration:
                self._done = True
        if size < 0:
            size = len(self._buf)
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def readable(self) -> bool:
        """Always True (io's protocol)."""
        return True


Reporter = Callable[[str, "int | None"], Advance]  # (what, total bytes or None) -> advance(n)


def quiet(_what: str, _total: int | None) -> Advance:
    """The Reporter that shows nothing."""
    return lambda _n: None
