"""``display.driver = "ssd1306" | "sh1106"``: a mono OLED through luma.oled.

The only module that imports luma.oled (and luma.core's serial interfaces).
Works with luma.oled 3.10+ / luma.core 2.4+ (Raspberry Pi OS Bookworm) and
newer: it uses only the device constructors, ``command``, ``display`` and
``cleanup``, and the serial ``i2c``/``spi`` classes, unchanged across them.

Bus choice: ``spi_port`` or ``spi_device`` set -> SPI (``/dev/spidevP.D``, the
D/C and reset pins on luma's defaults, GPIO 24 and 25); otherwise I2C
(``i2c_port`` 1, ``i2c_address`` 0x3C). Setting keys of both buses is a
config error rather than a silent pick.

Size: 128x64 (default) or 128x32, the two mono layouts the renderer draws;
``rotate`` (0-3, quarter turns clockwise) is luma's, so the renderer gets the
rotated size (64x128 for a 128x64 panel on its side).

Start-up fails with :class:`HardwareUnavailable` naming the panel and the
likely fix: I2C/SPI not enabled, nothing at the address, the service user not
in group ``i2c``/``spi``/``gpio``, luma not installed. A panel that later stops
answering raises from :meth:`PanelDisplay.show`; the daemon logs it and goes
on, and the next frame retries.

:meth:`close` runs luma's ``cleanup`` with ``persist`` off: display off, RAM
cleared, bus closed, so no pairing code stays lit after the daemon stops.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

from devicelink.config import DisplayConfig
from devicelink.display.panel import PanelDisplay
from devicelink.errors import ConfigError, HardwareUnavailable

logger = logging.getLogger(__name__)

DRIVERS = ("ssd1306", "sh1106")
SIZES = ((128, 64), (128, 32))
DEFAULT_I2C_PORT = 1
DEFAULT_I2C_ADDRESS = 0x3C
DEFAULT_SPI_PORT = 0
DEFAULT_SPI_DEVICE = 0

# SSD1306 command D5h, "Set Display Clock Divide Ratio/Oscillator Frequency":
# high nibble = oscillator frequency (0xF = fastest), low nibble =
# divide ratio - 1 (0 -> divide by 1). luma sends 0x80 (the reset value).
SSD1306_CLOCK = (0xD5, 0xF0)

# The errnos an I2C write gets when nothing acknowledges the address
# (EREMOTEIO from i2c-bcm2835, ENXIO/EIO from other adapters).
_NO_ACK = {errno.EREMOTEIO, errno.ENXIO, errno.EIO}


def open_oled(cfg: DisplayConfig, *, source: Path | None = None,
              bus: Any = None, spi: Any = None, gpio: Any = None) -> PanelDisplay:
    """The OLED ``cfg.driver`` names, as a Display.

    ``bus`` (an smbus-like object with ``write_i2c_block_data``), ``spi`` (a
    spidev-like object) and ``gpio`` (an RPi.GPIO-like module) replace the real
    ones: for tests and the benchmark only. ``source`` is the config file, for
    error messages.
    """
    return PanelDisplay(OledPanel.open(cfg, source=source, bus=bus, spi=spi, gpio=gpio))


class OledPanel:
    """A luma device as a :class:`~devicelink.display.panel.FrameSink`."""

    def __init__(self, device: Any, name: str) -> None:
        self._device = device
        self.name = name
        self.size: tuple[int, int] = tuple(device.size)
        self.mode: str = device.mode

    @classmethod
    def open(cls, cfg: DisplayConfig, *, source: Path | None = None,
             bus: Any = None, spi: Any = None, gpio: Any = None) -> OledPanel:
        kind = cfg.driver
        if kind not in DRIVERS:
            raise ValueError(f"not an OLED driver: {kind!r}")
        width, height = cfg.width or 128, cfg.height or 64
        where = f"{source}: [display]" if source else "[display]"
        if (width, height) not in SIZES:
            raise ConfigError(f"{where} width, height: {kind} panels are 128x64 or 128x32, got {width}x{height}")
        use_spi = cfg.spi_port is not None or cfg.spi_device is not None
        if use_spi and (cfg.i2c_port is not None or cfg.i2c_address is not None):
            raise ConfigError(f"{where} i2c_port/i2c_address and spi_port/spi_device are both set: "
                              "keep the keys of the bus the panel is wired to")
        try:
            from luma.core import error as luma_error
            from luma.core.interface import serial as luma_serial
            from luma.oled import device as luma_device
        except ImportError as exc:
            raise HardwareUnavailable(f"{kind}: luma.oled is not installed ({exc}): install devicelink[oled] "
                                      "(or apt install python3-luma.oled)") from exc

        if use_spi:
            interface, describe = _open_spi(kind, cfg, luma_serial, luma_error, spi, gpio)
        else:
            interface, describe = _open_i2c(kind, cfg, luma_serial, luma_error, bus)

        device_class = getattr(luma_device, kind)
        try:
            device = device_class(interface, width=width, height=height, rotate=cfg.rotate)
            if kind == "ssd1306":
                # Camera banding (HARDWARE.md §1). The SSD1306 is passive-matrix:
                # each row is lit only in its slot of the scan, so a phone whose
                # exposure (0.1-1 ms in bright light) is shorter than one refresh
                # (about 10 ms at luma's 0x80, the reset value) records only the
                # rows scanned during it, and the QR comes out crossed by dark
                # bands the decoder can't read through. The more scans fit in an
                # exposure, the fewer rows are missing: 0xF0 is the fastest
                # oscillator (high nibble 0xF) with divide-by-1 (low nibble 0),
                # roughly 1.3-1.5x the refresh rate (the exact clock varies from
                # chip to chip), the change Coldcard made for its QR screen
                # (firmware PR #125). Frame memory, bus traffic and contrast stay
                # as they are; the cost is a little more current and, on some
                # panels, slightly uneven brightness, harmless for a code and a
                # few words, while a QR that won't scan in daylight fails the
                # pairing. luma's SH1106 init already uses 0xF0.
                device.command(*SSD1306_CLOCK)
        except luma_error.DeviceDisplayModeError as exc:  # SIZES are checked above; a future luma may differ
            _close_quietly(interface)
            raise ConfigError(f"{where} width, height: {exc}") from exc
        except (luma_error.DeviceNotFoundError, OSError) as exc:
            _close_quietly(interface)
            raise HardwareUnavailable(describe(exc)) from exc
        logger.info("%s %dx%d on %s", kind, width, height, describe(None))
        return cls(device, kind)

    def push(self, image: Any) -> None:
        self._device.display(image)

    def close(self) -> None:
        device, self._device = self._device, None
        if device is None:
            return
        try:
            device.persist = False  # luma: cleanup() switches the panel off and clears it
            device.cleanup()
        except Exception as exc:  # the bus may be gone; shutting down must go on
            logger.warning("%s: could not blank the panel: %s", self.name, exc)
        finally:
            # luma registers an atexit hook per device that calls
            # device.cleanup() again; it would write to a closed bus.
            device.cleanup = _nothing


def _nothing() -> None:
    pass


def _close_quietly(interface: Any) -> None:
    try:
        interface.cleanup()
    except Exception:
        pass


def _open_i2c(kind: str, cfg: DisplayConfig, luma_serial: Any, luma_error: Any, bus: Any) -> tuple[Any, Any]:
    port = DEFAULT_I2C_PORT if cfg.i2c_port is None else cfg.i2c_port
    address = DEFAULT_I2C_ADDRESS if cfg.i2c_address is None else cfg.i2c_address
    node = f"/dev/i2c-{port}"
    other = 0x3D if address == 0x3C else 0x3C

    def at_address(exc: BaseException | None) -> str:
        if exc is None:
            return f"I2C bus {port} at 0x{address:02X}"
        errnum = getattr(exc, "errno", None)
        if isinstance(exc, luma_error.DeviceNotFoundError) or errnum in _NO_ACK:
            return (f"{kind}: no device at 0x{address:02X} on I2C bus {port} "
                    f"(try 0x{other:02X}, check wiring; `i2cdetect -y {port}`)")
        return f"{kind}: I2C bus {port} at 0x{address:02X}: {_reason(exc)}"

    try:
        interface = luma_serial.i2c(bus=bus, port=port, address=address)
    except ImportError as exc:  # smbus2, imported by luma only here
        raise HardwareUnavailable(f"{kind}: {exc}: install devicelink[oled] "
                                  "(or apt install python3-smbus2)") from exc
    except (luma_error.DevicePermissionError, PermissionError) as exc:
        raise HardwareUnavailable(f"{kind}: permission denied on {node}: "
                                  "add the service user to group i2c") from exc
    except (luma_error.DeviceNotFoundError, FileNotFoundError) as exc:
        raise HardwareUnavailable(f"{kind}: {node} not found: enable I2C "
                                  "(raspi-config nonint do_i2c 0 or dtparam=i2c_arm=on in config.txt)") from exc
    except OSError as exc:
        raise HardwareUnavailable(f"{kind}: cannot open {node}: {_reason(exc)}") from exc
    return interface, at_address


def _open_spi(kind: str, cfg: DisplayConfig, luma_serial: Any, luma_error: Any,
              spi: Any, gpio: Any) -> tuple[Any, Any]:
    port = DEFAULT_SPI_PORT if cfg.spi_port is None else cfg.spi_port
    dev = DEFAULT_SPI_DEVICE if cfg.spi_device is None else cfg.spi_device
    node = f"/dev/spidev{port}.{dev}"

    def on_spi(exc: BaseException | None) -> str:
        # SPI has no acknowledge: a missing panel cannot be told from a present one.
        return f"{kind}: {node}: {_reason(exc)}" if exc is not None else f"SPI {node}"

    try:
        # luma drives D/C (GPIO 24) and reset (GPIO 25) through RPi.GPIO, then opens spidev.
        interface = luma_serial.spi(spi=spi, gpio=gpio, port=port, device=dev)
    except ImportError as exc:
        missing = exc.name or str(exc)
        if missing.startswith("RPi"):
            hint = "apt install python3-rpi-lgpio (or pip install rpi-lgpio)"
        else:
            hint = "apt install python3-spidev (or pip install spidev)"
        raise HardwareUnavailable(f"{kind} on SPI needs {missing} for {node} and the D/C and reset pins: "
                                  f"{hint}") from exc
    except luma_error.UnsupportedPlatform as exc:
        raise HardwareUnavailable(f"{kind} on SPI: GPIO access not available for the D/C and reset pins "
                                  "(not a Raspberry Pi, or RPi.GPIO on a Pi 5: install rpi-lgpio)") from exc
    except (luma_error.DevicePermissionError, PermissionError) as exc:
        path = getattr(exc, "filename", None) or node
        group = "gpio" if "gpio" in str(path) else "spi"
        raise HardwareUnavailable(f"{kind}: permission denied on {path}: "
                                  f"add the service user to group {group}") from exc
    except (luma_error.DeviceNotFoundError, FileNotFoundError) as exc:
        raise HardwareUnavailable(f"{kind}: {node} not found: enable SPI "
                                  "(raspi-config nonint do_spi 0 or dtparam=spi=on in config.txt)") from exc
    except OSError as exc:
        raise HardwareUnavailable(f"{kind}: cannot open {node}: {_reason(exc)}") from exc
    except Exception as exc:  # rpi-lgpio raises lgpio.error, not OSError, when /dev/gpiochip* won't open
        raise HardwareUnavailable(f"{kind} on SPI: cannot set up the D/C and reset pins (GPIO 24, 25): {exc} "
                                  "(is the service user in group gpio?)") from exc
    return interface, on_spi


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
