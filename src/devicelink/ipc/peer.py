"""Who is calling: the peer's credentials, from the kernel, never from the request.

``SO_PEERCRED`` gives the pid, uid and primary gid, ``SO_PEERGROUPS`` the
supplementary groups. The kernel records both at ``connect()``, so a client
can't change them afterwards; the listener reads them once per connection,
before it admits it, and the :class:`~devicelink.ipc.routes.Peer` then goes
with every request of that connection.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from typing import Any

from devicelink.ipc.routes import Peer

__all__ = ["peer_credentials"]

logger = logging.getLogger(__name__)

_SO_PEERCRED = getattr(socket, "SO_PEERCRED", None)
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_GROUPS_BUFLEN = 1024  # the most socket.getsockopt will take: 256 gid_t
_groups_supported = True


def peer_credentials(sock: Any) -> Peer:
    """The pid, uid, gid and supplementary groups of whoever connected ``sock`` (Linux)."""
    if _SO_PEERCRED is None:
        raise OSError(errno.ENOTSUP, "SO_PEERCRED is not available on this platform")
    raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)
    return Peer(*_UCRED.unpack(raw), _peer_groups(sock))


def _peer_groups(sock: Any) -> tuple[int, ...]:
    """``SO_PEERGROUPS``: the peer's supplementary groups, an array of 32-bit gid_t."""
    global _groups_supported
    if not _groups_supported:
        return ()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, _GROUPS_BUFLEN)
    except OSError as exc:
        if exc.errno == errno.ERANGE:  # more than 256 groups: ask for the length
            raw = _peer_groups_large(sock.fileno())
        elif exc.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            _groups_supported = False
            logger.debug("SO_PEERGROUPS is not supported here (%s); peers get no groups", exc)
            return ()
        else:
            raise
    return struct.unpack(f"{len(raw) // 4}I", raw) if raw else ()


def _peer_groups_large(fd: int) -> bytes:
    """``SO_PEERGROUPS`` through libc: socket.getsockopt caps its buffer at 1024 bytes.

    On ERANGE the kernel writes the length it needs into optlen; the list is
    fixed at connect(), so the second call fits.
    """
    import ctypes  # only for callers in more than 256 groups

    libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint32(0)
    buf = ctypes.create_string_buffer(0)
    for _ in range(2):
        if libc.getsockopt(fd, socket.SOL_SOCKET, _SO_PEERGROUPS, buf, ctypes.byref(size)) == 0:
            return buf.raw[: size.value]
        err = ctypes.get_errno()
        if err != errno.ERANGE:
            raise OSError(err, os.strerror(err))
        buf = ctypes.create_string_buffer(size.value)
    raise OSError(errno.ERANGE, "SO_PEERGROUPS: the group list keeps growing")
