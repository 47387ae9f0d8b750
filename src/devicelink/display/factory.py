"""``open_display(cfg)``: the Display that ``[display] driver`` names.

Each driver's module is imported only in its branch (after luma.core's
``cmdline.create_device``), so a headless device loads no imaging code at all
and an HDMI device never loads luma. Opening is where missing hardware shows:
this raises :class:`~devicelink.errors.HardwareUnavailable` (a start-up error
naming the device and the fix) or :class:`~devicelink.errors.ConfigError`
(a display key that cannot work), never a fallback to another driver.
"""

from __future__ import annotations

from devicelink.config import Config
from devicelink.display.base import Display, NullDisplay
from devicelink.errors import ConfigError, HardwareUnavailable

PIXEL_DRIVERS = ("png", "ssd1306", "sh1106", "framebuffer")


def open_display(cfg: Config) -> Display:
    display = cfg.display
    driver = display.driver
    if driver == "none":
        return NullDisplay()
    if driver == "terminal":
        from devicelink.display.terminal import TerminalDisplay

        return TerminalDisplay()
    if driver not in PIXEL_DRIVERS:
        raise ConfigError(f"{cfg.path}: [display] driver: unknown driver {driver!r}")
    try:
        if driver == "png":
            from devicelink.display.png import open_png

            return open_png(display, source=cfg.path)
        if driver == "framebuffer":
            from devicelink.display.framebuffer import open_framebuffer

            return open_framebuffer(display, source=cfg.path)
        from devicelink.display.oled import open_oled

        return open_oled(display, source=cfg.path)
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "PIL":
            raise
        raise HardwareUnavailable(f"display driver {driver!r} draws with Pillow, which is not installed: "
                                  "install devicelink[oled] (or apt install python3-pil)") from exc
