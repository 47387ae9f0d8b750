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

Both unreadable, the daemon's store (``set_aside=True``) moves them aside, renamed
``state.bin.unreadable-<UTC time>`` (at most ``UNREADABLE_KEPT`` of each name are kept)
and says so: a grant written with a key that is missing now is never overwritten by
the next pairing, and putting the key back and the file back under its name restores it.

Every state file is read with ``O_NOFOLLOW`` and must be a regular file owned by this
process's user and not writable by others (else :class:`StoreError`: the daemon does
not start). :func:`ensure_private_dir` checks the directory and everything in it the
same way before anything is read (``state_dir_problems``).

The key is injected (see ``tokens/keys.py``): the store never decides where it lives.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from devicelink.errors import StoreError, StoreUnreadable
from devicelink.files import UnsafeFile, fsync_dir, read_owned, remove_durably, unsafe, user_name, write_atomic

logger = logging.getLogger(__name__)

MAGIC = b"DLS1"
NONCE_BYTES = 12
STATE_FILE = "state.bin"
PREVIOUS_FILE = "state.prev.bin"
MAX_STATE_BYTES = 1 << 20
#: How many set-aside copies of each state file (``state.bin.unreadable-<time>``) are kept.
UNREADABLE_KEPT = 3
UNREADABLE = ".unreadable-"


class EncryptedFileStore:
    def __init__(self, state_dir: Path, key: bytes, label: str = "devicelink", *, set_aside: bool = False) -> None:
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
        #: Move state files no generation of which opens aside (the daemon), instead of
        #: leaving them for the next save to overwrite (tools trying several keys: False).
        self.set_aside = set_aside

    def __repr__(self) -> str:
        return f"EncryptedFileStore({str(self.path)!r})"

    def load(self) -> dict[str, Any] | None:
        """The newest readable record, or None when there is none. :class:`StoreUnreadable`
        when a state file exists but no generation can be used (corrupt, truncated,
        another key, not ours); with ``set_aside``, those files were moved aside first
        and the message says where. :class:`StoreError` for a file that is not ours to read."""
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
            raise self._unreadable(f"{newest}; no previous generation", self.path) from None
        except StoreUnreadable as exc:
            if newest is None:
                raise self._unreadable(f"{self.path}: missing, and the previous generation is unreadable: "
                                       f"{exc}", self.previous_path) from None
            raise self._unreadable(f"{newest}; the previous generation is unreadable too",
                                   self.path, self.previous_path) from None
        if newest is None:
            logger.warning("%s: missing (a save was cut off); using the previous generation %s",
                           self.path, self.previous_path.name)
        else:
            logger.warning("%s; using the previous generation %s", newest, self.previous_path.name)
            self._newest_unreadable = True
        return record

    def _unreadable(self, message: str, *paths: Path) -> StoreUnreadable:
        """The error for state files no generation of which opens; with ``set_aside``, they are
        moved aside first, so no later save overwrites them."""
        if not self.set_aside:
            return StoreUnreadable(message)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = []
        try:
            for path in paths:
                target, n = path.with_name(f"{path.name}{UNREADABLE}{stamp}"), 0
                while os.path.lexists(target):
                    n += 1
                    target = path.with_name(f"{path.name}{UNREADABLE}{stamp}-{n}")
                os.rename(path, target)
                moved.append(target.name)
                self._prune(path.name)
            fsync_dir(self.dir)
        except OSError as exc:
            raise StoreError(f"{message}; cannot move it aside: {exc.strerror}") from None
        return StoreUnreadable(f"{message}; moved aside as {' and '.join(moved)} in {self.dir} (to get the "
                               "grant back: stop the daemon, restore the key that wrote it and rename the file "
                               f"back to {paths[0].name}; docs/files.md)")

    def _prune(self, name: str) -> None:
        kept = sorted(n for n in os.listdir(self.dir) if n.startswith(name + UNREADABLE))
        for old in kept[:-UNREADABLE_KEPT]:
            os.unlink(self.dir / old)

    def _read(self, path: Path) -> dict[str, Any]:
        """One generation. FileNotFoundError when absent, :class:`StoreUnreadable` when unusable."""
        try:
            blob = read_owned(path, MAX_STATE_BYTES)
        except FileNotFoundError:
            raise
        except UnsafeFile as exc:
            raise StoreError(f"{path} is {exc.strerror}: refusing to read it; fix: {_REMOVE}") from None
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
        remove_durably(self.previous_path, StoreError)

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


