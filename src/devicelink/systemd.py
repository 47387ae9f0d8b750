"""sd_notify(3) in a few lines of our own: readiness for ``Type=notify`` units.

A no-op outside systemd (no ``NOTIFY_SOCKET``); failures are logged at debug
level and never stop the daemon.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        logger.debug("sd_notify failed: %s", exc)
        return False
