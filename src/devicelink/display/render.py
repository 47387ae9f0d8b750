"""Screens as pictures: :func:`render` turns a :class:`~devicelink.display.base.Screen` into a PIL image.

``render(screen, size, mode, now)`` is a pure function: the same arguments give
the same pixels, and the only I/O is loading the shipped font (once per size).
It is :func:`layout` (what goes where: text, sizes, positions, the QR) followed
by :func:`draw` (pixels), so tests can check the geometry without OCR.

**Cost.** A countdown tick re-uses the cached QR matrix, QR image and text
fit (the countdown is fitted as a same-length template: the font is
monospaced): about 1 ms of CPU for 128x64 and 6 ms for 1920x1080 on x86. The
first frame of a new code also encodes the QR (segno, about 10 ms a level).

**Font.** DejaVu Sans Mono and DejaVu Sans Mono Bold ship in ``fonts/``
(Bitstream Vera licence, ``fonts/LICENSE``; copied from Debian's
fonts-dejavu-core 2.37), so a screen looks the same on every device and 0/O
and 1/l/I differ: zero is dotted. FreeType draws that dot only from 10 px up,
so 10 px is the smallest user code on any panel. Text is laid out with
Pillow's basic layout engine (no raqm): the same metrics with or without
libraqm, and characters drawn in logical order, so bidi controls cannot
reorder a code.

**Server text** (user code, URI, account, message) is drawn as received, never
re-cased or reformatted. Only control, format and surrogate characters are
shown as escapes (``\\x1b``, ``\\u202e``), as the terminal driver does, and
line breaks and tabs become spaces. Text never leaves the panel: a block
shrinks down to its minimum size, wraps, and only then is ellipsized ("…");
the user code is never ellipsized before everything else has given way.

**Layouts.** The family follows the panel's size, the palette its mode ("1":
lit on unlit, for SSD1306/SH1106; "L" and "RGB": light text on a dark
background, the QR always black on white).

* *Compact*, panels under 100 px tall (128x64 and 128x32 OLEDs, also a 96x64
  colour OLED): small hinted fonts, no anti-aliasing, 1-2 px gaps.

  - 128x64, pairing: the QR at the left edge, filling the height (a 46-48
    character ``?user_code=`` URI: version 3-L, 2 px per module, 1-module
    quiet zone, 62x62 px at (0, 1), as in HARDWARE.md's reference render; an
    all-uppercase path-style URI: 2-M, 2 px, 3-module quiet zone), and in the
    62 px to its right the short URI, the user code in bold (on two lines,
    broken after a dash, when that makes it larger: ``WDJB-`` / ``MJHT`` at
    about 17 px) and the countdown. When the URI needs a version 4 symbol
    (58-64 characters: Okta, Auth0, Keycloak, AWS), no QR fits at 2 px per
    module, and the screen is the text-only one, with room for larger text;
    likewise when the code or URI would not fit whole beside the QR, or the
    column would be under 40 px (96x64).
  - 128x32, pairing: **text only, never a QR, and no alternation.** At 2 px
    per module a 32 px panel holds 16 modules, quiet zone included, and the
    smallest QR (version 1) is 21 modules without one; a 1 px module is
    0.175 mm on a 0.91" panel, a 3.7 mm code that phones do not reliably
    read (HARDWARE.md §2). So there is no QR to alternate with, and every
    pixel goes to text: the short URI on top (on two lines if it must be) and
    the user code with the countdown beside it.
  - Status screens: a bold title and the message or account, wrapped; on
    128x32 a long message ends in "…" (status screens are not redrawn by a
    timer, so they cannot page).

* *Full*, anything 100 px tall or more (240x240, 320x240, 1280x720,
  1920x1080, ...), every size derived from the panel height so it reads
  across a room on a TV (the code 15 % of the height, body text 5 %). On a
  landscape panel (at least 5:4) the QR on a white card at the left, filling
  the height, and in a column to its right the instructions, the URI, the
  user code (in the accent colour), the countdown and any message; on a
  square or portrait panel the QR on top and the text centred below (a user
  code too long for the column gets that arrangement, then the whole panel).
  The white card is wider than the code's own quiet zone by 1/16 of its side
  all round, so a code fitted with a 1-module quiet zone for bigger modules
  still has 3-4 modules of white around it. For a 48-character URI: 1280x720
  -> version 3-L, 17 px per module; 1920x1080 -> 3-L, 26 px; 320x240 -> 3-L,
  4 px; 240x240 -> 3-L, 4 px.

* *A message while pairing* ("The last code expired. Here is a new one.") is
  shown under the countdown when there is room for it at a cost of at most
  10 % of the code's size (TVs). Otherwise it takes turns with the URI, in
  the URI's place, by ``now``: the URI for two slots of
  :data:`ALTERNATE_SECONDS`, then one slot per page of the message (at most
  :data:`MAX_PAGES`). The daemon redraws once a second while a code is shown,
  so the pages turn; the code, the QR and the countdown never move.

Every QR drawn is :func:`~devicelink.display.qr.fit_qr` of ``qr_payload``: a
full QR code (never Micro QR), normal polarity, at least 2 px per module.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from devicelink.display.base import Screen
from devicelink.display.qr import QrFit, draw_qr, fit_qr
from devicelink.lifecycle import State

FONT_DIR = Path(__file__).with_name("fonts")
REGULAR = "DejaVuSansMono.ttf"
BOLD = "DejaVuSansMono-Bold.ttf"

MODES = ("1", "L", "RGB")
COMPACT_HEIGHT = 100  # panels shorter than this get the compact (OLED) layouts
MIN_CODE_PX = 10  # the dotted zero of DejaVu Sans Mono needs 10 px (see the docstring)
MAX_TEXT = 400  # characters of server text considered at all: more never fits anyway
ALTERNATE_SECONDS = 3  # pairing: the URI and a message that has no room of its own take turns
ELLIPSIS = "…"

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

# -- fonts ------------------------------------------------------------------------


@lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """The shipped DejaVu Sans Mono at ``size`` px, cached per size."""
    path = FONT_DIR / (BOLD if bold else REGULAR)
    return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=64)
def _line_metrics(size: int, bold: bool) -> tuple[int, int]:
    """(top, bottom) of the ascenders and descenders relative to the baseline, in px."""
    f = font(size, bold)
    return f.getbbox("Hdlk", anchor="ls")[1], f.getbbox("gjpqy", anchor="ls")[3]


def _pitch(size: int, bold: bool) -> int:
    top, bottom = _line_metrics(size, bold)
    return bottom - top + max(1, round(size * 0.15))


def _width(text: str, size: int, bold: bool) -> float:
    return font(size, bold).getlength(text)


# -- server text ------------------------------------------------------------------


def clean(text: str) -> str:
    """``text`` as it may be drawn: control/format characters escaped, line breaks as spaces."""
    out = []
    for ch in text[:MAX_TEXT]:
        category = unicodedata.category(ch)
        if ch in "\t\n\r\v\f" or category in {"Zl", "Zp"}:
            out.append(" ")
        elif category in {"Cc", "Cf", "Cs"}:
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def short_uri(uri: str) -> str:
    """The verification URI as the owner types it: without a leading ``https://``."""
    return uri[8:] if uri[:8].lower() == "https://" else uri


