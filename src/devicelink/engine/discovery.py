"""Discovery, reused: the server's metadata kept in memory for the process's life and in
``state_dir/discovery.json`` across restarts, with the wall time it was fetched.

- Pairing asks for it only when none is kept, or the one kept is older than its max
  age (``oauth/metadata.py``: a day, or a shorter ``Cache-Control: max-age``, never
  less than an hour). Endpoints set in the config still win: pairing resolves them over
  the document each time.
- The file is keyed by issuer: another issuer's document is never used (the next fetch
  replaces it).
- The file is ours or nothing: read with ``files.read_owned`` (``O_NOFOLLOW``, owned by
  this user, not writable by others), written with ``files.write_atomic`` (0600). One
  that is unsafe, unreadable or not a record is ignored with a warning and fetched again;
  a failed write costs the next start one fetch. Neither is ever fatal.
- Unpairing and a factory reset keep it: it is the server's public document, not the owner's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Callable

from devicelink.files import read_owned, write_atomic
from devicelink.oauth.metadata import Discovered

logger = logging.getLogger(__name__)

FILE = "discovery.json"
MAX_BYTES = 64 * 1024  # what is kept of a document is a few hundred bytes


class Discovery:
    def __init__(self, directory: Path, issuer: str, wall_clock: Callable[[], float]) -> None:
        self.path = Path(directory) / FILE
        self.issuer, self.wall_clock = issuer, wall_clock
        self.document: Discovered | None = None
        #: The document last handed out was kept, not fetched for it (pairing asks again, once,
        #: when an endpoint in it is gone).
        self.reused = False
        self._read = False  # the file is read once, at the first pairing

    async def kept(self) -> Discovered | None:
        """The document kept in memory or on disk, if it is still fresh."""
        if not self._read:
            self._read = True
            self.document = await asyncio.to_thread(self._load)
        document, wall = self.document, self.wall_clock()
        self.reused = document is not None and document.fresh(wall)
        if self.reused:
            assert document is not None
            logger.info("using discovery from %s ago", _age(document.age(wall)))
            return document
        if document is not None:
            age = document.age(wall)
            logger.info("the discovery document is %s; fetching it again",
                        f"{_age(age)} old" if age >= 0 else "dated after now (the wall clock went back)")
        return None

    async def keep(self, document: Discovered) -> None:
        """Keep a document just fetched, in memory and on disk."""
        self.document, self.reused = document, False
        data = json.dumps(document.to_record(), separators=(",", ":")).encode()
        try:
            await asyncio.to_thread(write_atomic, self.path, data, mode=0o600)
        except OSError as exc:
            logger.warning("%s: cannot write: %s; discovery is asked again at the next start", self.path,
                           exc.strerror)

    def forget(self) -> None:
        """The document seems out of date: the next pairing fetches it again."""
        self.document, self.reused = None, False

    def _load(self) -> Discovered | None:
        try:
            raw = read_owned(self.path, MAX_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:  # UnsafeFile too: a symlink, another user's, writable by others
            logger.warning("%s: %s; not used, discovery is asked again", self.path, exc.strerror or "unreadable")
            return None
        try:
            if len(raw) > MAX_BYTES:
                raise ValueError("too large")
            document = Discovered.from_record(json.loads(raw), self.issuer)
        except (ValueError, RecursionError):  # json's errors are ValueErrors
            logger.warning("%s is not a discovery record; not used, discovery is asked again", self.path)
            return None
        if document is None:
            logger.info("%s is another issuer's document; discovery is asked again", self.path)
        return document


def _age(seconds: float) -> str:
    """An age for a log line: "42 s", "17 min", "5 h 3 min"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"
