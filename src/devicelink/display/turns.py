"""A message while pairing that has no room of its own takes turns with the URI.

("The last code expired. Here is a new one.") It is drawn in the URI's place,
by ``now``: the URI for two slots of :data:`ALTERNATE_SECONDS`, then one slot
per page of the message (at most :data:`MAX_PAGES`). The daemon redraws once a
second while a code is shown, so the pages turn; the code, the QR and the
countdown never move.
"""

from __future__ import annotations

from dataclasses import replace

from devicelink.display.fit import Block, Placed, ellipsized, stack, wrap
from devicelink.display.model import Item, TextItem
from devicelink.display.typeface import line_metrics, line_pitch

ALTERNATE_SECONDS = 3  # the URI and a message that has no room of its own take turns
MAX_PAGES = 3


def with_message(placed: list[Placed], rect: tuple[int, int, int, int], gap: int, valign: str,
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


def _pages(message: str, width: int, height: int, sizes: tuple[int, int]) -> list[list[Placed]]:
    """``message`` cut into pages that fit ``width`` x ``height``: the largest size from
    ``sizes`` (largest, smallest) that needs at most :data:`MAX_PAGES`, else the smallest and
    the last page ellipsized."""
    largest, smallest = sizes
    best: tuple[int, int, int, list[str]] | None = None  # (pages, -size, lines per page, lines)
    for size in range(largest, smallest - 1, -1):
        top, bottom = line_metrics(size, False)
        per_page = (height - (bottom - top)) // line_pitch(size, False) + 1
        if per_page < 1:
            continue
        lines = wrap(message, size, False, width)
        candidate = (-(-len(lines) // per_page), -size, per_page, lines)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if best is None:
        return []
    _, size, per_page, lines = best
    size = -size
    if len(lines) > per_page * MAX_PAGES:
        lines = lines[: per_page * MAX_PAGES]
        lines[-1] = ellipsized(lines[-1], size, False, width)
    top, bottom = line_metrics(size, False)
    block = Block("message", message, size, size, colour="warn")
    return [[Placed(block, size, tuple(lines[i:i + per_page]), 0, top, bottom)]
            for i in range(0, len(lines), per_page)]
