"""A laid-out screen as plain data: what :func:`~devicelink.display.render.draw` puts where.

A :class:`Layout` is a tuple of items in panel coordinates (text by its
baseline, the QR by its top-left corner, filled rectangles), with colours
named by role ("fg", "accent", "card", ...) that the palette of the image mode
resolves. Tests read the geometry from it without drawing a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

from devicelink.display.qr import QrFit
from devicelink.display.typeface import font


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
