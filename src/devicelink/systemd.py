"""The service manager's three small protocols, in pure Python (no libsystemd):

- readiness and status, ``sd_notify(3)``: one datagram per message to ``$NOTIFY_SOCKET``;
- socket activation, ``sd_listen_fds(3)``: ``LISTEN_PID``, ``LISTEN_FDS``,
  ``LISTEN_FDNAMES``, the sockets at fd 3, 4, ...;
- the watchdog, ``sd_watchdog_enabled(3)``: ``WATCHDOG=1`` well within ``WATCHDOG_USEC``.

Each is a no-op outside systemd. A bad variable is logged and ignored, never a crash:
the daemon then binds its own socket, as it does when run by hand. docs/systemd.md has
the units that use this.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket

from devicelink.errors import ConfigError

logger = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed fds start right after stdin/out/err
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``) to the
    service manager. False when there is none or it could not be reached; failures are logged
    at debug level and never stop the daemon. ``STATUS=`` is shown by ``systemctl status``:
    put the state there, never a token."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace (sd_notify(3))
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        logger.debug("sd_notify failed: %s", exc)
        return False


# -- socket activation -------------------------------------------------------------------

def listen_fds(unset_environment: bool = True) -> list[socket.socket]:
    """``sd_listen_fds(3)``: the sockets systemd passed us, in order; [] when not socket-activated."""
    return [sock for _, sock in listen_fds_with_names(unset_environment)]


def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[str, socket.socket]]:
    """``sd_listen_fds_with_names(3)``: ``(name, socket)`` pairs; the name is the socket unit's
    ``FileDescriptorName=`` (``"unknown"`` when systemd sent none).

    As libsystemd does: the fds are ours only when ``LISTEN_PID`` is our pid (a child that
    inherited the environment must not take its parent's sockets); each gets ``FD_CLOEXEC``;
    the three variables are unset, on every path, so that children never see them. Values
    that make no sense are logged and give []."""
    try:
        fds, names = _passed_fds()
    finally:
        if unset_environment:
            for name in _LISTEN_VARS:
                os.environ.pop(name, None)
    sockets = []
    for fd, name in zip(fds, names):
        try:
            sockets.append((name, socket.socket(fileno=fd)))  # family and type come from the fd
        except OSError as exc:  # ListenFIFO= and friends pass fds that are not sockets
            logger.warning("socket activation: fd %d (%s) is not a socket (%s); ignored", fd, name, exc)
    return sockets


def _passed_fds() -> tuple[range, list[str]]:
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if not pid or not count:
        return range(0), []
    try:
        pid_value, n = int(pid), int(count)
    except ValueError:
        logger.error("socket activation: LISTEN_PID=%r, LISTEN_FDS=%r are not numbers; ignored", pid, count)
        return range(0), []
    if pid_value != os.getpid():
        return range(0), []  # meant for another process (we inherited the variables)
    if n <= 0:
        if n < 0:
            logger.error("socket activation: LISTEN_FDS=%d makes no sense; ignored", n)
        return range(0), []
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n)
    raw_names = os.environ.get("LISTEN_FDNAMES")
    names = raw_names.split(":") if raw_names is not None else ["unknown"] * n
    if len(names) != n:
        logger.error("socket activation: LISTEN_FDNAMES has %d names for %d fds; ignored", len(names), n)
        return range(0), []
    try:
        for fd in fds:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    except OSError as exc:  # EBADF: the variables promise fds we were not given
        logger.error("socket activation: LISTEN_FDS=%d, but fd %d: %s; ignored", n, fd, exc.strerror)
        return range(0), []
    return fds, names


def activated_socket(configured_path: str) -> socket.socket | None:
    """The one ``AF_UNIX`` stream socket a ``.socket`` unit passed us, or None when the daemon
    was not socket-activated (it then binds ``configured_path`` itself).

    Extra sockets are logged and closed. A passed socket of the wrong kind is a
    :class:`ConfigError` naming it: the ``.socket`` unit must say ``ListenStream=/path``. When
    the unit's path is not ``configured_path`` the unit wins, with a warning naming both: the
    socket exists already, and clients follow the unit's path."""
    passed = listen_fds_with_names()
    if not passed:
        return None
    streams = [(n, s) for n, s in passed if s.family == socket.AF_UNIX and s.type == socket.SOCK_STREAM]
    if not streams:
        kinds = ", ".join(f"{n} ({_kind(s)})" for n, s in passed)
        for _, sock in passed:
            sock.close()
        raise ConfigError(f"socket activation: systemd passed {kinds}; devicelink needs one AF_UNIX stream "
                          f"socket: ListenStream=/run/devicelink/agent.sock in devicelink.socket (docs/systemd.md)")
    chosen = streams[0][1]
    for name, extra in passed:
        if extra is not chosen:
            logger.warning("socket activation: ignoring extra socket %s (%s)", name, _address(extra))
            extra.close()
    path = _address(chosen)
    if os.path.abspath(path) != os.path.abspath(configured_path):
        logger.warning("socket activation: systemd passed %s but [socket] path is %s; serving on %s",
                       path, configured_path, path)
    return chosen


def _kind(sock: socket.socket) -> str:
    return f"{getattr(sock.family, 'name', sock.family)}, {getattr(sock.type, 'name', sock.type)}"


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)


# -- watchdog ----------------------------------------------------------------------------

def watchdog_interval() -> float | None:
    """Seconds within which systemd wants ``WATCHDOG=1`` (``WatchdogSec=``), or None when the
    watchdog is off for this process (``sd_watchdog_enabled(3)``: ``WATCHDOG_USEC``, and
    ``WATCHDOG_PID`` when set must be our pid)."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        interval = int(usec)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        logger.error("watchdog: WATCHDOG_USEC=%r, WATCHDOG_PID=%r are not numbers; watchdog off", usec, pid)
        return None
    if interval <= 0:
        logger.error("watchdog: WATCHDOG_USEC=%d makes no sense; watchdog off", interval)
        return None
    return interval / 1_000_000


async def watchdog(interval: float) -> None:
    """Ping every ``interval / 2`` seconds (sd_watchdog_enabled(3) advises half) until cancelled.

    The pings come from the event loop itself, so a loop that stops turning stops them, and
    systemd kills and restarts the daemon (``Restart=on-failure``)."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval / 2)
