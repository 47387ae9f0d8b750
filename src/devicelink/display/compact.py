"""Compact layouts: panels under 100 px tall (128x64 and 128x32 OLEDs, also a 96x64 colour OLED).

Small hinted fonts, no anti-aliasing, 1-2 px gaps.

* 128x64, pairing: the QR at the left edge, filling the height (a 46-48
  character ``?user_code=`` URI: version 3-L, 2 px per module, 1-module quiet
  zone, 62x62 px at (0, 1), as in HARDWARE.md's reference render; an
  all-uppercase path-style URI: 2-M, 2 px, 3-module quiet zone), and in the
  62 px to its right the short URI, the user code in bold (on two lines,
  broken after a dash, when that makes it larger: ``WDJB-`` / ``MJHT`` at
  about 17 px) and the countdown. When the URI needs a version 4 symbol
  (58-64 characters: Okta, Auth0, Keycloak, AWS), no QR fits at 2 px per
  module, and the screen is the text-only one, with room for larger text;
  likewise when the code or URI would not fit whole beside the QR, or the
  column would be under 40 px (96x64).
* 128x32, pairing: **text only, never a QR, and no alternation.** At 2 px per
  module a 32 px panel holds 16 modules, quiet zone included, and the
  smallest QR (version 1) is 21 modules without one; a 1 px module is
  0.175 mm on a 0.91" panel, a 3.7 mm code that phones do not reliably read
  (HARDWARE.md §2). So every pixel goes to text: the short URI on top (on two
  lines if it must be) and the user code with the countdown beside it.
* Status screens: a bold title and the message or account, wrapped; on 128x32
  a long message ends in "…" (status screens are not redrawn by a timer, so
  they cannot page).
"""

from __future__ import annotations

from dataclasses import replace

from devicelink.display.base import Screen
from devicelink.display.fit import Block, code_is_whole, fit_blocks, fit_column, is_whole, stack
from devicelink.display.model import Item, QrItem
from devicelink.display.qr import fit_qr
from devicelink.display.status import Status
from devicelink.display.text import clean, countdown_text, short_uri, template
from devicelink.display.turns import with_message
from devicelink.display.typeface import MIN_CODE_PX


def compact_pairing(screen: Screen, size: tuple[int, int], now: float) -> list[Item]:
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
            Block("countdown", template(clock), 10, 8, keep=2),
        ]
        placed = fit_column(blocks, width - x0, height, 1)
        if code_is_whole(placed, user_code) and is_whole(placed, "uri"):
            qr: list[Item] = [QrItem(fit, (0, (height - fit.size) // 2))]
            return qr + with_message(placed, column, 1, "spread", clock, message, now, (10, 8))
    # Text only: no QR fits at 2 px per module (see the module docstring), or the code needs the width.
    tall = height >= 48
    blocks = [
        Block("uri", uri, 11 if tall else 10, 9, lines=3 if tall else 2, keep=1),
        Block("code", user_code, code_max, MIN_CODE_PX, bold=True, lines=2, shrink=0, keep=3, balanced=True,
              tail=template(clock), tail_size=10),
    ]
    if tall:
        blocks.insert(0, Block("label", "To pair, go to", 10, 8, shrink=2, keep=0))
    gap = 2 if tall else 1
    placed = fit_column(blocks, width, height, gap)
    if not code_is_whole(placed, user_code):  # a very long code: the whole width, countdown below
        blocks[-1] = replace(blocks[-1], tail="", lines=3)
        blocks.append(Block("countdown", template(clock), 10, 8, keep=2))
        placed = fit_column(blocks, width, height, gap)
    return with_message(placed, (0, 0, width, height), gap, "spread", clock, message, now, (10, 8))


def compact_status(status: Status, size: tuple[int, int]) -> list[Item]:
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
