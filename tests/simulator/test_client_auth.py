"""The development server's ``private_key_jwt`` (RFC 7523 §2.2 and §3): it verifies each client
assertion against the JWK registered for the client, and refuses what a strict server refuses.

The assertions here are made with pyjwt from a key made with ``cryptography``, not with
devicelink's code, so the server is checked on its own; tests/e2e/test_identity.py then
pairs the real daemon with it.
"""

from __future__ import annotations

import json
import secrets
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devicelink_sim.authserver import DevServer
from devicelink_sim.settings import KEY_CLIENT_ID

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def new_key():
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return key, {**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}


@pytest.fixture(scope="module")
def device():
    return new_key()


@pytest.fixture
def srv(device):
    with DevServer(interval=1) as server:
        server.register_device_key({"keys": [device[1]]})
        yield server


def assertion(key, issuer: str, **claims) -> str:
    now = int(time.time())
    body = {"iss": KEY_CLIENT_ID, "sub": KEY_CLIENT_ID, "aud": issuer, "jti": secrets.token_urlsafe(16),
            "iat": now, "exp": now + 60, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="ES256",
                      headers={"kid": "k1"})


def authorize(srv: DevServer, token: str | None, client_id: str | None = KEY_CLIENT_ID) -> httpx.Response:
    data = {"scope": "openid profile"}
    if client_id is not None:
        data["client_id"] = client_id
    if token is not None:
        data.update(client_assertion_type=ASSERTION_TYPE, client_assertion=token)
    return httpx.post(f"{srv.issuer}/device_authorization", data=data)


def refused(response: httpx.Response) -> str:
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] == "invalid_client"
    return response.json().get("error_description", "")


@pytest.mark.parametrize("audience", ["{issuer}", "{issuer}/token", "{issuer}/device_authorization",
                                      ["https://other.example", "{issuer}"]])
def test_a_good_assertion_pairs_and_every_request_needs_a_new_one(srv, device, audience):
    aud = [a.format(issuer=srv.issuer) for a in audience] if isinstance(audience, list) \
        else audience.format(issuer=srv.issuer)
    token = assertion(device[0], srv.issuer, aud=aud)
    answer = authorize(srv, token)
    assert answer.status_code == 200, answer.text
    assert "used before" in refused(authorize(srv, token))  # a replay, even of a good one
    srv.approve(answer.json()["user_code"])
    poll = httpx.post(f"{srv.issuer}/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": answer.json()["device_code"],
        "client_id": KEY_CLIENT_ID, "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(device[0], srv.issuer)})
    assert poll.status_code == 200 and poll.json()["access_token"]
    assert [a["sub"] for a in srv.assertions] == [KEY_CLIENT_ID] * 2


def test_a_device_key_gets_client_credentials_with_a_new_assertion(srv, device):
    def ask(token: str) -> httpx.Response:
        return httpx.post(f"{srv.issuer}/token", data={
            "grant_type": "client_credentials", "scope": "telemetry.write", "client_id": KEY_CLIENT_ID,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": token})

    token = assertion(device[0], srv.issuer)
    answer = ask(token)
    assert answer.status_code == 200, answer.text
    assert srv.access_token_info(answer.json()["access_token"])["client_id"] == KEY_CLIENT_ID
    assert "used before" in refused(ask(token))
    refused(ask(assertion(new_key()[0], srv.issuer)))


def test_what_a_strict_server_refuses(srv, device):
    other, _ = new_key()
    issuer = srv.issuer
    refused(authorize(srv, None))  # the key client must authenticate
    refused(authorize(srv, assertion(other, issuer)))  # signed by another key
    refused(authorize(srv, assertion(device[0], "https://other.example")))  # not for this server
    refused(authorize(srv, assertion(device[0], issuer, exp=int(time.time()) - 120)))  # expired
    assert "ahead" in refused(authorize(srv, assertion(device[0], issuer, exp=int(time.time()) + 3600)))
    refused(authorize(srv, assertion(device[0], issuer, jti=None)))  # OIDC Core §9: jti required
    refused(authorize(srv, assertion(device[0], issuer, iss="someone-else")))  # iss = sub
    assert "client_id" in refused(authorize(srv, assertion(device[0], issuer), client_id="devicelink-sim"))
    unsigned = jwt.encode({"iss": KEY_CLIENT_ID, "sub": KEY_CLIENT_ID, "aud": issuer, "jti": "x",
                           "exp": int(time.time()) + 60}, None, algorithm="none")
    refused(authorize(srv, unsigned))
    assert srv.assertions == []  # none of them counted as checked
    assert authorize(srv, assertion(device[0], issuer)).status_code == 200  # and a good one still passes


def test_a_private_key_is_never_registered(srv, device):
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(device[0]))
    with pytest.raises(ValueError, match="public key only"):
        srv.register_device_key(private)
