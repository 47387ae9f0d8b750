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
    state: State
    pairing: PairingCode | None = None  # set while state is PAIRING
    account: str | None = None  # who the device is paired to, when known
    message: str | None = None  # one line for the owner: "Press the button for a new code"


class Display(Protocol):
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
