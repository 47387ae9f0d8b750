"""What a screen shows, and the protocol every display driver implements.

A :class:`Screen` is a pure description of what the owner should see; it is a
function of the lifecycle state. Drivers turn it into pixels or text. The
daemon calls :meth:`Display.show` whenever the screen changes (and about once a
second while a countdown runs); drivers redraw only when their output changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from devicelink.lifecycle import PairingCode, State


@dataclass(frozen=True)
class Screen:
    """Everything a screen may show. Which layout it gets follows from the fields:

    - ``reset_in`` set: the factory-reset countdown (the button is held), over anything else;
    - ``clock_synced is False`` while unpaired or pairing: *waiting for network time*;
    - PAIRING with ``pairing``: the code, QR, short URI and countdown (``message`` may say
      the previous code expired); PAIRING without: *getting a code* (``message`` may say why not);
    - PAIRED/REFRESHING: *paired as* ``account``; OFFLINE: offline, still working;
    - REAUTH_REQUIRED: pair again; UNPAIRED: ``message`` (press the button for a new code,
      pairing failed, ...), or a plain *not paired*.
    """

    state: State
    pairing: PairingCode | None = None  # set while state is PAIRING and a code is known
    account: str | None = None  # who the device is paired to, when known
    message: str | None = None  # one line for the owner: "Press the button for a new code"
    reset_in: int | None = None  # seconds left while the button is held for a factory reset
    clock_synced: bool | None = None  # False: the wall clock is not synchronised yet


class Display(Protocol):
    #: True for panels whose ``show`` takes long (a bus, a big framebuffer): the daemon then
    #: calls it from a worker thread, one frame at a time. Absent means False.
    draws_slowly: bool

    def show(self, screen: Screen, now: float) -> None:
        """Draw ``screen``; ``now`` is time.monotonic(), for countdowns."""

    def close(self) -> None:
        """Release the device (clear the panel, restore the terminal)."""


class NullDisplay:
    """``display.driver = "none"``: a headless device."""

    def show(self, screen: Screen, now: float) -> None:
        pass

    def close(self) -> None:
        pass
