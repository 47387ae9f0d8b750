"""Writing a file so that a power cut leaves the old one or the new one, never half of each;
reading one only when it is ours.

The one atomic write in devicelink: the state file, the state key, the rekey
journal and the PNG display's frames all go through :func:`write_atomic`.
Its temp file has an unpredictable name (``.<name>.<16 hex>.tmp``) and is created
with ``O_EXCL | O_NOFOLLOW``: a file or symlink planted under a name we would use
is never opened, and the rename that follows replaces a name, never follows it.

The one checked read: :func:`read_owned` opens with ``O_NOFOLLOW`` and refuses
(:class:`UnsafeFile`) what is not a regular file, not owned by this process's user,
or writable by other users.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: Our temp files: ``.<name>.<16 hex>.tmp`` (and ``.<name>.tmp``, the name before they were random).
TEMP_NAME = re.compile(r"\..+?(?:\.[0-9a-f]{16})?\.tmp")


class UnsafeFile(OSError):
    """A file devicelink will not trust: a symlink, not a regular file, another user's, or
    writable by others. ``strerror`` says which, in words."""


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True,
                 previous: Path | None = None) -> None:
    """temp -> [fsync] -> [rename path -> previous] -> rename temp -> path -> [fsync the directory].

    ``durable`` False skips the fsyncs (a screen's frame need not survive a power cut,
    and an SD card pays for every flush). Raises OSError; the temp file is removed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        created = True
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is narrowed by the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if previous is not None:
            try:
                os.replace(path, previous)
            except FileNotFoundError:  # the first save; or the last one was cut off between its renames
                pass
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        if created:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


def remove_stale_temps(directory: Path) -> list[str]:
    """Unlink the temp files a killed writer left in ``directory`` (only ours: our names,
    owned by this process's user; unlink never follows a symlink). Call it only while
    holding the directory's lock, or a live writer's temp file goes. Returns the names."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            pass
    return removed


def read_owned(path: Path, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of ``path``, opened with ``O_NOFOLLOW``. :class:`UnsafeFile`
    when it is a symlink, not a regular file, not owned by this process's user, or writable
    by other users; FileNotFoundError and other OSErrors as they come."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, "a symbolic link", str(path)) from None
        raise
    try:
        problem = unsafe(os.fstat(fd))
        if problem is not None:
            raise UnsafeFile(errno.EPERM, problem, str(path))
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def unsafe(st: os.stat_result, owner: int | None = None) -> str | None:
    """Why a file or directory with this ``lstat`` is not to be trusted by ``owner`` (default:
    this process's user), in words; None when it is fine."""
    owner = os.geteuid() if owner is None else owner
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "not a regular file"
    if st.st_uid != owner:
        return f"owned by {user_name(st.st_uid)}, not by {user_name(owner)}"
    if st.st_mode & 0o022:
        return f"writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@contextmanager
def as_owner(directory: Path) -> Iterator[None]:
    """Root writes in the state directory as its owner (``rekey``, ``provision``), so the
    daemon can read what it wrote; anyone else writes as themselves."""
    try:
        st = os.stat(directory)
    except OSError:
        yield
        return
    if os.geteuid() != 0 or st.st_uid == 0:
        yield
        return
    egid = os.getegid()
    os.setegid(st.st_gid)
    os.seteuid(st.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink durable (POSIX leaves it in the directory's buffers until then)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_durably(path: Path, error: type[Exception] = OSError) -> bool:
    """Unlink ``path`` and fsync its directory, so that a power cut cannot bring it back.
    False when it was not there. Any other failure raises ``error`` with one line naming the file."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise error(f"{path}: cannot remove: {exc.strerror}") from None
    try:
        fsync_dir(Path(path).parent)
    except OSError as exc:
        raise error(f"{Path(path).parent}: cannot write: {exc.strerror}") from None
    return True
