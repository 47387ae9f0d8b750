"""Revocations owed to the server (RFC 7009): kept encrypted on disk, retried until it answers.

Until the server answers 200 a token we gave up may still be valid (§2.2.1), so
unpairing, and discarding a step-up's extra grant, leave a revocation owed.
The list is saved with the grant; retries back off with jitter and spend the
hourly request budget.

Owed, and retried: no answer, a 5xx, a 429 (``Retry-After`` honoured). Final: any
other refusal (a public client refused with 401, as glewlwyd does;
``unsupported_token_type``), which a retry would only meet again. Then, and when the
server has no revocation endpoint, the grant stays valid at the server until it
expires or the user removes the device in their account: the unpair answer, the
status (``last_error``, ``warnings``) and the log say so, and nothing claims a retry.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from devicelink.engine.answers import Trouble, Unpaired
from devicelink.errors import GrantFailed
from devicelink.oauth import refresh as flows
from devicelink.oauth.steps import Backoff, backoff_delay
from devicelink.engine.record import Revocation
from devicelink.tokens.model import TokenSet

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)

FIRST_RETRY = 5.0
RECANCEL_AFTER = 1.0  # seconds: a task still running this long after cancel() is cancelled again
STILL_VALID = "it stays valid at the server until it expires or you remove this device in your account"


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

    def owe_grant(self, tokens: TokenSet) -> None:
        """Unpairing: the refresh token (or, without one, the access token) is owed a revocation."""
        if self.device.can_revoke():
            self.owe(*((tokens.refresh_token, "refresh_token") if tokens.refresh_token
                       else (tokens.access_token, "access_token")))
        else:
            self._not_revoked(f"unpaired on this device only: the server has no revocation endpoint, so the "
                              f"grant was not revoked; {STILL_VALID}")

    async def after_unpair(self, tokens: TokenSet | None) -> Unpaired:
        """Try the grant's revocation once now; what became of it, for the one who unpaired."""
        state = self.device.state.value
        if tokens is None:
            return Unpaired(state, "none", None)
        if not self.device.can_revoke():
            return Unpaired(state, "unsupported", self.device.last_error)
        token = tokens.refresh_token or tokens.access_token
        outcome = await self.try_all()
        if self.owed:
            self.start(first_delay=self.next_delay)
        if any(owed == token for owed, _ in self.owed):
            return Unpaired(state, "pending", outcome.get(token) or "the revocation waits for the hourly request "
                            "budget; it is owed and retried until the server answers")
        if (refused := outcome.get(token)) is not None:
            return Unpaired(state, "refused", refused)
        return Unpaired(state, "revoked", None)

    async def try_all(self) -> dict[str, str | None]:
        """Try every revocation still owed, once. Returns why, for each token that did not
        go through; one revoked, or not tried (the budget), is not in it."""
        device, outcome = self.device, {}
        for token, hint in list(self.owed):
            endpoints = device.endpoints
            if endpoints is None or not endpoints.revocation_endpoint:
                break
            now = device.clock()
            if not device.budget.allows(now):
                device.report(Trouble.BUDGET, "revocation failed: hourly request budget spent; will retry")
                break
            device.budget.spend(now)
            try:
                refused = await device.http.run(flows.revoke(endpoints, token, hint), sleep=device.sleep)
            except GrantFailed as exc:
                outcome[token] = f"{exc}; the revocation is owed and retried until the server answers"
                device.report(Trouble.UPSTREAM, outcome[token])
                logger.warning("%s", outcome[token])
                self.next_delay = backoff_delay(self._backoff, exc.retry_after)
                continue
            if refused is None:
                logger.info("the grant was revoked at the server")
            else:
                outcome[token] = self._not_revoked(f"{refused}, which is final: the grant was not revoked; "
                                                   f"{STILL_VALID}")
            self.owed.remove((token, hint))
            await device.state_file.save_current()
        return outcome

    def _not_revoked(self, why: str) -> str:
        """Final: said in the log and the status, and kept as a warning until the next pairing."""
        self.device.report(Trouble.NOT_REVOKED, why)
        self.device.not_revoked = why
        logger.warning("%s", why)
        return why

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
