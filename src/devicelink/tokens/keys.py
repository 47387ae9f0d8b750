"""Where the state key comes from (``[storage] key``), and what every start does before using it.

Sources (``docs/keys.md``):

- ``file``: ``state_dir/state.key``, 32 random bytes made at first start, mode 0600,
  written atomically (temp -> fsync -> rename -> fsync the directory), so a power cut
  never leaves a short key that would stop every later start.
- ``credential``: the systemd credential ``devicelink.key``
  (``LoadCredentialEncrypted=devicelink.key:/etc/credstore.encrypted/devicelink.key``),
  read from ``$CREDENTIALS_DIRECTORY``; sealed to the host key or a TPM2 by
  ``systemd-creds encrypt``.
- ``auto``: the credential when the service was given one, else the file.

A key is exactly 32 raw bytes. Anything else is an error that says what was found
(empty, N bytes, 64 hex digits, base64 text...) and how to fix it; a configured
credential that is missing, unreadable or malformed stops the start. There is no
plaintext fallback and no silent switch to another source.

**The lock.** :func:`load_key` takes ``state_dir/state.lock`` (``flock``, exclusive) and
the process keeps it until it exits, so a second daemon on the same state, or a
``devicelink rekey`` while the daemon runs, cannot happen: ``rekey`` refuses at once,
a daemon starting while a ``rekey`` runs waits for it (at most ``LOCK_WAIT_SECONDS``).
The kernel drops the lock when the process dies, SIGKILL included.

**An interrupted re-key** (``devicelink.rekey``) leaves ``state_dir/rekey/``, a copy of
the state under the old key. :func:`load_key` settles it with the key this start
loaded, before the store is opened: when that key opens the copy, it is the old key,
the switch never happened, and the copy is put back (rolled back); when it does not
but it opens the state, it is the new key and the copy is deleted (committed).
Either way the grant opens with the key this start uses.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import logging
import os
import re
import time
from pathlib import Path

from devicelink.errors import ConfigError, StateDirBusy, StoreError, StoreUnreadable
from devicelink.files import UnsafeFile, read_owned, remove_durably, remove_stale_temps
from devicelink.tokens.store import EncryptedFileStore, atomic_write, fsync_dir

logger = logging.getLogger(__name__)

KEY_BYTES = 32
KEY_FILE = "state.key"
EXPOSED_NOTE = "state.key.exposed"  # the key was readable by others: re-key (doctor says so)
LOCK_FILE = "state.lock"
JOURNAL_DIR = "rekey"
#: In the journal: the switch to the new key may have happened (written durably just before it).
SWITCHING = "switching"
CREDENTIAL_NAME = "devicelink.key"
#: Where the docs tell operators to keep the sealed credential (and where `rekey` looks).
CREDSTORE_PATH = Path("/etc/credstore.encrypted") / CREDENTIAL_NAME
#: A daemon starting while `devicelink rekey` holds the lock waits this long for it.
LOCK_WAIT_SECONDS = 30.0
_READ_LIMIT = 4096  # a key is 32 bytes; read a little more to say what a wrong one is

#: state_dir (resolved) -> the fd holding its lock, for the life of this process.
_held: dict[str, int] = {}


def load_key(source: str, state_dir: Path) -> tuple[bytes, str]:
    """For a daemon start: lock ``state_dir`` for this process, find the 32-byte key, settle
    an interrupted re-key. Returns the key and where it came from (``"file"`` or
    ``"credential"``, for status and doctor). :class:`ConfigError` for a credential or
    source problem, :class:`StoreError` for the key file or the lock."""
    state_dir = Path(state_dir)
    lock_state_dir(state_dir)
    for name in remove_stale_temps(state_dir):  # a writer killed mid-write; ours alone, under the lock
        logger.info("%s: removed %s, left by an interrupted write", state_dir, name)
    key, used = resolve_key(source, state_dir)
    if finish_rekey(state_dir, key, used) is None and used == "credential" and os.path.lexists(state_dir / KEY_FILE):
        logger.warning("%s is left from the 'file' key source; the state is opened with the credential %s. If it "
                       "does not open, the grant is still under that file: stop the daemon and run "
                       "`devicelink rekey` (docs/keys.md)", state_dir / KEY_FILE, CREDENTIAL_NAME)
    return key, used


def key_source(source: str) -> str:
    """Which source ``source`` means in this process (``"credential"`` or ``"file"``), without
    reading anything: for ``doctor`` and status."""
    if source == "credential":
        return "credential"
    credential = credential_path()
    return "credential" if source == "auto" and credential is not None and os.path.lexists(credential) else "file"


def resolve_key(source: str, state_dir: Path) -> tuple[bytes, str]:
    """The key ``source`` gives in this process, creating the key file at first start.
    No lock and no journal handling: :func:`load_key` is the daemon's entry point."""
    if source not in ("auto", "file", "credential"):
        raise ConfigError(f"[storage] key: expected auto, file or credential, got {source!r}")
    if key_source(source) == "credential":
        return read_credential(), "credential"
    return file_key(Path(state_dir) / KEY_FILE), "file"


