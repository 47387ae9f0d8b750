"""What goes where on a panel: :func:`layout` turns a screen into a :class:`~devicelink.display.model.Layout`.

Pure: no pixels are drawn and nothing is read but the shipped font's metrics,
so tests check the geometry by hand. The family follows the panel's size
(:mod:`~devicelink.display.compact` under :data:`COMPACT_HEIGHT` px,
:mod:`~devicelink.display.full` from there up); a pairing code on hand gets the
pairing screen, anything else a status screen (:mod:`~devicelink.display.status`).
Server text is drawn as received (:func:`~devicelink.display.text.clean`), and
every QR is :func:`~devicelink.display.qr.fit_qr` of ``qr_payload``: a full QR
code (never Micro QR), normal polarity, at least 2 px per module.
"""

from __future__ import annotations

from devicelink.display.base import Screen
from devicelink.display.compact import compact_pairing, compact_status
from devicelink.display.full import full_pairing, full_status
from devicelink.display.model import Layout
from devicelink.display.status import status_for
from devicelink.lifecycle import State

MODES = ("1", "L", "RGB")
COMPACT_HEIGHT = 100  # panels shorter than this get the compact (OLED) layouts


def layout(screen: Screen, size: tuple[int, int], mode: str, now: float) -> Layout:
    """What :func:`~devicelink.display.render.render` draws, and where."""
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
        items = compact_pairing(screen, size, now) if compact else full_pairing(screen, size, now)
    else:
        items = compact_status(status_for(screen), size) if compact else full_status(status_for(screen), size)
    return Layout((width, height), mode, tuple(items))
