"""Screens as pictures: :func:`render` turns a :class:`~devicelink.display.base.Screen` into a PIL image.

``render(screen, size, mode, now)`` is a pure function: the same arguments give
the same pixels, and the only I/O is loading the shipped font (once per size).
It is :func:`~devicelink.display.layout.layout` (what goes where: text, sizes,
positions, the QR) followed by :func:`draw` (pixels), so tests can check the
geometry without OCR. The palette follows the image mode ("1": lit on unlit,
for SSD1306/SH1106; "L" and "RGB": light text on a dark background, the QR
always black on white).

The modules behind it: :mod:`~devicelink.display.typeface` (the font),
:mod:`~devicelink.display.text` (server text, the countdown),
:mod:`~devicelink.display.fit` (sizes and line breaks),
:mod:`~devicelink.display.compact` and :mod:`~devicelink.display.full` (the
layouts of each panel family), :mod:`~devicelink.display.status` (what a
status screen says), :mod:`~devicelink.display.turns` (a message taking turns
with the URI) and :mod:`~devicelink.display.model` (the layout as data).

**Cost.** A countdown tick re-uses the cached QR matrix, QR image and text
fit (the countdown is fitted as a same-length template: the font is
monospaced): about 0.5 ms of CPU for 128x64 and 3 ms for 1920x1080 on x86
(``bench/display_bench.py``). The first frame of a new code also encodes the
QR (segno, about 10 ms a level).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from devicelink.display.base import Screen
from devicelink.display.layout import layout
from devicelink.display.model import Layout, QrItem, RectItem
from devicelink.display.qr import draw_qr
from devicelink.display.typeface import font

PALETTES: dict[str, dict[str, object]] = {
    "1": dict.fromkeys(("bg",), 0) | dict.fromkeys(("fg", "dim", "accent", "ok", "warn", "error", "card"), 1),
    "L": {"bg": 0, "fg": 255, "dim": 170, "accent": 255, "ok": 255, "warn": 255, "error": 255, "card": 255},
    "RGB": {
        "bg": (17, 24, 39),
        "fg": (243, 244, 246),
        "dim": (156, 163, 175),
        "accent": (252, 211, 77),
        "ok": (74, 222, 128),
        "warn": (251, 191, 36),
        "error": (248, 113, 113),
        "card": (255, 255, 255),
    },
}


def draw(layout: Layout, image: Image.Image | None = None, offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """The pixels of ``layout``: a new image of its size and mode, or drawn into ``image`` at
    ``offset`` (tests draw into a larger canvas to see that nothing lands outside the panel)."""
    palette = PALETTES[layout.mode]
    if image is None:
        image = Image.new(layout.mode, layout.size, palette["bg"])  # type: ignore[arg-type]
    dx, dy = offset
    canvas = ImageDraw.Draw(image)
    for item in layout.items:
        if isinstance(item, RectItem):
            left, top, right, bottom = item.box
            canvas.rectangle((left + dx, top + dy, right + dx - 1, bottom + dy - 1),
                             fill=palette[item.colour])
        elif isinstance(item, QrItem):
            draw_qr(image, item.fit, (item.xy[0] + dx, item.xy[1] + dy))
        else:
            canvas.text((item.xy[0] + dx, item.xy[1] + dy), item.text, fill=palette[item.colour],
                        font=font(item.size, item.bold), anchor="ls")
    return image


def render(screen: Screen, size: tuple[int, int], mode: str, now: float) -> Image.Image:
    """``screen`` as an image of exactly ``size`` in ``mode`` ("1" for mono OLEDs, "RGB" for
    colour panels and TVs, "L" for grey); ``now`` is time.monotonic(), for the countdown."""
    return draw(layout(screen, tuple(size), mode, now))  # type: ignore[arg-type]
