"""The status LED and the pair/reset button (``[gpio]`` in the config).

The daemon calls :func:`attach` once the device has started and closes what it
returns on the way out::

    gpio = await attach(device, cfg.gpio)
    ...
    await gpio.close()

- ``patterns.py``: lifecycle state -> LED pattern (pure);
- ``button.py``: press / hold / cancel on the loop, with an injected clock and sleep;
- ``pins.py``: the only gpiozero importer; imported here only when ``attach`` runs, so
  a device without ``[gpio]`` never loads gpiozero.

lgpio (gpiozero 2.0's first choice, the only one for a Pi 5) creates a FIFO named
``.lgd-nfy*`` in the working directory when it is imported, or in ``$LG_WD`` (and then
it changes the whole process's working directory to ``$LG_WD``). A service started
with ``WorkingDirectory=/`` cannot write there and gpiozero falls back to a factory
that does not work. :func:`ensure_lgpio_workdir` sets ``LG_WD`` to a writable
directory when the working directory is not writable and nobody set it; the systemd
unit should still say ``WorkingDirectory=`` (see hardware/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, MutableMapping, Protocol

from devicelink.config import GpioConfig
from devicelink.errors import HardwareUnavailable
from devicelink.gpio.button import ButtonLogic, ButtonTarget, Debouncer
from devicelink.lifecycle import State

if TYPE_CHECKING:
    from devicelink.gpio.pins import ButtonPin, StatusLed

__all__ = ["Gpio", "attach", "ensure_lgpio_workdir", "INSTALL_HINT"]

logger = logging.getLogger(__name__)

INSTALL_HINT = ("[gpio] is configured but gpiozero is not installed: pip install 'devicelink[gpio]' "
                "(Raspberry Pi OS: apt install python3-gpiozero python3-lgpio)")


class GpioDevice(ButtonTarget, Protocol):
    """What :func:`attach` needs from :class:`devicelink.engine.Device`."""

    state: State
    listeners: list[Callable[[State], None]]


class Gpio:
    """The LED and button attached to one device; :meth:`close` releases the pins."""

    def __init__(self, device: GpioDevice, led: StatusLed | None, button: ButtonPin | None,
                 logic: ButtonLogic | None, debouncer: Debouncer | None) -> None:
        self.device, self.led, self.button = device, led, button
        self.logic, self.debouncer = logic, debouncer
        self._closed = False
        if led is not None:
            device.listeners.append(self._on_state)
            led.show_state(device.state)

    def _on_state(self, state: State) -> None:
        # Device._move calls listeners inline: a broken LED must not break a state move.
        try:
            if self.led is not None:
                self.led.show_state(state)
        except Exception:
            logger.exception("the status LED failed")

    async def close(self) -> None:
        """Stop listening, let a factory reset in flight finish, release the pins (LED off)."""
        if self._closed:
            return
        self._closed = True
        if self._on_state in self.device.listeners:
            self.device.listeners.remove(self._on_state)
        if self.button is not None:
            self.button.close()  # no new edges
        if self.debouncer is not None:
            await self.debouncer.close()
        if self.logic is not None:
            await self.logic.close()
        if self.led is not None:
            self.led.close()


async def attach(device: GpioDevice, cfg: GpioConfig, *, pin_factory: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Gpio:
    """Open the configured LED and button and wire them to ``device``.

    Raises :class:`HardwareUnavailable` when gpiozero is missing (naming the extra to
    install) or a configured pin cannot be opened (naming the pin and the likely fix).
    ``pin_factory`` goes to every gpiozero device (tests pass a ``MockFactory``);
    ``clock``/``sleep`` time the button's hold.
    """
    if pin_factory is None:
        ensure_lgpio_workdir()
    pins = _import_pins()
    loop = asyncio.get_running_loop()
    led: StatusLed | None = None
    button: ButtonPin | None = None
    logic: ButtonLogic | None = None
    debouncer: Debouncer | None = None
    try:
        if cfg.led is not None:
            led = pins.StatusLed(cfg.led, pin_factory=pin_factory)
        if cfg.button is not None:
            logic = ButtonLogic(device, cfg.hold_seconds, clock=clock, sleep=sleep,
                                on_countdown=led.countdown if led is not None else None)
            debouncer = Debouncer(logic, sleep=sleep)
            button = pins.ButtonPin(cfg.button, debouncer.edge, loop=loop, clock=clock, pin_factory=pin_factory)
    except BaseException:
        if led is not None:
            led.close()
        raise
    logger.info("GPIO: %s%s", f"LED on GPIO{cfg.led}" if led else "no LED",
                f", button on GPIO{cfg.button} (hold {cfg.hold_seconds:g} s to reset)" if button else ", no button")
    return Gpio(device, led, button, logic, debouncer)


def _import_pins():
    try:
        from devicelink.gpio import pins
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "gpiozero" or "gpiozero" in str(exc):
            raise HardwareUnavailable(INSTALL_HINT) from exc
        raise
    return pins


def ensure_lgpio_workdir(environ: MutableMapping[str, str] | None = None, cwd: str | None = None) -> str | None:
    """Give lgpio a writable directory for its ``.lgd-nfy*`` FIFO; call before gpiozero
    (or rpi-lgpio, for a display's DC/RST pins) first loads lgpio.

    Leaves a set ``LG_WD`` alone (the unit's ``Environment=LG_WD=``) and does nothing
    when the working directory is writable. Otherwise sets ``LG_WD`` to the first
    writable of ``$RUNTIME_DIRECTORY``, ``$STATE_DIRECTORY``, ``$XDG_RUNTIME_DIR`` and a
    private ``devicelink-lgpio-UID`` directory under the temp dir. Returns the directory
    lgpio will use, or None for the working directory.
    """
    env = os.environ if environ is None else environ
    if env.get("LG_WD"):
        if not _writable_dir(env["LG_WD"]):
            logger.warning("LG_WD=%s is not a writable directory: lgpio will fail to start and gpiozero "
                           "will fall back to another pin factory", env["LG_WD"])
        return env["LG_WD"]
    if "lgpio" in sys.modules:
        return None  # already loaded: too late to matter
    if cwd is None:
        try:
            cwd = os.getcwd()
        except OSError:  # the working directory was removed
            cwd = ""
    if cwd and _writable_dir(cwd):
        return None
    candidates = [(env.get(name) or "").split(":")[0]
                  for name in ("RUNTIME_DIRECTORY", "STATE_DIRECTORY", "XDG_RUNTIME_DIR")]
    chosen = next((c for c in candidates if c and _writable_dir(c)), None) or _private_tmp_dir()
    if chosen is None:
        logger.warning("the working directory %s is not writable and no other directory is: "
                       "lgpio will fail to start; set WorkingDirectory= in the unit", cwd or "(gone)")
        return None
    env["LG_WD"] = chosen
    logger.info("the working directory %s is not writable: LG_WD=%s for lgpio's notification pipe",
                cwd or "(gone)", chosen)
    return chosen


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _private_tmp_dir() -> str | None:
    path = Path(tempfile.gettempdir()) / f"devicelink-lgpio-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError:
        return None
    # Someone else's directory (or a symlink) in a shared /tmp is not ours to use.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return str(path)
