"""The QR code of a verification URI as a plain module matrix, for every renderer.

Guarantees of :func:`qr_matrix`:

* a full QR code (ISO/IEC 18004), never Micro QR: ``segno.make`` picks Micro QR
  for short input (``'WDJB-MJHT'`` -> M3-M), and phone scanners don't read it
  (HARDWARE.md §2);
* the smallest version that holds the payload at the requested error correction
  level (M unless the caller asks otherwise);
* normal polarity, ``True`` = dark module, and no quiet zone: each renderer adds
  its own (the terminal draws the ISO minimum of 4 modules, a 64 px OLED may
  have to make do with fewer).

segno is imported inside the function, so a daemon that never pairs never
loads it (RSS matters on a 512 MB board).
"""

from __future__ import annotations

# Error correction level M (~15 % of codewords recoverable) rather than L (~7 %):
# a code on a screen is not scratched or stained the way print is, but it is
# photographed through glare, moiré, OLED refresh banding and the thin gaps some
# terminal fonts leave between lines, and M is what survives that. For the
# verification URIs we expect (25-64 characters, HARDWARE.md §2) M costs at most
# one version over L (the 46-48 character `?user_code=` URIs: v3 -> v4; the
# 58-62 character ones are v4 either way), which the terminal and HDMI can
# afford. A 128x64 OLED that needs 2 px modules can pass error="L" and get v3.
DEFAULT_ERROR = "M"


def qr_matrix(payload: str, *, error: str = DEFAULT_ERROR) -> list[list[bool]]:
    """Rows of modules of the QR code for ``payload``; ``True`` is dark; no quiet zone."""
    import segno  # lazy: see the module docstring

    # make_qr, never make(): make() returns Micro QR for short payloads.
    # boost_error=True (segno's default) is free: segno picks the version for the
    # requested level first and only then raises the level while the data still
    # fits *that* version (segno.encoder.encode -> find_version, then _encode ->
    # boost_error_level), so the symbol stays the smallest one for `error` and
    # merely gets extra correction where the padding would otherwise go
    # (the 46-character URI: 4-M becomes 4-Q, same 33x33 modules).
    code = segno.make_qr(payload, error=error, boost_error=True)
    return [[bool(module) for module in row] for row in code.matrix]
