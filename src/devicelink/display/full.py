"""Full layouts: panels 100 px tall or more (240x240, 320x240, 1280x720, 1920x1080, ...).

Every size is derived from the panel height so it reads across a room on a TV
(the code 15 % of the height, body text 5 %). On a landscape panel (at least
5:4) the QR on a white card at the left, filling the height, and in a column
to its right the instructions, the URI, the user code (in the accent colour),
the countdown and any message; on a square or portrait panel the QR on top
and the text centred below (a user code too long for the column gets that
arrangement, then the whole panel).

The white card is wider than the code's own quiet zone by 1/16 of its side all
round, so a code fitted with a 1-module quiet zone for bigger modules still has
3-4 modules of white around it. For a 48-character URI: 1280x720 -> version
3-L, 17 px per module; 1920x1080 -> 3-L, 26 px; 320x240 -> 3-L, 4 px;
240x240 -> 3-L, 4 px.

A message while pairing is shown under the countdown when there is room for it
at a cost of at most 10 % of the code's size; otherwise it takes turns with the
URI (:mod:`~devicelink.display.turns`).
"""

from __future__ import annotations

from devicelink.display.base import Screen
from devicelink.display.fit import Block, Placed, code_is_whole, fit_column, stack
from devicelink.display.model import Item, QrItem, RectItem
from devicelink.display.qr import fit_qr
from devicelink.display.status import Status
from devicelink.display.text import clean, countdown_text, short_uri, template
from devicelink.display.turns import with_message
from devicelink.display.typeface import MIN_CODE_PX


def full_pairing(screen: Screen, size: tuple[int, int], now: float) -> list[Item]:
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
        Block("countdown", template(clock), body, small, colour="dim", keep=3, align=align),
    ]
    gap = max(2, round(height * 0.025))
    left, top, right, bottom = text_rect
    placed = fit_column(blocks, right - left, bottom - top, gap)
    complete = code_is_whole(placed, user_code)
    message = clean(screen.message) if screen.message else ""
    if message:
        # Below the countdown if that costs the code less than 10 % of its size, else in turns.
        extra = Block("message", message, body, small, colour="warn", lines=3, keep=1, align=align)
        below = fit_column([*blocks, extra], right - left, bottom - top, gap)
        if (any(p.block.role == "message" for p in below)
                and _code_size(below) >= 0.9 * _code_size(placed)
                and code_is_whole(below, user_code) >= complete):
            return items + stack(below, text_rect, gap, "centre", countdown=clock), complete
    items += with_message(placed, text_rect, gap, "centre", clock, message, now, (body, small))
    return items, complete


def _code_size(placed: list[Placed]) -> float:
    return next((p.size * (1.3 if len(p.lines) == 1 else 1.0) for p in placed if p.block.role == "code"), 0.0)


def full_status(status: Status, size: tuple[int, int]) -> list[Item]:
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
