"""The virtual device's page in headless Chromium: pair by clicking through the QR code, press and hold the
button, and break the server with every fault switch while the real daemon copes as docs/behaviour.md says.

One simulation (the dev server, the real daemon on a png screen and mock pins, the page) and one browser
serve the whole module, in order: pairing, the button, then each fault kind (revoke last), then pairing
again after the grant was revoked. Waits are on conditions (the page's pushed state, the daemon's status
from its socket as its events arrive), never sleeps.
"""

from __future__ import annotations

import os
import re

import pytest

from devicelink.display.base import Screen
from devicelink.display.render import render
from devicelink.lifecycle import State
from devicelink_sim.device.run import Simulation
from tests.browser.conftest import By, png_of, qr_in, wait_until

HOLDS = ("paired", "refreshing")
LIFETIME = 3  # s: a refresh every 1.5 s, so a fault switched on is met at once
HOLD_SECONDS = 4.0  # the countdown shows 3, 2, 1 from the first second on


@pytest.fixture(scope="module")
def sim():
    env = {**os.environ, "DEVICELINK_LOG_LEVEL": "DEBUG"}  # the log says "short press"
    with Simulation(access_token_lifetime=LIFETIME, interval=1, hold_seconds=HOLD_SECONDS, env=env) as simulation:
        yield simulation


@pytest.fixture(scope="module")
def desk(chrome, sim):
    driver = chrome()
    driver.get(sim.url)
    wait_until(driver, lambda d: d.find_element(By.ID, "connection").get_attribute("data-live") == "true",
               "the page's event stream did not open")
    return driver


# -- what the page shows ---------------------------------------------------------------------------


def page_state(desk) -> str:
    return desk.find_element(By.ID, "state").get_attribute("data-state")


def wait_state(desk, *states: str) -> str:
    return wait_until(desk, lambda d: page_state(d) in states and page_state(d),
                      f"the page's state did not become {'/'.join(states)}")


def screen(desk):
    return png_of(desk.find_element(By.ID, "screen").get_attribute("src"))


def screen_is(desk, expected) -> bool:
    shown = screen(desk)
    return shown.size == expected.size and shown.convert("1").tobytes() == expected.convert("1").tobytes()


def paired_screen(sim, reset_in: int | None = None):
    """What the daemon draws when paired (render.py: the same renderer), for the account it holds."""
    status = sim.device.client.status()
    account = status["account"]["name"]
    return render(Screen(State.PAIRED, None, account, status["message"], reset_in=reset_in,
                         clock_synced=status["clock_synced"]), sim.device.size, "1", 0.0)


def status(sim, predicate, timeout: float = 30) -> dict:
    """The daemon's status (from its socket, read as its events arrive) once ``predicate`` holds."""
    return sim.device.wait_for_status(predicate, timeout)


def pair_by_clicking(desk, sim, user: str = "alice") -> dict:
    """What a newcomer does: the QR code on the screen, *Scan the code*, approve on the phone."""
    wait_state(desk, "pairing")
    scan = wait_until(desk, lambda d: d.find_element(By.ID, "scan").is_enabled() and d.find_element(By.ID, "scan"))
    uri = wait_until(desk, lambda d: qr_in(screen(d)), "no QR code on the screen")
    assert uri == sim.device.client.status()["pairing"]["verification_uri_complete"]
    scan.click()
    phone = desk.find_element(By.ID, "phone")
    wait_until(desk, lambda d: phone.get_attribute("src") == uri, "Scan did not open what the QR code holds")
    desk.switch_to.frame(phone)
    try:
        wait_until(desk, lambda d: d.find_element(By.ID, "user_code").get_attribute("value") in uri)
        # Which device asks (RFC 8628 §5.4): it registered itself with its serial and key.
        assert desk.find_element(By.ID, "device-name").text == "devicelink virtual device"
        assert desk.find_element(By.ID, "device-serial").text == sim.device.serial
        assert desk.find_element(By.ID, "device-key").text in sim.device.log_path.read_text()  # its thumbprint
        desk.find_element(By.ID, f"user-{user}").click()
        desk.find_element(By.ID, "approve").click()
        result = wait_until(desk, lambda d: d.find_element(By.ID, "result"), "the phone shows no result")
        assert result.get_attribute("data-result") == "approved"
    finally:
        desk.switch_to.default_content()
    wait_state(desk, *HOLDS)
    return status(sim, lambda s: s["state"] in HOLDS)


