"""The QR code of a verification URI: a plain module matrix, and a fit to a pixel box.

Guarantees of :func:`qr_matrix` and :func:`fit_qr`:

* a full QR code (ISO/IEC 18004), never Micro QR: ``segno.make`` picks Micro QR
  for short input (``'WDJB-MJHT'`` -> M3-M), and phone scanners don't read it
  (HARDWARE.md §2);
* the payload exactly as given: segno picks the encoding mode from the data, so
  an all-uppercase path-style URI (``HTTPS://EX.IO/A/WDJB-MJHT``) is encoded in
  alphanumeric mode and gets a smaller symbol, but nothing here re-cases a URI
  to get there (the server must accept what we encode);
* normal polarity, ``True`` = dark module; the matrix has no quiet zone: each
  renderer adds its own (the terminal draws the ISO minimum of 4 modules, a
  64 px OLED may have to make do with fewer).

:func:`fit_qr` chooses the version, error-correction level, module size (whole
pixels per module) and quiet zone for a box of pixels, in this order of
preference:

1. **the largest module size** (HARDWARE.md §2: on a 0.96" OLED a 2 px module is
   0.34 mm, and a phone at arm's length needs every pixel it can get). Lower
   error correction means a smaller version, so this alone already prefers L
   over H whenever that buys a pixel per module;
2. then **the widest quiet zone**, 4 modules (the ISO minimum) down to 1: a
   normal-polarity code on an OLED sits on an unlit, i.e. *dark*, bezel, so the
   lit quiet zone is all that separates the finder patterns from it;
3. then **the highest error-correction level**, H down to L.

Below 2 px per module there is no fit (``None``): 1 px modules (0.17 mm) are
not something to rely on, and the caller shows the code and URI as text.
The error level is boosted for free (segno's ``boost_error``): the version is
chosen for the requested level, then the level is raised while the data still
fits that same version.

segno is imported inside the functions, so a daemon that never pairs never
loads it (RSS matters on a 512 MB board). Matrices are cached per payload and
fits per (payload, box): a countdown redraw once a second costs no QR encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Pillow is only needed by the pixel renderers, not the terminal
    from PIL import Image

# Error correction level M (~15 % of codewords recoverable) rather than L (~7 %):
# a code on a screen is not scratched or stained the way print is, but it is
# photographed through glare, moiré, OLED refresh banding and the thin gaps some
# terminal fonts leave between lines, and M is what survives that. For the
# verification URIs we expect (25-64 characters, HARDWARE.md §2) M costs at most
# one version over L (the 46-48 character `?user_code=` URIs: v3 -> v4; the
# 58-62 character ones are v4 either way), which the terminal and HDMI can
# afford. A 128x64 OLED that needs 2 px modules gets v3-L from fit_qr instead.
DEFAULT_ERROR = "M"

ERROR_LEVELS = ("L", "M", "Q", "H")  # ascending correction
QUIET_ZONES = (4, 3, 2, 1)  # modules, ISO minimum first
MIN_MODULE_PX = 2


def qr_matrix(payload: str, *, error: str = DEFAULT_ERROR) -> list[list[bool]]:
    """Rows of modules of the QR code for ``payload``; ``True`` is dark; no quiet zone."""
    return [[bool(module) for module in row] for row in _symbol(payload, error).rows]


@dataclass(frozen=True)
class _Symbol:
    version: int
    error: str  # after boosting
    mode: str  # segno's name: "byte", "alphanumeric", ...
    rows: tuple[bytes, ...]  # 1 = dark module


@lru_cache(maxsize=16)
def _symbol(payload: str, error: str) -> _Symbol:
    import segno  # lazy: see the module docstring

    # make_qr, never make(): make() returns Micro QR for short payloads.
    # boost_error=True (segno's default) is free: segno picks the version for the
    # requested level first and only then raises the level while the data still
    # fits *that* version (segno.encoder.encode -> find_version, then _encode ->
    # boost_error_level), so the symbol stays the smallest one for `error` and
    # merely gets extra correction where the padding would otherwise go
    # (the 46-character URI: 4-M becomes 4-Q, same 33x33 modules).
    code = segno.make_qr(payload, error=error, boost_error=True)
    assert not code.is_micro
    return _Symbol(code.version, code.error, code.mode, tuple(bytes(row) for row in code.matrix))


@dataclass(frozen=True)
class QrFit:
    """A QR symbol laid out on whole pixels: ``size`` x ``size`` px, quiet zone included."""

    payload: str
    version: int  # 1-40; never a Micro QR version
    error: str  # "L", "M", "Q" or "H", after boosting
    mode: str  # the encoding segno chose: "alphanumeric" for an all-uppercase URI, else "byte"
    module: int  # pixels per module, >= 2
    quiet_zone: int  # modules of light margin on each side, 1-4
    rows: tuple[bytes, ...] = field(repr=False)  # the matrix, 1 = dark, no quiet zone

    @property
    def modules(self) -> int:
        """Modules per side, without the quiet zone (17 + 4 * version)."""
        return len(self.rows)

    @property
    def size(self) -> int:
        """Pixels per side, quiet zone included."""
        return (self.modules + 2 * self.quiet_zone) * self.module


@lru_cache(maxsize=32)
def fit_qr(payload: str, box: tuple[int, int]) -> QrFit | None:
    """The QR code of ``payload`` with the largest modules that fit ``box`` (width, height) in px.

    ``None`` when it cannot be drawn at :data:`MIN_MODULE_PX` or more per module.
    See the module docstring for the order of preference.
    """
    side = min(box)
    if side < (21 + 2) * MIN_MODULE_PX:  # not even version 1 with a 1-module quiet zone: no encoding
        return None
    best: tuple[tuple[int, int, int], _Symbol, int, int] | None = None
    for level in ERROR_LEVELS:
        symbol = _symbol(payload, level)
        n = len(symbol.rows)
        if side // (n + 2) < (best[2] if best else MIN_MODULE_PX):
            break  # higher levels need this version or a larger one: smaller modules
        for quiet in QUIET_ZONES:
            module = side // (n + 2 * quiet)
            if module < MIN_MODULE_PX:
                continue
            key = (module, quiet, ERROR_LEVELS.index(symbol.error))
            if best is None or key > best[0]:
                best = (key, symbol, module, quiet)
    if best is None:
        return None
    _, symbol, module, quiet = best
    return QrFit(payload, symbol.version, symbol.error, symbol.mode, module, quiet, symbol.rows)


def qr_image(fit: QrFit, mode: str) -> Image.Image:
    """``fit`` as a ``size`` x ``size`` image in ``mode``: dark modules black (0), the quiet
    zone and light modules white (lit on an OLED). Cached: treat the result as read-only."""
    return _qr_image(fit, mode)


@lru_cache(maxsize=2)  # a 1080p code is ~2.4 MB of RGB: keep only the one on show (and the last)
def _qr_image(fit: QrFit, mode: str) -> Image.Image:
    from PIL import Image

    n = fit.modules
    # One byte per module, 0 = dark, 255 = light, then scaled up with nearest-neighbour:
    # whole-pixel modules with no resampling blur, in a few microseconds.
    light = b"\xff" * n
    data = b"".join(light if not any(row) else bytes(0 if m else 255 for m in row) for row in fit.rows)
    matrix = Image.frombytes("L", (n, n), data)
    side = n * fit.module
    scaled = matrix.resize((side, side), Image.Resampling.NEAREST)
    image = Image.new("L", (fit.size, fit.size), 255)
    offset = fit.quiet_zone * fit.module
    image.paste(scaled, (offset, offset))
    if mode == "1":  # no dithering: the values are 0 and 255 already
        return image.convert("1", dither=Image.Dither.NONE)
    return image if mode == "L" else image.convert(mode)


def draw_qr(image: Image.Image, fit: QrFit, xy: tuple[int, int]) -> None:
    """Paste ``fit`` (quiet zone included) into ``image`` with its top-left corner at ``xy``."""
    image.paste(qr_image(fit, image.mode), xy)