_REMOVE = "remove it unless you put it there yourself (docs/files.md)"


def ensure_private_dir(directory: Path) -> None:
    """Create ``state_dir`` 0700 if missing. An existing one must be owned by this process's
    user and not writable by others, and so must everything in it (:func:`state_dir_problems`):
    else :class:`StoreError` with the fix, and the daemon does not start. One only readable
    by others is tightened to 0700."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(directory)
    except OSError as exc:
        raise StoreError(f"{directory}: cannot create the state directory: {exc.strerror}{_fix_owner(directory, exc)}"
                         ) from None
    problems = state_dir_problems(directory)
    if problems:
        raise StoreError("; fix: ".join(problems[0]))
    if st.st_mode & 0o077:
        logger.warning("%s was readable by other users; setting mode 0700", directory)
        try:
            os.chmod(directory, 0o700)
        except OSError as exc:
            raise StoreError(f"{directory}: cannot set mode 0700: {exc.strerror}") from None


def state_dir_problems(directory: Path, owner: int | None = None) -> list[tuple[str, str]]:
    """Why the daemon running as ``owner`` (default: this process's user) would refuse
    ``directory`` as its state directory: (what, fix) each. Empty when it is fine or
    absent. Also for ``doctor``."""
    owner = os.geteuid() if owner is None else owner
    try:
        st = os.stat(directory)
    except OSError:
        return []
    me = user_name(owner)
    if not os.path.isdir(directory):
        return [(f"{directory} is not a directory", "move it away (the daemon makes the state directory)")]
    if st.st_uid != owner:
        return [(f"{directory} is owned by {user_name(st.st_uid)}, but the daemon runs as {me}: it must own its "
                 "state directory", give_fix(directory, owner) + (f"; or run the daemon as {user_name(st.st_uid)}"
                                                                    if st.st_uid != 0 else ""))]
    if st.st_mode & 0o022:
        return [(f"{directory} is writable by other users (mode {st.st_mode & 0o7777:04o}): a file in it could "
                 "have been planted, so nothing in it is used",
                 f"chmod 700 {directory}, remove any file there not made by {me}, and re-key if state.key "
                 "could be read (devicelink rekey; docs/files.md)")]
    problems = []
    for path in _entries(directory):
        try:
            problem = unsafe(os.lstat(path), owner)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problem = f"unreadable ({exc.strerror})"
        if problem is not None:
            problems.append((f"{path} is {problem}: the daemon does not start with it in its state directory",
                             _REMOVE))
    return problems


def _entries(directory: Path) -> list[Path]:
    """Everything in the state directory, and in the re-key journal in it."""
    try:
        found = [directory / name for name in sorted(os.listdir(directory))]
    except OSError:
        return []
    journal = directory / "rekey"
    if journal in found and os.path.isdir(journal) and not os.path.islink(journal):
        try:
            found += [journal / name for name in sorted(os.listdir(journal))]
        except OSError:
            pass
    return found


def _fix_owner(directory: Path, exc: OSError) -> str:
    if not isinstance(exc, PermissionError):
        return ""
    return f"; the daemon runs as {user_name(os.geteuid())}; fix: {give_fix(directory, os.geteuid())}"


def give_fix(directory: Path, owner: int) -> str:
    """How to give ``directory`` to the daemon's user ``owner``: the chown, and the
    systemd-tmpfiles line that makes it so at every boot."""
    import grp
    import pwd

    me = user_name(owner)
    try:
        group = grp.getgrgid(pwd.getpwuid(owner).pw_gid).gr_name
    except KeyError:
        group = me
    return (f"chown -R {me}: {directory} && chmod 700 {directory}, and keep it so with the "
            f"systemd-tmpfiles line 'd {directory} 0700 {me} {group} -' (docs/files.md)")


