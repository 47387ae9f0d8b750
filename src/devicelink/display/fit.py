"""Text fitting: sizes and line breaks for blocks of text stacked in a column.

A :class:`Block` is a paragraph with a preferred and a minimum size.
:func:`fit_column` picks the sizes and line breaks (:class:`Placed`) so the
blocks fit; :func:`stack` turns them into text items. Text never leaves its
column: a block shrinks down to its minimum size, wraps, and only then is
ellipsized ("…"). Fits are cached, so a countdown tick re-uses the fit of its
template (:func:`~devicelink.display.text.template`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from devicelink.display.model import TextItem
from devicelink.display.text import ELLIPSIS, substitute
from devicelink.display.typeface import font, line_metrics, line_pitch, text_width

# -- blocks -----------------------------------------------------------------------


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
class Placed:
    """A block at the size and with the line breaks the fitter chose."""

    block: Block
    size: int
    lines: tuple[str, ...]
    tail_size: int
    top: int  # ink top of the first line relative to its baseline (negative)
    bottom: int  # ink bottom of the last line relative to its baseline

    @property
    def height(self) -> int:
        return (len(self.lines) - 1) * line_pitch(self.size, self.block.bold) + self.bottom - self.top


# -- line breaks ------------------------------------------------------------------

BREAK_BEFORE = "/?&#="
BREAK_AFTER = ".-@_:,;"


def _split_word(word: str, size: int, bold: bool, width: float) -> int:
    """Where to break a ``word`` that is too wide: the last URI-friendly break that fits, else
    as many characters as fit (at least one)."""
    fitting = 1
    for i in range(1, len(word)):
        if text_width(word[:i], size, bold) > width:
            break
        fitting = i
    for i in range(fitting, 0, -1):
        if word[i] in BREAK_BEFORE or word[i - 1] in BREAK_AFTER:
            if i >= fitting // 2:  # a break point, unless it leaves a very short line
                return i
            break
    return fitting


def wrap(text: str, size: int, bold: bool, width: float) -> list[str]:
    """Greedy word wrap; words wider than ``width`` break at URI punctuation, else anywhere."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, size, bold) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while text_width(word, size, bold) > width and len(word) > 1:
            cut = _split_word(word, size, bold, width)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _balanced(text: str, size: int, bold: bool, width: float) -> list[str] | None:
    """``text`` on one line, or on two split after a separator so the longer line is shortest."""
    if text_width(text, size, bold) <= width:
        return [text]
    splits = [i + 1 for i, ch in enumerate(text[:-1]) if ch in "- ._/"]
    if not splits:
        splits = [len(text) - len(text) // 2]  # no separator: split in the middle
    best = min(splits, key=lambda i: max(len(text[:i]), len(text[i:])))
    lines = [text[:best].rstrip(" "), text[best:].lstrip(" ")]
    if all(text_width(line, size, bold) <= width for line in lines):
        return lines
    return None


def ellipsized(line: str, size: int, bold: bool, width: float) -> str:
    """``line`` shortened to fit ``width`` with a trailing "…" ("" if not even that fits)."""
    while line and text_width(line + ELLIPSIS, size, bold) > width:
        line = line[:-1]
    return line + ELLIPSIS if text_width(line + ELLIPSIS, size, bold) <= width else ""


# -- fitting ----------------------------------------------------------------------


def _place(block: Block, size: int, width: int, *, ellipsize: bool = False) -> Placed | None:
    """``block`` at ``size`` in ``width`` px, or None if it needs more than ``block.lines`` lines."""
    tail_size = 0
    avail: float = width
    if block.tail:
        tail_size = max(block.tail_size * size // block.size, min(block.tail_size, 8))
        avail = width - text_width(block.tail, tail_size, False) - max(3, size // 3)
        if avail <= 0:
            return None
    if block.balanced and block.lines >= 2:
        lines = _balanced(block.text, size, block.bold, avail)
        if lines is None:
            lines = wrap(block.text, size, block.bold, avail)
    else:
        lines = wrap(block.text, size, block.bold, avail)
    if not lines:
        lines = [""]
    if len(lines) > block.lines:
        if not ellipsize:
            return None
        lines = lines[: block.lines]
        lines[-1] = ellipsized(lines[-1], size, block.bold, avail)
    if any(text_width(line, size, block.bold) > avail for line in lines):
        return None  # a single character wider than the column
    f = font(size, block.bold)
    top = min(f.getbbox(lines[0], anchor="ls")[1], line_metrics(size, block.bold)[0]) if lines[0] else 0
    bottom = max(0, f.getbbox(lines[-1], anchor="ls")[3]) if lines[-1] else 0
    if block.tail:
        tf = font(tail_size, False)
        top = min(top, tf.getbbox(block.tail, anchor="ls")[1]) if len(lines) == 1 else top
        bottom = max(bottom, tf.getbbox(block.tail, anchor="ls")[3])
    return Placed(block, size, tuple(lines), tail_size, top, bottom)


def _sizes(blocks: list[Block], group: int, step: int, steps: int, base: dict[int, int]) -> dict[int, int]:
    sizes = dict(base)
    for i, b in enumerate(blocks):
        if b.shrink == group:
            sizes[i] = b.size - round((b.size - b.min_size) * step / steps) if steps else b.size
    return sizes


def _try(blocks: list[Block], sizes: dict[int, int], width: int, height: int, gap: int
         ) -> list[Placed] | None:
    placed = []
    for i, b in enumerate(blocks):
        p = _place(b, sizes[i], width, ellipsize=b.clip)
        if p is None:
            return None
        placed.append(p)
    total = sum(p.height for p in placed) + gap * (len(placed) - 1)
    return placed if total <= height else None


def fit_blocks(blocks: list[Block], width: int, height: int, gap: int) -> list[Placed]:
    """Sizes and line breaks for ``blocks`` stacked in ``width`` x ``height`` px.

    Blocks shrink group by group (highest ``shrink`` first) from their preferred size
    towards ``min_size``; if they still do not fit, they are ellipsized at their minimum
    sizes, multi-line blocks lose lines and then the blocks with the lowest ``keep`` are
    dropped until the rest fit. The result never overflows ``height`` (it may be empty).
    """
    return list(_fit_cached(tuple(b for b in blocks if b.text), width, height, gap))


@lru_cache(maxsize=256)
def _fit_cached(blocks: tuple[Block, ...], width: int, height: int, gap: int) -> tuple[Placed, ...]:
    return tuple(_fit(list(blocks), width, height, gap))


def _fit(blocks: list[Block], width: int, height: int, gap: int) -> list[Placed]:
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


def _shrink(blocks: list[Block], width: int, height: int, gap: int) -> list[Placed] | None:
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


def fit_column(blocks: list[Block], width: int, height: int, gap: int) -> list[Placed]:
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


# -- stacking ---------------------------------------------------------------------


def stack(placed: list[Placed], rect: tuple[int, int, int, int], gap: int, valign: str = "centre",
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
        pitch = line_pitch(p.size, b.bold)
        tail_w = text_width(b.tail, p.tail_size, False) + max(3, p.size // 3) if b.tail else 0
        for n, line in enumerate(p.lines):
            if b.role == "countdown" and countdown is not None:
                line = substitute(line, countdown)
            w = text_width(line, p.size, b.bold)
            x = left + (round((width - w - tail_w) / 2) if b.align == "centre" else 0)
            items.append(TextItem(b.role, line, (x, baseline + n * pitch), p.size, b.bold, b.colour))
        if b.tail:
            text = substitute(b.tail, countdown) if countdown is not None else b.tail
            x = right - round(text_width(text, p.tail_size, False))
            items.append(TextItem("countdown", text, (x, baseline + (len(p.lines) - 1) * pitch), p.tail_size,
                                  False, b.tail_colour))
        y += p.height + gap + extra
    return items


# -- results ----------------------------------------------------------------------


def is_whole(placed: list[Placed], role: str) -> bool:
    """Whether the block of ``role`` is there and not ellipsized."""
    return any(p.block.role == role and not p.lines[-1].endswith(ELLIPSIS) for p in placed)


def code_is_whole(placed: list[Placed], user_code: str) -> bool:
    """Whether the user code made it whole: not dropped, not ellipsized."""
    for p in placed:
        if p.block.role == "code":
            return "".join(p.lines).replace(" ", "") == user_code.replace(" ", "")
    return False
