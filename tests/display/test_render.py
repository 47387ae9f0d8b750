"""display/render.py and the layout modules behind it, and display/qr.py: the screens as pictures, and the QR fit.

Golden images live in tests/display/golden/<screen>_<w>x<h>.png, one per screen and panel size;
``pytest --update-golden`` rewrites them from the current renderer (those tests then
report themselves as skipped, saying which file they wrote). Each golden records the
FreeType version that drew it: with the same version the comparison is pixel-exact;
with another one (Debian's python3-pil uses the system FreeType 2.12, Pillow's wheels
bundle a newer one, and the rasterizer's hinting differs by a pixel here and there) the
pixels outside the text must still be identical, and the text's ink nearly so.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("PIL")
from PIL import Image, ImageChops, ImageDraw, PngImagePlugin, features  # noqa: E402

from devicelink.display import qr as qrmod  # noqa: E402
from devicelink.display import render as r  # noqa: E402
from devicelink.display.base import Screen  # noqa: E402
from devicelink.display.qr import QrFit, fit_qr, qr_image, qr_matrix  # noqa: E402
from devicelink.display.text import ELLIPSIS, clean, short_uri  # noqa: E402
from devicelink.display.typeface import BOLD, MIN_CODE_PX, REGULAR  # noqa: E402
from devicelink.lifecycle import PairingCode, State  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
FREETYPE = features.version("freetype2")

SIZES = [((128, 64), "1"), ((128, 32), "1"), ((240, 240), "RGB"), ((320, 240), "RGB"),
         ((1280, 720), "RGB"), ((1920, 1080), "RGB")]

NOW = 1000.0  # time.monotonic() of the renders; slot 333 % cycle of the message turns: the URI
MESSAGE_NOW = 6.0  # slot 2: the first page of a message that takes turns with the URI

URI_48 = "https://example.com/activate?user_code=WDJB-MJHT"
#: Realistic verification URIs, 25-64 characters (HARDWARE.md §2), and what the server calls them.
URIS = {
    "short_upper": ("HTTPS://EX.IO/A", "HTTPS://EX.IO/A/WDJB-MJHT"),  # 25, alphanumeric
    "github": ("https://github.com/login/device", None),  # 31, no complete URI
    "microsoft": ("https://microsoft.com/devicelogin", None),  # 33
    "path_upper": ("HTTPS://EXAMPLE.COM/ACTIVATE", "HTTPS://EXAMPLE.COM/ACTIVATE/WDJB-MJHT"),  # 38
    "device_46": ("https://example.com/device", "https://example.com/device?user_code=WDJB-MJHT"),
    "activate_48": ("https://example.com/activate", URI_48),
    "okta": ("https://dev-12345678.okta.com/activate",
             "https://dev-12345678.okta.com/activate?user_code=WDJB-MJHT"),  # 58
    "keycloak": ("https://sso.example.org/realms/main/device",
                 "https://sso.example.org/realms/main/device?user_code=WDJB-MJHT"),  # 61
    "auth0": ("https://dev-abc123xy.us.auth0.com/activate",
              "https://dev-abc123xy.us.auth0.com/activate?user_code=WDJB-MJHT"),  # 62
    "aws": ("https://device.sso.us-east-1.amazonaws.com/",
            "https://device.sso.us-east-1.amazonaws.com/?user_code=WDJB-MJHT"),  # 63
}


def code(user_code: str = "WDJB-MJHT", uri: str = "https://example.com/activate",
         complete: str | None = URI_48, now: float = NOW, left: float = 581.5) -> PairingCode:
    return PairingCode(user_code, uri, complete, now + left)


#: Every screen, with the ``now`` it is drawn at.
SCREENS: dict[str, tuple[Screen, float]] = {
    "pairing": (Screen(State.PAIRING, code()), NOW),
    "pairing_okta": (Screen(State.PAIRING, code(uri=URIS["okta"][0], complete=URIS["okta"][1])), NOW),
    "pairing_path_upper": (Screen(State.PAIRING, code(uri=URIS["path_upper"][0],
                                                      complete=URIS["path_upper"][1])), NOW),
    "pairing_no_complete": (Screen(State.PAIRING, code(uri="https://github.com/login/device", complete=None,
                                                       user_code="5A0F-1BlI")), NOW),
    "new_code": (Screen(State.PAIRING, code(), message="The last code expired. Here is a new one."), NOW),
    "new_code_message": (Screen(State.PAIRING, code(now=MESSAGE_NOW),
                                message="The last code expired. Here is a new one."), MESSAGE_NOW),
    "getting_code": (Screen(State.PAIRING), NOW),
    "cannot_reach": (Screen(State.PAIRING, message="Can't reach the server. Retrying in 30 s."), NOW),
    "press_button": (Screen(State.UNPAIRED, message="The code expired. Press the button or run "
                                                    "`devicelink pair` for a new one."), NOW),
    "not_paired": (Screen(State.UNPAIRED), NOW),
    "error": (Screen(State.UNPAIRED, message="Pairing failed. Press the button or run `devicelink pair` "
                                             "to try again."), NOW),
    "paired": (Screen(State.PAIRED, account="alice@example.com"), NOW),
    "paired_anonymous": (Screen(State.REFRESHING), NOW),
    "offline": (Screen(State.OFFLINE, account="alice@example.com"), NOW),
    "reauth": (Screen(State.REAUTH_REQUIRED, message="Pairing needed again. Press the button or run "
                                                     "`devicelink pair`."), NOW),
    "waiting_for_time": (Screen(State.UNPAIRED, clock_synced=False), NOW),
    "factory_reset": (Screen(State.PAIRED, account="alice@example.com", reset_in=7), NOW),
}


def background(mode: str):
    return r.PALETTES[mode]["bg"]


def ink(image: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Whether anything but the background is drawn in ``box``."""
    region = image.crop(box)
    plain = Image.new(image.mode, region.size, background(image.mode))
    return ImageChops.difference(region.convert("RGB"), plain.convert("RGB")).getbbox() is not None


