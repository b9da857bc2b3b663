"""Chunked AES-256-GCM: authenticated encryption of a stream of any length, in 1 MiB frames.

One GCM message can't be streamed safely (nothing is authenticated until the end), so the
stream is cut into frames, each sealed on its own (the scheme of Tink's streaming AEAD):
a fresh 16-byte salt per object derives the object's key from the backup key (HKDF), the
nonce is the frame counter plus a last-frame flag, and the header is authenticated with
every frame. Reordered, dropped, truncated or flipped bytes fail authentication; a stream
cut at a frame boundary fails too, because its new last frame was not sealed as last.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

from opsctl.backup.keys import BackupKey
from opsctl.errors import OperationFailed

MAGIC = b"OPSCTLB1"
SALT = 16
HEADER = len(MAGIC) + SALT
CHUNK = 1 << 20
TAG = 16
FRAME = CHUNK + TAG


class IntegrityError(OperationFailed):
    """Stored bytes are not what was written: corrupted, truncated, or another key."""


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _cipher(key: BackupKey, salt: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key.derive(b"opsctl-backup object v1", salt))


def encrypt(chunks: Iterable[bytes], key: BackupKey) -> Iterator[bytes]:
    """The encrypted stream of the plaintext `chunks` (any sizes): MAGIC and a fresh 16-byte
    salt, then 1 MiB frames each sealed with AES-256-GCM under the object key HKDF-derived
    from `key` and the salt (16-byte tag per frame, the last frame flagged in its nonce).
    Output is 32 + 16 bytes per MiB larger than the input. Never raises on content."""
    salt = os.urandom(SALT)
    header = MAGIC + salt
    aead = _cipher(key, salt)
    yield header
    buf = bytearray()
    counter = 0
    for chunk in chunks:
        buf += chunk
        while len(buf) > CHUNK:  # strictly more: a frame is sealed as last only at the end
            yield _seal(aead, _nonce(counter, False), buf, CHUNK, header)
            del buf[:CHUNK]
            counter += 1
    yield _seal(aead, _nonce(counter, True), buf, len(buf), header)


def _seal(aead, nonce: bytes, buf: bytearray, size: int, header: bytes) -> bytes:
    """Encrypt buf[:size] through a view: copying each frame out first cost more CPU than
    AES-GCM itself (0.11 s against 0.005 s for 92 MB here), on a core pg_dump needs."""
    with memoryview(buf) as view:
        return aead.encrypt(nonce, view[:size], header)


def decrypt(chunks: Iterable[bytes], key: BackupKey, name: str) -> Iterator[bytes]:
    """The plaintext of a stream written by `encrypt`, frame by frame (up to 1 MiB each).
    Raises IntegrityError naming the object `name` when the header is not opsctl's or a
    frame fails authentication: modified, reordered, truncated (even at a frame boundary)
    or sealed under another key. A frame is released only once it authenticated."""
    from cryptography.exceptions import InvalidTag

    buf = bytearray()
    it = iter(chunks)
    for chunk in it:
        buf += chunk
        if len(buf) >= HEADER:
            break
    header = bytes(buf[:HEADER])
    if len(header) < HEADER or not header.startswith(MAGIC):
        raise IntegrityError(f"{name} is not an opsctl encrypted object (bad header); the backup is damaged")
    del buf[:HEADER]
    aead = _cipher(key, header[len(MAGIC):])
    counter = 0

    def open_(size: int, last: bool) -> bytes:
        try:
            with memoryview(buf) as view:  # no copy of the frame (see _seal)
                return aead.decrypt(_nonce(counter, last), view[:size], header)
        except InvalidTag:
            raise IntegrityError(f"{name} failed authentication at frame {counter}: the object was modified "
                                 "or truncated, or the key is not the one it was written with") from None

    for chunk in _then(it):
        buf += chunk
        while len(buf) > FRAME:  # a frame is non-final only when more bytes follow it
            plain = open_(FRAME, False)
            del buf[:FRAME]
            counter += 1
            yield plain
    if len(buf) < TAG:
        raise IntegrityError(f"{name} is truncated (its last frame is missing)")
    yield open_(len(buf), True)


def _then(it: Iterator[bytes]) -> Iterator[bytes]:
    yield b""  # first run the frame loop over what reading the header already buffered
    yield from it
