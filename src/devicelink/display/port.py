"""The screen port: the engine hands over a :class:`Screen`; this decides how it is drawn.

Panels that draw slowly (an OLED frame is ~100 ms on a 100 kHz I2C bus; a 1080p
frame longer on a Zero) draw in a worker thread, one frame at a time, newest
screen wins, so token requests never wait behind them. The others draw at once.
A broken display never takes the grant down with it: its errors are logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from devicelink.display.base import Display, NullDisplay, Screen

logger = logging.getLogger(__name__)


class ScreenPort:
    def __init__(self, display: Display | None, clock: Callable[[], float]) -> None:
        self.display = display or NullDisplay()
        self.clock = clock
        self._waiting: Screen | None = None
        self._drawing: asyncio.Future[None] | None = None

    @property
    def headless(self) -> bool:
        return isinstance(self.display, NullDisplay)

    def show(self, screen: Screen) -> None:
        if not getattr(self.display, "draws_slowly", False):
            try:
                self.display.show(screen, self.clock())
            except Exception:
                logger.exception("the display failed to draw")
            return
        self._waiting = screen
        if self._drawing is None or self._drawing.done():
            self._drawing = asyncio.ensure_future(self._draw())

    async def _draw(self) -> None:
        while self._waiting is not None:
            screen, self._waiting = self._waiting, None
            try:
                await asyncio.to_thread(self.display.show, screen, self.clock())
            except Exception:
                logger.exception("the display failed to draw")

    async def settled(self) -> None:
        """Until the last screen handed over is drawn."""
        if self._drawing is not None:
            await asyncio.wait([self._drawing])