def countdown_text(seconds: int, *, long: bool) -> str:
    if seconds <= 0:
        return "Code expired" if long else "expired"
    clock = f"{seconds // 60}:{seconds % 60:02d}"
    return f"Code expires in {clock}" if long else clock


# -- the layout model -------------------------------------------------------------


@dataclass(frozen=True)
class TextItem:
    """One line of text, drawn with its baseline's left end at ``xy``."""

    role: str  # "code", "uri", "countdown", "title", "body", "account", "message", "label", "number"
    text: str
    xy: tuple[int, int]
    size: int
    bold: bool
    colour: str

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The ink's bounding box on the panel (left, top, right, bottom), right/bottom exclusive."""
        left, top, right, bottom = font(self.size, self.bold).getbbox(self.text, anchor="ls")
        x, y = self.xy
        return x + left, y + top, x + right, y + bottom


@dataclass(frozen=True)
class QrItem:
    fit: QrFit
    xy: tuple[int, int]

    @property
    def box(self) -> tuple[int, int, int, int]:
        x, y = self.xy
        return x, y, x + self.fit.size, y + self.fit.size


@dataclass(frozen=True)
class RectItem:
    box: tuple[int, int, int, int]  # right/bottom exclusive
    colour: str


Item = TextItem | QrItem | RectItem


@dataclass(frozen=True)
class Layout:
    size: tuple[int, int]
    mode: str
    items: tuple[Item, ...]

    def texts(self, role: str | None = None) -> list[TextItem]:
        return [i for i in self.items if isinstance(i, TextItem) and (role is None or i.role == role)]

    def qr(self) -> QrItem | None:
        return next((i for i in self.items if isinstance(i, QrItem)), None)

    def text(self, role: str) -> str:
        """The lines of ``role`` joined with spaces (what the owner reads)."""
        return " ".join(i.text for i in self.texts(role))


