"""The pair/reset button: press, hold and cancel, on the asyncio loop. No gpiozero here.

Theory of operation. ``pins.py`` turns the pin's edges into ``Debouncer.edge(pressed, at)``
calls on the loop, stamped with the injected clock at the moment the edge arrived.
The :class:`Debouncer` passes a level on once it has held for ``DEBOUNCE`` seconds,
so contact bounce on press or release never becomes an extra press or a cancelled
hold. :class:`ButtonLogic` then sees clean ``down(at)``/``up(at)`` events and decides:

- released before ``COUNTDOWN_AFTER`` (1 s): a short press, ``target.button_pressed()``
  (on release: only then is it known not to be a hold);
- held past 1 s: ``target.show_reset_countdown(n)`` once a second, ``n`` being the
  seconds left (``hold_seconds`` - held, rounded up), so a normal press never flashes
  the countdown on screen;
- released during the countdown: ``show_reset_countdown(None)``; cancelled, and not a press;
- held to the end: ``await target.factory_reset()``, in a task of its own that the
  release does not cancel. That release is ignored, and so are presses while the
  reset runs.

Times come from the event stamps and the injected ``clock``; waiting uses the injected
``sleep``. Tests drive all of it with ``tests.helpers.FakeClock`` in no real time.

Edge cases: a button already held when the daemon starts never fires (gpiozero reports
no press for it, and its release has no matching down), so a stuck button cannot wipe
a device at boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Awaitable, Callable, Protocol

logger = logging.getLogger(__name__)

DEBOUNCE = 0.05  # a level must hold this long to count; tact switches bounce for under 10 ms
COUNTDOWN_AFTER = 1.0  # held this long, the countdown appears: a normal press never shows it
RESET_GRACE = 35.0  # close() lets a factory reset in flight finish (revocation has a 30 s deadline)


class ButtonTarget(Protocol):
    """What the button acts on: :class:`devicelink.engine.Device` implements it."""

    def button_pressed(self) -> None: ...

    def show_reset_countdown(self, seconds: int | None) -> None: ...

    async def factory_reset(self) -> None: ...


def seconds_left(hold_seconds: float, held: float) -> int:
    """Whole seconds before the reset, rounded up (microsecond rounding hides float noise)."""
    return math.ceil(round(hold_seconds - held, 6))


class ButtonLogic:
    """Turns clean down/up events into a press, a countdown, a cancel or a factory reset."""

    def __init__(self, target: ButtonTarget, hold_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 countdown_after: float = COUNTDOWN_AFTER,
                 on_countdown: Callable[[bool], None] | None = None) -> None:
        if hold_seconds <= 0:
            raise ValueError(f"hold_seconds must be positive, got {hold_seconds!r}")
        self.target, self.hold_seconds = target, hold_seconds
        self.countdown_after = min(countdown_after, hold_seconds)
        self.clock, self.sleep = clock, sleep
        #: Called with True when the countdown appears and False when it ends (the LED's cue).
        self.on_countdown = on_countdown
        self._down_at: float | None = None
        self._hold: asyncio.Task[None] | None = None
        self._reset: asyncio.Task[None] | None = None
        self._shown = False  # the countdown is on screen
        self._fired = False  # this press reached the end: its release is ignored
        self._ignored = False  # this press began while a reset was running

    @property
    def pressed(self) -> bool:
        return self._down_at is not None

    @property
    def resetting(self) -> bool:
        return self._reset is not None and not self._reset.done()

    def down(self, at: float) -> None:
        if self._down_at is not None:
            return  # two downs in a row: an edge was lost; the first one counts
        self._down_at = at
        self._fired = self._shown = False
        self._ignored = self.resetting
        if self._ignored:
            logger.info("button: ignored while the factory reset runs")
            return
        self._hold = asyncio.ensure_future(self._count_down(at))

    def up(self, at: float) -> None:
        if self._down_at is None:
            return  # held since before we started, or a lost down edge
        held, self._down_at = at - self._down_at, None
        self._stop_hold()
        if self._ignored or self._fired:
            return
        if self._shown:
            logger.info("button: factory reset cancelled (released after %.1f s)", held)
            self._end_countdown()
            return
        if held < self.countdown_after:
            logger.debug("button: short press (%.2f s)", held)
            _call(self.target.button_pressed)
        else:  # past the threshold before the countdown could be drawn (a busy loop)
            logger.info("button: released after %.1f s, before the countdown; ignored", held)

    async def close(self) -> None:
        """Stop counting; let a factory reset in flight finish (up to ``RESET_GRACE`` s)."""
        hold = self._stop_hold()
        if hold is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await hold
        if self._shown:
            self._end_countdown()
        reset = self._reset
        if reset is not None and not reset.done():
            logger.info("waiting for the factory reset to finish")
            done, _ = await asyncio.wait({reset}, timeout=RESET_GRACE)
            if not done:
                reset.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reset

    # -- internals ----------------------------------------------------------------

    async def _count_down(self, start: float) -> None:
        await self._until(start + self.countdown_after)
        shown: int | None = None
        while (left := seconds_left(self.hold_seconds, self.clock() - start)) > 0:
            if left != shown:
                if not self._shown:
                    self._shown = True
                    logger.info("button held: factory reset in %d s unless released", left)
                    self._notify(True)
                _call(self.target.show_reset_countdown, left)
                shown = left
            await self._until(start + self.hold_seconds - (left - 1))  # when ``left`` next drops
        self._fired = True
        if self._shown:
            self._shown = False  # Device.factory_reset clears the screen's countdown itself
            self._notify(False)
        logger.warning("button held for %g s: factory reset", self.hold_seconds)
        self._reset = asyncio.ensure_future(self._factory_reset())

    async def _factory_reset(self) -> None:
        try:
            await self.target.factory_reset()
        except Exception:
            logger.exception("the factory reset failed")

    async def _until(self, deadline: float) -> None:
        delay = deadline - self.clock()
        if delay > 0:
            await self.sleep(delay)

    def _stop_hold(self) -> asyncio.Task[None] | None:
        hold, self._hold = self._hold, None
        if hold is not None and not hold.done():
            hold.cancel()
            return hold
        return None

    def _end_countdown(self) -> None:
        self._shown = False
        self._notify(False)
        _call(self.target.show_reset_countdown, None)

    def _notify(self, counting: bool) -> None:
        if self.on_countdown is not None:
            _call(self.on_countdown, counting)


class Debouncer:
    """Raw edges in, clean ``down``/``up`` out: a level counts once it has held ``window`` s.

    The clean event carries the stamp of the raw edge that began the stable level, so
    the hold is timed from the real press. Nothing from gpiozero's own ``bounce_time``
    is used: a dropped release edge there would leave the button "held" for good.
    """

    def __init__(self, logic: ButtonLogic, window: float = DEBOUNCE, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.logic, self.window, self.sleep = logic, window, sleep
        self._level = False  # the committed level: released
        self._pending: asyncio.Task[None] | None = None

    def edge(self, pressed: bool, at: float) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if pressed == self._level:
            return  # bounced back before the window ran out
        if self.window <= 0:
            self._commit(pressed, at)
        else:
            self._pending = asyncio.ensure_future(self._settle(pressed, at))

    async def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending

    async def _settle(self, pressed: bool, at: float) -> None:
        await self.sleep(self.window)
        self._pending = None
        self._commit(pressed, at)

    def _commit(self, pressed: bool, at: float) -> None:
        self._level = pressed
        if pressed:
            self.logic.down(at)
        else:
            self.logic.up(at)


def _call(fn: Callable[..., None], *args: object) -> None:
    """A failing target must not stop the button from working."""
    try:
        fn(*args)
    except Exception:
        logger.exception("button: %s failed", getattr(fn, "__name__", fn))
