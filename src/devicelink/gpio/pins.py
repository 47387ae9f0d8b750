"""The only module that imports gpiozero: the status LED and the button's pin.

Works with gpiozero 2.0 (Raspberry Pi OS Bookworm, lgpio; the only one that drives a
Pi 5) and 1.6 (Debian's own package). Pins are BCM numbers. Every device takes
``pin_factory=`` so tests pass gpiozero's ``MockFactory``; ``None`` means gpiozero's
default (``GPIOZERO_PIN_FACTORY``, else lgpio -> rpigpio -> pigpio -> native).

gpiozero calls ``when_pressed``/``when_released`` on threads of its own (lgpio's
callback thread, or the caller of ``MockPin.drive_low``), so :class:`ButtonPin` does
nothing there but stamp the edge with the clock and hand it to the loop with
``loop.call_soon_threadsafe``. The LED is only driven from the loop thread; its
blinking and breathing run on gpiozero's background thread.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any, Callable

from gpiozero import LED, PWMLED, Button
from gpiozero.exc import BadPinFactory, GPIOPinInUse, PinInvalidPin, PinPWMUnsupported

from devicelink.errors import HardwareUnavailable
from devicelink.gpio.patterns import OFF, RESET_COUNTDOWN, Pattern, pattern_for
from devicelink.lifecycle import State

logger = logging.getLogger(__name__)

PI5_NOTE = ("on a Pi 5 the header is /dev/gpiochip0 from kernel 6.6.45 on (gpiochip4 before; "
            "gpiozero 2.0.1.post3 or later with lgpio handles both, RPi.GPIO and gpiozero 1.6 cannot)")
GROUP_FIX = ("add the service user to group gpio (`sudo usermod -aG gpio devicelink`; in the unit "
             "SupplementaryGroups=gpio and DeviceAllow=char-gpiochip rw)")


class StatusLed:
    """A PWM LED (a plain LED where the pin factory has no PWM) showing a :class:`Pattern`.

    The pattern follows the lifecycle state (:meth:`show_state`); the button's countdown
    lays :data:`RESET_COUNTDOWN` over it (:meth:`countdown`). The LED is touched only
    when the effective pattern changes, so paired -> refreshing -> paired does not
    restart anything and a new code does not restart the breathing.
    """

    def __init__(self, pin: int, *, pin_factory: Any = None) -> None:
        self.pin = pin
        try:
            try:
                self._led: LED | PWMLED = PWMLED(pin, pin_factory=pin_factory)
                self.pwm = True
            except PinPWMUnsupported:
                self._led = LED(pin, pin_factory=pin_factory)
                self.pwm = False
                logger.info("GPIO%d has no PWM here: the LED blinks instead of breathing", pin)
        except Exception as exc:
            raise unavailable("led", pin, exc) from exc
        self._state_pattern = OFF
        self._override: Pattern | None = None
        self.pattern = OFF  # what the LED is doing now (after the PWM fallback)

    def show_state(self, state: State) -> None:
        self._state_pattern = pattern_for(state)
        self._refresh()

    def countdown(self, counting: bool) -> None:
        """The factory-reset countdown started (True) or ended (False)."""
        self._override = RESET_COUNTDOWN if counting else None
        self._refresh()

    def close(self) -> None:
        try:
            self._led.off()
        except Exception:  # already closed
            pass
        self._led.close()

    def _refresh(self) -> None:
        pattern = self._override or self._state_pattern
        if not self.pwm:
            pattern = pattern.without_pwm()
        if pattern == self.pattern:
            return
        led = self._led
        if pattern.kind == "off":
            led.off()
        elif pattern.kind == "on":
            led.on()
        elif pattern.kind == "blink":
            led.blink(on_time=pattern.on, off_time=pattern.off)
        else:
            assert isinstance(led, PWMLED)
            led.pulse(fade_in_time=pattern.on, fade_out_time=pattern.off)
        logger.debug("LED on GPIO%d: %s", self.pin, pattern)
        self.pattern = pattern


class ButtonPin:
    """A push button from the pin to GND, with the Pi's internal pull-up.

    Each edge becomes ``on_edge(pressed, at)`` on ``loop``, ``at`` read from ``clock``
    in gpiozero's thread when the edge arrived. No ``bounce_time``: the caller
    debounces (gpiozero's can drop the release edge), and no ``hold_time``: the hold is
    timed on the loop with an injectable clock (``button.py``).
    """

    def __init__(self, pin: int, on_edge: Callable[[bool, float], None], *,
                 loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic,
                 pin_factory: Any = None) -> None:
        self.pin = pin
        self._on_edge, self._loop, self._clock = on_edge, loop, clock
        try:
            self._button = Button(pin, pull_up=True, bounce_time=None, pin_factory=pin_factory)
        except Exception as exc:
            raise unavailable("button", pin, exc) from exc
        self._button.when_pressed = self._pressed
        self._button.when_released = self._released

    @property
    def is_pressed(self) -> bool:
        return bool(self._button.is_pressed)

    def close(self) -> None:
        self._button.when_pressed = None
        self._button.when_released = None
        self._button.close()

    # gpiozero's thread: nothing but a stamp and a hand-off.
    def _pressed(self) -> None:
        self._post(True)

    def _released(self) -> None:
        self._post(False)

    def _post(self, pressed: bool) -> None:
        at = self._clock()
        try:
            self._loop.call_soon_threadsafe(self._on_edge, pressed, at)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            pass


def unavailable(role: str, pin: int, exc: BaseException) -> HardwareUnavailable:
    """A pin that cannot be opened, as one line naming it and the likely fix."""
    what = f"[gpio] {role} = {pin} (GPIO{pin})"
    reason = str(exc) or type(exc).__name__
    text = reason.lower()
    if isinstance(exc, BadPinFactory):
        return HardwareUnavailable(
            f"{what}: no GPIO driver could be loaded ({reason}). On a Raspberry Pi install lgpio "
            "(`apt install python3-lgpio`, or `pip install lgpio`) and make sure lgpio can write its "
            "notification pipe (WorkingDirectory= or LG_WD= naming a writable directory); "
            f"{PI5_NOTE}. Elsewhere remove [gpio], or set GPIOZERO_PIN_FACTORY=mock to try it out")
    if isinstance(exc, PinInvalidPin):
        return HardwareUnavailable(f"{what}: not a GPIO on this board ({reason}); "
                                   "use a BCM number from the 40-pin header (see hardware/README.md)")
    if isinstance(exc, GPIOPinInUse) or "busy" in text or "in use" in text:
        return HardwareUnavailable(f"{what}: the pin is already in use ({reason}): by another process, "
                                   "the other [gpio] pin, or the display (SPI DC/RST, I2C SDA/SCL); pick a free one")
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES or "permission" in text:
        return HardwareUnavailable(f"{what}: permission denied on /dev/gpiochip* ({reason}): {GROUP_FIX}")
    if isinstance(exc, FileNotFoundError) or "gpiochip" in text or "no such file" in text:
        return HardwareUnavailable(f"{what}: no GPIO chip ({reason}): {PI5_NOTE}; under systemd also "
                                   "DeviceAllow=char-gpiochip rw")
    return HardwareUnavailable(f"{what}: cannot open the pin ({type(exc).__name__}: {reason}); "
                               f"check that the user is in group gpio; {PI5_NOTE}")