try:
    import zxingcpp  # the test extra; Debian has no package for it
except ImportError:
    zxingcpp = None


def decode(image: Image.Image) -> list:
    """The barcodes zxing-cpp finds in ``image`` (the test is skipped without zxing-cpp)."""
    if zxingcpp is None:
        pytest.skip("zxing-cpp is not installed: pip install zxing-cpp")
    return zxingcpp.read_barcodes(image.convert("L"))


# -- golden images ------------------------------------------------------------------


def assert_golden(image: Image.Image, name: str, layout: r.Layout, update: bool) -> None:
    path = GOLDEN / f"{name}.png"
    if update:
        GOLDEN.mkdir(exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text("freetype", FREETYPE)
        image.save(path, pnginfo=info, optimize=True)
        pytest.skip(f"--update-golden: rewrote {path}")
    assert path.exists(), f"no golden image {path}: run pytest --update-golden and look at it"
    with Image.open(path) as golden:
        golden.load()
        made_with = golden.info.get("freetype")
    assert (golden.size, golden.mode) == (image.size, image.mode)
    diff = ImageChops.difference(image.convert("RGB"), golden.convert("RGB"))
    if diff.getbbox() is None:
        return
    assert made_with != FREETYPE, f"{name} differs from {path} in {diff.getbbox()}"
    # Another FreeType: the layout (QR, cards, where every line goes) must still be exact,
    # and each line's ink nearly so.
    warnings.warn(f"golden {path.name} was drawn with FreeType {made_with}, this is {FREETYPE}: "
                  "text compared within a tolerance", stacklevel=2)
    mask = Image.new("1", image.size, 1)
    for item in layout.texts():
        left, top, right, bottom = item.box
        ImageDraw.Draw(mask).rectangle((left - 2, top - 2, right + 1, bottom + 1), fill=0)
    changed = diff.convert("L").point(lambda v: 255 if v else 0).convert("1")
    outside = ImageChops.logical_and(changed, mask)
    assert outside.getbbox() is None, f"{name} differs from {path} outside the text, in {outside.getbbox()}"
    for item in layout.texts():
        left, top, right, bottom = item.box
        area = max(1, (right - left) * (bottom - top))
        differing = sum(1 for v in changed.crop(item.box).getdata() if v)
        assert differing <= 0.2 * area, f"{name}: {item.text!r} differs in {differing} of {area} px"


@pytest.mark.parametrize("size,mode", SIZES, ids=[f"{w}x{h}" for (w, h), _ in SIZES])
@pytest.mark.parametrize("name", list(SCREENS))
def test_golden(name, size, mode, update_golden):
    screen, now = SCREENS[name]
    layout = r.layout(screen, size, mode, now)
    image = r.render(screen, size, mode, now)
    assert image.size == size and image.mode == mode
    if layout.qr() is not None and zxingcpp is not None:  # (without zxing-cpp: the golden still counts)
        (result,) = decode(image)
        assert result.text == screen.pairing.qr_payload
        assert result.format.name == "QRCode"
    assert_golden(image, f"{name}_{size[0]}x{size[1]}", layout, update_golden)


def test_no_stray_golden_images():
    expected = {f"{name}_{w}x{h}.png" for name in SCREENS for (w, h), _ in SIZES}
    stray = {p.name for p in GOLDEN.glob("*.png")} - expected
    assert not stray, f"golden images no test uses: {sorted(stray)}"


# -- every QR drawn decodes to the payload ---------------------------------------------


@pytest.mark.parametrize("size,mode", SIZES + [((256, 64), "1"), ((96, 64), "RGB"), ((800, 480), "RGB"),
                                               ((480, 800), "RGB"), ((160, 128), "RGB")],
                         ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else v)
@pytest.mark.parametrize("uri", list(URIS))
def test_every_qr_decodes_to_the_payload(uri, size, mode):
    plain, complete = URIS[uri]
    pairing = code(uri=plain, complete=complete)
    screen = Screen(State.PAIRING, pairing)
    layout = r.layout(screen, size, mode, NOW)
    image = r.render(screen, size, mode, NOW)
    results = decode(image)
    if layout.qr() is None:
        assert results == []
        return
    assert [(x.text, x.format.name) for x in results] == [(pairing.qr_payload, "QRCode")]
    # RFC 8628 §3.3.1: the user code and the plain URI are shown next to the QR code.
    assert layout.text("code").replace(" ", "") == "WDJB-MJHT".replace(" ", "")
    assert layout.texts("uri")


def test_qr_layout_on_128x64_matches_hardware_md():
    """A 46-48 character `?user_code=` URI: v3-L, 2 px modules, 1-module lit quiet zone, 62 px."""
    layout = r.layout(SCREENS["pairing"][0], (128, 64), "1", NOW)
    qr = layout.qr()
    assert qr is not None
    assert (qr.fit.version, qr.fit.error, qr.fit.module, qr.fit.quiet_zone, qr.fit.size) == (3, "L", 2, 1, 62)
    assert qr.xy == (0, 1)
    for item in layout.texts():  # everything else to the right of the code
        assert item.box[0] >= qr.box[2]


def test_128x32_never_draws_a_qr_code():
    for uri, (plain, complete) in URIS.items():
        layout = r.layout(Screen(State.PAIRING, code(uri=plain, complete=complete)), (128, 32), "1", NOW)
        assert layout.qr() is None, uri
        assert layout.text("code") == "WDJB-MJHT"
        assert layout.text("uri").replace(" ", "") == short_uri(plain)
        assert layout.text("countdown") == "9:41"


def test_128x64_falls_back_to_text_when_only_1px_modules_fit():
    okta = r.layout(SCREENS["pairing_okta"][0], (128, 64), "1", NOW)
    assert okta.qr() is None
    assert okta.text("code") == "WDJB-MJHT"
    assert "".join(i.text for i in okta.texts("uri")) == "dev-12345678.okta.com/activate"


def test_tv_qr_is_large_on_a_white_card():
    for (w, h), minimum in (((1280, 720), 15), ((1920, 1080), 23)):
        layout = r.layout(SCREENS["pairing"][0], (w, h), "RGB", NOW)
        qr = layout.qr()
        assert qr is not None and qr.fit.module >= minimum
        card = next(i for i in layout.items if isinstance(i, r.RectItem))
        assert card.colour == "card"
        # the card is wider than the quiet zone: white all round the symbol
        assert card.box[0] < qr.box[0] and card.box[1] < qr.box[1]
        assert card.box[2] > qr.box[2] and card.box[3] > qr.box[3]
        image = r.render(SCREENS["pairing"][0], (w, h), "RGB", NOW)
        assert image.getpixel((card.box[0] + 1, card.box[1] + 1)) == (255, 255, 255)
        corner = qr.fit.quiet_zone * qr.fit.module  # the top-left finder pattern: dark
        assert image.getpixel((qr.box[0] + corner, qr.box[1] + corner)) == (0, 0, 0)
        code_item = layout.texts("code")[0]
        assert code_item.size >= 0.12 * h  # very large, from across a room


# -- the user code ----------------------------------------------------------------


@pytest.mark.parametrize("size,mode", SIZES, ids=[f"{w}x{h}" for (w, h), _ in SIZES])
def test_user_code_is_drawn_as_received(size, mode):
    for user_code in ("WDJB-MJHT", "wdjb-mjht", "BCDF GHJK", "123-456-789", "ABCD-EFGH-JKLM"):
        screen = Screen(State.PAIRING, code(user_code=user_code))
        layout = r.layout(screen, size, mode, NOW)
        lines = layout.texts("code")
        assert 1 <= len(lines) <= 2
        # never re-cased; a two-line code is split after a separator, which is kept
        joined = lines[0].text + (("" if lines[0].text.endswith("-") else " ") + lines[1].text
                                  if len(lines) == 2 else "")
        assert joined == user_code
        assert all(item.size >= MIN_CODE_PX for item in lines)  # the dotted zero is drawn
        image = r.render(screen, size, mode, NOW)
        for item in lines:
            assert ink(image, item.box), f"nothing drawn for {item.text!r}"


@pytest.mark.parametrize("size,mode", SIZES, ids=[f"{w}x{h}" for (w, h), _ in SIZES])
def test_two_codes_render_differently_in_the_code_box_only(size, mode):
    a = Screen(State.PAIRING, code(user_code="WDJB-MJHT"))
    b = Screen(State.PAIRING, code(user_code="WDJB-MJHX"))
    image_a, image_b = r.render(a, size, mode, NOW), r.render(b, size, mode, NOW)
    changed = ImageChops.difference(image_a.convert("RGB"), image_b.convert("RGB")).getbbox()
    assert changed is not None
    boxes = [i.box for i in r.layout(a, size, mode, NOW).texts("code")]
    assert any(box[0] <= changed[0] and box[2] >= changed[2] for box in boxes)


def test_similar_characters_differ_in_the_shipped_font():
    """0/O and 1/l/I render differently at the smallest code size, in mono and anti-aliased."""
    for mode in ("1", "RGB"):
        glyphs = {}
        for ch in "0O1lI":
            image = Image.new(mode, (20, 20), background(mode))
            ImageDraw.Draw(image).text((2, 15), ch, font=r.font(MIN_CODE_PX, True), anchor="ls",
                                       fill=r.PALETTES[mode]["fg"])
            glyphs[ch] = image.tobytes()
        assert len(set(glyphs.values())) == 5, mode


def test_control_characters_are_escaped_not_drawn():
    assert clean("A\x1bB\u202eC\nD\tE") == "A\\x1bB\\u202eC D E"
    assert clean("wdjb-MJHT") == "wdjb-MJHT"
    screen = Screen(State.PAIRING, code(user_code="WDJB\u202e-MJHT"), message="bad\x1b[2Jthing")
    layout = r.layout(screen, (1280, 720), "RGB", NOW)
    drawn = "".join(i.text for i in layout.texts())
    assert "\u202e" not in drawn and "\x1b" not in drawn
    assert "\\u202e" in layout.text("code").replace(" ", "")


# -- the countdown and the message ---------------------------------------------------


@pytest.mark.parametrize("size,mode", SIZES, ids=[f"{w}x{h}" for (w, h), _ in SIZES])
def test_countdown_follows_now_and_nothing_else_moves(size, mode):
    screen = SCREENS["pairing"][0]
    before, after = r.layout(screen, size, mode, NOW), r.layout(screen, size, mode, NOW + 62)
    assert before.text("countdown").endswith("9:41") and after.text("countdown").endswith("8:39")
    still = [i for i in before.items if getattr(i, "role", None) != "countdown"]
    assert still == [i for i in after.items if getattr(i, "role", None) != "countdown"]
    expired = r.layout(screen, size, mode, NOW + 600)
    assert "expired" in expired.text("countdown")


@pytest.mark.parametrize("size,mode", SIZES, ids=[f"{w}x{h}" for (w, h), _ in SIZES])
def test_a_message_takes_turns_with_the_uri_when_there_is_no_room(size, mode):
    message = "The last code expired. Here is a new one."
    seen_uri = seen_message = False
    codes = set()
    for t in range(0, 60, 3):
        screen = Screen(State.PAIRING, code(now=t), message=message)
        layout = r.layout(screen, size, mode, float(t))
        seen_uri |= bool(layout.texts("uri"))
        seen_message |= bool(layout.texts("message"))
        codes.add(tuple(layout.texts("code")))
        assert layout.texts("countdown")
    assert seen_uri and seen_message
    assert len(codes) == 1  # the code never moves or changes size


# -- nothing leaves the panel -----------------------------------------------------------

LONG = ("Your administrator requires you to accept the new terms of use before this device can be "
        "paired again; visit the portal from a computer or phone and sign in with your work account. ") * 4
HOSTILE = {
    "long_message": Screen(State.UNPAIRED, message=LONG),
    "long_account": Screen(State.PAIRED,
                           account="a.very.long.name.with.many.parts@subdomain.example-company.co.uk" * 3),
    "unbreakable": Screen(State.REAUTH_REQUIRED, message="X" * 500),
    "long_uri": Screen(State.PAIRING, code(uri="https://login.example-identity-provider.com/oauth2/v1/device/"
                                               "activate/for/this/tenant/only", complete=None), message=LONG),
    "long_code": Screen(State.PAIRING, code(user_code="ABCD-EFGH-JKLM-NPQR-STVW-XZ23-4567")),
    "offline_long": Screen(State.OFFLINE, account="Ω" * 80, message=LONG),
    "waiting": Screen(State.PAIRING, clock_synced=False, message=LONG),
    "reset_big": Screen(State.PAIRED, reset_in=123456),
}

ODD_SIZES = [((32, 16), "1"), ((40, 200), "RGB"), ((64, 32), "1"), ((96, 64), "RGB"), ((128, 128), "1"), ((160, 80), "RGB"), ((256, 64), "1"),
             ((480, 320), "RGB"), ((800, 480), "RGB"), ((480, 800), "RGB"), ((1024, 600), "L"),
             ((3840, 2160), "RGB"), ((100, 100), "RGB"), ((300, 100), "RGB")]


@pytest.mark.parametrize("size,mode", SIZES + ODD_SIZES,
                         ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else v)
@pytest.mark.parametrize("name", list(HOSTILE) + list(SCREENS))
def test_nothing_is_drawn_outside_the_panel(name, size, mode):
    screen, now = SCREENS[name] if name in SCREENS else (HOSTILE[name], NOW)
    layout = r.layout(screen, size, mode, now)
    w, h = size
    for item in layout.items:
        left, top, right, bottom = item.box
        assert 0 <= left and 0 <= top and right <= w and bottom <= h, (item, size)
    # draw into a canvas with a margin all round: the margin stays blank
    margin = 40
    canvas = Image.new(mode, (w + 2 * margin, h + 2 * margin), background(mode))
    r.draw(layout, canvas, (margin, margin))
    canvas.paste(background(mode), (margin, margin, margin + w, margin + h))
    plain = Image.new(mode, canvas.size, background(mode))
    assert ImageChops.difference(canvas.convert("RGB"), plain.convert("RGB")).getbbox() is None
    image = r.render(screen, size, mode, now)
    assert image.size == size and image.mode == mode


def test_long_code_is_never_ellipsized_on_a_panel_that_can_hold_it():
    screen = HOSTILE["long_code"]
    for size, mode in SIZES:
        layout = r.layout(screen, size, mode, NOW)
        assert ELLIPSIS not in layout.text("code"), size
        assert layout.text("code").replace(" ", "").replace("-", "") == "ABCDEFGHJKLMNPQRSTVWXZ234567"


def test_text_is_ellipsized_rather_than_overflowing():
    layout = r.layout(HOSTILE["long_message"], (128, 32), "1", NOW)
    assert layout.texts()[-1].text.endswith(ELLIPSIS)


# -- the screens' content ----------------------------------------------------------------


@pytest.mark.parametrize("size,mode", SIZES, ids=[f"{w}x{h}" for (w, h), _ in SIZES])
def test_status_screens_say_what_they_are(size, mode):
    def words(name: str) -> str:
        screen, now = SCREENS[name]
        return " ".join(i.text for i in r.layout(screen, size, mode, now).texts())

    assert "Paired" in words("paired") and "alice@example.com" in words("paired")
    assert words("paired_anonymous").startswith("Paired")
    assert "Offline" in words("offline")
    assert "Pair again" in words("reauth")
    assert "Waiting for" in words("waiting_for_time")
    assert "Getting a code" in words("getting_code")
    assert "Can't reach" in words("cannot_reach")
    assert "Not paired" in words("error") and "Pairing failed" in words("error")
    reset = r.layout(SCREENS["factory_reset"][0], size, mode, NOW)
    assert reset.text("number") == "7"
    assert "cancel" in " ".join(i.text for i in reset.texts())
    assert max(i.size for i in reset.texts()) == reset.texts("number")[0].size  # the big number


def test_screen_precedence():
    pairing = Screen(State.PAIRING, code(), reset_in=3, clock_synced=False)
    assert r.layout(pairing, (128, 64), "1", NOW).text("number") == "3"  # reset over everything
    with_code = Screen(State.PAIRING, code(), clock_synced=False)
    assert r.layout(with_code, (128, 64), "1", NOW).qr() is not None  # a code on hand is always shown
    waiting = Screen(State.PAIRING, None, clock_synced=False)
    layout = r.layout(waiting, (128, 64), "1", NOW)
    assert layout.qr() is None and "Waiting" in layout.text("title")
    paired_unsynced = Screen(State.PAIRED, account="bob", clock_synced=False)
    assert "Paired" in r.layout(paired_unsynced, (128, 64), "1", NOW).text("title")


def test_modes_and_bad_arguments():
    screen = SCREENS["pairing"][0]
    assert r.render(screen, (1024, 600), "L", NOW).mode == "L"
    with pytest.raises(ValueError):
        r.render(screen, (128, 64), "RGBA", NOW)
    with pytest.raises(ValueError):
        r.render(screen, (8, 8), "1", NOW)


def test_render_is_pure_and_repeatable():
    screen, now = SCREENS["new_code"]
    a = r.render(screen, (128, 64), "1", now)
    b = r.render(screen, (128, 64), "1", now)
    assert a.tobytes() == b.tobytes() and a is not b


# -- the font --------------------------------------------------------------------------


def test_the_font_ships_with_the_package():
    fonts = Path(r.__file__).with_name("fonts")
    assert (fonts / REGULAR).is_file() and (fonts / BOLD).is_file()
    assert "Bitstream Vera" in (fonts / "LICENSE").read_text()
    assert Path(r.font(11).path).parent == fonts
    assert r.font(11) is r.font(11)  # cached per size


def test_segno_is_loaded_only_when_a_qr_is_drawn():
    script = ("import sys; import devicelink.display.render, devicelink.display.terminal; "
              "assert 'segno' not in sys.modules, 'segno imported'; "
              "from devicelink.display.render import render; from devicelink.display.base import Screen; "
              "from devicelink.lifecycle import State; render(Screen(State.PAIRED), (128, 64), '1', 0.0); "
              "assert 'segno' not in sys.modules, 'segno imported for a status screen'")
    subprocess.run([sys.executable, "-c", script], check=True)


# -- fit_qr ---------------------------------------------------------------------------

PAYLOADS = [complete or plain for plain, complete in URIS.values()] + ["WDJB-MJHT", "x" * 120]
BOXES = [(w, h) for w in (21, 32, 46, 58, 62, 64, 100, 150, 240, 560, 1000) for h in (32, 64, 150, 560)]


def min_version(payload: str, error: str) -> int:
    import segno

    return segno.make_qr(payload, error=error, boost_error=False).version


@pytest.mark.parametrize("payload", PAYLOADS)
def test_fit_qr_properties(payload):
    for box in BOXES:
        fit = fit_qr(payload, box)
        if fit is None:
            # not even the smallest symbol (version for L) fits at 2 px with a 1-module quiet zone
            assert (17 + 4 * min_version(payload, "L") + 2) * 2 > min(box)
            continue
        assert isinstance(fit, QrFit)
        assert fit.module >= 2
        assert isinstance(fit.version, int) and 1 <= fit.version <= 40  # never a Micro QR version ("M3")
        assert fit.modules == 17 + 4 * fit.version == len(fit.rows)
        assert 1 <= fit.quiet_zone <= 4
        assert fit.size == (fit.modules + 2 * fit.quiet_zone) * fit.module <= min(box)
        # the smallest version for its (boosted) error level
        assert fit.version == min_version(payload, fit.error)
        # no level could have had larger modules, with any quiet zone of 1 module or more
        for level in "LMQH":
            n = 17 + 4 * min_version(payload, level)
            assert min(box) // (n + 2) <= fit.module
        # with these modules, no wider quiet zone fits (the widest is preferred over ECC)
        if fit.quiet_zone < 4:
            assert (fit.modules + 2 * (fit.quiet_zone + 1)) * fit.module > min(box)


def test_fit_qr_prefers_larger_modules_over_ecc_and_quiet_zone():
    fit = fit_qr(URI_48, (64, 64))
    assert (fit.version, fit.error, fit.module, fit.quiet_zone) == (3, "L", 2, 1)  # H would be v6 at 1 px
    assert fit_qr(URI_48, (32, 32)) is None  # only 1 px modules: no fit
    path = fit_qr(URIS["path_upper"][1], (64, 64))
    # v2 with a 3-module quiet zone rather than v3-Q with 1: same 2 px modules, wider quiet zone
    assert (path.version, path.module, path.quiet_zone) == (2, 2, 3)
    assert path.mode == "alphanumeric"
    # spare room goes to error correction once modules and quiet zone are settled
    roomy = fit_qr("HTTPS://EX.IO/A/WDJB-MJHT", (58, 58))
    assert (roomy.version, roomy.module, roomy.quiet_zone) == (1, 2, 4)


def test_fit_qr_never_micro_and_never_recased():
    fit = fit_qr("WDJB-MJHT", (64, 64))  # segno.make() would give Micro QR M3
    assert fit.version >= 1 and fit.payload == "WDJB-MJHT"
    mixed = fit_qr(URI_48, (200, 200))
    assert mixed.mode == "byte" and mixed.payload == URI_48
    results = decode(qr_on_panel(fit))
    assert [(x.text, x.format.name) for x in results] == [("WDJB-MJHT", "QRCode")]


def qr_on_panel(fit: QrFit, mode: str = "1") -> Image.Image:
    image = Image.new(mode, (fit.size + 8, fit.size + 8), 0)
    qrmod.draw_qr(image, fit, (4, 4))
    return image


@pytest.mark.parametrize("mode", ["1", "L", "RGB"])
def test_qr_image_polarity(mode):
    fit = fit_qr(URI_48, (64, 64))
    image = qr_image(fit, mode)
    assert image.size == (fit.size, fit.size) and image.mode == mode
    white = {"1": 255, "L": 255, "RGB": (255, 255, 255)}[mode]
    black = {"1": 0, "L": 0, "RGB": (0, 0, 0)}[mode]
    q = fit.quiet_zone * fit.module
    assert image.getpixel((0, 0)) == white  # the quiet zone is light (lit on an OLED)
    assert image.getpixel((q, q)) == black  # the finder pattern's corner is dark
    assert image.getpixel((q + fit.module, q + fit.module)) == white  # its light ring
    results = decode(qr_on_panel(fit, mode))
    assert [x.text for x in results] == [URI_48]


def test_qr_matrix_still_serves_the_terminal():
    matrix = qr_matrix(URI_48)
    assert len(matrix) == 33 and all(len(row) == 33 for row in matrix)  # v4-M (boosted to Q)
    assert matrix[0][:7] == [True] * 7
    assert len(qr_matrix(URI_48, error="L")) == 29