@dataclass(frozen=True)
class Block:
    """A paragraph to place in a column: the fitter picks its size and line breaks."""

    role: str
    text: str
    size: int  # preferred (largest) size, px
    min_size: int
    bold: bool = False
    colour: str = "fg"
    lines: int = 1  # at most
    shrink: int = 1  # blocks with a higher value shrink first (labels 2, text 1, the code 0)
    keep: int = 1  # with no room even at minimum sizes, blocks with a lower value are dropped first
    align: str = "left"  # or "centre"
    balanced: bool = False  # two lines split at the separator that balances them (the user code)
    tail: str = ""  # drawn right-aligned on the last line's baseline (the countdown beside a code)
    tail_size: int = 0
    tail_colour: str = "fg"
    clip: bool = False  # set by the fitter: more than ``lines`` lines even at min_size, so ellipsize


@dataclass(frozen=True)
class _Placed:
    block: Block
    size: int
    lines: tuple[str, ...]
    tail_size: int
    top: int  # ink top of the first line relative to its baseline (negative)
    bottom: int  # ink bottom of the last line relative to its baseline

    @property
    def height(self) -> int:
        return (len(self.lines) - 1) * _pitch(self.size, self.block.bold) + self.bottom - self.top


# -- text fitting -----------------------------------------------------------------

BREAK_BEFORE = "/?&#="
BREAK_AFTER = ".-@_:,;"


def _split_word(word: str, size: int, bold: bool, width: float) -> int:
    """Where to break a ``word`` that is too wide: the last URI-friendly break that fits, else
    as many characters as fit (at least one)."""
    fitting = 1
    for i in range(1, len(word)):
        if _width(word[:i], size, bold) > width:
            break
        fitting = i
    for i in range(fitting, 0, -1):
        if word[i] in BREAK_BEFORE or word[i - 1] in BREAK_AFTER:
            if i >= fitting // 2:  # a break point, unless it leaves a very short line
                return i
            break
    return fitting


