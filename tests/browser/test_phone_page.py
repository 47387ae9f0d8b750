"""The verification page on a phone-sized screen, in headless Chromium: it fits, the code comes filled in
from the QR's address, it says which device asks, the person chooses who signs in, approves or denies,
and sees the result."""

from __future__ import annotations

import httpx
import pytest
from devicelink_sim.authserver import DevServer
from devicelink_sim.settings import DEVICE_CODE_GRANT_TYPE, PUBLIC_CLIENT_ID
from tests.browser.conftest import By, wait_until


@pytest.fixture(scope="module")
def srv():
    with DevServer(interval=1) as server:
        yield server


@pytest.fixture(scope="module")
def phone(chrome):
    return chrome(phone=True)


def authorize(srv: DevServer) -> dict:
    answer = httpx.post(f"{srv.issuer}/device_authorization", data={"client_id": PUBLIC_CLIENT_ID,
                                                                   "scope": "openid profile"})
    assert answer.status_code == 200
    return answer.json()


def poll(srv: DevServer, code: dict) -> dict:
    return httpx.post(f"{srv.issuer}/token", data={"grant_type": DEVICE_CODE_GRANT_TYPE, "client_id": PUBLIC_CLIENT_ID,
                                                   "device_code": code["device_code"]}).json()


def fits_the_screen(driver) -> None:
    """Nothing wider than the phone, inputs large enough not to zoom, buttons large enough to tap."""
    width = driver.execute_script("return window.innerWidth")
    assert width == 390
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    for field in driver.find_elements(By.CSS_SELECTOR, "input[type=text]"):
        if field.is_displayed():
            assert float(field.value_of_css_property("font-size").removesuffix("px")) >= 16
    for button in driver.find_elements(By.TAG_NAME, "button"):
        if button.is_displayed():
            assert button.size["height"] >= 48 and button.size["width"] >= 0.75 * width, button.text


def test_approve_from_the_qr_as_someone_chosen(srv, phone):
    code = authorize(srv)
    phone.get(code["verification_uri_complete"])  # what the device's QR code holds
    fits_the_screen(phone)
    field = phone.find_element(By.ID, "user_code")
    assert field.get_attribute("value") == code["user_code"] and field.get_attribute("readonly")
    assert "Filled in from the QR code" in phone.find_element(By.TAG_NAME, "body").text
    assert phone.find_element(By.ID, "device-name").text == "devicelink development device"
    assert phone.find_element(By.ID, "client-id").text == PUBLIC_CLIENT_ID
    assert phone.find_element(By.ID, "user-alice").is_selected()  # the first user is the default

    phone.find_element(By.ID, "user-bob").click()
    phone.find_element(By.ID, "approve").click()
    result = wait_until(phone, lambda d: d.find_element(By.ID, "result"), "no result page")
    assert result.get_attribute("data-result") == "approved"
    assert phone.find_element(By.ID, "signed-in-as").text == "Bob Example"
    fits_the_screen(phone)

    tokens = poll(srv, code)
    who = httpx.get(f"{srv.issuer}/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert who == {"sub": "bob", "name": "Bob Example"}


def test_type_the_code_then_deny(srv, phone):
    code = authorize(srv)
    phone.get(f"{srv.issuer}/device")  # verification_uri: the person types what the screen shows
    fits_the_screen(phone)
    typed = code["user_code"].lower().replace("-", "")  # RFC 8628 §6.1: case and dashes do not matter
    phone.find_element(By.ID, "user_code").send_keys(typed)
    phone.find_element(By.ID, "continue").click()
    field = wait_until(phone, lambda d: d.find_element(By.ID, "approve") and d.find_element(By.ID, "user_code"))
    assert field.get_attribute("value") == code["user_code"]
    assert "The code you typed." in phone.find_element(By.TAG_NAME, "body").text
    phone.find_element(By.ID, "deny").click()
    result = wait_until(phone, lambda d: d.find_element(By.ID, "result"), "no result page")
    assert result.get_attribute("data-result") == "denied"
    assert poll(srv, code)["error"] == "access_denied"

    phone.back()  # the confirm page again: the code was used, the page says so
    phone.refresh()
    assert "already approved or denied" in phone.find_element(By.ID, "error").text


def test_someone_else_and_a_wrong_code(srv, phone):
    code = authorize(srv)
    phone.get(code["verification_uri_complete"])
    phone.find_element(By.ID, "user-other").click()
    phone.find_element(By.ID, "subject").send_keys("dave")
    phone.find_element(By.ID, "name").send_keys("Dave Example")
    phone.find_element(By.ID, "approve").click()
    assert wait_until(phone, lambda d: d.find_element(By.ID, "signed-in-as")).text == "Dave Example"

    phone.get(f"{srv.issuer}/device?user_code=BCDF-GHJK")
    assert "not valid or has expired" in phone.find_element(By.ID, "error").text
    assert phone.find_element(By.ID, "user_code").get_attribute("value") == "BCDF-GHJK"  # to correct it
    fits_the_screen(phone)
