"""Logging, configured once from ``cli.main``.

Under systemd (``JOURNAL_STREAM`` set) lines carry no timestamp: journald adds
its own. Secrets never reach a log: nothing logs request bodies, and token
objects redact themselves in ``repr``.
"""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get("DEVICELINK_LOG_LEVEL") or "INFO").upper()
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    # httpx logs every request URL at INFO; our own lines say what matters.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
