"""The checks of the configured display and GPIO: their libraries and device nodes."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path
from typing import Any

from devicelink.config import Config
from devicelink.doctor.findings import FAIL, OK, WARN, Finding, group_name

GPIOCHIP = Path("/dev/gpiochip0")


def check_display(cfg: Config) -> list[Finding]:
    d = cfg.display
    if d.driver == "none":
        return []
    if d.driver == "terminal":
        return [Finding(OK, "display", "terminal: the code is printed where the daemon's output goes")]
    if importlib.util.find_spec("PIL") is None:
        return [Finding(FAIL, "display", f"driver {d.driver!r} draws with Pillow, which is not installed",
                        "install devicelink[oled] (or apt install python3-pil)")]
    if d.driver == "png":
        return [_png_dir(d.png_dir)]
    if d.driver == "framebuffer":
        return [_device_node("display", Path(d.framebuffer or "/dev/fb0"),
                             "connect HDMI / load vc4-kms-v3d (dtoverlay=vc4-kms-v3d; hdmi_force_hotplug=1)")]
    if _find("luma.oled") is None:
        return [Finding(FAIL, "display", f"driver {d.driver!r} needs luma.oled, which is not installed",
                        "install devicelink[oled] (or apt install python3-luma.oled)")]
    if d.spi_port is not None or d.spi_device is not None:
        node = Path(f"/dev/spidev{d.spi_port or 0}.{d.spi_device or 0}")
        return [_device_node("display", node, "enable SPI (raspi-config nonint do_spi 0, or dtparam=spi=on)"),
                _device_node("display", GPIOCHIP, "the D/C and reset pins need the GPIO chip")]
    node = Path(f"/dev/i2c-{1 if d.i2c_port is None else d.i2c_port}")
    return [_device_node("display", node, "enable I2C (raspi-config nonint do_i2c 0, or dtparam=i2c_arm=on)")]


def check_gpio(cfg: Config) -> list[Finding]:
    g = cfg.gpio
    if g is None or (g.led is None and g.button is None):
        return []
    if g.led is not None and g.led == g.button:
        return [Finding(FAIL, "gpio", f"the LED and the button are both on GPIO{g.led}", "use two pins")]
    if _find("gpiozero") is None:
        return [Finding(FAIL, "gpio", "[gpio] is configured, but gpiozero is not installed",
                        "install devicelink[gpio] (or apt install python3-gpiozero python3-lgpio)")]
    if os.environ.get("GPIOZERO_PIN_FACTORY", "").lower() == "mock":
        return [Finding(OK, "gpio", "GPIOZERO_PIN_FACTORY=mock: simulated pins, no hardware to check")]
    return [_device_node("gpio", GPIOCHIP, "not a Raspberry Pi? remove [gpio]; on a Pi 5 with a kernel before "
                         "6.6.45 the header is gpiochip4 (update the kernel)")]


def _device_node(check: str, node: Path, missing_fix: str) -> Finding:
    try:
        st = os.stat(node)
    except FileNotFoundError:
        return Finding(FAIL, check, f"{node} not found", missing_fix)
    except OSError as exc:
        return Finding(FAIL, check, f"{node}: {exc.strerror}", missing_fix)
    if not stat.S_ISCHR(st.st_mode):
        return Finding(FAIL, check, f"{node} is not a device", missing_fix)
    group = group_name(st.st_gid)
    if os.access(node, os.R_OK | os.W_OK):
        return Finding(OK, check, f"{node} present, group {group}")
    return Finding(WARN, check, f"{node} present, but this user may not open it (group {group})",
                   f"the daemon's user must be in group {group} (SupplementaryGroups={group} in the unit)")


def _png_dir(directory: Path | None) -> Finding:
    if directory is None:
        return Finding(FAIL, "display", "driver 'png' needs [display] png_dir", "set png_dir in the config")
    probe = Path(directory)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the daemon makes the missing folders
    if not probe.is_dir():
        return Finding(FAIL, "display", f"png_dir {directory}: {probe} is not a directory", "pick another png_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        return Finding(WARN, "display", f"png_dir {directory}: {probe} is not writable by this user",
                       "it must be writable by the daemon's user")
    made = "" if probe == Path(directory) else " (made at start)"
    return Finding(OK, "display", f"png: frames go to {directory}{made}")


def _find(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # the parent package is missing
        return None