def ensure_healthy(desk, sim) -> None:
    """Paired, no error, no fault switched on (a failed test before must not fail the next)."""
    if sim.server.faults.switches():
        desk.find_element(By.ID, "faults-clear").click()
        wait_until(desk, lambda d: not d.find_element(By.ID, "faults").get_attribute("data-switches"))
    current = sim.device.client.status()
    if current["state"] not in HOLDS + ("offline",):
        if current["state"] != "pairing":
            click(desk)  # a short press: a new code
        pair_by_clicking(desk, sim)
    status(sim, lambda s: s["state"] in HOLDS and not s["last_error"])


def click(desk) -> None:
    from selenium.webdriver import ActionChains

    ActionChains(desk).click(desk.find_element(By.ID, "button")).perform()


# -- pairing and the button ----------------------------------------------------------------------------


def test_a_newcomer_pairs_by_clicking_through_the_qr_code(desk, sim):
    wait_state(desk, "pairing")
    frame = wait_until(desk, lambda d: int(d.find_element(By.ID, "screen").get_attribute("data-frame")), "no frame")
    assert frame >= 1
    big = desk.find_element(By.ID, "screen-big")
    assert big.get_attribute("src") == desk.find_element(By.ID, "screen").get_attribute("src")  # enlarged, same
    assert big.size["width"] == 4 * sim.device.size[0]
    assert desk.find_element(By.ID, "serial").text == sim.device.serial
    assert "pulse" in desk.find_element(By.ID, "led-pattern").text  # breathing while a code is shown
    seen: set[str] = set()
    wait_until(desk, lambda d: seen.add(d.find_element(By.ID, "led").get_attribute("data-value")) or len(seen) >= 3,
               "the LED does not breathe")  # its level moves: gpiozero's pulse on the mock pin, pushed

    account = pair_by_clicking(desk, sim, user="alice")["account"]
    assert account == {"sub": "alice", "name": "Alice Example"}
    # The screen says Paired as Alice Example: the frame pushed to the page is exactly that screen.
    expected = paired_screen(sim)
    wait_until(desk, lambda d: screen_is(d, expected), "the screen does not say Paired as Alice Example")
    assert qr_in(screen(desk)) is None
    wait_until(desk, lambda d: d.find_element(By.ID, "led").get_attribute("data-value") == "1", "the LED is not on")
    assert "Alice Example" in desk.find_element(By.ID, "account").text


def test_the_button_pressed_held_and_let_go_then_held_to_a_factory_reset(desk, sim):
    from selenium.webdriver import ActionChains

    ensure_healthy(desk, sim)
    button = desk.find_element(By.ID, "button")
    log = lambda: "\n".join(sim.device.log_tail)  # noqa: E731
    presses = log().count("button: short press")
    click(desk)
    wait_until(desk, lambda d: log().count("button: short press") > presses, "the daemon did not see the press")
    assert sim.device.client.status()["state"] in HOLDS  # a short press only redraws a paired device

    # Held past a second: the countdown on the screen; let go: cancelled.
    ActionChains(desk).click_and_hold(button).perform()
    assert button.get_attribute("data-pressed") == "true"
    countdown = [paired_screen(sim, reset_in=n) for n in (3, 2)]  # let go with a second or more to spare
    wait_until(desk, lambda d: any(screen_is(d, frame) for frame in countdown), "no factory-reset countdown")
    ActionChains(desk).release(button).perform()
    wait_until(desk, lambda d: screen_is(d, paired_screen(sim)), "the countdown did not go away")
    assert "factory reset cancelled" in log()
    assert sim.device.client.status()["state"] in HOLDS

    # Held to the end: a factory reset, the grant revoked at the server, a new code for the next owner.
    grant_tokens = sim.server.issued_refresh_tokens()
    old_codes = set(re.findall(r"enter code (\S+)", sim.device.log_path.read_text()))
    ActionChains(desk).click_and_hold(button).perform()
    wait_state(desk, "pairing")
    new_code = wait_until(desk, lambda d: d.find_element(By.ID, "code").get_attribute("data-user-code"))
    ActionChains(desk).release(button).perform()
    assert old_codes and new_code not in old_codes
    assert "factory reset" in log()
    assert all(sim.server.revoked(token) for token in grant_tokens)
    wait_until(desk, lambda d: button.get_attribute("data-pressed") == "false")


# -- the faults -----------------------------------------------------------------------------------------

#: kind -> what the daemon's status says once a refresh met it (docs/behaviour.md, docs/faults.md): state
#: offline, the cached token served, retried with backoff, last_error naming the failure.
OFFLINE = {
    "status": "HTTP 503",
    "reset": "refresh failed",
    "close": "refresh failed",
    "malformed": "without a JSON object",
    "oversized": "larger than 1048576 bytes",
    "slow_down": "slow_down",
    "rate_limit": "HTTP 429",
    "error_body": "server_error",
}


