"""The verification page's content (RFC 8628 §3.3, §5.4): which device is asking, who signs in, the result.

How it looks on a phone, and the QR path, are driven in a real browser in tests/browser/.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import httpx
import pytest

from devicelink.identity.signer import thumbprint
from devicelink_sim.asking import asking
from devicelink_sim.authserver import DevServer
from devicelink_sim.settings import KEY_CLIENT_ID, PUBLIC_CLIENT_ID

JWK = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
       "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}


@pytest.fixture
def srv():
    with DevServer(interval=1) as server:
        yield server


def authorize(http: httpx.Client, client_id: str = PUBLIC_CLIENT_ID, **extra) -> dict:
    answer = http.post("/device_authorization", data={"client_id": client_id, "scope": "openid profile", **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()


def poll(http: httpx.Client, code: dict) -> dict:
    return http.post("/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                     "device_code": code["device_code"], "client_id": PUBLIC_CLIENT_ID}).json()


def test_the_page_says_which_device_asks_and_that_the_code_came_from_the_qr(srv):
    with httpx.Client(base_url=srv.issuer) as http:
        code = authorize(http)
        page = http.get(code["verification_uri_complete"]).text
        assert re.search(r'id="device-name">devicelink development device<', page)
        assert f'id="client-id">{PUBLIC_CLIENT_ID}<' in page and 'id="scope">openid profile<' in page
        assert f'id="user_code" name="user_code" value="{code["user_code"]}" readonly' in page
        assert "Filled in from the QR code." in page
        assert 'id="device-serial"' not in page and 'id="device-key"' not in page  # nothing to show

        typed = http.get("/device", params={"user_code": code["user_code"].lower().replace("-", ""),
                                            "entered": "1"}).text
        assert "The code you typed." in typed and code["user_code"] in typed  # RFC 8628 §6.1: case, punctuation


def test_what_is_known_of_the_device_shows(srv):
    info = asking(KEY_CLIENT_ID, SimpleNamespace(jwks={"keys": [JWK]}))
    assert info.name == "devicelink development device (device key)" and info.key_thumbprint == thumbprint(JWK)
    # A client that registered itself (RFC 7591, issue 11): its client_name and the device's serial.
    info = asking("c-123", SimpleNamespace(metadata={"client_name": "Acme TV", "device_serial": "10000000a1b2c3d4"}))
    assert (info.name, info.serial, info.key_thumbprint) == ("Acme TV", "10000000a1b2c3d4", None)
    assert asking("unknown", None).name == "unknown"
    assert asking("c", SimpleNamespace(metadata={"client_name": " ", "device_serial": 7})).serial is None

    srv.register_device_key(JWK)
    with httpx.Client(base_url=srv.issuer) as http:
        code = srv_authorize_with_key(http, srv)
        page = http.get(code["verification_uri_complete"]).text
        assert f'id="device-key">{thumbprint(JWK)}<' in page


def srv_authorize_with_key(http: httpx.Client, srv: DevServer) -> dict:
    """A device authorization on the private_key_jwt client, as the dev server stores one (no signing here:
    what the page reads is the client's registered key)."""
    from devicelink_sim.records import DeviceCode

    with srv._state.lock:
        credential = DeviceCode(KEY_CLIENT_ID, "openid", "dc-key", "KEYS-ABCD", srv._state.clock() + 600, 1,
                                srv._state.clock)
        srv._state.device_codes[credential.device_code] = credential
        srv._state.user_codes["KEYSABCD"] = credential
    return {"verification_uri_complete": f"{srv.issuer}/device?user_code=KEYS-ABCD"}


@pytest.mark.parametrize("form, who", [
    ({"user": "bob"}, {"sub": "bob", "name": "Bob Example"}),
    ({"user": "", "subject": "dave", "name": "Dave D."}, {"sub": "dave", "name": "Dave D."}),
    ({"user": "", "subject": "erin"}, {"sub": "erin", "name": "Erin Example"}),
    ({}, {"sub": "alice", "name": "Alice Example"}),
])
def test_the_person_chooses_who_signs_in_and_sees_the_result(srv, form, who):
    with httpx.Client(base_url=srv.issuer) as http:
        code = authorize(http)
        page = http.post("/device", data={"user_code": code["user_code"], "action": "approve", **form})
        assert page.status_code == 200
        assert 'data-result="approved"' in page.text and f'id="signed-in-as">{who["name"]}<' in page.text
        assert "devicelink development device" in page.text
        tokens = poll(http, code)
        assert http.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json() == who


def test_deny_shows_the_result_and_a_used_code_is_refused(srv):
    with httpx.Client(base_url=srv.issuer) as http:
        code = authorize(http)
        page = http.post("/device", data={"user_code": code["user_code"], "action": "deny"})
        assert 'data-result="denied"' in page.text and "gets no access" in page.text
        assert poll(http, code)["error"] == "access_denied"
        for again in (http.post("/device", data={"user_code": code["user_code"], "action": "approve"}),
                      http.get(code["verification_uri_complete"])):
            assert again.status_code == 409 and "already approved or denied" in again.text
            assert f'value="{code["user_code"]}"' in again.text  # the code stays filled in
        unknown = http.get("/device", params={"user_code": "BCDF-GHJK"})
        assert unknown.status_code == 404 and "not valid or has expired" in unknown.text
