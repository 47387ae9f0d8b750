"""The virtual screen: each frame the daemon's ``png`` driver writes, as it lands.

The png driver (devicelink.display.png) writes ``frame-NNNNNN.png`` and renames a
copy over ``latest.png`` for every frame whose pixels changed. Linux tells us of
each rename (inotify, through ctypes: no dependency); elsewhere, or when inotify is
out of watches, the folder is looked at ten times a second instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import sys
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

LATEST = "latest.png"
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
POLL_FALLBACK = 0.1  # seconds, without inotify


class FrameWatcher:
    """Calls ``on_frame(png_bytes)`` for every new ``latest.png`` in ``directory``, on a thread."""

    def __init__(self, directory: Path, on_frame: Callable[[bytes], None]) -> None:
        self.directory = Path(directory)
        self.on_frame = on_frame
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._last: tuple[int, int] | None = None  # (inode, mtime_ns) of the last frame read

    def start(self) -> FrameWatcher:
        self.directory.mkdir(parents=True, exist_ok=True)
        inotify = _Inotify.open(self.directory)
        target = self._watch if inotify is not None else self._poll
        self._thread = threading.Thread(target=target, args=(inotify,) if inotify else (),
                                        name="sim-frames", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _check(self) -> None:
        path = self.directory / LATEST
        try:
            st = path.stat()
            if (st.st_ino, st.st_mtime_ns) == self._last:
                return
            data = path.read_bytes()  # renamed over whole: never half a file
        except FileNotFoundError:
            return
        self._last = (st.st_ino, st.st_mtime_ns)
        try:
            self.on_frame(data)
        except Exception:
            logger.exception("a frame listener failed")

    def _watch(self, inotify: _Inotify) -> None:
        try:
            self._check()  # a frame written before the watch began
            while True:
                ready, _, _ = select.select([inotify.fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                if inotify.read_names() & {LATEST}:
                    self._check()
        finally:
            inotify.close()

    def _poll(self) -> None:
        while True:
            self._check()
            ready, _, _ = select.select([self._stop_r], [], [], POLL_FALLBACK)
            if ready:
                return


class _Inotify:
    """Just enough of inotify(7): one watch on one folder, the names of the files it reports."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, directory: Path) -> _Inotify | None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(directory), IN_MOVED_TO | IN_CLOSE_WRITE) < 0:
            logger.info("inotify: cannot watch %s (%s): looking every %g s instead", directory,
                        os.strerror(ctypes.get_errno()), POLL_FALLBACK)
            os.close(fd)
            return None
        return cls(fd)

    def read_names(self) -> set[str]:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return set()
        names, offset = set(), 0
        while offset + 16 <= len(data):  # struct inotify_event: int wd; u32 mask, cookie, len; char name[]
            length = int.from_bytes(data[offset + 12:offset + 16], sys.byteorder)
            name = data[offset + 16:offset + 16 + length].rstrip(b"\0")
            names.add(os.fsdecode(name))
            offset += 16 + length
        return names

    def close(self) -> None:
        os.close(self.fd)