def _wrap(text: str, size: int, bold: bool, width: float) -> list[str]:
    """Greedy word wrap; words wider than ``width`` break at URI punctuation, else anywhere."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _width(candidate, size, bold) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while _width(word, size, bold) > width and len(word) > 1:
            cut = _split_word(word, size, bold, width)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _balanced(text: str, size: int, bold: bool, width: float) -> list[str] | None:
    """``text`` on one line, or on two split after a separator so the longer line is shortest."""
    if _width(text, size, bold) <= width:
        return [text]
    splits = [i + 1 for i, ch in enumerate(text[:-1]) if ch in "- ._/"]
    if not splits:
        splits = [len(text) - len(text) // 2]  # no separator: split in the middle
    best = min(splits, key=lambda i: max(len(text[:i]), len(text[i:])))
    lines = [text[:best].rstrip(" "), text[best:].lstrip(" ")]
    if all(_width(line, size, bold) <= width for line in lines):
        return lines
    return None


def _ellipsize(line: str, size: int, bold: bool, width: float) -> str:
    while line and _width(line + ELLIPSIS, size, bold) > width:
        line = line[:-1]
    return line + ELLIPSIS if _width(line + ELLIPSIS, size, bold) <= width else ""


def _place(block: Block, size: int, width: int, *, ellipsize: bool = False) -> _Placed | None:
    """``block`` at ``size`` in ``width`` px, or None if it needs more than ``block.lines`` lines."""
    tail_size = 0
    avail: float = width
    if block.tail:
        tail_size = max(block.tail_size * size // block.size, min(block.tail_size, 8))
        avail = width - _width(block.tail, tail_size, False) - max(3, size // 3)
        if avail <= 0:
            return None
    if block.balanced and block.lines >= 2:
        lines = _balanced(block.text, size, block.bold, avail)
        if lines is None:
            lines = _wrap(block.text, size, block.bold, avail)
    else:
        lines = _wrap(block.text, size, block.bold, avail)
    if not lines:
        lines = [""]
    if len(lines) > block.lines:
        if not ellipsize:
            return None
        lines = lines[: block.lines]
        lines[-1] = _ellipsize(lines[-1], size, block.bold, avail)
    if any(_width(line, size, block.bold) > avail for line in lines):
        return None  # a single character wider than the column
    f = font(size, block.bold)
    top = min(f.getbbox(lines[0], anchor="ls")[1], _line_metrics(size, block.bold)[0]) if lines[0] else 0
    bottom = max(0, f.getbbox(lines[-1], anchor="ls")[3]) if lines[-1] else 0
    if block.tail:
        tf = font(tail_size, False)
        top = min(top, tf.getbbox(block.tail, anchor="ls")[1]) if len(lines) == 1 else top
        bottom = max(bottom, tf.getbbox(block.tail, anchor="ls")[3])
    return _Placed(block, size, tuple(lines), tail_size, top, bottom)


def _sizes(blocks: list[Block], group: int, step: int, steps: int, base: dict[int, int]) -> dict[int, int]:
    sizes = dict(base)
    for i, b in enumerate(blocks):
        if b.shrink == group:
            sizes[i] = b.size - round((b.size - b.min_size) * step / steps) if steps else b.size
    return sizes


def _try(blocks: list[Block], sizes: dict[int, int], width: int, height: int, gap: int
         ) -> list[_Placed] | None:
    placed = []
    for i, b in enumerate(blocks):
        p = _place(b, sizes[i], width, ellipsize=b.clip)
        if p is None:
            return None
        placed.append(p)
    total = sum(p.height for p in placed) + gap * (len(placed) - 1)
    return placed if total <= height else None


def fit_blocks(blocks: list[Block], width: int, height: int, gap: int) -> list[_Placed]:
    """Sizes and line breaks for ``blocks`` stacked in ``width`` x ``height`` px.

    Blocks shrink group by group (highest ``shrink`` first) from their preferred size
    towards ``min_size``; if they still do not fit, they are ellipsized at their minimum
    sizes, multi-line blocks lose lines and then the blocks with the lowest ``keep`` are
    dropped until the rest fit. The result never overflows ``height`` (it may be empty).
    """
    return list(_fit_cached(tuple(b for b in blocks if b.text), width, height, gap))


@lru_cache(maxsize=256)
def _fit_cached(blocks: tuple[Block, ...], width: int, height: int, gap: int) -> tuple[_Placed, ...]:
    return tuple(_fit(list(blocks), width, height, gap))


def _fit(blocks: list[Block], width: int, height: int, gap: int) -> list[_Placed]:
    placed = _shrink(blocks, width, height, gap)
    if placed is not None:
        return placed
    # Some text needs more lines than it may have even at its minimum size: it is ellipsized
    # at that size, and the others shrink as usual around it.
    # Labels (keep 0) are never ellipsized: whole or not at all.
    blocks = [replace(b, size=b.min_size, clip=True) if _place(b, b.min_size, width) is None else b
              for b in blocks if b.keep > 0 or _place(b, b.min_size, width) is not None]
    placed = _shrink(blocks, width, height, gap)
    if placed is not None:
        return placed
    # Still no room even at minimum sizes: take lines and blocks away, least important first.
    sizes = {i: b.min_size for i, b in enumerate(blocks)}
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].keep)
    alive = set(range(len(blocks)))
    while alive:
        placed_opt = [_place(blocks[i], sizes[i], width, ellipsize=True) for i in sorted(alive)]
        placed = [p for p in placed_opt if p is not None and p.lines != ("",)]
        if sum(p.height for p in placed) + gap * (len(placed) - 1) <= height:
            return placed
        victim = next(i for i in order if i in alive)  # the least important block left
        if blocks[victim].lines > 1:
            blocks[victim] = replace(blocks[victim], lines=blocks[victim].lines - 1)
        else:
            alive.discard(victim)
    return []


def _shrink(blocks: list[Block], width: int, height: int, gap: int) -> list[_Placed] | None:
    """The largest sizes that fit, shrinking group by group; None if even the minimum doesn't."""
    sizes = {i: b.size for i, b in enumerate(blocks)}
    for group in sorted({b.shrink for b in blocks}, reverse=True):
        if (placed := _try(blocks, sizes, width, height, gap)) is not None:
            return placed
        steps = max((b.size - b.min_size for b in blocks if b.shrink == group), default=0)
        lo, hi = 0, steps  # the smallest step that fits, by bisection (bigger steps: smaller text)
        if _try(blocks, _sizes(blocks, group, hi, steps, sizes), width, height, gap) is None:
            sizes = _sizes(blocks, group, hi, steps, sizes)
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if _try(blocks, _sizes(blocks, group, mid, steps, sizes), width, height, gap) is None:
                lo = mid + 1
            else:
                hi = mid
        return _try(blocks, _sizes(blocks, group, hi, steps, sizes), width, height, gap)
    return _try(blocks, sizes, width, height, gap)


