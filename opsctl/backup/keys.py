"""The backup key: where it comes from, what it looks like, and the id recorded with backups.

Format: 32 random bytes, base64-encoded (`openssl rand -base64 32` or
`python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"`), in the
variable named by `backup.key_env` (default OPSCTL_BACKUP_KEY) or in `backup.key_file`.
The key is never stored with a backup; its id (the first 16 hex digits of a SHA-256 over a
fixed label and the key) is, so a restore with the wrong key fails before reading any data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from opsctl.config import Environment, Project
from opsctl.errors import UsageError

KEY_BYTES = 32
HOW = "32 random bytes in base64, e.g. from 'openssl rand -base64 32'"


@dataclass(frozen=True)
class BackupKey:
    """The repository's 32-byte secret; never printed (repr hides it). Sub-keys per purpose
    are HKDF-derived from it (`derive`)."""
    secret: bytes = field(repr=False)

    @property
    def id(self) -> str:
        """A public fingerprint of the key (16 hex digits of a SHA-256), recorded in the
        repository record and every manifest so a wrong key is named, not guessed."""
        return hashlib.sha256(b"opsctl-backup-key-id\0" + self.secret).hexdigest()[:16]

    def derive(self, info: bytes, salt: bytes = b"") -> bytes:
        """A sub-key per purpose (object encryption, manifest MAC): HKDF-SHA256."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=info).derive(self.secret)

    def mac(self, data: bytes) -> str:
        """HMAC-SHA256 of `data` (hex) under the manifest sub-key: manifests, verdicts, the
        repository record and the catalog index are sealed with it."""
        return hmac.new(self.derive(b"opsctl-backup manifest v1"), data, hashlib.sha256).hexdigest()


def parse(text: str, source: str) -> BackupKey:
    """The key from its text (standard or URL-safe base64, padding optional, surrounding
    blanks ignored); UsageError naming `source` (a variable or file) when it is not base64
    of exactly 32 bytes."""
    raw = text.strip()
    try:
        secret = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_" if ("-" in raw or "_" in raw) else None,
                                  validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"the backup key in {source} is not base64; it must be {HOW}") from None
    if len(secret) != KEY_BYTES:
        raise UsageError(f"the backup key in {source} decodes to {len(secret)} bytes, not {KEY_BYTES}; use {HOW}")
    return BackupKey(secret)


def _key_text(path: Path, key_env: str) -> str:
    """The text of key file `path`. UsageError when it is missing, no regular file (a folder,
    a FIFO: never opened) or not ASCII text (a key is base64: breaker 38 H2 ended in
    "unexpected UnicodeDecodeError"); a warning when others may read it (ssh refuses such a
    private key; a key file made by hand often is 0644)."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        raise UsageError(f"backup.key_file {path} does not exist; create it with {HOW}, or set ${key_env}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"backup.key_file {path} is not a regular file; point it at a file holding {HOW}")
    if mode & 0o077:
        import logging

        logging.getLogger("opsctl.backup").warning(
            "backup.key_file %s can be read by others (mode %o); 'chmod 600 %s'", path, stat.S_IMODE(mode), path)
    try:
        return path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"the backup key in {path} is not base64 text; it must be {HOW}") from None


def load(project: Project, env: Environment, required: bool = True) -> BackupKey | None:
    """The key from the environment variable, else the key file; None only when not required."""
    settings = env.backup
    value = os.environ.get(settings.key_env)
    if value:
        return parse(value, f"${settings.key_env}")
    if settings.key_file:
        path = Path(settings.key_file).expanduser()
        path = path if path.is_absolute() else project.root / path
        return parse(_key_text(path, settings.key_env), str(path))
    if required:
        raise UsageError(f"no backup key: set ${settings.key_env} (or backup.key_file in opsctl.yaml) to {HOW}, "
                         "or pass --no-encrypt")
    return None


def generate() -> str:
    """A new key: 32 random bytes (os.urandom) in standard base64."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()