# -- credential ---------------------------------------------------------------------------

def credential_path() -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / CREDENTIAL_NAME if directory else None


def read_credential() -> bytes:
    """``$CREDENTIALS_DIRECTORY/devicelink.key``, checked. :class:`ConfigError` naming the
    credential and the fix when it is absent, unreadable or not 32 raw bytes."""
    path = credential_path()
    if path is None:
        raise ConfigError(f"[storage] key: the systemd credential {CREDENTIAL_NAME} is needed, but this process "
                          "was given no credentials ($CREDENTIALS_DIRECTORY is not set): add "
                          f"LoadCredentialEncrypted={CREDENTIAL_NAME}:{CREDSTORE_PATH} to the unit (docs/keys.md)")
    if not os.path.lexists(path):
        raise ConfigError(f"[storage] key: the systemd credential {CREDENTIAL_NAME} is needed, but "
                          f"$CREDENTIALS_DIRECTORY ({path.parent}) has none: add "
                          f"LoadCredentialEncrypted={CREDENTIAL_NAME}:{CREDSTORE_PATH} to the unit (docs/keys.md)")
    try:  # O_NOFOLLOW as for every file we trust (systemd's own credentials are never symlinks)
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            data = f.read(_READ_LIMIT + 1)
    except OSError as exc:
        raise ConfigError(f"[storage] key: the systemd credential {CREDENTIAL_NAME} ({path}) cannot be read: "
                          f"{exc.strerror} (it must be readable by the service's user)") from None
    return check_credential(data, f"the systemd credential {CREDENTIAL_NAME} ({path})")


def check_credential(data: bytes, where: str) -> bytes:
    """``data`` when it is a key; else :class:`ConfigError` saying what ``where`` holds instead."""
    found = describe_bad_key(data)
    if found is None:
        _warn_if_text(data, where)
        return data
    if "hex" in found:
        fix = (f"seal the 32 raw bytes instead: systemd-creds decrypt --name={CREDENTIAL_NAME} --transcode=unhex "
               f"OLD - | systemd-creds encrypt --name={CREDENTIAL_NAME} - NEW")
    elif "base64" in found:
        fix = (f"seal the 32 raw bytes instead: systemd-creds decrypt --name={CREDENTIAL_NAME} --transcode=unbase64 "
               f"OLD - | systemd-creds encrypt --name={CREDENTIAL_NAME} - NEW")
    else:
        fix = (f"seal 32 random bytes: head -c 32 /dev/urandom | systemd-creds encrypt --name={CREDENTIAL_NAME} "
               f"- {CREDSTORE_PATH}")
    raise ConfigError(f"[storage] key: {where}: the state key must be exactly {KEY_BYTES} raw bytes, "
                      f"found {found}; {fix} (docs/keys.md)")


def describe_bad_key(data: bytes) -> str | None:
    """None when ``data`` is a usable key (exactly 32 bytes); otherwise what it is instead,
    in words for an error message. Never quotes the content."""
    if len(data) == KEY_BYTES:
        return None
    if not data:
        return "nothing (it is empty)"
    size = f"{len(data)} bytes" if len(data) <= _READ_LIMIT else f"more than {_READ_LIMIT} bytes"
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return size
    if not all(c.isprintable() or c in "\r\n\t " for c in text):
        return size
    body = text.strip()
    newline = " and a newline" if text.endswith("\n") else ""
    if re.fullmatch(r"[0-9A-Fa-f]{64}", body):
        return f"{size} of text: 64 hex digits{newline} (the key written as hex)"
    try:
        if len(base64.b64decode(body, validate=True)) == KEY_BYTES:
            return f"{size} of text: base64{newline} (the key written as base64)"
    except ValueError:
        pass
    return f"{size} of text"


