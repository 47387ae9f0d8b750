"""``display.driver = "framebuffer"``: the pairing screen on a TV over HDMI, via /dev/fbN.

Why not luma.core's ``linux_framebuffer``: it converts pixels in Python and
writes row by row, 170 ms for a 1080p frame at 32 bpp and 442 ms at 16 bpp on
x86 (seconds on a Zero), and ignores the stride (HARDWARE.md §1, §4). Here a
frame is packed by Pillow in C, in strips of about 256 KiB that stay in the
CPU cache, and the strips go out in one system call, ``os.pwritev`` at offset
0 (one ``pwrite`` per line only when the kernel pads lines): 5-20 ms for a
1080p frame on x86, depending on the depth (bench/display_bench.py).

Geometry comes from sysfs, ``/sys/class/graphics/fbN/``:

* ``virtual_size`` ("1920,1080") is the frame size; under ``vc4-kms-v3d`` the
  fbdev emulation's virtual size is the visible mode;
* ``bits_per_pixel``: 16, 24 or 32, else a start-up error;
* ``stride`` (bytes per line, newer kernels) when present, else width x bytes.

Pixel layouts are the DRM fbdev ones, little-endian: 32 bpp XRGB8888 (bytes
B, G, R, X in memory; X is written 0xFF so an ARGB8888 buffer is opaque too),
24 bpp RGB888 (B, G, R), 16 bpp RGB565 (``rrrrrggg gggbbbbb`` stored low byte
first). Pillow has no RGB565 packer (``BGR;16`` is gone, and was an image
mode, not a raw packer, on 9.4 too), so 16 bpp is packed from four lookup
tables and two byte additions, all in C, identical on Pillow 9.4 and 13.

The device is opened once, without ``O_CREAT`` (a missing /dev/fb0 must not
turn into a regular file), and ``N`` is read from the device number (major 29)
so a symlink such as /dev/fb/0 works; a regular file named like ``fb0`` is
taken at its name (tests). ``rotate`` turns the frame for a TV hung on its
side. :meth:`close` writes a black frame, so no pairing code stays on the TV.

The console shares the framebuffer: disable ``getty@tty1`` (or keep tty1 in
graphics mode) or its cursor and login prompt draw over the screen, and put
``consoleblank=0`` on the kernel command line or the console blanks the TV
after ten idle minutes, pairing code and all.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from devicelink.config import DisplayConfig
from devicelink.display.panel import PanelDisplay
from devicelink.errors import ConfigError, HardwareUnavailable

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_DEVICE = Path("/dev/fb0")
SYSFS = Path("/sys/class/graphics")
FB_MAJOR = 29  # Documentation/admin-guide/devices.txt: "29 char Universal frame buffer"
# Frames are packed a strip of rows at a time, about this many output bytes each:
# the strip stays in the CPU cache, which makes packing about twice as fast as a
# whole 1080p frame at once, and no second frame-sized copy is ever held.
STRIP_BYTES = 256 * 1024
IOV_MAX = 1024  # Linux's UIO_MAXIOV: buffers per pwritev

# RGB565 as two bytes per pixel, little-endian: low = ggg bbbbb, high = rrrrr ggg.
_LO_FROM_G = bytes(((v >> 2) & 0x07) << 5 for v in range(256))
_LO_FROM_B = bytes(v >> 3 for v in range(256))
_HI_FROM_R = bytes(v & 0xF8 for v in range(256))
_HI_FROM_G = bytes(v >> 5 for v in range(256))


def open_framebuffer(cfg: DisplayConfig, *, source: Path | None = None, sysfs: Path = SYSFS) -> PanelDisplay:
    """The framebuffer ``cfg.framebuffer`` (default /dev/fb0) as a Display.

    ``sysfs`` replaces /sys/class/graphics: for tests only. ``source`` is the
    config file, for error messages.
    """
    sink = Framebuffer(cfg.framebuffer or DEFAULT_DEVICE, sysfs=sysfs, rotate=cfg.rotate)
    if (cfg.width is not None and cfg.width != sink.width) or (cfg.height is not None and cfg.height != sink.height):
        sink.close(blank=False)
        where = f"{source}: [display]" if source else "[display]"
        raise ConfigError(f"{where} width, height: {sink.path} is {sink.width}x{sink.height}, "
                          f"not {cfg.width or sink.width}x{cfg.height or sink.height}: remove width and height "
                          "to use the screen's mode, or change the HDMI mode (video= on the kernel command line)")
    return PanelDisplay(sink)


def pack_rgb565(image: Image.Image) -> bytes:
    """``image`` (RGB) as little-endian RGB565, two bytes per pixel."""
    from PIL import Image, ImageChops

    r, g, b = image.split()
    # The bit fields don't overlap, so a saturating add is a bitwise or.
    lo = ImageChops.add(g.point(_LO_FROM_G), b.point(_LO_FROM_B))
    hi = ImageChops.add(r.point(_HI_FROM_R), g.point(_HI_FROM_G))
    return Image.merge("LA", (lo, hi)).tobytes()  # "LA" packs L then A: low byte first


def _pack_bgr(image: Image.Image) -> bytes:
    return image.tobytes("raw", "BGR")


def _pack_bgra(image: Image.Image) -> bytes:
    # "BGRX" pads with 0; through RGBA the fourth byte is 0xFF (opaque).
    return image.convert("RGBA").tobytes("raw", "BGRA")


PACKERS: dict[int, Callable[[Image.Image], bytes]] = {16: pack_rgb565, 24: _pack_bgr, 32: _pack_bgra}


class Framebuffer:
    """A Linux framebuffer device as a :class:`~devicelink.display.panel.FrameSink`."""

    mode = "RGB"

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_DEVICE, *, sysfs: Path = SYSFS, rotate: int = 0) -> None:
        self.path = Path(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HardwareUnavailable(
                f"framebuffer: no framebuffer: {self.path} not found: is HDMI connected / vc4-kms-v3d loaded? "
                "(dtoverlay=vc4-kms-v3d, and hdmi_force_hotplug=1 in config.txt to start without a TV)") from None
        except PermissionError:
            raise HardwareUnavailable(f"framebuffer: permission denied on {self.path}: "
                                      "add the service user to group video") from None
        except OSError as exc:
            raise HardwareUnavailable(f"framebuffer: cannot open {self.path}: {exc.strerror}") from None
        try:
            self._read_geometry(sysfs)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        self.rotate = rotate
        self.size = (self.width, self.height) if rotate % 2 == 0 else (self.height, self.width)
        self._pack = PACKERS[self.bits_per_pixel]
        self._strip_rows = max(1, STRIP_BYTES // self.row_bytes)
        logger.info("framebuffer %s: %dx%d, %d bpp, stride %d", self.path, self.width, self.height,
                    self.bits_per_pixel, self.stride)

    def _read_geometry(self, sysfs: Path) -> None:
        st = os.fstat(self._fd)
        if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == FB_MAJOR:
            name = f"fb{os.minor(st.st_rdev)}"
        else:
            name = self.path.name
        self.sysfs_dir = sysfs / name
        try:
            width, height = (int(v) for v in _read(self.sysfs_dir / "virtual_size").split(",")[:2])
            self.bits_per_pixel = int(_read(self.sysfs_dir / "bits_per_pixel"))
        except (OSError, ValueError) as exc:
            raise HardwareUnavailable(f"framebuffer: cannot read the geometry of {self.path} "
                                      f"from {self.sysfs_dir}: {exc}") from None
        if self.bits_per_pixel not in PACKERS:
            raise HardwareUnavailable(f"framebuffer: {self.path} is {self.bits_per_pixel} bpp; "
                                      "expected 16, 24 or 32")
        self.width, self.height = width, height
        self.row_bytes = width * self.bits_per_pixel // 8
        try:
            self.stride = int(_read(self.sysfs_dir / "stride"))
        except FileNotFoundError:  # older kernels: lines are not padded
            self.stride = self.row_bytes
        except (OSError, ValueError) as exc:
            raise HardwareUnavailable(f"framebuffer: cannot read {self.sysfs_dir / 'stride'}: {exc}") from None
        if width <= 0 or height <= 0 or self.stride < self.row_bytes:
            raise HardwareUnavailable(f"framebuffer: {self.path} reports {width}x{height} at "
                                      f"{self.bits_per_pixel} bpp with stride {self.stride}: not usable")

    def push(self, image: Image.Image) -> None:
        if self._fd is None:
            raise HardwareUnavailable(f"framebuffer: {self.path} is closed")
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.rotate:
            from PIL import Image

            # luma's convention: rotate=1 is a quarter turn clockwise.
            turn = (None, Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_90)
            image = image.transpose(turn[self.rotate])
        if image.size != (self.width, self.height):
            raise ValueError(f"frame is {image.size[0]}x{image.size[1]}, {self.path} is {self.width}x{self.height}")
        rows = self._strip_rows
        self._write([self._pack(image.crop((0, y, self.width, min(self.height, y + rows))))
                     for y in range(0, self.height, rows)])

    def _write(self, strips: list[bytes]) -> None:
        if self.stride == self.row_bytes:
            _pwritev_all(self._fd, strips, 0)
            return
        # Padded lines (stride > width x bytes): one write per line, padding untouched.
        row, y = self.row_bytes, 0
        for strip in strips:
            view = memoryview(strip)
            for start in range(0, len(view), row):
                _pwrite_all(self._fd, view[start:start + row], y * self.stride)
                y += 1

    def close(self, blank: bool = True) -> None:
        if self._fd is None:
            return
        try:
            if blank:  # black: no pairing code stays on the TV
                full, rest = divmod(self.height, self._strip_rows)
                zeros = bytes(self.row_bytes * self._strip_rows)
                self._write([zeros] * full + ([bytes(self.row_bytes * rest)] if rest else []))
        except OSError as exc:
            logger.warning("framebuffer %s: could not blank the screen: %s", self.path, exc)
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)


def _read(path: Path) -> str:
    return path.read_text().strip()


def _pwritev_all(fd: int, buffers: list[bytes], offset: int) -> None:
    """The buffers back to back from ``offset``: one ``pwritev`` for any frame up to
    IOV_MAX (1024) strips, i.e. 256 MiB; ``pwrite`` for whatever the kernel didn't take."""
    for first in range(0, len(buffers), IOV_MAX):
        batch = buffers[first:first + IOV_MAX]
        total = sum(len(b) for b in batch)
        written = os.pwritev(fd, batch, offset)
        if written < total:
            _pwrite_all(fd, b"".join(batch)[written:], offset + written)
        offset += total


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"short write at offset {offset}")
        view = view[written:]
        offset += written