def fit_column(blocks: list[Block], width: int, height: int, gap: int) -> list[_Placed]:
    """:func:`fit_blocks`, trying the user code (a ``balanced`` block) on one line and on two,
    and with and without the optional blocks (``keep`` 0, the labels). The most important
    text (``shrink`` 0: the code, the reset countdown) wins: the largest of it, where one line
    counts as 1.3 times larger than two; within 10 % of that, the variant keeping most blocks."""
    blocks = [b for b in blocks if b.text]
    has_code = any(b.balanced for b in blocks)
    has_optional = any(b.keep <= 0 for b in blocks)
    scored = []
    for one_line in (True, False) if has_code else (False,):
        for drop in (False, True) if has_optional else (False,):
            variant = tuple(replace(b, lines=1) if one_line and b.balanced else b
                            for b in blocks if not (drop and b.keep <= 0))
            placed = list(_fit_cached(variant, width, height, gap))
            main = [p for p in placed if p.block.shrink == 0]
            primary = min((p.size * (1.3 if len(p.lines) == 1 and p.block.balanced else 1.0) for p in main),
                          default=0.0)
            complete = all(not p.lines[-1].endswith(ELLIPSIS) for p in main) and len(main) == sum(
                1 for b in variant if b.shrink == 0)
            scored.append((complete, primary, len(placed), placed))
    best_complete = max(s[0] for s in scored)
    candidates = [s for s in scored if s[0] == best_complete]
    top = max(s[1] for s in candidates)
    good = [s for s in candidates if s[1] >= 0.9 * top]
    return max(good, key=lambda s: (s[2], s[1]))[3]


