"""A new device key at a factory reset (``[identity] on_factory_reset = "new_key"``) in the daemon.

``identity/renewal.py`` has the note and the key's replacement. Here is when: with
``[registration]``, ``engine/registering.py`` calls :meth:`Renewing.finish` between the
old client's deletion and the new registration. With DPoP alone (no registration: the
server needs no key in advance) :meth:`Renewing.start` waits for the revocations still
owed (their proofs are signed with the old key), replaces the key, then pairs.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from devicelink.engine.answers import Trouble
from devicelink.errors import DeviceLinkError
from devicelink.identity import renewal

if TYPE_CHECKING:
    from devicelink.engine.device import Device
    from devicelink.identity.signer import SwappableSigner

logger = logging.getLogger(__name__)

RENEWING = "Factory reset: making a new device key..."
FAILED = "Factory reset: the new device key could not be made. See `devicelink status`."


class Renewing:
    def __init__(self, device: Device, state_dir: Path, signer: SwappableSigner) -> None:
        self.device, self.state_dir, self.signer = device, Path(state_dir), signer
        self.task: asyncio.Task[None] | None = None
        self._pending = renewal.pending(self.state_dir) is not None
        if self._pending:
            logger.info("a factory reset is unfinished: the device key %s is replaced once the revocations still "
                        "owed (and the old registration's deletion) are done", signer.kid)

    @property
    def pending(self) -> bool:
        """A new key is owed: nothing pairs (or registers) with the old one."""
        return self._pending

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def begin(self) -> None:
        """Durably, before the reset's registration part: the key is to be replaced."""
        renewal.begin(self.state_dir, self.signer.kid)
        self._pending = True

    def finish(self) -> None:
        """Make the new key (unless made before a power cut) and swap it in everywhere."""
        renewal.finish(self.state_dir, self.signer)
        self._pending = False
        # A device-level token fetched since the unpair is the old client's, or bound to the old key.
        self.device.device_tokens.forget()

    def start(self) -> None:
        """DPoP alone: once no revocation is owed, a new key, then a code for the next owner."""
        if self.busy:
            return
        self.device.message = RENEWING
        self.device.redraw()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        device = self.device
        try:
            if device.revocations.owed:
                logger.info("factory reset: waiting for the revocation before replacing the device key")
                await device.revocations_settled()
            self.finish()
        except asyncio.CancelledError:
            raise
        except DeviceLinkError as exc:
            logger.error("factory reset: %s", exc)
            device.report(Trouble.PAIRING, f"factory reset: {exc}")
            device.message = FAILED
            device.redraw()
            return
        device.message = None
        device.clear_error()
        device.pairer.start()

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])
        self.task = None
