"""The fake authorization server keeps the rules it claims, over a sync ``httpx.Client`` (what ``doctor`` uses)."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.helpers import FakeClock
from tests.support.fake_server import CLIENT_ID, DEVICE_CODE_GRANT, ISSUER, FakeAuthServer

PUBLIC = {"client_id": CLIENT_ID}


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


@pytest.mark.parametrize(("method", "form", "headers", "status"), [
    ("none", PUBLIC, {}, 200),
    ("none", {}, {}, 401),
    ("none", {**PUBLIC, "client_secret": "x"}, {}, 401),
    ("client_secret_basic", {}, basic(CLIENT_ID, "s%3Ar"), 200),  # "s:r", form-encoded first (RFC 6749 §2.3.1)
    ("client_secret_basic", {}, basic(CLIENT_ID, "wrong"), 401),
    ("client_secret_basic", {"client_secret": "s:r"}, basic(CLIENT_ID, "s%3Ar"), 401),  # two methods at once
    ("client_secret_post", {**PUBLIC, "client_secret": "s:r"}, {}, 200),
    ("client_secret_post", PUBLIC, {}, 401),
])
def test_client_authentication_is_checked_strictly(method, form, headers, status):
    fake = FakeAuthServer(FakeClock(), client_auth=method, client_secret="s:r")
    with httpx.Client(transport=fake.transport) as client:
        answer = client.post(f"{ISSUER}/device", data=form, headers=headers)
    assert answer.status_code == status
    assert status == 200 or answer.json() == {"error": "invalid_client"}


def id_token_claims(fake: FakeAuthServer, id_token: str) -> dict:
    """Checked by PyJWT, an implementation of its own: the signature, iss, aud and exp."""
    jwt = pytest.importorskip("jwt")
    return jwt.decode(id_token, fake.id_token_key, algorithms=["HS256"], audience=CLIENT_ID, issuer=ISSUER,
                      options={"verify_iat": False, "verify_exp": False})


def pair(fake: FakeAuthServer, client: httpx.Client, **asked) -> dict:
    code = client.post(f"{ISSUER}/device", data={**PUBLIC, "scope": "openid email offline_access", **asked}).json()
    fake.approve(code["user_code"].lower())  # RFC 8628 §6.1: case and dashes do not matter
    fake.clock.advance(5)
    return client.post(f"{ISSUER}/token", data={**PUBLIC, "grant_type": DEVICE_CODE_GRANT,
                                                 "device_code": code["device_code"]}).json()


def refresh(client: httpx.Client, token: str, **narrower) -> httpx.Response:
    return client.post(f"{ISSUER}/token", data={**PUBLIC, "grant_type": "refresh_token",
                                                 "refresh_token": token, **narrower})


def test_polls_sooner_than_the_interval_are_told_to_slow_down():
    clock = FakeClock()
    fake = FakeAuthServer(clock)
    with httpx.Client(transport=fake.transport) as client:
        code = client.post(f"{ISSUER}/device", data=PUBLIC).json()
        poll = {**PUBLIC, "grant_type": DEVICE_CODE_GRANT, "device_code": code["device_code"]}
        errors = []
        for wait in (4, 5, 15, 600):  # too soon; sooner than 5 + 5; 5 + 2 × 5 is fine; past expires_in
            clock.advance(wait)
            errors.append(client.post(f"{ISSUER}/token", data=poll).json()["error"])
    assert errors == ["slow_down", "slow_down", "authorization_pending", "expired_token"]


@pytest.mark.parametrize(("refusal", "answer"), [("invalid_grant", {"error": "invalid_grant"}), ("empty", None)])
def test_a_replayed_refresh_token_revokes_its_family(refusal, answer):
    fake = FakeAuthServer(FakeClock(), refusal=refusal)
    with httpx.Client(transport=fake.transport) as client:
        first = pair(fake, client)
        second = refresh(client, first["refresh_token"]).json()
        replay = refresh(client, first["refresh_token"])
        assert replay.status_code == 400 and (replay.json() if replay.content else None) == answer
        assert refresh(client, second["refresh_token"]).status_code == 400  # the family is gone
    assert fake.reuse_detections == 1 and not fake.access_token_info(second["access_token"])["active"]


def test_narrowing_never_goes_beyond_the_grant():
    fake = FakeAuthServer(FakeClock(), rotate=False)
    with httpx.Client(transport=fake.transport) as client:
        tokens = pair(fake, client, resource="https://api.example.com")
        rt = tokens["refresh_token"]
        assert refresh(client, rt, scope="email").json()["scope"] == "email"
        assert refresh(client, rt, scope="email profile").json() == {"error": "invalid_scope"}
        assert refresh(client, rt, resource="https://other.example.com").json() == {"error": "invalid_target"}
        narrowed = refresh(client, rt, resource="https://api.example.com").json()
    assert fake.access_token_info(narrowed["access_token"])["aud"] == ["https://api.example.com"]
    claims = id_token_claims(fake, tokens["id_token"])
    assert claims["sub"] == "alice" and claims["name"] == "Alice"
    assert "acr" not in claims and "auth_time" not in claims  # nobody asked for them


def test_revocation_answers_200_even_for_a_token_it_does_not_know():
    fake = FakeAuthServer(FakeClock())
    with httpx.Client(transport=fake.transport) as client:
        tokens = pair(fake, client, acr_values="urn:mfa", max_age="60")
        assert client.post(f"{ISSUER}/revoke", data={**PUBLIC, "token": "nonsense"}).status_code == 200
        assert client.post(f"{ISSUER}/revoke", data={**PUBLIC, "token": tokens["refresh_token"]}).status_code == 200
    assert fake.is_revoked(tokens["refresh_token"]) and fake.is_revoked(tokens["access_token"])
    claims = id_token_claims(fake, tokens["id_token"])
    assert claims["acr"] == "urn:mfa" and claims["auth_time"] == int(fake.wall()) - 5