def _warn_if_text(key: bytes, where: str) -> None:
    # 32 random bytes are all printable ASCII with probability (95/256)**32, about 1e-14:
    # such a key is a password someone typed, far weaker than a random one.
    if all(32 <= b < 127 for b in key):
        logger.warning("%s: the state key is 32 printable characters, not 32 random bytes; "
                       "a typed password is a weak key (docs/keys.md: re-keying)", where)


# -- file ---------------------------------------------------------------------------------

def file_key(path: Path) -> bytes:
    """``state.key``, created (32 random bytes, 0600, atomically) when absent."""
    if os.path.lexists(path):
        return read_key_file(path)
    if _state_exists(path.parent):
        logger.warning("%s: no key file, but a state file exists: it was written with another key "
                       "(storage.key was 'credential'?); a new key is made, the state is set aside (not overwritten) "
                       "and the device starts unpaired",
                       path)
    key = os.urandom(KEY_BYTES)
    atomic_write(path, key)
    return key


def read_key_file(path: Path) -> bytes:
    """An existing key file, tightened to 0600 if readable by others. :class:`StoreError`
    when unusable, or not made by us: a symlink, not a regular file, another user's, or
    writable by others (such a key may be an attacker's: it is never used)."""
    try:
        data = read_owned(path, _READ_LIMIT)
        if (loose := os.lstat(path).st_mode & 0o7777) & 0o077:
            logger.warning("%s was readable by other users (mode %04o); setting mode 0600. It could have been "
                           "read: re-key (devicelink rekey, docs/keys.md)", path, loose)
            note_exposed(path, loose)
            os.chmod(path, 0o600)  # checked just above; only we can write in the directory
    except UnsafeFile as exc:
        raise StoreError(f"{path} is {exc.strerror}: it is not a key this daemon made, and is never used; remove "
                         "it unless you put it there yourself, and restore the real one (docs/keys.md)") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the state key: {exc.strerror}") from None
    found = describe_bad_key(data)
    if found is not None:
        raise StoreError(f"{path}: the state key must be exactly {KEY_BYTES} bytes, found {found}; restore "
                         "the file (removing it makes a new key, and the device starts unpaired)")
    _warn_if_text(data, str(path))
    return data


def note_exposed(path: Path, mode: int) -> None:
    """Remember that the key was readable by others, for ``doctor``: tightening its mode
    hides it, but not that it could have been read. ``devicelink rekey`` removes the note."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        atomic_write(path.parent / EXPOSED_NOTE, f"mode {mode:04o} until {when}\n".encode())
    except StoreError as exc:
        logger.warning("%s", exc)


def exposed(state_dir: Path) -> str | None:
    """Why the state key must be re-keyed (it was readable by others), or None."""
    try:
        return read_owned(Path(state_dir) / EXPOSED_NOTE, 200).decode("ascii", "replace").strip() or "yes"
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unknown ({exc.strerror})"


def forget_exposed(state_dir: Path) -> None:
    """A new key: the old one's exposure no longer matters."""
    _unlink(Path(state_dir) / EXPOSED_NOTE)


def _state_exists(state_dir: Path) -> bool:
    return any(p.name.startswith("state.") and p.name.endswith(".bin") for p in _listdir(state_dir))


