"""Server text as it may be drawn, and the countdown; plain strings, no Pillow.

Server text (user code, URI, account, message) is drawn as received, never
re-cased or reformatted. :func:`clean` shows only control, format and
surrogate characters as escapes (``\\x1b``, ``\\u202e``), as the terminal
driver does, and turns line breaks and tabs into spaces.
"""

from __future__ import annotations

import unicodedata

MAX_TEXT = 400  # characters of server text considered at all: more never fits anyway
ELLIPSIS = "…"


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


# -- the countdown ----------------------------------------------------------------


def countdown_text(seconds: int, *, long: bool) -> str:
    """``Code expires in 9:41`` (``long``) or ``9:41``; ``Code expired`` or ``expired`` at 0."""
    if seconds <= 0:
        return "Code expired" if long else "expired"
    clock = f"{seconds // 60}:{seconds % 60:02d}"
    return f"Code expires in {clock}" if long else clock


def template(text: str) -> str:
    """``text`` with every digit 0: what a countdown is fitted as (the font is monospaced)."""
    return "".join("0" if ch.isdigit() else ch for ch in text)


def substitute(line: str, real: str) -> str:
    """The real countdown for a fitted template ``line`` (the same length, or ellipsized)."""
    if line.endswith(ELLIPSIS) and len(line) <= len(real):
        return real[: len(line) - 1] + ELLIPSIS
    return real
