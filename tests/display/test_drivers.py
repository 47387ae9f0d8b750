"""The pixel drivers: luma's real SSD1306/SH1106 drivers over recording buses, the
framebuffer writer against a file with fake sysfs geometry, the PNG folder, the
factory, and the start-up errors for missing hardware.

Frames come from the real renderer; what reaches the bus, the file or the folder
is decoded back (zxing-cpp for the QR codes), so a test fails if a driver garbles
the frame, not only if it crashes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from devicelink import config
from devicelink.config import DisplayConfig
from devicelink.display.base import NullDisplay, Screen
from devicelink.display.factory import open_display
from devicelink.display import framebuffer
from devicelink.display.framebuffer import Framebuffer, open_framebuffer, pack_rgb565
from devicelink.display.panel import PanelDisplay, frame_digest
from devicelink.display.png import PngFolder, open_png
from devicelink.display.render import render
from devicelink.display.terminal import TerminalDisplay
from devicelink.errors import ConfigError, HardwareUnavailable
from devicelink.lifecycle import PairingCode, State

luma_oled = pytest.importorskip("luma.oled.device", reason="the oled extra (luma.oled) is a test dependency")
from devicelink.display.oled import OledPanel, open_oled  # noqa: E402

# luma's packers call Image.getdata(), deprecated in Pillow 13 (removed in 14; pyproject pins <14).
pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")

COMPLETE = "https://example.com/device?user_code=WDJB-MJHT"
PAIRING = PairingCode("WDJB-MJHT", "https://example.com/device", COMPLETE, expires_at=1000.5)
PAIRING_SCREEN = Screen(State.PAIRING, PAIRING)
PAIRED_SCREEN = Screen(State.PAIRED, account="owner@example.com")
NOW = 400.0  # 600 s (10:00) left on PAIRING

SSD1306_CMD, SSD1306_DATA = 0x00, 0x40  # luma's i2c control bytes


# -- fakes --------------------------------------------------------------------------


class RecordingBus:
    """Fake smbus (``write_i2c_block_data``) for luma's ``i2c(bus=...)`` - ONLY FOR TESTS.

    Records every block; ``fail`` makes writes raise that errno, like a bus on which
    nothing acknowledges the address.
    """

    def __init__(self, fail: int | None = None) -> None:
        self.fail = fail
        self.writes: list[tuple[int, int, list[int]]] = []

    def write_i2c_block_data(self, address: int, register: int, data: list[int]) -> None:
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        assert len(data) <= 32, "SMBus block writes carry at most 32 bytes"
        self.writes.append((address, register, list(data)))

    def commands(self) -> list[list[int]]:
        return [data for _, reg, data in self.writes if reg == SSD1306_CMD]

    def data_bytes(self) -> list[int]:
        return [b for _, reg, data in self.writes if reg == SSD1306_DATA for b in data]

    def close(self) -> None:
        pass


class RecordingSpi:
    """Fake spidev.SpiDev - ONLY FOR TESTS. Records (dc_level, bytes) per transfer."""

    def __init__(self, gpio: FakeGpio, open_errno: int | None = None) -> None:
        self.gpio, self.open_errno = gpio, open_errno
        self.transfers: list[tuple[int, list[int]]] = []
        self.opened: tuple[int, int] | None = None
        self.max_speed_hz = 0
        self.mode = 0

    def open(self, port: int, device: int) -> None:
        if self.open_errno is not None:
            raise OSError(self.open_errno, os.strerror(self.open_errno))
        self.opened = (port, device)

    def writebytes(self, data: list[int]) -> None:
        self.transfers.append((self.gpio.levels.get(24), list(data)))

    def close(self) -> None:
        pass


class FakeGpio:
    """Fake RPi.GPIO module for luma's D/C and reset pins - ONLY FOR TESTS."""

    LOW, HIGH, OUT, BCM = 0, 1, "out", "bcm"

    def __init__(self) -> None:
        self.levels: dict[int, int] = {}

    def setmode(self, mode: str) -> None:
        pass

    def setup(self, pin: int, direction: str, **kwargs) -> None:
        self.levels[pin] = self.LOW

    def output(self, pin: int, level: int) -> None:
        self.levels[pin] = level

    def cleanup(self, *pins) -> None:
        pass


