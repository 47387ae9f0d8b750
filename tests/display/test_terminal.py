"""The terminal display and the shared QR matrix, checked by decoding what we draw (zxing-cpp)."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
import segno
import zxingcpp
from PIL import Image

from devicelink.display.base import Screen
from devicelink.display.qr import qr_matrix
from devicelink.display.terminal import BLACK_ON_WHITE, CLEAR_SCREEN, RESET, TerminalDisplay
from devicelink.lifecycle import PairingCode, State

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BLOCKS = {" ": (False, False), "▀": (True, False), "▄": (False, True), "█": (True, True)}

URI = "https://example.com/device"
COMPLETE = "https://example.com/device?user_code=WDJB-MJHT"

# verification_uri_complete shapes from HARDWARE.md §2, with the version each needs at level M.
REALISTIC = [
    ("HTTPS://EX.IO/A/WDJB-MJHT", 2),  # 25, alphanumeric mode
    ("https://example.com/activate/WDJB-MJHT", 3),  # 38, byte mode
    ("HTTPS://EXAMPLE.COM/ACTIVATE/WDJB-MJHT", 2),  # 38, alphanumeric mode
    ("https://example.com/device?user_code=WDJB-MJHT", 4),  # 46
    ("https://example.com/activate?user_code=WDJB-MJHT", 4),  # 48
    ("https://dev-12345678.okta.com/activate?user_code=WDJB-MJHT", 4),  # 58, Okta-style
    ("https://dev-abcd1234.us.auth0.com/activate?user_code=WDJB-MJHT", 4),  # 62, Auth0-style
    ("https://device.sso.us-east-1.amazonaws.com/?user_code=WDJB-MJHT", 5),  # 63, AWS-SSO-style
    ("https://sso.example.com/realms/device/device?user_code=WDJB-MJHT", 5),  # 64, Keycloak-style
]


class FakeTty(io.StringIO):
    """A StringIO that says it is a terminal - ONLY FOR TESTS."""

    def isatty(self) -> bool:
        return True


def pairing(user_code="WDJB-MJHT", uri=URI, complete=COMPLETE, expires_at=600.0) -> Screen:
    return Screen(State.PAIRING, PairingCode(user_code, uri, complete, expires_at))


def shown(display: TerminalDisplay, stream: io.StringIO, screen: Screen, now: float) -> str:
    """What one show() call wrote."""
    before = len(stream.getvalue())
    display.show(screen, now)
    return stream.getvalue()[before:]


def text_lines(out: str) -> list[str]:
    return ANSI.sub("", out).split("\n")


def qr_text(out: str) -> list[str]:
    """The lines of the half-block QR code (quiet zone included) in some output."""
    return [line for line in text_lines(out) if line and set(line) <= BLOCKS.keys()]


def modules(lines: list[str]) -> list[list[bool]]:
    """Half-block text back into module rows: each character is a top and a bottom module."""
    rows = []
    for line in lines:
        rows.append([BLOCKS[ch][0] for ch in line])
        rows.append([BLOCKS[ch][1] for ch in line])
    return rows


def image(matrix: list[list[bool]], scale: int = 4, border: int = 4) -> Image.Image:
    """Black modules on white, with a white border of ``border`` modules."""
    img = Image.new("L", (len(matrix[0]) + 2 * border, len(matrix) + 2 * border), 255)
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                img.putpixel((x + border, y + border), 0)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def terminal_image(lines: list[str], ink: int, paper: int, cell: int = 4) -> Image.Image:
    """Plain text lines as a terminal with that theme draws them: cells `cell` wide, 2*`cell` tall."""
    width = max(map(len, lines))
    img = Image.new("L", ((width + 4) * cell, (len(lines) + 4) * 2 * cell), paper)
    for row, line in enumerate(lines):
        for col, ch in enumerate(line):
            for half, dark in enumerate(BLOCKS[ch]):
                if dark:
                    x, y = (col + 2) * cell, (row + 2) * 2 * cell + half * cell
                    img.paste(ink, (x, y, x + cell, y + cell))
    return img


def tty_image(out: str, ink: int, paper: int, cell: int = 4) -> Image.Image:
    """TTY output as a terminal with theme colours ``ink`` on ``paper`` shows it, honouring our SGR codes."""
    lines = [line for line in out.replace(CLEAR_SCREEN, "").split("\n") if line]
    width = max(len(ANSI.sub("", line)) for line in lines)
    img = Image.new("L", ((width + 4) * cell, (len(lines) + 4) * 2 * cell), paper)
    for row, line in enumerate(lines):
        fg, bg, col = ink, paper, 0
        for token in re.split(f"({ANSI.pattern})", line):
            if token == BLACK_ON_WHITE:
                fg, bg = 0, 255
            elif token == RESET:
                fg, bg = ink, paper
            elif not ANSI.fullmatch(token):
                for ch in token:
                    x, y = (col + 2) * cell, (row + 2) * 2 * cell
                    for half, dark in enumerate(BLOCKS.get(ch, (False, False))):
                        img.paste(fg if dark else bg, (x, y + half * cell, x + cell, y + (half + 1) * cell))
                    col += 1
    return img


def decode(img: Image.Image, try_invert: bool = False) -> zxingcpp.Barcode:
    found = zxingcpp.read_barcodes(img, try_invert=try_invert)
    assert len(found) == 1, found
    return found[0]


def with_quiet_zone(matrix: list[list[bool]], quiet: int = 4) -> list[list[bool]]:
    width = len(matrix[0]) + 2 * quiet
    rows = [[False] * width for _ in range(quiet)]
    rows += [[False] * quiet + row + [False] * quiet for row in matrix]
    rows += [[False] * width for _ in range(quiet + len(rows) % 2)]
    return rows


# --- qr_matrix ----------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "version"), REALISTIC)
def test_qr_matrix_decodes_and_is_the_smallest_full_qr(payload, version):
    matrix = qr_matrix(payload)
    assert len(matrix) == len(matrix[0]) == 17 + 4 * version  # a full QR symbol, no quiet zone
    with pytest.raises(segno.DataOverflowError):  # one version less would not hold it
        segno.make_qr(payload, error="M", version=version - 1)
    code = decode(image(matrix))  # try_invert off: normal polarity
    assert code.text == payload
    assert code.format == zxingcpp.BarcodeFormat.QRCode
    assert code.extra["Version"] == str(version)
    assert code.ec_level in {"M", "Q", "H"}  # M, boosted for free when the version has room


def test_qr_matrix_is_normal_polarity_without_quiet_zone():
    matrix = qr_matrix(COMPLETE)
    # The top-left finder pattern starts at (0, 0): a dark 7x7 ring, light ring inside it.
    assert all(matrix[0][:7]) and all(row[0] for row in matrix[:7])
    assert not any(matrix[1][1:6])


def test_short_payloads_are_never_micro_qr():
    # segno.make("WDJB-MJHT") would give Micro QR M3-M, which phones do not read.
    for payload in ["WDJB-MJHT", "https://a.io", "x"]:
        matrix = qr_matrix(payload)
        assert len(matrix) >= 21
        code = decode(image(matrix))
        assert (code.text, code.format) == (payload, zxingcpp.BarcodeFormat.QRCode)


def test_level_l_is_available_for_small_oleds():
    assert len(qr_matrix("https://example.com/device?user_code=WDJB-MJHT", error="L")) == 29  # v3


def test_importing_the_display_does_not_import_segno():
    code = "import sys, devicelink.display.terminal; sys.exit('segno' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- the pairing screen -----------------------------------------------------------------


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "tty"])
@pytest.mark.parametrize("complete", [COMPLETE, None], ids=["complete-uri", "plain-uri"])
def test_printed_qr_decodes_to_the_qr_payload(tty, complete):
    stream = FakeTty() if tty else io.StringIO()
    out = shown(TerminalDisplay(stream), stream, pairing(complete=complete), now=0.0)
    expected = complete or URI

    lines = qr_text(out)
    # Exactly the matrix, with a 4-module quiet zone (plus a light row to even out the count).
    assert modules(lines) == with_quiet_zone(qr_matrix(expected))
    code = decode(image(modules(lines)))
    assert code.text == expected
    assert code.format == zxingcpp.BarcodeFormat.QRCode
    assert len(lines[0]) - 8 == 17 + 4 * int(code.extra["Version"]) >= 21


def test_tty_qr_has_explicit_colours_and_no_colours_leak():
    stream = FakeTty()
    out = shown(TerminalDisplay(stream), stream, pairing(), now=0.0)
    qr_rows = [line for line in out.split("\n") if BLACK_ON_WHITE in line]
    assert len(qr_rows) == len(qr_text(out))
    for line in qr_rows:
        assert line.endswith(RESET) and line.count(BLACK_ON_WHITE) == 1
    # Colours are explicit, so dark and light themes both show a normal-polarity code on white.
    for ink, paper in [(220, 30), (20, 250)]:
        assert decode(tty_image(out, ink, paper), try_invert=False).text == COMPLETE
    # ...which they would not without the SGR codes, on a dark theme.
    assert not zxingcpp.read_barcodes(tty_image(ANSI.sub("", out), 220, 30), try_invert=False)


def test_pipe_output_has_no_escape_codes_and_ink_is_dark():
    stream = io.StringIO()
    out = shown(TerminalDisplay(stream), stream, pairing(), now=0.0)
    assert "\x1b" not in out
    # Light background (a file in an editor, print): normal polarity, read without inverting.
    assert decode(terminal_image(qr_text(out), ink=0, paper=255)).text == COMPLETE
    # Dark theme: the whole code, quiet zone included, comes out inverted; inverting readers get it.
    assert not zxingcpp.read_barcodes(terminal_image(qr_text(out), ink=220, paper=30), try_invert=False)
    assert decode(terminal_image(qr_text(out), ink=220, paper=30), try_invert=True).text == COMPLETE


@pytest.mark.parametrize("user_code", ["WDJB-MJHT", "abcd-0O1l", "BCDF GHJK", "wdjb_mjht"])
@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "tty"])
def test_user_code_and_uri_shown_verbatim_even_with_complete_uri(user_code, tty):
    stream = FakeTty() if tty else io.StringIO()
    complete = f"{URI}?user_code={user_code}"
    out = shown(TerminalDisplay(stream), stream, pairing(user_code, complete=complete), now=0.0)
    lines = text_lines(out)
    assert f"  Code:  {user_code}" in lines  # RFC 8628 §3.3.1 MUST, exactly as received
    assert f"  Go to: {URI}" in lines
    if user_code != user_code.upper():
        assert user_code.upper() not in out
    assert "Code expires in 10:00" in lines


def test_server_text_cannot_drive_the_terminal():
    stream = io.StringIO()
    screen = pairing(user_code="WDJB\x1b[2J-MJHT\u202e", uri="https://example.com/\x07d")
    out = shown(TerminalDisplay(stream), stream, screen, now=0.0)
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "  Code:  WDJB\\x1b[2J-MJHT\\u202e" in out
    assert "  Go to: https://example.com/\\x07d" in out


def test_countdown_text():
    stream = io.StringIO()
    out = shown(TerminalDisplay(stream), stream, pairing(expires_at=1000.0), now=418.6)
    assert text_lines(out)[-2] == "Code expires in 9:41"


# --- redrawing only on change --------------------------------------------------------------


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "tty"])
def test_same_screen_twice_writes_nothing(tty):
    stream = FakeTty() if tty else io.StringIO()
    display = TerminalDisplay(stream)
    for screen in [pairing(), Screen(State.PAIRED, account="Alice Example"), Screen(State.UNPAIRED)]:
        assert shown(display, stream, screen, now=0.5)
        assert shown(display, stream, screen, now=0.5) == ""
        assert shown(display, stream, Screen(screen.state, screen.pairing, screen.account), now=0.7) == ""


def test_tty_countdown_is_rewritten_in_place_at_most_once_a_second():
    stream = FakeTty()
    display = TerminalDisplay(stream)
    shown(display, stream, pairing(expires_at=600.0), now=0.5)
    writes = [shown(display, stream, pairing(expires_at=600.0), now=0.5 + i / 10) for i in range(1, 101)]
    updates = [w for w in writes if w]
    assert len(updates) == 10  # 10 seconds, 100 calls
    assert updates[0] == "\x1b[A\r\x1b[2KCode expires in 9:58\n"
    assert updates[-1] == "\x1b[A\r\x1b[2KCode expires in 9:49\n"
    assert all(qr_text(w) == [] for w in updates)  # only the countdown line


def test_pipe_countdown_is_written_once_a_minute():
    stream = io.StringIO()
    display = TerminalDisplay(stream)
    first = shown(display, stream, pairing(expires_at=600.0), now=0.0)
    assert "Code expires in 10:00" in text_lines(first)
    later = "".join(shown(display, stream, pairing(expires_at=600.0), now=float(t)) for t in range(1, 601))
    assert later.splitlines() == [f"Code expires in {m}:00" for m in range(9, 0, -1)] + ["Code expired"]


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "tty"])
def test_new_code_redraws_everything(tty):
    stream = FakeTty() if tty else io.StringIO()
    display = TerminalDisplay(stream)
    shown(display, stream, pairing(), now=0.0)
    complete = f"{URI}?user_code=BCDF-GHJK"
    out = shown(display, stream, pairing("BCDF-GHJK", complete=complete, expires_at=900.0), now=1.0)
    assert out.startswith(CLEAR_SCREEN) if tty else "\x1b" not in out
    assert "  Code:  BCDF-GHJK" in text_lines(out) and "WDJB-MJHT" not in out
    assert decode(image(modules(qr_text(out)))).text == complete
    assert "Code expires in 14:59" in text_lines(out)


def test_pairing_without_a_code_yet_says_so():
    stream = io.StringIO()
    display = TerminalDisplay(stream)
    assert shown(display, stream, Screen(State.PAIRING), now=0.0) == "Requesting a pairing code\n"


def test_one_line_per_state_change():
    stream = io.StringIO()
    display = TerminalDisplay(stream)
    sequence = [
        (Screen(State.UNPAIRED), "Not paired: press the button or run `devicelink pair`\n"),
        (pairing(), None),
        (Screen(State.PAIRED, account="Alice Example"), "Paired as Alice Example\n"),
        (Screen(State.REFRESHING, account="Alice Example"), ""),  # routine refresh: nothing to say
        (Screen(State.PAIRED, account="Alice Example"), ""),
        (Screen(State.REFRESHING), ""),
        (Screen(State.OFFLINE), "Offline: serving the cached token\n"),
        (Screen(State.REFRESHING), ""),
        (Screen(State.PAIRED), "Paired\n"),
        (Screen(State.REAUTH_REQUIRED), "Pairing needed again: press the button or run `devicelink pair`\n"),
        (
            Screen(State.UNPAIRED, message="Code expired: press the button for a new one"),
            "Not paired: press the button or run `devicelink pair`\nCode expired: press the button for a new one\n",
        ),
    ]
    for screen, expected in sequence:
        out = shown(display, stream, screen, now=5.0)
        if expected is not None:
            assert out == expected


def test_returning_to_the_same_code_after_another_screen_redraws_it():
    stream = io.StringIO()
    display = TerminalDisplay(stream)
    shown(display, stream, pairing(), now=0.0)
    shown(display, stream, Screen(State.UNPAIRED), now=1.0)
    assert qr_text(shown(display, stream, pairing(), now=2.0))


def test_tty_clears_a_code_that_is_no_longer_valid():
    stream = FakeTty()
    display = TerminalDisplay(stream)
    shown(display, stream, pairing(), now=0.0)
    assert shown(display, stream, Screen(State.PAIRED, account="Alice"), now=1.0) == CLEAR_SCREEN + "Paired as Alice\n"
    shown(display, stream, pairing(), now=2.0)
    before = len(stream.getvalue())
    display.close()
    assert stream.getvalue()[before:] == CLEAR_SCREEN
    display.close()  # idempotent
    assert stream.getvalue()[before:] == CLEAR_SCREEN


def test_pipe_close_writes_nothing():
    stream = io.StringIO()
    display = TerminalDisplay(stream)
    shown(display, stream, pairing(), now=0.0)
    before = stream.getvalue()
    display.close()
    assert stream.getvalue() == before


def test_message_while_pairing_is_shown_and_a_new_one_redraws():
    stream = io.StringIO()
    display = TerminalDisplay(stream)
    out = shown(display, stream, Screen(State.PAIRING, pairing().pairing, message="Waiting for approval"), now=0.0)
    assert "Waiting for approval" in text_lines(out)
    out = shown(display, stream, Screen(State.PAIRING, pairing().pairing, message="Still waiting"), now=0.2)
    assert "Still waiting" in text_lines(out) and qr_text(out)


def test_default_stream_is_stdout(capsys):
    display = TerminalDisplay()
    display.show(Screen(State.PAIRED, account="Alice Example"), now=0.0)
    assert capsys.readouterr().out == "Paired as Alice Example\n"
