"""The socket file: bound so that nobody else can connect first, replaced only when
stale, and unlinked only while it is still ours.

- ``bind()`` runs under a umask of 0177, so the file is 0600 until the chmod
  to the configured mode: there is no moment in which anyone may connect.
- A file already at the path is replaced only if it is a socket nobody listens
  on (a daemon died); anything else is refused.
- On stop the file is removed only if it is the one we bound (same device and
  inode): a second daemon may have replaced it meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

from devicelink.errors import ConfigError

logger = logging.getLogger(__name__)

FileId = tuple[int, int]  # (st_dev, st_ino)


def bind(path: str, mode: int) -> tuple[socket.socket, FileId]:
    """A socket bound at ``path`` (whose parent is made if missing) with ``mode``.

    The path must be free: see :func:`clear_stale`.
    """
    if len(os.fsencode(path)) > 107:
        raise ConfigError(f"socket path {path} is longer than the 107 bytes AF_UNIX allows")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file with 0777 & ~umask. A umask of 0177 makes
        # that 0600, so nobody but us can connect before the chmod below.
        # umask is process-wide: this runs at start-up, before the daemon
        # starts any thread that creates files.
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        st = os.stat(path)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def prepare(path: str) -> bool:
    """Make the parent directory, and unlink a socket file nobody listens on.

    True: a process is listening on ``path``. Anything there but a socket is a
    :class:`ConfigError`.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"socket path {path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: left behind by a daemon that died
    except BlockingIOError:  # EAGAIN: a listener whose backlog is full
        return True
    else:
        return True
    finally:
        probe.close()
    logger.info("removing stale socket %s", path)
    os.unlink(path)
    return False


def unlink_if_ours(path: str, file_id: FileId) -> None:
    """Remove the socket file, unless someone has replaced it since we bound it."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == file_id:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove socket %s: %s", path, exc)


def sock_name(sock: socket.socket) -> str:
    """The path a socket is bound to, for logs and error messages."""
    name = sock.getsockname()
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
