"""Requests signed with the wall clock wait for network time (issue 11: device identity).

A ``private_key_jwt`` assertion carries ``iat`` and ``exp``, a DPoP proof ``iat`` (RFC 7523
§3, RFC 9449 §4.2), all from the wall clock. A Raspberry Pi has no RTC: until NTP runs its
clock may be hours or days behind, and the server would refuse every such request as
expired, or as not yet valid, and count the refusals against the client. So while the
clock is known to be unsynchronised (``clock_synced() is False``; unknown does not wait)
such a request waits, the status says so (``warnings``) and so does the screen; an app
asking for a token meanwhile is answered at once that the device waits for network time.
Requests that are not signed (a public client, a secret) go out as they always did.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)

POLL = 2.0  # seconds between looks at the clock
WAITING = ("waiting for network time: requests signed with the device key carry the time, and go out "
           "once the clock is synchronised")


class NetworkTime:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.waiting = False

    def holds_back(self) -> bool:
        """Whether a signed request would wait now."""
        return self.device.http.auth.signs and self.device.clock_synced() is False

    async def ready(self) -> None:
        """Return once a signed request may go out (``OAuthHttp.clock_ready``)."""
        device = self.device
        if device.clock_synced() is not False:
            return
        if not self.waiting:
            self.waiting = True
            logger.warning("%s", WAITING)
            device.redraw()
        while device.clock_synced() is False:
            await device.sleep(POLL)
        if self.waiting:
            self.waiting = False
            logger.info("the clock is synchronised: signed requests go out")
            device.redraw()
