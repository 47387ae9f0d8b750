"""Text from the authorization server, made safe to log, print, draw and publish. Pure.

A hostile or buggy server can put newlines (forged log lines), ESC sequences (a
terminal's title, colours, cursor) or bidi overrides (text that reads backwards)
in anything it sends. :func:`sanitize` is applied where such text is parsed, so
nothing downstream sees it: line breaks and tabs become one space, every other
control, format (bidi, zero-width), surrogate, private-use or unassigned
character is dropped, and the result is capped.
"""

from __future__ import annotations

import unicodedata

MAX_SERVER_TEXT = 200  # characters kept of one server-supplied text

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
