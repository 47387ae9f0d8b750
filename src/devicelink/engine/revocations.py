"""Revocations owed to the server (RFC 7009): kept encrypted on disk, retried until it answers.

Until the server answers 200 a token we gave up may still be valid (§2.2.1), so
unpairing, and discarding a step-up's extra grant, leave a revocation owed.
The list is saved with the grant; retries back off with jitter and spend the
hourly request budget.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from devicelink.errors import GrantFailed
from devicelink.oauth import refresh as flows
from devicelink.oauth.steps import Backoff, backoff_delay
from devicelink.engine.record import Revocation

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)

FIRST_RETRY = 5.0
RECANCEL_AFTER = 1.0  # seconds: a task still running this long after cancel() is cancelled again


class Revocations:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.owed: list[Revocation] = []
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(device.rng, base=FIRST_RETRY)
        self.next_delay = FIRST_RETRY

    def __len__(self) -> int:
        return len(self.owed)

    def owe(self, token: str, hint: str) -> None:
        self.owed.append((token, hint))

    async def try_all(self) -> str | None:
        """Try every revocation still owed, once. Returns why one failed, or None."""
        device, error = self.device, None
        for token, hint in list(self.owed):
            endpoints = device.endpoints
            if endpoints is None or not endpoints.revocation_endpoint:
                return "no revocation endpoint is known"
            now = device.clock()
            if not device.budget.allows(now):
                return "revocation failed: hourly request budget spent; will retry"
            device.budget.spend(now)
            try:
                refused = await device.http.run(flows.revoke(endpoints, token, hint), sleep=device.sleep)
            except GrantFailed as exc:
                error = device.last_error = f"{exc}; will retry"
                logger.warning("%s", error)
                self.next_delay = backoff_delay(self._backoff, exc.retry_after)
                continue
            if refused is None:
                logger.info("the grant was revoked at the server")
            else:
                error = device.last_error = refused
                logger.warning("%s; not retrying", error)
            self.owed.remove((token, hint))
            await device.state_file.save_current()
        return error

    def start(self, first_delay: float) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._keep_trying(first_delay))

    async def _keep_trying(self, delay: float) -> None:
        """Retry with capped, jittered backoff until the server takes them all."""
        while self.owed:
            await self.device.sleep(delay)
            await self.try_all()
            delay = self.next_delay
        self._backoff.reset()

    async def settled(self) -> None:
        if self._task is not None:
            await asyncio.wait([self._task])

    async def cancel(self) -> None:
        await cancel(self._task)
        self._task = None


async def cancel(task: asyncio.Future | None) -> None:
    """Cancel ``task`` (unless it is the caller) and wait for it to end.

    Cancelled again until it ends: on Python 3.11, ``asyncio.wait_for`` loses a
    cancellation that arrives as its inner task finishes (fixed in 3.12), and a
    pairing task that lost it would go on polling while the daemon waits to stop."""
    if task is None or task is asyncio.current_task():
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=RECANCEL_AFTER)
    if not task.cancelled():
        task.exception()  # retrieved: it ended as it ended, and we are stopping it anyway
