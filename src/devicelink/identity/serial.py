"""The device's serial number: ``[identity] serial``, else the device tree's.

A Raspberry Pi's firmware puts the SoC's serial in the device tree,
``/sys/firmware/devicetree/base/serial-number``: 16 hex digits and a NUL (a
device-tree string property), e.g. ``10000000a1b2c3d4``. Other boards may have
none (x86, containers): then the config names it, or it is unknown. It labels
the device in logs and, with registration, to the manufacturer; it is not a
secret and proves nothing (anything can claim a serial; the key is what the
server checks).
"""

from __future__ import annotations

import logging
from pathlib import Path

from devicelink.identity.settings import SERIAL

logger = logging.getLogger(__name__)

DEVICE_TREE_SERIAL = Path("/sys/firmware/devicetree/base/serial-number")


def device_serial(configured: str | None, path: Path = DEVICE_TREE_SERIAL) -> str | None:
    """``configured`` when set, else the device tree's serial (NULs and whitespace stripped),
    else None: absent, unreadable or not a plausible serial (logged)."""
    if configured is not None:
        return configured
    try:
        with open(path, "rb") as f:
            raw = f.read(257)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("%s: cannot read the serial number: %s", path, exc.strerror)
        return None
    text = raw.strip(b"\0 \t\r\n").decode("ascii", "replace")
    if not SERIAL.fullmatch(text):
        logger.warning("%s: not a serial number (%d bytes); set [identity] serial", path, len(raw))
        return None
    return text