def _listdir(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


# -- lock ---------------------------------------------------------------------------------

#: While it waits for the state lock, the daemon says so at once, then this often.
LOCK_PROGRESS_SECONDS = 5.0


def lock_state_dir(state_dir: Path, wait: float | None = None) -> None:
    """Hold ``state_dir/state.lock`` for the rest of this process (idempotent). Waits up to
    ``wait`` seconds (default ``LOCK_WAIT_SECONDS``) for another holder, saying so at once
    (a warning, then one every ``LOCK_PROGRESS_SECONDS``), then :class:`StateDirBusy`."""
    name = os.path.realpath(state_dir)
    if name in _held:
        return
    fd = _open_lock(Path(state_dir))
    budget = LOCK_WAIT_SECONDS if wait is None else wait
    started = time.monotonic()
    deadline = started + budget
    told = None  # when we last said that we wait
    while not _try_flock(fd):
        now = time.monotonic()
        if now < deadline and (told is None or now - told >= LOCK_PROGRESS_SECONDS):
            pid = _holder(fd)
            if told is None:
                logger.warning("%s/%s is held by another devicelink process%s (a `devicelink rekey`, or a "
                               "second daemon with the same state_dir): waiting up to %.0f s for it",
                               state_dir, LOCK_FILE, f" (pid {pid})" if pid else "", budget)
            else:
                logger.warning("still waiting for %s/%s (%.0f s left)", state_dir, LOCK_FILE, deadline - now)
            told = now
        if now >= deadline:
            pid = _holder(fd)
            os.close(fd)
            raise StateDirBusy(f"{state_dir}/{LOCK_FILE} is held by another devicelink process"
                               f"{f' (pid {pid})' if pid else ''}: a `devicelink rekey` that does not finish, "
                               "or a second daemon with the same state_dir", pid)
        time.sleep(0.05)
    _claim(fd)
    _held[name] = fd


def release_state_lock(state_dir: Path) -> None:
    """Drop this process's lock on ``state_dir`` (tests, and an in-process daemon that stops)."""
    fd = _held.pop(os.path.realpath(state_dir), None)
    if fd is not None:
        os.close(fd)


def holds_state_lock(state_dir: Path) -> bool:
    return os.path.realpath(state_dir) in _held


def try_lock_state_dir(state_dir: Path) -> int:
    """The lock without waiting, for ``rekey``: the fd holding it (close it to release), or
    :class:`StateDirBusy`."""
    if holds_state_lock(state_dir):
        raise StateDirBusy(f"{state_dir}/{LOCK_FILE} is held by this process (it loaded the key to run "
                           "the daemon)", os.getpid())
    fd = _open_lock(Path(state_dir))
    if not _try_flock(fd):
        pid = _holder(fd)
        os.close(fd)
        raise StateDirBusy(f"the daemon is running{f' (pid {pid})' if pid else ''}: it holds "
                           f"{state_dir}/{LOCK_FILE}; stop it first (systemctl stop devicelink)", pid)
    _claim(fd)
    return fd


def _open_lock(state_dir: Path) -> int:
    path = state_dir / LOCK_FILE
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the lock file: {exc.strerror}") from None


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise StoreError(f"cannot lock the state directory: {exc.strerror}") from None
    return True


def _claim(fd: int) -> None:
    try:  # only for the messages above; the lock is the flock, not this content
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass


def _holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


# -- an interrupted re-key ----------------------------------------------------------------

def finish_rekey(state_dir: Path, key: bytes, source: str) -> str | None:
    """Settle ``state_dir/rekey/`` (left by an unfinished ``devicelink rekey``) with ``key``,
    the key this start loaded. Returns ``"rolled back"``, ``"committed"``, ``"unresolved"``,
    or None when there was nothing to do. Every step can be cut off and redone."""
    state_dir = Path(state_dir)
    journal = state_dir / JOURNAL_DIR
    if not journal.is_dir():
        return None
    _, old = _open(journal, key)
    if old is not None:
        # The key opens the copy: it is the old key, so the new one was never switched in.
        # The copy is what the state was when the re-key began (nothing ran since).
        EncryptedFileStore(state_dir, key).save(old)
        remove_journal(state_dir)
        logger.warning("an interrupted re-key was rolled back: the state is under the key from %s again", source)
        return "rolled back"
    store, current = _open(state_dir, key)
    if current is None:
        logger.error("%s holds the state from an unfinished re-key, but neither it nor the state opens with the "
                     "key from %s; the device starts unpaired. To keep the grant, start with the old or the new "
                     "key (docs/keys.md: re-keying)", journal, source)
        return "unresolved"
    # The key opens the state and not the copy: the switch happened. Save once more so
    # the store's previous generation is under the new key too, then retire the old key.
    store.save(current)
    if source == "credential":
        _unlink(state_dir / KEY_FILE)
    remove_journal(state_dir)
    logger.info("re-key finished: the state is under the key from %s", source)
    return "committed"


def remove_journal(state_dir: Path) -> None:
    journal = Path(state_dir) / JOURNAL_DIR
    try:
        import shutil  # rare: only after a rekey

        shutil.rmtree(journal)
        fsync_dir(Path(state_dir))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"{journal}: cannot remove: {exc.strerror}") from None


def _open(directory: Path, key: bytes) -> tuple[EncryptedFileStore, dict | None]:
    """The store and the record ``key`` opens in ``directory``, or None (absent, or not this key)."""
    store = EncryptedFileStore(directory, key)  # set_aside False: this only tries the key
    try:
        return store, store.load()
    except StoreUnreadable:
        return store, None


def _unlink(path: Path) -> None:
    remove_durably(path, StoreError)
