"""The shipped font and its metrics.

DejaVu Sans Mono and DejaVu Sans Mono Bold ship in ``fonts/`` (Bitstream Vera
licence, ``fonts/LICENSE``; copied from Debian's fonts-dejavu-core 2.37), so a
screen looks the same on every device and 0/O and 1/l/I differ: zero is
dotted. FreeType draws that dot only from 10 px up, so :data:`MIN_CODE_PX` is
the smallest user code on any panel. Text is laid out with Pillow's basic
layout engine (no raqm): the same metrics with or without libraqm, and
characters drawn in logical order, so bidi controls cannot reorder a code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

FONT_DIR = Path(__file__).with_name("fonts")
REGULAR = "DejaVuSansMono.ttf"
BOLD = "DejaVuSansMono-Bold.ttf"

MIN_CODE_PX = 10  # the dotted zero of DejaVu Sans Mono needs 10 px (see the docstring)


@lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """The shipped DejaVu Sans Mono at ``size`` px, cached per size."""
    path = FONT_DIR / (BOLD if bold else REGULAR)
    return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=64)
def line_metrics(size: int, bold: bool) -> tuple[int, int]:
    """(top, bottom) of the ascenders and descenders relative to the baseline, in px."""
    f = font(size, bold)
    return f.getbbox("Hdlk", anchor="ls")[1], f.getbbox("gjpqy", anchor="ls")[3]


def line_pitch(size: int, bold: bool) -> int:
    """Baseline to baseline, in px."""
    top, bottom = line_metrics(size, bold)
    return bottom - top + max(1, round(size * 0.15))


def text_width(text: str, size: int, bold: bool) -> float:
    return font(size, bold).getlength(text)