def stack(placed: list[_Placed], rect: tuple[int, int, int, int], gap: int, valign: str = "centre",
          countdown: str | None = None) -> list[TextItem]:
    """Text items for ``placed`` blocks in ``rect`` (left, top, right, bottom): centred as a
    group, ``"spread"`` (the spare height shared out between the blocks) or at the ``"top"``.

    ``countdown`` replaces the text of the countdown, which was fitted as a template of the
    same length (all digits 0): the font is monospaced, so it has the same width, and the
    fit is reused from the cache as the seconds tick by."""
    left, top, right, bottom = rect
    width, height = right - left, bottom - top
    total = sum(p.height for p in placed) + gap * (len(placed) - 1)
    spare = max(0, height - total)
    if valign == "spread" and len(placed) > 1:
        y, extra = float(top), spare / (len(placed) - 1)
    elif valign == "top":
        y, extra = float(top), 0.0
    else:
        y, extra = float(top + spare // 2), 0.0
    items: list[TextItem] = []
    for p in placed:
        b = p.block
        baseline = round(y) - p.top
        pitch = _pitch(p.size, b.bold)
        tail_w = _width(b.tail, p.tail_size, False) + max(3, p.size // 3) if b.tail else 0
        for n, line in enumerate(p.lines):
            if b.role == "countdown" and countdown is not None:
                line = _substitute(line, countdown)
            w = _width(line, p.size, b.bold)
            x = left + (round((width - w - tail_w) / 2) if b.align == "centre" else 0)
            items.append(TextItem(b.role, line, (x, baseline + n * pitch), p.size, b.bold, b.colour))
        if b.tail:
            text = _substitute(b.tail, countdown) if countdown is not None else b.tail
            x = right - round(_width(text, p.tail_size, False))
            items.append(TextItem("countdown", text, (x, baseline + (len(p.lines) - 1) * pitch), p.tail_size,
                                  False, b.tail_colour))
        y += p.height + gap + extra
    return items


def _template(text: str) -> str:
    return "".join("0" if ch.isdigit() else ch for ch in text)


def _substitute(line: str, real: str) -> str:
    """The real countdown for a fitted template ``line`` (the same length, or ellipsized)."""
    if line.endswith(ELLIPSIS) and len(line) <= len(real):
        return real[: len(line) - 1] + ELLIPSIS
    return real


# -- screens ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Status:
    title: str
    title_colour: str = "fg"
    body: tuple[tuple[str, str, bool, str], ...] = ()  # (role, text, bold, colour)
    number: str | None = None  # the factory-reset seconds, drawn very large


def _status(screen: Screen) -> _Status:
    message = clean(screen.message) if screen.message else None
    if screen.reset_in is not None:
        return _Status("Factory reset in", "error", (("body", "Release the button to cancel", False, "fg"),),
                       number=str(max(0, screen.reset_in)))
    if screen.clock_synced is False and screen.state in (State.UNPAIRED, State.PAIRING):
        body = [("body", "Check the network connection. Pairing starts once the clock is set.", False, "dim")]
        if message:
            body.insert(0, ("message", message, False, "fg"))
        return _Status("Waiting for network time", "warn", tuple(body))
    account = clean(screen.account) if screen.account else None
    if screen.state is State.PAIRING:  # no code yet
        return _Status("Getting a code…", "fg", (("message", message, False, "warn"),) if message else ())
    if screen.state in (State.PAIRED, State.REFRESHING):
        body = [("account", account, True, "fg")] if account else []
        if message:
            body.append(("message", message, False, "dim"))
        return _Status("Paired as" if account else "Paired", "ok", tuple(body))
    if screen.state is State.OFFLINE:
        body = [("body", "Still working; retrying", False, "fg")]
        if account:
            body.append(("account", account, True, "dim"))
        if message:
            body.append(("message", message, False, "dim"))
        return _Status("Offline", "warn", tuple(body))
    if screen.state is State.REAUTH_REQUIRED:
        default = "Access was withdrawn. Press the button for a new code."
        return _Status("Pair again", "error", (("message", message or default, False, "fg"),))
    default = "Press the button or run `devicelink pair`"
    return _Status("Not paired", "fg", (("message", message or default, False, "fg"),))


def layout(screen: Screen, size: tuple[int, int], mode: str, now: float) -> Layout:
    """What :func:`render` draws, and where."""
    if mode not in MODES:
        raise ValueError(f"unsupported image mode {mode!r}: use one of {', '.join(MODES)}")
    width, height = size
    if width < 32 or height < 16:
        raise ValueError(f"panel too small: {width}x{height}")
    compact = height < COMPACT_HEIGHT
    # A code on hand is always shown, synchronised clock or not: the device grant needs no
    # wall clock, and hiding a valid code would only stall the owner.
    pairing = screen.reset_in is None and screen.state is State.PAIRING and screen.pairing is not None
    if pairing:
        items = _compact_pairing(screen, size, now) if compact else _full_pairing(screen, size, now)
    else:
        items = _compact_status(_status(screen), size) if compact else _full_status(_status(screen), size)
    return Layout((width, height), mode, tuple(items))


def _complete(placed: list[_Placed], role: str) -> bool:
    """Whether the block of ``role`` is there and not ellipsized."""
    return any(p.block.role == role and not p.lines[-1].endswith(ELLIPSIS) for p in placed)


def _code_complete(placed: list[_Placed], user_code: str) -> bool:
    """Whether the user code made it whole: not dropped, not ellipsized."""
    for p in placed:
        if p.block.role == "code":
            return "".join(p.lines).replace(" ", "") == user_code.replace(" ", "")
    return False


# -- compact (OLED) layouts ------------------------------------------------------


def _compact_pairing(screen: Screen, size: tuple[int, int], now: float) -> list[Item]:
    width, height = size
    code = screen.pairing
    assert code is not None
    user_code = clean(code.user_code)
    uri = clean(short_uri(code.verification_uri))
    clock = countdown_text(code.expires_in(now), long=False)
    message = clean(screen.message) if screen.message else ""
    code_max = min(20, max(MIN_CODE_PX, round(height * 0.55)))

    fit = fit_qr(code.qr_payload, (height, height))
    if fit is not None and width - fit.size >= 40:
        x0 = fit.size + 3
        column = (x0, 0, width, height)
        blocks = [
            Block("uri", uri, 10, 9, lines=3, keep=1),
            Block("code", user_code, min(code_max, 18), MIN_CODE_PX, bold=True, lines=2, shrink=0, keep=3,
                  balanced=True),
            Block("countdown", _template(clock), 10, 8, keep=2),
        ]
        placed = fit_column(blocks, width - x0, height, 1)
        if _code_complete(placed, user_code) and _complete(placed, "uri"):
            qr: list[Item] = [QrItem(fit, (0, (height - fit.size) // 2))]
            return qr + _with_message(placed, column, 1, "spread", clock, message, now, (10, 8))
    # Text only: no QR fits at 2 px per module (see the module docstring), or the code needs the width.
    tall = height >= 48
    blocks = [
        Block("uri", uri, 11 if tall else 10, 9, lines=3 if tall else 2, keep=1),
        Block("code", user_code, code_max, MIN_CODE_PX, bold=True, lines=2, shrink=0, keep=3, balanced=True,
              tail=_template(clock), tail_size=10),
    ]
    if tall:
        blocks.insert(0, Block("label", "To pair, go to", 10, 8, shrink=2, keep=0))
    gap = 2 if tall else 1
    placed = fit_column(blocks, width, height, gap)
    if not _code_complete(placed, user_code):  # a very long code: the whole width, countdown below
        blocks[-1] = replace(blocks[-1], tail="", lines=3)
        blocks.append(Block("countdown", _template(clock), 10, 8, keep=2))
        placed = fit_column(blocks, width, height, gap)
    return _with_message(placed, (0, 0, width, height), gap, "spread", clock, message, now, (10, 8))


def _with_message(placed: list[_Placed], rect: tuple[int, int, int, int], gap: int, valign: str,
                  clock: str, message: str, now: float, sizes: tuple[int, int]) -> list[Item]:
    """The stacked items; with a ``message``, the URI and its labels take turns with it.

    The message is drawn in the space the URI and labels had, so the code and countdown keep
    their places and sizes. Time slots of :data:`ALTERNATE_SECONDS`: two for the URI, then
    one per page of the message (at most :data:`MAX_PAGES`; the daemon redraws once a
    second while a code is shown, which is what turns the pages)."""
    items: list[Item] = list(stack(placed, rect, gap, valign, countdown=clock))
    if not message:
        return items
    others = [i for i in items if not (isinstance(i, TextItem) and i.role in ("uri", "label"))]
    replaced = [i for i in items if i not in others]
    if not replaced:
        return items
    left, _, right, _ = rect
    top = min(i.box[1] for i in replaced)  # type: ignore[union-attr]
    below = [i.box[1] for i in others if isinstance(i, TextItem) and i.box[1] >= top]
    bottom = (min(below) - gap - 1) if below else rect[3]
    pages = _pages(message, right - left, bottom - top, sizes)
    if not pages:
        return items
    slot = int(now // ALTERNATE_SECONDS) % (2 + len(pages))
    if slot < 2:
        return items
    align = next(i.xy[0] for i in replaced) == left  # the URI was left-aligned
    page = pages[slot - 2]
    if not align:
        page = [replace(p, block=replace(p.block, align="centre")) for p in page]
    return others + stack(page, (left, top, right, bottom), gap, "centre" if len(pages) > 1 or not align
                          else "top")


MAX_PAGES = 3


def _pages(message: str, width: int, height: int, sizes: tuple[int, int]) -> list[list[_Placed]]:
    """``message`` cut into pages that fit ``width`` x ``height``: the largest size from
    ``sizes`` (largest, smallest) that needs at most :data:`MAX_PAGES`, else the smallest and
    the last page ellipsized."""
    largest, smallest = sizes
    best: tuple[int, int, int, list[str]] | None = None  # (pages, -size, lines per page, lines)
    for size in range(largest, smallest - 1, -1):
        top, bottom = _line_metrics(size, False)
        per_page = (height - (bottom - top)) // _pitch(size, False) + 1
        if per_page < 1:
            continue
        lines = _wrap(message, size, False, width)
        candidate = (-(-len(lines) // per_page), -size, per_page, lines)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if best is None:
        return []
    _, size, per_page, lines = best
    size = -size
    if len(lines) > per_page * MAX_PAGES:
        lines = lines[: per_page * MAX_PAGES]
        lines[-1] = _ellipsize(lines[-1], size, False, width)
    top, bottom = _line_metrics(size, False)
    block = Block("message", message, size, size, colour="warn")
    return [[_Placed(block, size, tuple(lines[i:i + per_page]), 0, top, bottom)]
            for i in range(0, len(lines), per_page)]


def _compact_status(status: _Status, size: tuple[int, int]) -> list[Item]:
    width, height = size
    tall = height >= 48
    body = [Block(role, text, 10, 8, bold=bold, colour=colour, lines=5 if tall else 2, shrink=2,
                  keep=2 if role == "account" else 1) for role, text, bold, colour in status.body]
    if status.number is not None and not tall:
        # 128x32: the seconds big at the left, the words beside them.
        number = Block("number", status.number, height, height // 2, bold=True, colour=status.title_colour,
                       shrink=0, keep=3)
        num_items = stack(fit_blocks([number], width // 3, height, 0), (0, 0, width // 3, height), 0)
        x0 = max((i.box[2] for i in num_items), default=0) + 4
        words = [Block("title", "Factory reset", 10, 8, bold=True, colour=status.title_colour, keep=2), *body]
        return num_items + stack(fit_column(words, width - x0, height, 1), (x0, 0, width, height), 1)
    blocks = [Block("title", status.title, 12 if tall else 11, 10 if tall else 9, bold=True,
                    colour=status.title_colour, lines=2 if tall else 1, keep=3)]
    if status.number is not None:
        blocks.append(Block("number", status.number, 30, 14, bold=True, colour=status.title_colour,
                            align="centre", shrink=0, keep=4))
    gap = 3 if tall else 1
    placed = fit_column(blocks + body, width, height, gap)
    return list(stack(placed, (0, 0, width, height), gap, "centre"))


# -- full (HDMI, colour panel) layouts ---------------------------------------------


def _full_pairing(screen: Screen, size: tuple[int, int], now: float) -> list[Item]:
    """The QR beside the text on a landscape panel, above it on a square or portrait one; a
    user code too long for that gets the other arrangement, then the whole panel."""
    width, height = size
    arrangements = ["side", "stacked"] if width * 4 >= height * 5 else ["stacked"]
    for arrangement in arrangements:
        items, complete = _full_pairing_as(screen, size, now, arrangement)
        if complete:
            return items
    return _full_pairing_as(screen, size, now, "text")[0]


def _full_pairing_as(screen: Screen, size: tuple[int, int], now: float, arrangement: str
                     ) -> tuple[list[Item], bool]:
    width, height = size
    code = screen.pairing
    assert code is not None
    margin = max(8, round(min(width, height) * 0.05))
    if arrangement == "side":
        card_side = min(height - 2 * margin, round(width * 0.48))
        card = (margin, (height - card_side) // 2)
        text_rect = (margin + card_side + margin, margin, width - margin, height - margin)
    else:
        card_side = min(width - 2 * margin, round(height * 0.62))
        card = ((width - card_side) // 2, margin)
        text_rect = (margin, margin + card_side + round(margin * 0.6), width - margin, height - margin)
    # The white card is wider than the code's quiet zone by 1/16 of its side all round.
    pad = max(2, card_side // 16)
    inner = card_side - 2 * pad
    fit = fit_qr(code.qr_payload, (inner, inner)) if arrangement != "text" and inner > 0 else None
    items: list[Item] = []
    if fit is None:  # text only, over the whole panel
        text_rect = (margin, margin, width - margin, height - margin)
    else:
        items.append(RectItem((card[0], card[1], card[0] + card_side, card[1] + card_side), "card"))
        offset = (card_side - fit.size) // 2
        items.append(QrItem(fit, (card[0] + offset, card[1] + offset)))
    body = max(10, round(height * 0.05))
    small = max(10, round(height * 0.03))
    align = "left" if arrangement == "side" and fit is not None else "centre"
    clock = countdown_text(code.expires_in(now), long=True)
    user_code = clean(code.user_code)
    blocks = [
        Block("label", "Scan the QR code, or go to" if fit is not None else "To pair, go to", body, small,
              colour="dim", shrink=2, keep=0, align=align),
        Block("uri", clean(short_uri(code.verification_uri)), round(body * 1.15), small, bold=True, lines=3,
              keep=2, align=align),
        Block("label", "and enter the code", body, small, colour="dim", shrink=2, keep=0, align=align),
        Block("code", user_code, max(12, round(height * 0.15)), max(MIN_CODE_PX + 2, small),
              bold=True, colour="accent", lines=2 if fit is not None else 4, shrink=0, keep=4, balanced=True,
              align=align),
        Block("countdown", _template(clock), body, small, colour="dim", keep=3, align=align),
    ]
    gap = max(2, round(height * 0.025))
    left, top, right, bottom = text_rect
    placed = fit_column(blocks, right - left, bottom - top, gap)
    complete = _code_complete(placed, user_code)
    message = clean(screen.message) if screen.message else ""
    if message:
        # Below the countdown if that costs the code less than 10 % of its size, else in turns.
        extra = Block("message", message, body, small, colour="warn", lines=3, keep=1, align=align)
        with_message = fit_column([*blocks, extra], right - left, bottom - top, gap)
        if (any(p.block.role == "message" for p in with_message)
                and _code_size(with_message) >= 0.9 * _code_size(placed)
                and _code_complete(with_message, user_code) >= complete):
            return items + stack(with_message, text_rect, gap, "centre", countdown=clock), complete
    items += _with_message(placed, text_rect, gap, "centre", clock, message, now, (body, small))
    return items, complete


def _code_size(placed: list[_Placed]) -> float:
    return next((p.size * (1.3 if len(p.lines) == 1 else 1.0) for p in placed if p.block.role == "code"), 0.0)


def _full_status(status: _Status, size: tuple[int, int]) -> list[Item]:
    width, height = size
    margin = max(8, round(min(width, height) * 0.06))
    title = max(12, round(height * 0.09))
    body = max(10, round(height * 0.055))
    small = max(10, round(height * 0.03))
    blocks = [Block("title", status.title, title, max(11, small), bold=True, colour=status.title_colour,
                    lines=2, keep=3, align="centre")]
    if status.number is not None:
        blocks.append(Block("number", status.number, round(height * 0.35), max(14, small), bold=True,
                            colour=status.title_colour, shrink=0, keep=4, align="centre"))
    for role, text, bold, colour in status.body:
        blocks.append(Block(role, text, round(body * 1.2) if role == "account" else body, small, bold=bold,
                            colour=colour, lines=4, shrink=2, keep=2 if role == "account" else 1,
                            align="centre"))
    gap = max(3, round(height * 0.035))
    placed = fit_column(blocks, width - 2 * margin, height - 2 * margin, gap)
    return list(stack(placed, (margin, margin, width - margin, height - margin), gap, "centre"))


# -- pixels -----------------------------------------------------------------------


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
