"""The encrypted state file, written so that a power cut never leaves half of it.

Format (``state.bin``)::

    b"DLS1" | 12-byte random nonce | AES-256-GCM(JSON record, AAD = b"DLS1" + device label)

Why AES-256-GCM rather than Fernet: a 256-bit key (Fernet is AES-128-CBC with
HMAC), a binary format with no base64 or timestamp overhead, and associated
data that binds the file to what it is for, so a state file copied to another
device (or another daemon's state_dir) fails to open instead of being used.
``cryptography`` provides both; GCM needs a unique nonce per key, which 96
random bits give for far more writes than an SD card survives.

Writes: temp file in the same directory (0600) -> write -> fsync -> rename over
the old file -> fsync the directory. At any instant the path holds either the
old complete file or the new complete file.

The key is injected (see ``tokens/keys.py``): the store never decides where it lives.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from devicelink.errors import StoreError, StoreUnreadable

logger = logging.getLogger(__name__)

MAGIC = b"DLS1"
NONCE_BYTES = 12
STATE_FILE = "state.bin"
MAX_STATE_BYTES = 1 << 20


class EncryptedFileStore:
    def __init__(self, state_dir: Path, key: bytes, label: str = "devicelink") -> None:
        if len(key) != 32:
            raise ValueError("the state key must be 32 bytes")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE
        self._aead = AESGCM(key)
        self._aad = MAGIC + label.encode()

    def __repr__(self) -> str:
        return f"EncryptedFileStore({str(self.path)!r})"

    def load(self) -> dict[str, Any] | None:
        """The stored record, or None when there is none. :class:`StoreUnreadable` when it
        exists but cannot be used (corrupt, truncated, another key, not ours)."""
        try:
            with open(self.path, "rb") as f:
                blob = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnreadable(f"{self.path}: cannot read: {exc.strerror}") from None
        if len(blob) > MAX_STATE_BYTES or not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            raise StoreUnreadable(f"{self.path}: not a devicelink state file (or truncated)")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], self._aad)
        except InvalidTag:
            raise StoreUnreadable(f"{self.path}: cannot be decrypted (corrupt, or written with another key)") from None
        try:
            record = json.loads(plain)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise StoreUnreadable(f"{self.path}: decrypted, but the content is not a state record")
        return record

    def save(self, record: dict[str, Any]) -> None:
        """Replace the stored record atomically and durably."""
        plain = json.dumps(record, separators=(",", ":")).encode()
        nonce = os.urandom(NONCE_BYTES)
        blob = MAGIC + nonce + self._aead.encrypt(nonce, plain, self._aad)
        atomic_write(self.path, blob)

    def clear(self) -> None:
        """Forget the grant. The file is unlinked; its blocks held only ciphertext."""
        try:
            os.unlink(self.path)
            fsync_dir(self.dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot remove: {exc.strerror}") from None


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """temp -> fsync -> rename -> fsync(dir). Raises :class:`StoreError`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is ignored if a stale temp file exists
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StoreError(f"{path}: cannot write: {exc.strerror}") from None


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink durable (POSIX leaves it in the directory's buffers until then)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_private_dir(directory: Path) -> None:
    """Create ``state_dir`` 0700 if missing. An existing one readable by others is tightened."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_mode & 0o077:
            logger.warning("%s was accessible to other users; setting mode 0700", directory)
            os.chmod(directory, 0o700)
    except OSError as exc:
        raise StoreError(f"{directory}: cannot create the state directory: {exc.strerror}") from None
