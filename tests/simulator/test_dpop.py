"""The development server's DPoP (RFC 9449): it checks every proof as a strict server does, binds
tokens to the proof's key (cnf.jkt), binds a public client's refresh token too, wants its nonce
when told to, and its /userinfo takes a bound token only with the DPoP scheme and a proof by its key.

The proofs here are made with pyjwt from a key made with ``cryptography``, not with devicelink's
code, so the server is checked on its own; tests/e2e/test_dpop.py then pairs the real daemon with it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devicelink_sim.authserver import DevServer
from devicelink_sim.settings import DEVICE_CODE_GRANT_TYPE, PUBLIC_CLIENT_ID


class Key:
    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        members = json.dumps({k: self.jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"),
                             sort_keys=True)
        self.jkt = base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()

    def proof(self, htm: str, htu: str, *, header: dict | None = None, algorithm: str = "ES256", key=None,
              **claims) -> str:
        body = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": int(time.time()), **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key or self.private, algorithm=algorithm,
                          headers={"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})})


@pytest.fixture(scope="module")
def key():
    return Key()


def ath(token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()


def post(srv: DevServer, path: str, data: dict, proof: str | None) -> httpx.Response:
    return httpx.post(f"{srv.issuer}{path}", data={"client_id": PUBLIC_CLIENT_ID, **data},
                      headers={"DPoP": proof} if proof is not None else {})


def paired(srv: DevServer, key: Key) -> dict:
    """A device authorization, approved, and its tokens, every request with a proof."""
    code = post(srv, "/device_authorization", {"scope": "openid profile offline_access"},
                key.proof("POST", f"{srv.issuer}/device_authorization")).json()
    srv.approve(code["user_code"])
    answer = post(srv, "/token", {"grant_type": DEVICE_CODE_GRANT_TYPE, "device_code": code["device_code"]},
                  key.proof("POST", f"{srv.issuer}/token"))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_proof_binds_the_tokens_and_the_refresh_token_to_its_key(key):
    with DevServer(interval=1) as srv:
        tokens = paired(srv, key)
        assert tokens["token_type"] == "DPoP"
        info = srv.access_token_info(tokens["access_token"])
        assert info["cnf"] == {"jkt": key.jkt} and info["token_type"] == "DPoP"
        refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        assert post(srv, "/token", refresh, None).json()["error"] == "invalid_grant"  # RFC 9449 §5
        assert post(srv, "/token", refresh, Key().proof("POST", f"{srv.issuer}/token")).json()["error"] == \
            "invalid_grant"
        again = post(srv, "/token", refresh, key.proof("POST", f"{srv.issuer}/token"))
        assert again.status_code == 200 and again.json()["token_type"] == "DPoP"
        # every proof that was good as a proof is recorded; the other key's was refused by the grant
        assert [p["jkt"] == key.jkt for p in srv.dpop_proofs] == [True, True, False, True]

        code = post(srv, "/device_authorization", {"scope": "openid"}, None).json()  # no proof: Bearer, as before
        srv.approve(code["user_code"])
        plain = post(srv, "/token", {"grant_type": DEVICE_CODE_GRANT_TYPE, "device_code": code["device_code"]}, None)
        assert plain.json()["token_type"] == "Bearer" and "cnf" not in srv.access_token_info(plain.json()["access_token"])


@pytest.mark.parametrize("bad, why", [
    (lambda k, url: k.proof("POST", url, header={"typ": "JWT"}), "typ"),
    (lambda k, url: k.proof("POST", url, header={"jwk": {**k.jwk, "d": "AAAA"}}), "public EC key"),
    (lambda k, url: k.proof("POST", url, header={"jwk": Key().jwk}), "not a valid proof"),  # another key signed
    (lambda k, url: k.proof("POST", url, algorithm="HS256", key=b"k" * 32), "alg"),
    (lambda k, url: k.proof("GET", url), "htm"),
    (lambda k, url: k.proof("POST", url.replace("/device_authorization", "/token")), "htu"),
    (lambda k, url: k.proof("POST", url, iat=int(time.time()) - 600), "iat"),
    (lambda k, url: k.proof("POST", url, jti="short"), "jti"),
    (lambda k, url: "not.a.proof", "not a valid proof"),
])
def test_a_bad_proof_is_refused(key, bad, why):
    with DevServer(interval=1) as srv:
        answer = post(srv, "/device_authorization", {"scope": "openid"}, bad(key, f"{srv.issuer}/device_authorization"))
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_dpop_proof", answer.text
        assert why in answer.json()["error_description"]


def test_a_proof_is_good_once(key):
    with DevServer(interval=1) as srv:
        proof = key.proof("POST", f"{srv.issuer}/device_authorization")
        assert post(srv, "/device_authorization", {"scope": "openid"}, proof).status_code == 200
        again = post(srv, "/device_authorization", {"scope": "openid"}, proof)
        assert again.json()["error"] == "invalid_dpop_proof" and "replayed" in again.json()["error_description"]


def test_nonces_when_the_server_wants_them(key):
    with DevServer(interval=1, dpop_nonce=True) as srv:
        url = f"{srv.issuer}/device_authorization"
        first = post(srv, "/device_authorization", {"scope": "openid"}, key.proof("POST", url))
        assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce"
        nonce = first.headers["DPoP-Nonce"]
        ok = post(srv, "/device_authorization", {"scope": "openid"}, key.proof("POST", url, nonce=nonce))
        assert ok.status_code == 200 and ok.headers["DPoP-Nonce"] == nonce  # on success too (§8.2)
        srv.new_dpop_nonce()
        stale = post(srv, "/device_authorization", {"scope": "openid"}, key.proof("POST", url, nonce=nonce))
        assert stale.json()["error"] == "use_dpop_nonce" and stale.headers["DPoP-Nonce"] != nonce
        # a proof with a good nonce is fresh whatever the client's clock says (a board without an RTC)
        old_clock = key.proof("POST", url, nonce=stale.headers["DPoP-Nonce"], iat=int(time.time()) - 86400)
        assert post(srv, "/device_authorization", {"scope": "openid"}, old_clock).status_code == 200


def test_userinfo_takes_a_bound_token_only_with_its_proof(key):
    with DevServer(interval=1, dpop_nonce=True) as srv:
        srv.proofs.require_nonce = False  # pair without the nonce dance; the resource asks for it below
        token = paired(srv, key)["access_token"]
        srv.proofs.require_nonce = True
        url = f"{srv.issuer}/userinfo"

        def call(scheme: str, proof: str | None) -> httpx.Response:
            headers = {"Authorization": f"{scheme} {token}", **({"DPoP": proof} if proof else {})}
            return httpx.get(url, headers=headers)

        bearer = call("Bearer", None)  # RFC 9449 §7.2: a copied token is no Bearer token
        assert bearer.status_code == 401 and bearer.headers["WWW-Authenticate"].startswith('DPoP error="invalid_token"')
        asked = call("DPoP", key.proof("GET", url, ath=ath(token)))
        assert asked.status_code == 401 and 'error="use_dpop_nonce"' in asked.headers["WWW-Authenticate"]
        nonce = asked.headers["DPoP-Nonce"]
        ok = call("DPoP", key.proof("GET", url + "?x=1", ath=ath(token), nonce=nonce))
        assert ok.status_code == 200 and ok.json()["sub"] == "alice"
        assert 'error="invalid_dpop_proof"' in call("DPoP", key.proof("GET", url, nonce=nonce)).headers[
            "WWW-Authenticate"]  # no ath
        assert 'error="invalid_dpop_proof"' in call("DPoP", key.proof("GET", url, ath=ath("other"), nonce=nonce)
                                                    ).headers["WWW-Authenticate"]
        thief = Key()  # a proof by another key: the token is not theirs
        assert 'error="invalid_token"' in call("DPoP", thief.proof("GET", url, ath=ath(token), nonce=nonce)).headers[
            "WWW-Authenticate"]


def test_a_server_without_dpop_ignores_the_proof(key):
    with DevServer(interval=1, dpop=False) as srv:
        tokens = paired(srv, key)
        assert tokens["token_type"] == "Bearer" and srv.dpop_proofs == []
        metadata = httpx.get(f"{srv.issuer}/.well-known/oauth-authorization-server").json()
        assert "dpop_signing_alg_values_supported" not in metadata
        assert httpx.get(f"{srv.issuer}/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
                         ).status_code == 200
