"""Text from the authorization server, made safe to log, print, draw and publish. Pure.

A hostile or buggy server can put newlines (forged log lines), ESC sequences (a
terminal's title, colours, cursor) or bidi overrides (text that reads backwards)
in anything it sends. :func:`sanitize` is applied where such text is parsed, so
nothing downstream sees it: line breaks and tabs become one space, every other
control, format (bidi, zero-width), surrogate, private-use or unassigned
character is dropped, and the result is capped (:func:`shorten` marks the cut).
"""

from __future__ import annotations

import unicodedata
from typing import Iterable

MAX_SERVER_TEXT = 200  # characters kept of one server-supplied text
ELLIPSIS = "…"
MIN_SECRET = 8  # a shorter "secret" is not blanked by quotable(): "test" would blank every "test"

_SPACES = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def sanitize(text: str, limit: int = MAX_SERVER_TEXT) -> str:
    """``text`` without control and bidi characters, line breaks as spaces, at most ``limit`` characters."""
    out = []
    for ch in text[: limit * 4]:  # bound the work on a huge value before anything is dropped
        if ch in _SPACES:
            if out and out[-1] != " ":
                out.append(" ")
        elif unicodedata.category(ch)[0] != "C":  # Cc, Cf (bidi, zero-width), Cs, Co, Cn
            out.append(ch)
    return "".join(out).strip()[:limit]


def shorten(text: str, limit: int = MAX_SERVER_TEXT) -> str:
    """``text`` in at most ``limit`` characters; one that was longer ends in "…"."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + ELLIPSIS


def quotable(text: str, secrets: Iterable[str] = (), limit: int = MAX_SERVER_TEXT) -> str:
    """A server's free text (an ``error_description``) as one clean line to quote: sanitized,
    each of ``secrets`` in it blanked, and shortened to ``limit``. Blanked after sanitizing, so
    a control character inside an echoed secret cannot hide it; before shortening, so no part
    of one is left. Values shorter than :data:`MIN_SECRET` are left alone."""
    text = sanitize(text, limit=20 * limit)
    for secret in secrets:
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, "[redacted]")
    return shorten(text, limit)
