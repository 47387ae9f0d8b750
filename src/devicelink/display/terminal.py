"""``display.driver = "terminal"``: the pairing screen as text, for a console or a log.

What this driver guarantees:

* While pairing it shows, together: a QR code of ``pairing.qr_payload``, the
  ``user_code`` exactly as received and the textual ``verification_uri``
  (RFC 8628 §3.3, and §3.3.1: the code is shown even when the QR carries
  ``verification_uri_complete``), plus the time left. It never shows a device
  code or a token: a :class:`Screen` does not carry them.
* Server-supplied text (code, URI, account, message) is written verbatim,
  except that control and format characters are shown as escapes (``\\x1b``,
  ``\\u202e``): a hostile server must not be able to drive the terminal or
  reorder the code with bidi overrides. A printable code is never re-cased or
  reformatted.
* The QR code is a full QR code (never Micro QR), error correction M or more
  (:mod:`devicelink.display.qr`), with the ISO/IEC 18004 quiet zone of 4
  modules, drawn with half blocks, two module rows per line. A character's ink
  is a *dark* module. On a TTY every QR line is wrapped in black-on-white SGR
  codes, so it is normal polarity on dark and light themes alike. Elsewhere
  (a pipe, a file, the journal) there are no escape codes and the same
  characters are written: normal polarity on a light background (a file in an
  editor or browser, print), and a consistently inverted code (quiet zone
  included) on a dark one, which iOS's camera, Google Lens and zxing read but
  ML Kit does not. Ink-is-dark keeps one drawing for both cases, and the code
  survives any whitespace stripping, since spaces are light either way.
* It writes only when its output changes: the same screen shown again writes
  nothing. A new code (or URI, or message) redraws the whole screen. The
  countdown has one-second resolution and is written only when its text
  changes, so at most once per displayed second; on a TTY that line is
  rewritten in place. Elsewhere it is written only when the number of minutes
  left (rounded up) changes, one line a minute, enough to tell from a log
  whether a code is still good without filling the journal.
* On a TTY no stale code stays visible: the screen is cleared when a code is
  drawn, when pairing ends and on :meth:`TerminalDisplay.close`.
* Every write is flushed (stdout into the journal is block-buffered).
"""

from __future__ import annotations

import sys
import unicodedata
from typing import TextIO

from devicelink.display.base import Screen
from devicelink.display.qr import qr_matrix
from devicelink.display.text import countdown_text
from devicelink.lifecycle import PairingCode, State

QUIET_ZONE = 4  # modules; ISO/IEC 18004 minimum for QR

# Black on bright white: explicit colours, so the terminal theme cannot invert
# the code. The Linux console takes 107 as plain white (console_codes(4)).
BLACK_ON_WHITE = "\x1b[30;107m"
RESET = "\x1b[0m"
CLEAR_SCREEN = "\x1b[H\x1b[2J"
REWRITE_LAST_LINE = "\x1b[A\r\x1b[2K"  # up one line, column 1, erase it

# (top module dark, bottom module dark) -> character; ink is dark.
HALF_BLOCKS = {(False, False): " ", (True, False): "▀", (False, True): "▄", (True, True): "█"}

STATUS = {
    State.UNPAIRED: "Not paired: press the button or run `devicelink pair`",
    State.PAIRING: "Requesting a pairing code",  # PAIRING before the code arrives
    State.OFFLINE: "Offline: serving the cached token",
    State.REAUTH_REQUIRED: "Pairing needed again: press the button or run `devicelink pair`",
}


def qr_lines(payload: str, quiet_zone: int = QUIET_ZONE) -> list[str]:
    """The QR code of ``payload`` as half-block text lines, quiet zone included."""
    matrix = qr_matrix(payload)
    width = len(matrix) + 2 * quiet_zone
    light_row = [False] * width
    margin = [False] * quiet_zone
    rows = [light_row] * quiet_zone
    rows += [margin + row + margin for row in matrix]
    rows += [light_row] * (quiet_zone + len(rows) % 2)  # an odd count gets one more light row
    return [
        "".join(HALF_BLOCKS[pair] for pair in zip(top, bottom))
        for top, bottom in zip(rows[0::2], rows[1::2])
    ]


def printable(text: str) -> str:
    """``text`` with control, format and separator characters written as escapes."""
    return "".join(
        repr(ch)[1:-1] if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} else ch
        for ch in text
    )


def status_lines(screen: Screen) -> tuple[str, ...]:
    """The lines for a screen other than a pairing code; empty means "leave it as it is"."""
    if screen.state is State.PAIRED:
        head = f"Paired as {printable(screen.account)}" if screen.account else "Paired"
    elif screen.state is State.REFRESHING:
        head = None  # a routine background refresh: keep "Paired as ..." or "Offline ..."
    else:
        head = STATUS[screen.state]
    return tuple(line for line in (head, screen.message and printable(screen.message)) if line)


class TerminalDisplay:
    """Draws :class:`Screen` values on a text stream (default ``sys.stdout``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        try:
            self._tty = self._stream.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._page: tuple | None = None  # what the pairing screen on show was drawn from
        self._tick: object = None  # what the countdown on show was written for
        self._status: tuple[str, ...] | None = None  # status lines on show

    def show(self, screen: Screen, now: float) -> None:
        if screen.state is State.PAIRING and screen.pairing is not None:
            out = self._pairing(screen.pairing, screen.message, now)
        else:
            out = self._status_change(screen)
        if out:
            self._stream.write(out)
            self._stream.flush()

    def close(self) -> None:
        if self._tty and self._page is not None:
            self._stream.write(CLEAR_SCREEN)  # the code must not outlive the daemon's polling
            self._stream.flush()
        self._page = self._status = self._tick = None

    def _pairing(self, code: PairingCode, message: str | None, now: float) -> str:
        seconds = code.expires_in(now)
        # On a TTY the countdown follows the seconds; elsewhere the minutes left, rounded up.
        tick = seconds if self._tty else (seconds + 59) // 60
        page = (code.user_code, code.verification_uri, code.qr_payload, message)
        if page != self._page:
            self._page, self._tick, self._status = page, tick, None
            return self._draw_page(code, message) + countdown_text(seconds, long=True) + "\n"
        if tick == self._tick:
            return ""
        self._tick = tick
        return (REWRITE_LAST_LINE if self._tty else "") + countdown_text(seconds, long=True) + "\n"

    def _draw_page(self, code: PairingCode, message: str | None) -> str:
        qr = qr_lines(code.qr_payload)
        if self._tty:
            qr = [BLACK_ON_WHITE + line + RESET for line in qr]
        lines = [
            "Pair this device",
            "Scan the QR code with a phone, or open the address below and enter the code.",
            "",
            *qr,
            "",
            # RFC 8628 §3.3.1: the user code MUST be shown, even with a complete URI.
            f"  Code:  {printable(code.user_code)}",
            f"  Go to: {printable(code.verification_uri)}",
        ]
        if message:
            lines.append(printable(message))
        return (CLEAR_SCREEN if self._tty else "") + "\n".join(lines) + "\n"

    def _status_change(self, screen: Screen) -> str:
        lines = status_lines(screen)
        if not lines or lines == self._status:
            return ""
        clear = CLEAR_SCREEN if self._tty and self._page is not None else ""
        self._status, self._page, self._tick = lines, None, None
        return clear + "\n".join(lines) + "\n"