def make_fb(tmp: Path, width: int, height: int, bpp: int, stride: int | None = None,
            fill: int = 0xAA) -> tuple[Path, Path]:
    """A regular file standing in for /dev/fb0 plus a fake /sys/class/graphics/fb0."""
    sysfs = tmp / "sys"
    (sysfs / "fb0").mkdir(parents=True)
    (sysfs / "fb0" / "virtual_size").write_text(f"{width},{height}\n")
    (sysfs / "fb0" / "bits_per_pixel").write_text(f"{bpp}\n")
    if stride is not None:
        (sysfs / "fb0" / "stride").write_text(f"{stride}\n")
    dev = tmp / "dev" / "fb0"
    dev.parent.mkdir()
    dev.write_bytes(bytes([fill]) * ((stride or width * bpp // 8) * height))
    return dev, sysfs


def fb_image(data: bytes, width: int, height: int, bpp: int, stride: int) -> Image.Image:
    """Decode framebuffer bytes back to RGB, independently of the driver's packers."""
    row = width * bpp // 8
    rows = b"".join(data[y * stride:y * stride + row] for y in range(height))
    if bpp == 32:
        return Image.frombytes("RGB", (width, height), rows, "raw", "BGRX")
    if bpp == 24:
        return Image.frombytes("RGB", (width, height), rows, "raw", "BGR")
    out = bytearray()
    for i in range(0, len(rows), 2):
        v = rows[i] | rows[i + 1] << 8
        r, g, b = v >> 11, (v >> 5) & 0x3F, v & 0x1F
        out += bytes(((r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2)))
    return Image.frombytes("RGB", (width, height), bytes(out))


def oled_image(data: list[int], width: int, height: int) -> Image.Image:
    """Rebuild the picture from SSD1306/SH1106 page-format bytes (8 rows per byte, LSB on top)."""
    img = Image.new("L", (width, height), 0)
    px = img.load()
    for page in range(height // 8):
        for x in range(width):
            byte = data[page * width + x]
            for bit in range(8):
                if byte >> bit & 1:
                    px[x, page * 8 + bit] = 255
    return img


def decode(img: Image.Image) -> str:
    # The OLED is lit modules on a dark panel in the byte stream's terms; zxing's
    # try_invert (on by default in read_barcodes) reads it, as a phone reads the panel.
    found = zxingcpp.read_barcodes(img.convert("L"))
    assert len(found) == 1, found
    assert found[0].format == zxingcpp.BarcodeFormat.QRCode
    return found[0].text


def upscale(img: Image.Image, factor: int = 4) -> Image.Image:
    return img.convert("L").resize((img.width * factor, img.height * factor), Image.NEAREST)


def parse_config(tmp: Path, **display) -> config.Config:
    raw = {"provider": {"issuer": "https://idp.example", "client_id": "device"}, "display": display}
    return config.parse(raw, tmp / "config.toml")


# -- OLED over luma's real drivers -------------------------------------------------


def test_ssd1306_init_sets_the_fast_oscillator_after_luma_init():
    bus = RecordingBus()
    panel = OledPanel.open(DisplayConfig(driver="ssd1306"), bus=bus)
    commands = bus.commands()
    assert all(address == 0x3C for address, _, _ in bus.writes)
    luma_init = commands[0]
    assert luma_init[:3] == [0xAE, 0xD5, 0x80]  # display off, luma's default clock
    # Ours comes after luma's init, as a command of its own, before the first frame.
    assert [0xD5, 0xF0] in commands
    assert commands.index([0xD5, 0xF0]) > 0
    assert panel.size == (128, 64) and panel.mode == "1"


def test_sh1106_gets_the_fast_oscillator_from_luma_and_nothing_extra():
    bus = RecordingBus()
    OledPanel.open(DisplayConfig(driver="sh1106"), bus=bus)
    init = bus.commands()[0]
    at = init.index(0xD5)
    assert init[at + 1] == 0xF0
    assert [0xD5, 0xF0] not in bus.commands()


@pytest.mark.parametrize("driver, height, commands_per_frame", [
    ("ssd1306", 64, 1), ("ssd1306", 32, 1),  # one column/page window, then all data
    ("sh1106", 64, 8), ("sh1106", 32, 4),  # a page address per 8 rows
])
def test_a_frame_push_sends_one_bit_per_pixel(driver, height, commands_per_frame):
    bus = RecordingBus()
    display = open_oled(DisplayConfig(driver=driver, height=height), bus=bus)
    bus.writes.clear()  # luma's init and its blank frame

    display.show(PAIRING_SCREEN, NOW)

    assert display.pushes == 1
    assert len(bus.data_bytes()) == 128 * height // 8  # 1024 or 512 bytes on the wire
    assert len(bus.commands()) == commands_per_frame
    shown = oled_image(bus.data_bytes(), 128, height)
    expected = render(PAIRING_SCREEN, (128, height), "1", NOW).convert("L")
    assert shown.tobytes() == expected.tobytes()


def test_the_qr_sent_to_a_128x64_ssd1306_decodes():
    bus = RecordingBus()
    display = open_oled(DisplayConfig(driver="ssd1306"), bus=bus)
    bus.writes.clear()
    display.show(PAIRING_SCREEN, NOW)
    assert decode(upscale(oled_image(bus.data_bytes(), 128, 64))) == COMPLETE


def test_oled_over_spi_with_fake_spidev_and_gpio():
    gpio = FakeGpio()
    spi = RecordingSpi(gpio)
    display = open_oled(DisplayConfig(driver="ssd1306", spi_port=0, spi_device=1), spi=spi, gpio=gpio)
    assert spi.opened == (0, 1)
    commands = [data for dc, data in spi.transfers if dc == gpio.LOW]
    assert [0xD5, 0xF0] in commands
    spi.transfers.clear()
    display.show(PAIRING_SCREEN, NOW)
    assert sum(len(data) for dc, data in spi.transfers if dc == gpio.HIGH) == 1024


def test_rotated_oled_renders_portrait():
    bus = RecordingBus()
    display = open_oled(DisplayConfig(driver="ssd1306", rotate=1), bus=bus)
    assert display.sink.size == (64, 128)
    bus.writes.clear()
    display.show(PAIRING_SCREEN, NOW)
    assert len(bus.data_bytes()) == 1024


def test_close_blanks_the_panel_once():
    bus = RecordingBus()
    display = open_oled(DisplayConfig(driver="ssd1306"), bus=bus)
    device = display.sink._device
    display.show(PAIRING_SCREEN, NOW)
    bus.writes.clear()

    display.close()

    assert [0xAE] in bus.commands()  # display off
    assert len(bus.data_bytes()) == 1024 and not any(bus.data_bytes())  # RAM cleared
    bus.writes.clear()
    display.close()
    device.cleanup()  # what luma's atexit hook calls
    display.show(PAIRING_SCREEN, NOW + 1)
    assert bus.writes == []


# -- redraw only on change -------------------------------------------------------------


def test_same_screen_twice_is_pushed_once():
    bus = RecordingBus()
    display = open_oled(DisplayConfig(driver="ssd1306"), bus=bus)
    bus.writes.clear()
    display.show(PAIRING_SCREEN, NOW)
    sent = len(bus.writes)
    display.show(PAIRING_SCREEN, NOW)
    display.show(PAIRING_SCREEN, NOW + 0.4)  # same second left
    assert display.pushes == 1 and len(bus.writes) == sent


def test_a_countdown_tick_and_a_new_screen_are_pushed():
    bus = RecordingBus()
    display = open_oled(DisplayConfig(driver="ssd1306"), bus=bus)
    display.show(PAIRING_SCREEN, NOW)
    display.show(PAIRING_SCREEN, NOW + 1)  # 9:59
    assert display.pushes == 2
    display.show(PAIRED_SCREEN, NOW + 1.1)
    assert display.pushes == 3


def test_countdown_pushes_at_most_once_per_second_of_now(tmp_path):
    display = open_png(DisplayConfig(driver="png", png_dir=tmp_path))
    start = NOW + 0.05
    steps = [start + i * 0.1 for i in range(101)]  # 10 s of calls, ten a second
    for now in steps:
        display.show(PAIRING_SCREEN, now)
    seconds_left = {PAIRING.expires_in(now) for now in steps}
    assert display.pushes <= len(seconds_left)
    assert display.pushes >= 2  # the countdown does move
    numbers = sorted(p.name for p in tmp_path.glob("frame-*.png"))
    assert len(numbers) == display.pushes


def test_a_failed_push_is_retried_on_the_next_call():
    bus = RecordingBus()
    display = open_oled(DisplayConfig(driver="ssd1306"), bus=bus)
    bus.fail = errno.EREMOTEIO
    with pytest.raises(Exception):
        display.show(PAIRING_SCREEN, NOW)
    bus.fail = None
    bus.writes.clear()
    display.show(PAIRING_SCREEN, NOW)
    assert len(bus.data_bytes()) == 1024


# -- OLED start-up errors ---------------------------------------------------------------


def test_missing_i2c_bus_says_enable_i2c():
    with pytest.raises(HardwareUnavailable) as exc:
        open_oled(DisplayConfig(driver="ssd1306", i2c_port=250))
    assert str(exc.value) == ("ssd1306: /dev/i2c-250 not found: enable I2C "
                              "(raspi-config nonint do_i2c 0 or dtparam=i2c_arm=on in config.txt)")


def test_i2c_permission_denied_says_group_i2c(monkeypatch):
    import smbus2

    def denied(port, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", f"/dev/i2c-{port}")

    monkeypatch.setattr(smbus2, "SMBus", denied)
    with pytest.raises(HardwareUnavailable) as exc:
        open_oled(DisplayConfig(driver="sh1106"))
    assert str(exc.value) == "sh1106: permission denied on /dev/i2c-1: add the service user to group i2c"


@pytest.mark.parametrize("errnum", [errno.EREMOTEIO, errno.EIO, errno.ENXIO])
def test_nothing_at_the_address(errnum):
    with pytest.raises(HardwareUnavailable) as exc:
        open_oled(DisplayConfig(driver="ssd1306"), bus=RecordingBus(fail=errnum))
    assert str(exc.value) == "ssd1306: no device at 0x3C on I2C bus 1 (try 0x3D, check wiring; `i2cdetect -y 1`)"


def test_nothing_at_0x3d_suggests_0x3c():
    with pytest.raises(HardwareUnavailable, match=r"no device at 0x3D on I2C bus 0 \(try 0x3C, check wiring; "
                       r"`i2cdetect -y 0`\)"):
        open_oled(DisplayConfig(driver="sh1106", i2c_port=0, i2c_address=0x3D), bus=RecordingBus(fail=errno.EREMOTEIO))


def test_luma_missing_says_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "luma.oled", None)
    monkeypatch.setitem(sys.modules, "luma.oled.device", None)
    with pytest.raises(HardwareUnavailable, match=r"^ssd1306: luma.oled is not installed .*install devicelink\[oled\]"):
        open_oled(DisplayConfig(driver="ssd1306"), bus=RecordingBus())


def test_missing_spi_device_says_enable_spi():
    gpio = FakeGpio()
    with pytest.raises(HardwareUnavailable) as exc:
        open_oled(DisplayConfig(driver="ssd1306", spi_port=0), spi=RecordingSpi(gpio, errno.ENOENT), gpio=gpio)
    assert str(exc.value) == ("ssd1306: /dev/spidev0.0 not found: enable SPI "
                              "(raspi-config nonint do_spi 0 or dtparam=spi=on in config.txt)")


def test_spidev_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "spidev", None)
    with pytest.raises(HardwareUnavailable, match=r"needs spidev .*apt install python3-spidev"):
        open_oled(DisplayConfig(driver="sh1106", spi_device=0), gpio=FakeGpio())


def test_gpio_errors_on_spi_are_a_startup_error():
    class GpioChipError(Exception):  # what rpi-lgpio raises when /dev/gpiochip0 won't open
        pass

    class NoChip(FakeGpio):
        def setup(self, pin, direction, **kwargs):
            raise GpioChipError("can not open gpiochip")

    with pytest.raises(HardwareUnavailable, match=r"^ssd1306 on SPI: cannot set up the D/C and reset pins .*"
                                                  r"can not open gpiochip .*group gpio"):
        open_oled(DisplayConfig(driver="ssd1306", spi_port=0), spi=RecordingSpi(FakeGpio()), gpio=NoChip())


def test_pillow_missing_says_install(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "devicelink.display.render")  # imported again, without PIL
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(HardwareUnavailable, match=r"^display driver 'png' draws with Pillow, which is not installed"):
        open_display(parse_config(tmp_path, driver="png", png_dir="frames"))


@pytest.mark.parametrize("display, message", [
    ({"width": 96, "height": 16}, "ssd1306 panels are 128x64 or 128x32, got 96x16"),
    ({"i2c_address": 0x3C, "spi_port": 0}, "are both set"),
])
def test_oled_config_errors(tmp_path, display, message):
    cfg = parse_config(tmp_path, driver="ssd1306", **display)
    with pytest.raises(ConfigError, match=message):
        open_display(cfg)


# -- framebuffer -----------------------------------------------------------------------

TEST_PIXELS = {(0, 0): (255, 0, 0), (1, 0): (255, 255, 255), (2, 0): (0, 0, 0),
               (3, 1): (0, 255, 0), (4, 2): (0, 0, 255), (63, 47): (255, 0, 0)}


def pixels_image() -> Image.Image:
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    for xy, rgb in TEST_PIXELS.items():
        img.putpixel(xy, rgb)
    return img


@pytest.mark.parametrize("bpp", [16, 24, 32])
@pytest.mark.parametrize("pad", [0, 40])
@pytest.mark.parametrize("strip_rows", [7, 1000])  # uneven strips, or the frame in one
def test_framebuffer_writes_pixels_at_the_right_offsets(tmp_path, monkeypatch, bpp, pad, strip_rows):
    width, height = 64, 48
    row = width * bpp // 8
    stride = row + pad
    monkeypatch.setattr(framebuffer, "STRIP_BYTES", strip_rows * row)
    dev, sysfs = make_fb(tmp_path, width, height, bpp, stride if pad else None)
    fb = Framebuffer(dev, sysfs=sysfs)
    assert (fb.width, fb.height, fb.bits_per_pixel, fb.stride) == (width, height, bpp, stride)

    fb.push(pixels_image())

    data = dev.read_bytes()
    assert len(data) == stride * height  # nothing written past the end
    shown = fb_image(data, width, height, bpp, stride)
    for xy, rgb in TEST_PIXELS.items():
        assert shown.getpixel(xy) == rgb, xy
    assert shown.getpixel((10, 10)) == (0, 0, 0)
    if bpp == 32:
        assert data[3] == 0xFF  # opaque in an ARGB8888 buffer too
    if bpp == 16:
        assert data[0:2] == b"\x00\xf8"  # red is 0xF800, stored low byte first
    for y in range(height):  # the kernel's line padding is left alone
        assert data[y * stride + row:(y + 1) * stride] == b"\xaa" * pad

    fb.close()
    blank = dev.read_bytes()
    assert all(blank[y * stride:y * stride + row] == bytes(row) for y in range(height))
    assert all(blank[y * stride + row:(y + 1) * stride] == b"\xaa" * pad for y in range(height))


def test_rgb565_packer_is_exact_for_every_channel_value():
    img = Image.new("RGB", (256, 3))
    for v in range(256):
        img.putpixel((v, 0), (v, 0, 0))
        img.putpixel((v, 1), (0, v, 0))
        img.putpixel((v, 2), (0, 0, v))
    data = pack_rgb565(img)
    for v in range(256):
        assert int.from_bytes(data[2 * v:2 * v + 2], "little") == (v >> 3) << 11
        assert int.from_bytes(data[512 + 2 * v:514 + 2 * v], "little") == (v >> 2) << 5
        assert int.from_bytes(data[1024 + 2 * v:1026 + 2 * v], "little") == v >> 3


@pytest.mark.parametrize("bpp, size, pad", [(16, (320, 240), 64), (24, (640, 360), 0), (32, (320, 240), 0),
                                             (32, (1280, 720), 128)])
def test_the_qr_on_the_framebuffer_decodes(tmp_path, bpp, size, pad):
    width, height = size
    stride = width * bpp // 8 + pad
    dev, sysfs = make_fb(tmp_path, width, height, bpp, stride)
    display = open_framebuffer(DisplayConfig(driver="framebuffer", framebuffer=dev), sysfs=sysfs)
    assert display.sink.size == size and display.sink.mode == "RGB"

    display.show(PAIRING_SCREEN, NOW)

    shown = fb_image(dev.read_bytes(), width, height, bpp, stride)
    assert decode(shown) == COMPLETE
    display.show(PAIRING_SCREEN, NOW)
    assert display.pushes == 1
    display.close()


def test_framebuffer_rotation_turns_the_frame_clockwise(tmp_path):
    dev, sysfs = make_fb(tmp_path, 64, 48, 32)
    fb = Framebuffer(dev, sysfs=sysfs, rotate=1)
    assert fb.size == (48, 64)
    img = Image.new("RGB", fb.size, (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))  # top-left of the picture
    fb.push(img)
    shown = fb_image(dev.read_bytes(), 64, 48, 32, 64 * 4)
    assert shown.getpixel((63, 0)) == (255, 0, 0)  # a quarter turn clockwise: top-right


def test_framebuffer_opens_the_device_once(tmp_path, monkeypatch):
    dev, sysfs = make_fb(tmp_path, 64, 48, 32)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    display = open_framebuffer(DisplayConfig(driver="framebuffer", framebuffer=dev), sysfs=sysfs)
    display.show(PAIRING_SCREEN, NOW)
    display.show(PAIRED_SCREEN, NOW)
    display.close()
    assert [p for p in opened if Path(p) == dev] == [dev]


def test_a_frame_is_one_system_call_unless_lines_are_padded(tmp_path, monkeypatch):
    calls = []
    for name in ("pwrite", "pwritev"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _name=name, _real=real: calls.append(_name) or _real(*a))
    dev, sysfs = make_fb(tmp_path, 1280, 720, 32)
    fb = Framebuffer(dev, sysfs=sysfs)
    assert fb._strip_rows < 720  # several strips, still one call
    fb.push(Image.new("RGB", (1280, 720), (255, 0, 0)))
    assert calls == ["pwritev"]
    assert dev.read_bytes() == b"\x00\x00\xff\xff" * 1280 * 720

    calls.clear()
    dev, sysfs = make_fb(tmp_path / "padded", 100, 10, 24, stride=304)
    Framebuffer(dev, sysfs=sysfs).push(Image.new("RGB", (100, 10)))
    assert calls == ["pwrite"] * 10


def test_frame_digest_tells_frames_apart_in_any_strip():
    a = Image.new("RGB", (1920, 1080))
    b = a.copy()
    b.putpixel((1919, 1079), (0, 0, 1))  # the last pixel of the last strip
    assert frame_digest(a) == frame_digest(a.copy()) != frame_digest(b)
    small = Image.new("1", (128, 64))
    assert frame_digest(small) != frame_digest(Image.new("1", (128, 64), 1))


def test_missing_framebuffer_says_check_hdmi(tmp_path):
    with pytest.raises(HardwareUnavailable) as exc:
        open_framebuffer(DisplayConfig(driver="framebuffer", framebuffer=tmp_path / "fb7"), sysfs=tmp_path)
    message = str(exc.value)
    assert message.startswith(f"framebuffer: no framebuffer: {tmp_path / 'fb7'} not found: is HDMI connected / "
                              "vc4-kms-v3d loaded?")
    assert "hdmi_force_hotplug=1" in message


def test_framebuffer_permission_denied_says_group_video(tmp_path, monkeypatch):
    dev, sysfs = make_fb(tmp_path, 64, 48, 32)
    real_open = os.open

    def denied(path, *args, **kwargs):
        if Path(path) == dev:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(HardwareUnavailable) as exc:
        open_framebuffer(DisplayConfig(driver="framebuffer", framebuffer=dev), sysfs=sysfs)
    assert str(exc.value) == f"framebuffer: permission denied on {dev}: add the service user to group video"


def test_framebuffer_unsupported_depth_and_missing_geometry(tmp_path):
    dev, sysfs = make_fb(tmp_path, 64, 48, 8)
    with pytest.raises(HardwareUnavailable, match="is 8 bpp; expected 16, 24 or 32"):
        Framebuffer(dev, sysfs=sysfs)
    (sysfs / "fb0" / "virtual_size").unlink()
    with pytest.raises(HardwareUnavailable, match="cannot read the geometry"):
        Framebuffer(dev, sysfs=sysfs)


def test_framebuffer_size_in_config_must_match(tmp_path):
    dev, sysfs = make_fb(tmp_path, 64, 48, 32)
    with pytest.raises(ConfigError, match=r"is 64x48, not 1920x1080"):
        open_framebuffer(DisplayConfig(driver="framebuffer", framebuffer=dev, width=1920, height=1080), sysfs=sysfs)
    assert set(dev.read_bytes()) == {0xAA}  # a refused screen is not blanked
    display = open_framebuffer(DisplayConfig(driver="framebuffer", framebuffer=dev, width=64, height=48), sysfs=sysfs)
    display.close()


# -- png folder --------------------------------------------------------------------------


def test_png_frames_and_latest(tmp_path):
    out = tmp_path / "frames"
    display = open_png(DisplayConfig(driver="png", png_dir=out))
    assert display.sink.size == (128, 64) and display.sink.mode == "1"

    display.show(PAIRING_SCREEN, NOW)
    display.show(PAIRING_SCREEN, NOW)  # unchanged: no new file
    first = out / "frame-000001.png"
    assert sorted(p.name for p in out.iterdir()) == ["frame-000001.png", "latest.png"]
    assert (out / "latest.png").read_bytes() == first.read_bytes()
    with Image.open(first) as img:
        assert (img.size, img.mode) == ((128, 64), "1")
        assert decode(upscale(img)) == COMPLETE

    display.show(PAIRED_SCREEN, NOW)
    assert (out / "latest.png").read_bytes() == (out / "frame-000002.png").read_bytes()
    display.close()
    with Image.open(out / "latest.png") as img:
        assert img.getbbox() is None  # blank after close
    assert sorted(p.name for p in out.iterdir()) == [
        "frame-000001.png", "frame-000002.png", "frame-000003.png", "latest.png"]


def test_png_rgb_for_large_panels_and_numbering_goes_on(tmp_path):
    (tmp_path / "frame-000041.png").write_bytes(b"")
    display = open_png(DisplayConfig(driver="png", png_dir=tmp_path, width=1280, height=720))
    assert display.sink.mode == "RGB"
    display.show(PAIRING_SCREEN, NOW)
    with Image.open(tmp_path / "frame-000042.png") as img:
        assert img.size == (1280, 720)
        assert decode(img) == COMPLETE


def test_png_needs_a_folder(tmp_path):
    cfg = parse_config(tmp_path, driver="png")
    with pytest.raises(ConfigError, match=r"\[display\] png_dir: missing"):
        open_display(cfg)
    (tmp_path / "file").write_text("")
    with pytest.raises(HardwareUnavailable, match="png: cannot use"):
        PngFolder(tmp_path / "file" / "sub")


# -- factory and imports -----------------------------------------------------------------


def test_factory_picks_each_driver(tmp_path):
    assert isinstance(open_display(parse_config(tmp_path)), NullDisplay)
    assert isinstance(open_display(parse_config(tmp_path, driver="terminal")), TerminalDisplay)
    png = open_display(parse_config(tmp_path, driver="png", png_dir="frames"))
    assert isinstance(png, PanelDisplay) and png.sink.directory == tmp_path / "frames"
    with pytest.raises(HardwareUnavailable, match="/dev/i2c-250 not found"):
        open_display(parse_config(tmp_path, driver="ssd1306", i2c_port=250))
    with pytest.raises(HardwareUnavailable, match="no framebuffer"):
        open_display(parse_config(tmp_path, driver="framebuffer", framebuffer=str(tmp_path / "fb9")))


def test_display_modules_import_no_luma_segno_or_pillow():
    code = (
        "import sys\n"
        "import devicelink.display.factory, devicelink.display.panel, devicelink.display.png\n"
        "import devicelink.display.framebuffer, devicelink.display.oled\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('luma', 'segno', 'smbus2', 'PIL'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
