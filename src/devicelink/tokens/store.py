"""The encrypted state file, written so that a power cut never leaves half of it.

Format (``state.bin``)::

    b"DLS1" | 12-byte random nonce | AES-256-GCM(JSON record, AAD = b"DLS1" + device label)

Why AES-256-GCM rather than Fernet: a 256-bit key (Fernet is AES-128-CBC with
HMAC), a binary format with no base64 or timestamp overhead, and associated
data that binds the file to what it is for, so a state file copied to another
device (or another daemon's state_dir) fails to open instead of being used.
``cryptography`` provides both; GCM needs a unique nonce per key, which 96
random bits give for far more writes than an SD card survives.

Two generations: ``state.bin`` (the newest) and ``state.prev.bin`` (the one
before it). A save writes a temp file in the same directory (0600) -> fsync ->
renames ``state.bin`` to ``state.prev.bin`` -> renames the temp file to
``state.bin`` -> fsyncs the directory. At every instant at least one complete,
authenticated generation exists: the newest committed record is ``state.bin``,
or (between the two renames) ``state.prev.bin``.

Loading: ``state.bin`` if it decrypts (AES-GCM's tag is the integrity check);
else ``state.prev.bin``, with one log line saying so; both unreadable is
:class:`StoreUnreadable`. ``state.bin`` missing beside a ``state.prev.bin`` is
a save cut off between its renames: the previous generation is the newest
committed one then. The previous generation matters when the newest is damaged
(a power cut on a filesystem or SD card that does not keep rename ordering, a
bad block; SIGKILL never does that). Its refresh token was rotated away at the
server, but its successor, in the damaged newest, was never used (each refresh
is saved before the next one), so servers with a grace rule (Okta's grace
period, Auth0's reuse interval, the development server) accept it once more.
A record without a grant keeps no previous generation (see :meth:`save`).

The key is injected (see ``tokens/keys.py``): the store never decides where it lives.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from devicelink.errors import StoreError, StoreUnreadable
from devicelink.files import fsync_dir, write_atomic

logger = logging.getLogger(__name__)

MAGIC = b"DLS1"
NONCE_BYTES = 12
STATE_FILE = "state.bin"
PREVIOUS_FILE = "state.prev.bin"
MAX_STATE_BYTES = 1 << 20


class EncryptedFileStore:
    def __init__(self, state_dir: Path, key: bytes, label: str = "devicelink") -> None:
        if len(key) != 32:
            raise ValueError("the state key must be 32 bytes")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE
        self.previous_path = self.dir / PREVIOUS_FILE
        self._aead = AESGCM(key)
        self._aad = MAGIC + label.encode()
        #: load() fell back to the previous generation: the next save replaces the unreadable
        #: newest instead of rotating it into the previous generation's place.
        self._newest_unreadable = False

    def __repr__(self) -> str:
        return f"EncryptedFileStore({str(self.path)!r})"

    def load(self) -> dict[str, Any] | None:
        """The newest readable record, or None when there is none. :class:`StoreUnreadable`
        when a state file exists but no generation can be used (corrupt, truncated,
        another key, not ours)."""
        try:
            return self._read(self.path)
        except FileNotFoundError:
            newest: StoreUnreadable | None = None
        except StoreUnreadable as exc:
            newest = exc
        try:
            record = self._read(self.previous_path)
        except FileNotFoundError:
            if newest is None:
                return None
            raise StoreUnreadable(f"{newest}; no previous generation") from None
        except StoreUnreadable as exc:
            if newest is None:
                raise StoreUnreadable(f"{self.path}: missing, and the previous generation is unreadable: "
                                      f"{exc}") from None
            raise StoreUnreadable(f"{newest}; the previous generation is unreadable too") from None
        if newest is None:
            logger.warning("%s: missing (a save was cut off); using the previous generation %s",
                           self.path, self.previous_path.name)
        else:
            logger.warning("%s; using the previous generation %s", newest, self.previous_path.name)
            self._newest_unreadable = True
        return record

    def _read(self, path: Path) -> dict[str, Any]:
        """One generation. FileNotFoundError when absent, :class:`StoreUnreadable` when unusable."""
        try:
            with open(path, "rb") as f:
                blob = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreUnreadable(f"{path}: cannot read: {exc.strerror}") from None
        if len(blob) > MAX_STATE_BYTES or not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            raise StoreUnreadable(f"{path}: not a devicelink state file (or truncated)")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], self._aad)
        except InvalidTag:
            raise StoreUnreadable(f"{path}: cannot be decrypted (corrupt, or written with another key)") from None
        try:
            record = json.loads(plain)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise StoreUnreadable(f"{path}: decrypted, but the content is not a state record")
        return record

    def save(self, record: dict[str, Any]) -> None:
        """Make ``record`` the newest generation, atomically and durably; the one it
        replaces becomes the previous generation.

        A record without a grant (``"tokens"`` null: a device that unpaired and still owes
        a revocation) keeps no previous generation: the old one is unlinked first, so an
        unpaired device can never fall back to the grant it gave up."""
        plain = json.dumps(record, separators=(",", ":")).encode()
        nonce = os.urandom(NONCE_BYTES)
        blob = MAGIC + nonce + self._aead.encrypt(nonce, plain, self._aad)
        if record.get("tokens") is None:
            self._drop_previous()
            atomic_write(self.path, blob)
        else:
            # After a fallback, the previous generation is the good one: keep it, overwrite the
            # damaged newest (rotating it would leave, between the renames, nothing readable).
            atomic_write(self.path, blob, previous=None if self._newest_unreadable else self.previous_path)
        self._newest_unreadable = False

    def _drop_previous(self) -> None:
        try:
            os.unlink(self.previous_path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"{self.previous_path}: cannot remove: {exc.strerror}") from None
        try:
            fsync_dir(self.dir)
        except OSError as exc:
            raise StoreError(f"{self.dir}: cannot write: {exc.strerror}") from None

    def clear(self) -> None:
        """Forget the grant: both generations are unlinked (their blocks held only ciphertext).
        The previous one goes first, so a crash in between leaves the newest, never an old grant."""
        try:
            for path in (self.previous_path, self.path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            fsync_dir(self.dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot remove: {exc.strerror}") from None


def atomic_write(path: Path, data: bytes, mode: int = 0o600, previous: Path | None = None) -> None:
    """:func:`devicelink.files.write_atomic`, durable. Raises :class:`StoreError`."""
    try:
        write_atomic(path, data, mode=mode, previous=previous)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror}") from None


def ensure_private_dir(directory: Path) -> None:
    """Create ``state_dir`` 0700 if missing. An existing one readable by others is tightened."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_mode & 0o077:
            logger.warning("%s was accessible to other users; setting mode 0700", directory)
            os.chmod(directory, 0o700)
    except OSError as exc:
        raise StoreError(f"{directory}: cannot create the state directory: {exc.strerror}") from None
