"""``private_key_jwt`` (RFC 7523 §2.2 and §3, OIDC Core §9): every request's client assertion,
decoded and verified with the device's public JWK by pyjwt, claim by claim; a new one on
every send, retries included. A real key (``cryptography``); no server, no simulator."""

from __future__ import annotations

from urllib.parse import parse_qsl

import jwt
import pytest

from devicelink.identity import filekey
from devicelink.identity.signer import registration_jwk
from devicelink.oauth import auth
from devicelink.oauth.auth.private_key_jwt import ASSERTION_TYPE, LIFETIME
from devicelink.oauth.http import ClientAuth
from tests.helpers import refresh_with_retries

ISSUER, CLIENT = "https://id.example/realms/tv", "tv-0042"
TOKEN = f"{ISSUER}/protocol/openid-connect/token"
DEVICE = f"{ISSUER}/protocol/openid-connect/auth/device"
WALL = 1_900_000_000.75  # the wall clock the method is given (prepare's `now` is monotonic)


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return filekey.create(tmp_path_factory.mktemp("identity") / "identity.jwk")


def method(signer, **kw) -> ClientAuth:
    return ClientAuth(CLIENT, "private_key_jwt", signer=signer, issuer=ISSUER, **{"wall_clock": lambda: WALL, **kw})


def verified(assertion: str, signer, audience) -> dict:
    """The claims, once pyjwt has checked the ES256 signature with the public JWK alone."""
    public = jwt.PyJWK(registration_jwk(signer)).key
    return jwt.decode(assertion, public, algorithms=["ES256"], audience=audience,
                      options={"verify_exp": False, "verify_iat": False})  # WALL is not now


def sent(client_auth: ClientAuth, url: str = TOKEN, form=(("grant_type", "refresh_token"),)) -> auth.Outgoing:
    out = auth.Outgoing("refresh", "POST", url, list(form))
    client_auth.prepare(out, 12.5)
    return out


def test_the_assertion_carries_every_claim_and_verifies_with_the_public_jwk(signer, tmp_path):
    out = sent(method(signer))
    form = dict(out.form)
    assert [name for name, _ in out.form] == ["grant_type", "client_id", "client_assertion_type", "client_assertion"]
    assert form["client_id"] == CLIENT and form["client_assertion_type"] == ASSERTION_TYPE
    assert "authorization" not in out.headers and "client_secret" not in form
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header == {"alg": "ES256", "kid": signer.kid}  # kid: the RFC 7638 thumbprint
    claims = verified(form["client_assertion"], signer, ISSUER)
    assert set(claims) == {"iss", "sub", "aud", "jti", "iat", "exp"}
    assert claims["iss"] == claims["sub"] == CLIENT  # RFC 7523 §3 items 1, 2
    assert claims["aud"] == ISSUER  # one string: the issuer (FAPI 2.0, rfc7523bis)
    assert claims["iat"] == int(WALL) and claims["exp"] == int(WALL) + LIFETIME == claims["iat"] + 60
    assert len(claims["jti"]) >= 22  # 128 random bits
    # a signature by another key does not verify with this device's public JWK
    other = filekey.create(tmp_path / "other.jwk")
    forged = dict(sent(method(other)).form)["client_assertion"]
    with pytest.raises(jwt.InvalidSignatureError):
        verified(forged, signer, ISSUER)


def test_each_send_gets_a_new_jti_and_the_time_it_is_sent(signer):
    clock = [WALL]
    client_auth = method(signer, wall_clock=lambda: clock[0])
    claims = []
    for step in range(5):
        claims.append(verified(dict(sent(client_auth).form)["client_assertion"], signer, ISSUER))
        clock[0] += 7
    assert len({c["jti"] for c in claims}) == 5
    assert [c["iat"] for c in claims] == [int(WALL) + 7 * i for i in range(5)]


@pytest.mark.parametrize("audience, request_url, expected", [
    (("issuer",), DEVICE, ISSUER),
    (("token_endpoint",), DEVICE, TOKEN),  # OIDC Core §9: the token endpoint, at every endpoint
    (("endpoint",), DEVICE, DEVICE),  # Okta: the URL the request goes to
    (("endpoint",), TOKEN, TOKEN),
    (("issuer", "token_endpoint"), TOKEN, [ISSUER, TOKEN]),  # several: a JSON array
    (("token_endpoint", "endpoint"), TOKEN, TOKEN),  # the same URL twice is one string
])
def test_the_audience_is_what_the_config_names(signer, audience, request_url, expected):
    client_auth = method(signer, audience=audience, token_endpoint=lambda: TOKEN)
    claims = verified(dict(sent(client_auth, request_url).form)["client_assertion"], signer,
                      expected if isinstance(expected, str) else expected[0])
    assert claims["aud"] == expected


def test_a_token_endpoint_not_known_yet_falls_back_to_the_request_url(signer):
    client_auth = method(signer, audience=("token_endpoint",))  # no getter: nothing known
    assert verified(dict(sent(client_auth).form)["client_assertion"], signer, TOKEN)["aud"] == TOKEN


def test_a_request_without_client_authentication_gets_no_assertion(signer):
    out = auth.Outgoing("discovery", "GET", f"{ISSUER}/.well-known/openid-configuration", authenticate=False)
    method(signer).prepare(out, 1.0)
    assert out.form == [] and out.headers == {}


def test_it_needs_a_signer_and_a_known_audience(signer):
    with pytest.raises(ValueError, match="needs the device's signer and the issuer"):
        ClientAuth(CLIENT, "private_key_jwt")
    with pytest.raises(ValueError, match="audience must name some of"):
        method(signer, audience=("resource",))
    text = repr(method(signer)) + repr(sent(method(signer)))
    assert "client_assertion" not in text and "eyJ" not in text  # no assertion in a repr


def test_every_send_is_signed_afresh_retries_included(signer):
    """The registered method through the real sending path: two 503s then tokens. Each of the
    three sends carries its own assertion (new jti, iat of its own send), each verifying."""
    wall = [WALL]

    def moved(seconds: float) -> None:  # the wall clock moves with the monotonic one
        wall[0] += seconds

    reply, seen = refresh_with_retries(method(signer, wall_clock=lambda: wall[0]), on_sleep=moved)
    assert reply.status == 200 and len(seen) == 3
    forms = [dict(parse_qsl(r.content.decode())) for r in seen]
    assert all(f["client_id"] == CLIENT and f["client_assertion_type"] == ASSERTION_TYPE for f in forms)
    claims = [verified(f["client_assertion"], signer, ISSUER) for f in forms]
    assert len({c["jti"] for c in claims}) == 3  # never replayed (RFC-CHECKLIST G20)
    assert claims[0]["iat"] < claims[1]["iat"] < claims[2]["iat"]  # minted at each send, after the waits
    assert all(c["exp"] - c["iat"] == LIFETIME for c in claims)