def switch(desk, sim, kind: str, on: bool, endpoint: str = "token") -> None:
    """Click the switch for ``kind`` on ``endpoint``; the server's answer comes back over the event stream."""
    box = desk.find_element(By.ID, f"fault-{endpoint}-{kind}")
    assert box.is_selected() != on
    box.click()
    wait_until(desk, lambda d: (f"{endpoint}/{kind}" in (d.find_element(By.ID, "faults").get_attribute("data-switches")
                                                         or "").split()) == on,
               "the switch did not come back from the server")
    assert any((s["endpoint"], s["kind"]) == (endpoint, kind) for s in sim.server.faults.switches()) == on


def hits(sim, since: int, fault: str | None = None):
    """The server's refresh requests since log entry ``since`` (that got ``fault``)."""
    return [h for h in list(sim.server.faults.log)[since:] if h.request == "refresh" and (fault is None or h.fault == fault)]


def recovered(desk, sim) -> dict:
    """Healthy again once the fault is off: the attempt the backoff scheduled succeeds."""
    healthy = status(sim, lambda s: s["state"] in HOLDS and not s["last_error"], 60)
    wait_state(desk, *HOLDS)
    return healthy


@pytest.mark.parametrize("kind", list(OFFLINE))
def test_a_fault_switched_on_in_the_page_sends_the_daemon_offline_and_off_brings_it_back(desk, sim, kind):
    ensure_healthy(desk, sim)
    since = len(sim.server.faults.log)
    switch(desk, sim, kind, True)
    offline = status(sim, lambda s: s["state"] == "offline")
    assert offline["last_error_kind"] == "upstream" and OFFLINE[kind] in offline["last_error"]
    assert hits(sim, since, "status" if kind in ("slow_down", "rate_limit", "error_body") else kind)
    wait_state(desk, "offline")
    assert OFFLINE[kind] in desk.find_element(By.ID, "last-error").text
    switch(desk, sim, kind, False)
    healthy = recovered(desk, sim)
    assert healthy["last_refresh"]  # a refresh went through: with 3 s tokens, expires_in may already read 0
    if kind == "rate_limit":  # Retry-After: 5 was honoured: the next refresh came no sooner
        refreshes = hits(sim, since)
        first = next(i for i, h in enumerate(refreshes) if h.outcome == "http_429")
        assert refreshes[first + 1].at - refreshes[first].at >= 5.0


def test_a_timeout_holds_one_refresh_until_released(desk, sim):
    ensure_healthy(desk, sim)
    since = len(sim.server.faults.log)
    switch(desk, sim, "timeout", True)
    held = wait_until(desk, lambda d: hits(sim, since, "timeout"), "no refresh was held")
    assert sim.device.client.status()["state"] in HOLDS  # in flight: still serving, one request at a time
    assert len(held) == 1 and hits(sim, since)[-1] is held[0]  # nothing sent while it is held
    desk.find_element(By.ID, "faults-release").click()  # else the daemon's 30 s deadline ends it
    offline = status(sim, lambda s: s["state"] == "offline")
    assert offline["last_error_kind"] == "upstream" and "refresh failed" in offline["last_error"]
    switch(desk, sim, "timeout", False)
    recovered(desk, sim)


def test_latency_under_the_deadline_is_only_slow(desk, sim):
    ensure_healthy(desk, sim)
    since = len(sim.server.faults.log)
    switch(desk, sim, "ok", True)  # every answer 3 s late
    wait_until(desk, lambda d: [h for h in hits(sim, since, "ok") if h.outcome == "ok"], "no late refresh", timeout=15)
    switch(desk, sim, "ok", False)  # a request still held answers now
    wait_until(desk, lambda d: all(h.outcome != "pending" for h in hits(sim, since)))
    assert {h.outcome for h in hits(sim, since)} == {"ok"}
    current = sim.device.client.status()
    assert current["state"] in HOLDS and not current["last_error"]  # refreshed normally, never offline


def test_revoke_ends_the_grant_and_a_press_pairs_again(desk, sim):
    ensure_healthy(desk, sim)
    switch(desk, sim, "revoke", True)  # every grant revoked as the next refresh arrives
    ended = status(sim, lambda s: s["state"] == "reauth_required")
    assert ended["last_error_kind"] == "grant_ended" and "invalid_grant" in ended["last_error"]
    wait_state(desk, "reauth_required")
    switch(desk, sim, "revoke", False)
    wait_until(desk, lambda d: d.find_element(By.ID, "led").get_attribute("data-value") != "1")  # fast blink

    click(desk)  # a short press: a new code (docs/screens.md)
    assert pair_by_clicking(desk, sim, user="carol")["account"]["sub"] == "carol"
