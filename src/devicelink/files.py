"""Writing a file so that a power cut leaves the old one or the new one, never half of each.

The one atomic write in devicelink: the state file, the state key, the rekey
journal and the PNG display's frames all go through :func:`write_atomic`.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True,
                 previous: Path | None = None) -> None:
    """temp -> [fsync] -> [rename path -> previous] -> rename temp -> path -> [fsync the directory].

    ``durable`` False skips the fsyncs (a screen's frame need not survive a power cut,
    and an SD card pays for every flush). Raises OSError; the temp file is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is ignored if a stale temp file exists
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
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink durable (POSIX leaves it in the directory's buffers until then)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
