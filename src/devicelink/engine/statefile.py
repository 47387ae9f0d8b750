"""The device's state file: the record read back at start, and written after every change.

``tokens/store.py`` encrypts and writes atomically; ``record.py`` says what the
record holds. Here: when to write, and what a failed write costs. A write is
shielded, so a cancelled caller never leaves one running that nobody waits for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from devicelink.engine import record
from devicelink.engine.answers import Trouble
from devicelink.errors import StoreError, StoreUnreadable
from devicelink.tokens.model import TokenSet

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)


class StateFile:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.unsaved = False  # the last write failed: the grant is held in memory only
        #: The stored tokens as read at a start before NTP: their expiry, believed once the clock is.
        self.unverified: dict | None = None
        self._saving: asyncio.Future[None] | None = None

    async def settled(self) -> None:
        if self._saving is not None:
            await asyncio.wait([self._saving])

    async def load(self) -> TokenSet | None:
        """The grant kept at the last run, if any; owed revocations and endpoints come back too."""
        device = self.device
        try:
            stored = await asyncio.to_thread(device.store.load)
        except StoreUnreadable as exc:
            logger.error("%s; starting unpaired", exc)
            device.report(Trouble.UNREADABLE, str(exc))
            return None
        if stored is None:
            return None
        try:
            found = record.restore(stored, device.provider.issuer, device.provider.client_id, device.configured,
                                   device.clock(), device.wall_clock(), device.clock_synced())
        except (KeyError, TypeError, ValueError):
            logger.error("%s: the state record is incomplete; starting unpaired", device.store.path)
            return None
        if found is None:
            return None
        device.revocations.owed = found.revocations
        device.endpoints = found.endpoints or device.endpoints
        if found.tokens is not None and not found.trusted_clock:
            logger.info("the wall clock is not known to be synchronised: the stored access token "
                        "counts as expired and is refreshed before it is served")
            if device.clock_synced() is False and stored.get("wall_clock_synced") is True:
                self.unverified = stored["tokens"]  # written by a good clock: NTP may vouch for it soon
        return found.tokens

    async def save_current(self) -> None:
        """Write the grant as it is now, from outside the refresh path: under the exchange
        lock, so it cannot land after (and undo) the save of a refresh token just rotated."""
        async with self.device.exchange_lock:
            await self.save(self.device.tokens)

    async def save(self, tokens: TokenSet | None) -> None:
        """Write the grant (or, with ``tokens`` None, only the revocations still owed)."""
        device = self.device
        if tokens is None and not device.revocations.owed:
            self._saving = asyncio.ensure_future(asyncio.to_thread(device.store.clear))
            await asyncio.shield(self._saving)
            return
        data = record.build(device.provider.issuer, device.provider.client_id, device.endpoints, tokens,
                            device.revocations.owed, device.clock(), device.wall_clock(),
                            device.clock_synced() is True)
        # Shielded: a cancelled caller must not leave a write running that nobody waits for
        # (unpair's clear would race it and the grant could come back).
        self._saving = asyncio.ensure_future(asyncio.to_thread(device.store.save, data))
        try:
            await asyncio.shield(self._saving)
            self.unsaved = False
        except StoreError as exc:
            # Keep serving from memory (the old refresh token may already be dead at the
            # server). The refresher retries this save, and rotates nothing until it lands.
            self.unsaved = True
            device.report(Trouble.STORAGE, str(exc))
            logger.error("%s; the grant is held in memory only", exc)
