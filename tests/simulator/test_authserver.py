"""The development authorization server, over real HTTP on loopback.

Time is stepped with a fake clock; nothing here sleeps.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest

from devicelink_sim.authserver import DevServer
from devicelink_sim.settings import ACR_MFA, ACR_PWD, DEFAULT_RESOURCES, DEVICE_CODE_GRANT_TYPE

USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")
API, MEDIA = DEFAULT_RESOURCES


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_server(clock):
    started = []

    def make(**kwargs) -> DevServer:
        kwargs.setdefault("clock", clock)
        srv = DevServer(**kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def srv(make_server):
    return make_server(interval=5)


@pytest.fixture
def http(srv):
    with httpx.Client(base_url=srv.issuer) as client:
        yield client


# -- helpers: what a public device client sends --


def authorize(http, srv, scope="openid profile", **auth):
    data = {"scope": scope} if scope else {}
    if not auth:
        data["client_id"] = srv.client_id
    response = http.post("/device_authorization", data={**data, **auth.pop("data", {})}, **auth)
    assert response.status_code == 200, response.text
    return response.json()


def poll(http, srv, device_code, **auth):
    data = {"grant_type": DEVICE_CODE_GRANT_TYPE, "device_code": device_code}
    if not auth:
        data["client_id"] = srv.client_id
    return http.post("/token", data={**data, **auth.pop("data", {})}, **auth)


def refresh(http, srv, refresh_token, **extra):
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": srv.client_id}
    return http.post("/token", data={**data, **extra})


def sign_in(http, srv, scope="openid profile") -> dict:
    code = authorize(http, srv, scope)
    srv.approve(code["user_code"])
    response = poll(http, srv, code["device_code"])
    assert response.status_code == 200, response.text
    return response.json()


def authorize_with(http, srv, scope="openid profile", **params) -> dict:
    """A device authorization by the public client with extra parameters (a list repeats one)."""
    response = http.post("/device_authorization", data={"client_id": srv.client_id, "scope": scope, **params})
    assert response.status_code == 200, response.text
    return response.json()


def pair(http, srv, scope="openid profile", approve=None, **params) -> dict:
    """authorize_with, approve (with approve's keyword arguments), poll: the tokens."""
    code = authorize_with(http, srv, scope, **params)
    srv.approve(code["user_code"], **(approve or {}))
    response = poll(http, srv, code["device_code"])
    assert response.status_code == 200, response.text
    return response.json()


def id_claims(tokens: dict) -> dict:
    return jwt.decode(tokens["id_token"], options={"verify_signature": False})


def userinfo(http, access_token):
    return http.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"})


def error(response) -> str:
    assert response.status_code in (400, 401), response.text
    return response.json()["error"]


# -- discovery --


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]
)
def test_discovery_metadata(srv, http, path):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", srv.issuer)
    meta = http.get(path).json()
    assert meta["issuer"] == srv.issuer
    assert meta["device_authorization_endpoint"] == srv.issuer + "/device_authorization"
    assert meta["token_endpoint"] == srv.issuer + "/token"
    assert meta["revocation_endpoint"] == srv.issuer + "/revoke"
    assert meta["jwks_uri"] == srv.issuer + "/jwks"
    assert set(meta["grant_types_supported"]) == {DEVICE_CODE_GRANT_TYPE, "refresh_token", "client_credentials"}
    assert set(meta["token_endpoint_auth_methods_supported"]) == {
        "none",
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    assert meta["token_endpoint_auth_signing_alg_values_supported"] == ["ES256"]
    assert "openid" in meta["scopes_supported"]
    assert "response_types_supported" in meta
    assert http.get(meta["jwks_uri"]).json()["keys"][0]["alg"] == "RS256"


# -- the device grant --


def test_full_device_flow(srv, http):
    code = authorize(http, srv)
    assert USER_CODE.match(code["user_code"])
    assert code["verification_uri"] == srv.issuer + "/device"
    complete = f"{srv.issuer}/device?user_code={code['user_code']}"
    assert code["verification_uri_complete"] == complete
    assert code["expires_in"] == 600
    assert code["interval"] == 5
    assert srv.pending_user_codes() == [code["user_code"]]

    assert error(poll(http, srv, code["device_code"])) == "authorization_pending"

    # RFC 8628 §6.1: case and dashes do not matter.
    srv.approve(code["user_code"].lower().replace("-", ""), subject="bob", name="Bob Builder")
    response = poll(http, srv, code["device_code"])  # right away: approval wins over slow_down
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["scope"] == "openid profile"
    assert tokens["refresh_token"] and tokens["id_token"]
    assert userinfo(http, tokens["access_token"]).json() == {"sub": "bob", "name": "Bob Builder"}

    # A device code gives one set of tokens.
    assert error(poll(http, srv, code["device_code"])) == "invalid_grant"
    assert srv.pending_user_codes() == []
    with pytest.raises(KeyError):
        srv.approve(code["user_code"])

    stats = srv.stats
    assert stats.device_authorizations == 1
    assert stats.token_requests == {DEVICE_CODE_GRANT_TYPE: 3}
    assert [e.outcome for e in stats.token_log] == ["authorization_pending", "ok", "invalid_grant"]


def test_scope_defaults_and_unknown_scope(srv, http):
    tokens = sign_in(http, srv, scope=None)
    assert tokens["scope"] == "profile"
    assert "id_token" not in tokens  # only with openid

    data = {"client_id": srv.client_id, "scope": "openid admin"}
    assert error(http.post("/device_authorization", data=data)) == "invalid_scope"


def test_slow_down_when_polling_faster_than_interval(srv, http, clock):
    code = authorize(http, srv)
    device_code = code["device_code"]

    assert error(poll(http, srv, device_code)) == "authorization_pending"  # the first poll is never too soon
    clock.advance(4)
    assert error(poll(http, srv, device_code)) == "slow_down"  # interval is now 10 (RFC 8628 §3.5)
    clock.advance(9)
    assert error(poll(http, srv, device_code)) == "slow_down"  # ... and now 15
    clock.advance(15)
    assert error(poll(http, srv, device_code)) == "authorization_pending"
    clock.advance(15)
    assert error(poll(http, srv, device_code)) == "authorization_pending"

    times = [event.at for event in srv.stats.token_log]
    assert times == [1000, 1004, 1013, 1028, 1043]


def test_deny_gives_access_denied(srv, http):
    code = authorize(http, srv)
    response = http.post("/sim/deny", json={"user_code": code["user_code"]})
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert error(poll(http, srv, code["device_code"])) == "access_denied"
    # A denial is final: the device was told access_denied and stopped; no approval may follow.
    again = http.post("/sim/approve", json={"user_code": code["user_code"]})
    assert again.status_code == 409 and again.json() == {"error": "already_decided"}
    with pytest.raises(KeyError):
        srv.approve(code["user_code"])
    assert error(poll(http, srv, code["device_code"])) == "access_denied"


def test_an_approval_cannot_be_turned_into_a_denial(srv, http):
    code = authorize(http, srv)
    srv.approve(code["user_code"], "carol")
    assert http.post("/sim/deny", json={"user_code": code["user_code"]}).status_code == 409
    tokens = poll(http, srv, code["device_code"]).json()
    assert userinfo(http, tokens["access_token"]).json()["sub"] == "carol"


def test_expired_device_code(make_server, clock):
    srv = make_server(device_code_lifetime=30, interval=0)
    with httpx.Client(base_url=srv.issuer) as http:
        code = authorize(http, srv)
        assert code["expires_in"] == 30
        clock.advance(29)
        assert error(poll(http, srv, code["device_code"])) == "authorization_pending"
        clock.advance(1)
        assert srv.pending_user_codes() == []
        with pytest.raises(KeyError):
            srv.approve(code["user_code"])
        assert http.post("/sim/approve", json={"user_code": code["user_code"]}).status_code == 404
        assert error(poll(http, srv, code["device_code"])) == "expired_token"


def test_sim_approve_endpoint(srv, http):
    code = authorize(http, srv)
    user_code = code["user_code"].replace("-", "").lower()
    body = {"user_code": user_code, "subject": "carol", "name": "Carol"}
    response = http.post("/sim/approve", json=body)
    assert response.status_code == 200 and response.json() == {"ok": True}
    tokens = poll(http, srv, code["device_code"]).json()
    assert userinfo(http, tokens["access_token"]).json() == {"sub": "carol", "name": "Carol"}

    response = http.post("/sim/approve", json={"user_code": "BCDF-GHJK"})
    assert response.status_code == 404 and response.json() == {"error": "unknown_user_code"}
    assert http.post("/sim/deny", json={"user_code": "BCDF-GHJK"}).status_code == 404
    assert http.post("/sim/approve", content=b"not json").status_code == 400
    with pytest.raises(KeyError):
        srv.deny("BCDF-GHJK")


def test_unknown_client_and_missing_device_code(srv, http):
    response = http.post("/device_authorization", data={"client_id": "nobody"})
    assert error(response) == "invalid_client"
    data = {"grant_type": DEVICE_CODE_GRANT_TYPE, "client_id": srv.client_id}
    assert error(http.post("/token", data=data)) == "invalid_request"
    assert error(poll(http, srv, "no-such-code")) == "invalid_grant"


# -- refresh --


def test_refresh_rotates_and_reuse_revokes_the_family(srv, http):
    first = sign_in(http, srv)

    response = refresh(http, srv, first["refresh_token"])
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["scope"] == "openid profile"
    assert "id_token" in second
    assert not srv.revoked(first["refresh_token"])  # rotated away, not revoked
    assert not srv.revoked(second["refresh_token"])

    third = refresh(http, srv, second["refresh_token"]).json()
    assert srv.stats.reuse_detections == 0 and srv.stats.grace_reuses == 0

    # RFC 9700 §4.14.2: a rotated-away token whose successor was already used comes
    # back, so a stale copy exists somewhere; everything goes.
    assert error(refresh(http, srv, first["refresh_token"])) == "invalid_grant"
    assert srv.stats.reuse_detections == 1 and srv.stats.grace_reuses == 0
    assert srv.revoked(third["refresh_token"])
    assert error(refresh(http, srv, third["refresh_token"])) == "invalid_grant"
    for access_token in (first["access_token"], second["access_token"], third["access_token"]):
        assert userinfo(http, access_token).status_code == 401
    with pytest.raises(KeyError):
        srv.revoked("never-issued")

    outcomes = [(e.grant_type, e.outcome) for e in srv.stats.token_log]
    assert outcomes[-4:] == [
        ("refresh_token", "ok"),
        ("refresh_token", "ok"),
        ("refresh_token", "invalid_grant"),
        ("refresh_token", "invalid_grant"),
    ]
    assert srv.stats.token_requests["refresh_token"] == 4


def test_grace_a_crash_between_rotation_and_save_is_not_reuse(srv, http):
    # The client presents a token, the server rotates, the client dies before saving
    # the successor and comes back with the old token: allowed while the successor was
    # never used (Okta's grace period, Auth0's reuse interval), and counted.
    first = sign_in(http, srv)
    lost = refresh(http, srv, first["refresh_token"]).json()  # never saved
    again = refresh(http, srv, first["refresh_token"])
    assert again.status_code == 200
    kept = again.json()
    assert kept["refresh_token"] not in (first["refresh_token"], lost["refresh_token"])
    assert srv.stats.grace_reuses == 1 and srv.stats.reuse_detections == 0
    # ... as many times as the client crashes at that point
    kept = refresh(http, srv, first["refresh_token"]).json()
    assert srv.stats.grace_reuses == 2 and srv.stats.reuse_detections == 0

    # Once the successor is used, the old token's grace is over: reuse, the grant goes.
    fourth = refresh(http, srv, kept["refresh_token"]).json()
    assert srv.stats.reuse_detections == 0 and not srv.revoked(fourth["refresh_token"])
    assert error(refresh(http, srv, first["refresh_token"])) == "invalid_grant"
    assert srv.stats.reuse_detections == 1
    assert srv.revoked(fourth["refresh_token"])
    assert userinfo(http, fourth["access_token"]).status_code == 401


def test_grace_supersedes_the_unused_successor(srv, http):
    # A successor replaced by a grace reuse was superseded: a client that presents it
    # kept a copy it should not have (or fell back to a stale state), and that is reuse.
    first = sign_in(http, srv)
    superseded = refresh(http, srv, first["refresh_token"]).json()
    kept = refresh(http, srv, first["refresh_token"]).json()
    assert srv.stats.grace_reuses == 1
    assert error(refresh(http, srv, superseded["refresh_token"])) == "invalid_grant"
    assert srv.stats.reuse_detections == 1
    assert srv.revoked(kept["refresh_token"])
    assert error(refresh(http, srv, kept["refresh_token"])) == "invalid_grant"
    assert srv.stats.reuse_detections == 1  # an already revoked grant is not counted again


def test_concurrent_refreshes_with_one_token_leave_one_live_token(srv, http):
    # Two refreshes racing with the same token (checklist G24): the server takes them
    # one after the other, so the second is a grace reuse and both get tokens, but
    # only the one the server issued last stays live. A client that kept the other
    # is caught at its next refresh, and the grant is gone.
    tokens = sign_in(http, srv)
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: refresh(http, srv, tokens["refresh_token"]), range(2)))
    assert [r.status_code for r in responses] == [200, 200]
    assert srv.stats.grace_reuses == 1 and srv.stats.reuse_detections == 0
    issued = {r.json()["refresh_token"] for r in responses}
    live = srv.issued_refresh_tokens()[-1]
    (superseded,) = issued - {live}
    assert error(refresh(http, srv, superseded)) == "invalid_grant"
    assert srv.stats.reuse_detections == 1
    assert srv.revoked(live)


def test_refresh_without_rotation_keeps_the_refresh_token(make_server):
    srv = make_server(rotate_refresh_tokens=False, interval=0)
    with httpx.Client(base_url=srv.issuer) as http:
        tokens = sign_in(http, srv)
        for _ in range(2):
            response = refresh(http, srv, tokens["refresh_token"])
            assert response.status_code == 200
            assert "refresh_token" not in response.json()
        assert srv.stats.reuse_detections == 0
        assert not srv.revoked(tokens["refresh_token"])


def test_refresh_with_narrower_scope(srv, http):
    tokens = sign_in(http, srv, scope="openid profile email")
    narrow = refresh(http, srv, tokens["refresh_token"], scope="profile").json()
    assert narrow["scope"] == "profile"
    assert "id_token" not in narrow
    assert narrow["refresh_token"] != tokens["refresh_token"]  # rotated like any refresh
    # The server's own record agrees: the token is good for "profile" alone.
    assert srv.access_token_info(narrow["access_token"])["scope"] == "profile"
    assert srv.access_token_info(tokens["access_token"])["scope"] == "openid profile email"
    # RFC 6749 §6: the new refresh token keeps the original scope ...
    wide = refresh(http, srv, narrow["refresh_token"]).json()
    assert wide["scope"] == "openid profile email"
    two = refresh(http, srv, wide["refresh_token"], scope="email openid").json()
    assert two["scope"] == "email openid" and "id_token" in two
    assert srv.access_token_info(two["access_token"])["scope"] == "email openid"
    assert srv.stats.narrowed_refreshes == 2


def test_refresh_can_never_widen_and_a_refused_refresh_changes_nothing(srv, http):
    tokens = sign_in(http, srv, scope="openid profile")
    for scope in ("openid email", "admin", "offline_access"):
        response = refresh(http, srv, tokens["refresh_token"], scope=scope)
        assert error(response) == "invalid_scope"
    # Refused before anything was issued: the refresh token was not rotated away, so
    # using it again is neither a grace reuse nor reuse.
    assert srv._state.refresh_token_standing(tokens["refresh_token"]) == "current"
    again = refresh(http, srv, tokens["refresh_token"], scope="openid")
    assert again.status_code == 200 and again.json()["scope"] == "openid"
    stats = srv.stats
    assert stats.reuse_detections == 0 and stats.grace_reuses == 0
    assert stats.narrowed_refreshes == 4  # requests, whatever their outcome
    assert [(e.outcome, e.scope) for e in stats.token_log if e.grant_type == "refresh_token"] == [
        ("invalid_scope", "openid email"),
        ("invalid_scope", "admin"),
        ("invalid_scope", "offline_access"),
        ("ok", "openid"),
    ]


def test_narrowed_refresh_rotates_under_the_grace_rule(srv, http):
    # A narrowed refresh rotates the refresh token like any other: the grace rule
    # (successor never used) and reuse detection apply unchanged, and the successor
    # carries the grant's whole scope.
    first = sign_in(http, srv)
    lost = refresh(http, srv, first["refresh_token"], scope="profile").json()  # never saved
    assert lost["scope"] == "profile"
    kept = refresh(http, srv, first["refresh_token"], scope="openid")  # grace
    assert kept.status_code == 200 and kept.json()["scope"] == "openid"
    assert srv.stats.grace_reuses == 1 and srv.stats.reuse_detections == 0
    full = refresh(http, srv, kept.json()["refresh_token"]).json()
    assert full["scope"] == "openid profile"
    # The superseded successor, even narrowed, is reuse: the whole grant goes.
    assert error(refresh(http, srv, lost["refresh_token"], scope="profile")) == "invalid_grant"
    assert srv.stats.reuse_detections == 1
    assert srv.revoked(full["refresh_token"])
    assert not srv.access_token_info(full["access_token"])["active"]


def test_token_lifetimes(make_server, clock):
    srv = make_server(access_token_lifetime=60, refresh_token_lifetime=300, interval=0)
    with httpx.Client(base_url=srv.issuer) as http:
        tokens = sign_in(http, srv)
        assert tokens["expires_in"] == 60
        clock.advance(59)
        assert userinfo(http, tokens["access_token"]).status_code == 200
        clock.advance(1)
        response = userinfo(http, tokens["access_token"])
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"

        clock.advance(240)
        assert error(refresh(http, srv, tokens["refresh_token"])) == "invalid_grant"


# -- revocation (RFC 7009) --


def test_revocation(srv, http):
    tokens = sign_in(http, srv)

    # An access token alone: the refresh token still works.
    response = http.post("/revoke", data={"token": tokens["access_token"], "client_id": srv.client_id})
    assert response.status_code == 200
    assert userinfo(http, tokens["access_token"]).status_code == 401
    fresh = refresh(http, srv, tokens["refresh_token"]).json()
    assert userinfo(http, fresh["access_token"]).status_code == 200

    # A refresh token takes the grant's access tokens with it.
    response = http.post(
        "/revoke",
        data={"token": fresh["refresh_token"], "token_type_hint": "refresh_token", "client_id": srv.client_id},
    )
    assert response.status_code == 200
    assert srv.revoked(fresh["refresh_token"])
    assert userinfo(http, fresh["access_token"]).status_code == 401
    assert error(refresh(http, srv, fresh["refresh_token"])) == "invalid_grant"
    assert srv.stats.revocations == 2
    assert srv.stats.reuse_detections == 0

    # Unknown tokens: still 200 (RFC 7009 §2.2).
    response = http.post("/revoke", data={"token": "nonsense", "client_id": srv.client_id})
    assert response.status_code == 200
    assert srv.stats.revocations == 2


def test_userinfo_needs_a_bearer_token(srv, http):
    assert http.get("/userinfo").status_code == 401
    assert userinfo(http, "nonsense").status_code == 401


# -- the confidential client --


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_confidential_client(srv, http, method):
    if method == "client_secret_basic":
        auth = {"auth": (srv.confidential_client_id, srv.client_secret)}
    else:
        auth = {"data": {"client_id": srv.confidential_client_id, "client_secret": srv.client_secret}}

    code = authorize(http, srv, **dict(auth))
    srv.approve(code["user_code"])
    response = poll(http, srv, code["device_code"], **dict(auth))
    assert response.status_code == 200
    tokens = response.json()
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert claims["aud"] == srv.confidential_client_id

    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    response = http.post("/token", data={**data, **auth.get("data", {})}, auth=auth.get("auth"))
    assert response.status_code == 200

    # The public client cannot use the confidential client's refresh token.
    assert error(refresh(http, srv, response.json()["refresh_token"])) == "invalid_grant"

    response = http.post(
        "/revoke", data={"token": tokens["access_token"], **auth.get("data", {})}, auth=auth.get("auth")
    )
    assert response.status_code == 200
    assert srv.stats.revocations == 1


def test_confidential_client_must_authenticate(srv, http):
    basic = (srv.confidential_client_id, srv.client_secret)
    code = authorize(http, srv, data={"client_id": srv.confidential_client_id}, auth=basic)
    srv.approve(code["user_code"])
    # client_id alone ("none") is refused for a client that has a secret.
    response = poll(http, srv, code["device_code"], data={"client_id": srv.confidential_client_id})
    assert error(response) == "invalid_client"
    response = poll(http, srv, code["device_code"], auth=(srv.confidential_client_id, "wrong"))
    assert response.status_code == 401
    assert error(response) == "invalid_client"
    # And the public client cannot redeem a device code issued to another client.
    assert error(poll(http, srv, code["device_code"])) == "unauthorized_client"


# -- the client credentials grant (RFC 6749 §4.4) --


def client_credentials(http, srv, **data):
    return http.post("/token", data={"grant_type": "client_credentials", **data},
                     auth=(srv.confidential_client_id, srv.client_secret))


def test_client_credentials_give_the_confidential_client_a_token_of_its_own(srv, http, clock):
    response = client_credentials(http, srv, scope="telemetry.write")
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == "telemetry.write" and tokens["expires_in"] == 3600
    assert "refresh_token" not in tokens and "id_token" not in tokens  # §4.4.3
    info = srv.access_token_info(tokens["access_token"])
    assert info["active"] and info["client_id"] == srv.confidential_client_id and info["sub"] is None
    assert info["acr"] is None and info["aud"] is None
    assert userinfo(http, tokens["access_token"]).status_code == 401  # no user to describe
    assert srv.stats.token_requests["client_credentials"] == 1

    post = http.post("/token", data={"grant_type": "client_credentials", "scope": "updates.read", "resource": API,
                                     "client_id": srv.confidential_client_id, "client_secret": srv.client_secret})
    assert post.status_code == 200 and srv.access_token_info(post.json()["access_token"])["aud"] == API
    assert http.post("/revoke", data={"token": tokens["access_token"]},
                     auth=(srv.confidential_client_id, srv.client_secret)).status_code == 200
    assert not srv.access_token_info(tokens["access_token"])["active"]


def test_client_credentials_refusals(srv, http):
    assert error(client_credentials(http, srv, scope="openid")) == "invalid_scope"  # a user's scope
    assert error(client_credentials(http, srv, scope="telemetry.write", resource=[API, MEDIA])) == "invalid_target"
    assert error(client_credentials(http, srv, resource="https://unknown.example")) == "invalid_target"
    wrong = http.post("/token", data={"grant_type": "client_credentials"}, auth=(srv.confidential_client_id, "x"))
    assert wrong.status_code == 401 and error(wrong) == "invalid_client"
    public = http.post("/token", data={"grant_type": "client_credentials", "client_id": srv.client_id})
    assert error(public) == "unauthorized_client"  # confidential clients only


# -- ID tokens --


def test_id_token_verifies_against_jwks(srv, http):
    tokens = sign_in(http, srv)
    meta = http.get("/.well-known/openid-configuration").json()
    keys = jwt.PyJWKSet.from_dict(http.get(meta["jwks_uri"]).json())
    header = jwt.get_unverified_header(tokens["id_token"])
    assert header["alg"] == "RS256"
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    claims = jwt.decode(
        tokens["id_token"],
        key.key,
        algorithms=["RS256"],
        audience=srv.client_id,
        issuer=srv.issuer,
        options={"require": ["iss", "sub", "aud", "iat", "exp"]},
    )
    assert claims["sub"] == "alice"
    assert claims["name"] == "Alice Example"
    assert claims["exp"] - claims["iat"] == 3600


# -- the verification page --


def test_verification_page(srv, http):
    code = authorize(http, srv)
    page = http.get("/device")
    assert page.status_code == 200 and 'name="user_code"' in page.text

    page = http.get(code["verification_uri_complete"])
    assert page.status_code == 200
    assert code["user_code"] in page.text
    assert srv.client_id in page.text
    assert 'value="approve"' in page.text and 'value="deny"' in page.text

    form = {"user_code": code["user_code"], "subject": "dave", "name": "Dave", "action": "approve"}
    page = http.post("/device", data=form)
    assert page.status_code == 200 and "Approved" in page.text
    tokens = poll(http, srv, code["device_code"]).json()
    assert userinfo(http, tokens["access_token"]).json() == {"sub": "dave", "name": "Dave"}


def test_verification_page_deny_and_bad_codes(srv, http):
    code = authorize(http, srv)
    page = http.post("/device", data={"user_code": code["user_code"], "action": "deny"})
    assert page.status_code == 200 and "Denied" in page.text
    assert error(poll(http, srv, code["device_code"])) == "access_denied"

    page = http.get("/device", params={"user_code": "<script>x</script>"})
    assert page.status_code == 404
    assert "<script>x" not in page.text and "&lt;script&gt;" in page.text
    page = http.post("/device", data={"user_code": "BCDF-GHJK", "action": "approve"})
    assert page.status_code == 404


# -- resource indicators (RFC 8707) --


def test_resource_on_device_authorization_becomes_the_audience(srv, http):
    tokens = pair(http, srv, resource=API)
    info = srv.access_token_info(tokens["access_token"])
    assert info["aud"] == API and info["resource"] == (API,)
    assert info["scope"] == "openid profile"

    # A refresh without `resource` keeps the grant's audience ...
    plain = refresh(http, srv, tokens["refresh_token"]).json()
    assert srv.access_token_info(plain["access_token"])["aud"] == API
    # ... and may only name resources the device authorization named.
    response = refresh(http, srv, plain["refresh_token"], resource=MEDIA)
    assert error(response) == "invalid_target"
    assert response.json()["error_description"]
    assert error(refresh(http, srv, plain["refresh_token"], resource="https://evil.example.com")) == "invalid_target"
    # Refused without rotating: the same refresh token still works, and that is no reuse.
    both = refresh(http, srv, plain["refresh_token"], resource=API, scope="profile").json()
    info = srv.access_token_info(both["access_token"])
    assert (info["aud"], info["scope"]) == (API, "profile")
    assert srv.stats.reuse_detections == 0 and srv.stats.grace_reuses == 0
    assert srv.stats.resource_refreshes == 3
    assert srv.stats.narrowed_refreshes == 1
    assert [(e.outcome, e.scope, e.resource) for e in srv.stats.token_log if e.grant_type == "refresh_token"] == [
        ("ok", None, ()),
        ("invalid_target", None, (MEDIA,)),
        ("invalid_target", None, ("https://evil.example.com",)),
        ("ok", "profile", (API,)),
    ]


def test_resource_on_refresh_when_the_device_authorization_named_none(srv, http):
    # Chosen rule: a grant whose device authorization named no resource may be
    # refreshed for any resource the server knows (oidc-provider is stricter).
    tokens = sign_in(http, srv)
    assert srv.access_token_info(tokens["access_token"])["aud"] is None
    rotated = tokens["refresh_token"]
    for resource in (MEDIA, API):
        response = refresh(http, srv, rotated, resource=resource)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["scope"] == "openid profile"
        assert srv.access_token_info(body["access_token"])["aud"] == resource
        rotated = body["refresh_token"]
    assert error(refresh(http, srv, rotated, resource="https://unknown.example.com")) == "invalid_target"
    plain = refresh(http, srv, rotated).json()
    assert srv.access_token_info(plain["access_token"])["resource"] == ()


def test_several_resources(srv, http):
    code = authorize_with(http, srv, resource=[API, MEDIA])
    page = http.get(code["verification_uri_complete"]).text
    assert f"To use</dt><dd>{API}, {MEDIA}</dd>" in page
    srv.approve(code["user_code"])
    # A poll may narrow the audience too (RFC 8707 §2.2), to resources that were asked for.
    assert error(poll(http, srv, code["device_code"], data={"client_id": srv.client_id,
                                                            "resource": "https://other.example.com"})) \
        == "invalid_target"
    tokens = poll(http, srv, code["device_code"]).json()  # the device code was not used up
    info = srv.access_token_info(tokens["access_token"])
    assert info["aud"] == [API, MEDIA] and info["resource"] == (API, MEDIA)
    one = refresh(http, srv, tokens["refresh_token"], resource=MEDIA).json()
    assert srv.access_token_info(one["access_token"])["aud"] == MEDIA

    code = authorize_with(http, srv, resource=[API, MEDIA])
    srv.approve(code["user_code"])
    narrowed = poll(http, srv, code["device_code"], data={"client_id": srv.client_id, "resource": API}).json()
    assert srv.access_token_info(narrowed["access_token"])["aud"] == API
    # The grant still covers both.
    other = refresh(http, srv, narrowed["refresh_token"], resource=MEDIA).json()
    assert srv.access_token_info(other["access_token"])["aud"] == MEDIA


@pytest.mark.parametrize("resource", [
    "https://unknown.example.com",
    "https://api.example.com/",  # not exactly a known one
    "https://api.example.com#frag",
    "api.example.com",
    "",
])
def test_unknown_resource_at_device_authorization(srv, http, resource):
    data = {"client_id": srv.client_id, "scope": "openid", "resource": [API, resource]}
    response = http.post("/device_authorization", data=data)
    assert error(response) == "invalid_target"
    assert srv.stats.device_authorizations == 0
    assert srv.pending_user_codes() == []


def test_resources_setting(make_server):
    srv = make_server(resources=("urn:example:printer", "https://print.example.com/v2"))
    with httpx.Client(base_url=srv.issuer) as http:
        tokens = pair(http, srv, resource="urn:example:printer")
        assert srv.access_token_info(tokens["access_token"])["aud"] == "urn:example:printer"
        response = http.post("/device_authorization", data={"client_id": srv.client_id, "resource": API})
        assert error(response) == "invalid_target"
    for bad in (["https://x.example.com#f"], ["relative/path"], "https://a.example.com"):
        with pytest.raises(ValueError, match="resource"):
            DevServer(resources=bad)


# -- step-up (RFC 9470): acr_values, max_age --


def test_discovery_advertises_acr_values_only_when_honoured(make_server):
    honouring = make_server()
    ignoring = make_server(honour_step_up=False)
    meta = httpx.get(honouring.issuer + "/.well-known/openid-configuration").json()
    assert meta["acr_values_supported"] == [ACR_PWD, ACR_MFA]
    assert {"acr", "auth_time"} <= set(meta["claims_supported"])
    meta = httpx.get(ignoring.issuer + "/.well-known/oauth-authorization-server").json()
    assert "acr_values_supported" not in meta


def test_step_up_is_a_new_grant_with_the_asked_acr(srv, http):
    first = pair(http, srv)
    assert id_claims(first)["acr"] == ACR_PWD  # nothing asked: the ordinary sign-in

    code = authorize_with(http, srv, acr_values=f"urn:example:unknown {ACR_MFA}", max_age="300")
    page = http.get(code["verification_uri_complete"])
    assert "stronger sign-in (mfa)" in page.text
    assert "within the last 300 seconds" in page.text
    srv.approve(code["user_code"])  # the first supported value asked for is achieved
    stepped = poll(http, srv, code["device_code"]).json()
    claims = id_claims(stepped)
    assert claims["acr"] == ACR_MFA
    assert abs(claims["iat"] - claims["auth_time"]) <= 1
    info = srv.access_token_info(stepped["access_token"])
    assert info["acr"] == ACR_MFA and info["auth_time"] == claims["auth_time"]
    assert info["acr_values"] == ("urn:example:unknown", ACR_MFA) and info["max_age"] == 300

    # A refresh keeps the grant's acr and auth_time.
    again = refresh(http, srv, stepped["refresh_token"]).json()
    assert (id_claims(again)["acr"], id_claims(again)["auth_time"]) == (ACR_MFA, claims["auth_time"])
    assert srv.access_token_info(again["access_token"])["acr"] == ACR_MFA

    # The first grant is untouched: its refresh token still works, at its own acr.
    old = refresh(http, srv, first["refresh_token"])
    assert old.status_code == 200
    assert id_claims(old.json())["acr"] == ACR_PWD
    assert srv.access_token_info(old.json()["access_token"])["grant"] != info["grant"]
    assert srv.stats.reuse_detections == 0


def test_approve_with_an_explicit_acr(srv, http):
    # The user (or a server that failed the step-up) may end with a different acr.
    tokens = pair(http, srv, acr_values=ACR_MFA, approve={"acr": ACR_PWD})
    assert id_claims(tokens)["acr"] == ACR_PWD
    tokens = pair(http, srv, approve={"acr": ACR_MFA})
    assert id_claims(tokens)["acr"] == ACR_MFA
    code = authorize_with(http, srv, acr_values=ACR_PWD)
    assert "stronger sign-in" not in http.get(code["verification_uri_complete"]).text
    with pytest.raises(ValueError, match="acr"):
        srv.approve(code["user_code"], acr="urn:example:unknown")
    response = http.post("/sim/approve", json={"user_code": code["user_code"], "acr": "nope"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert http.post("/sim/approve", json={"user_code": code["user_code"], "acr": ACR_MFA}).status_code == 200
    assert id_claims(poll(http, srv, code["device_code"]).json())["acr"] == ACR_MFA


def test_max_age_against_an_older_session(srv, http):
    # session_age: the user signed in 600 s ago. Without max_age that sign-in is reused
    # (auth_time 600 s back); max_age=300 makes the server ask for a fresh one.
    reused = id_claims(pair(http, srv, approve={"session_age": 600}))
    assert 599 <= reused["iat"] - reused["auth_time"] <= 601
    fresh = id_claims(pair(http, srv, max_age="300", approve={"session_age": 600}))
    assert abs(fresh["iat"] - fresh["auth_time"]) <= 1
    recent = id_claims(pair(http, srv, max_age="900", approve={"session_age": 600}))
    assert 599 <= recent["iat"] - recent["auth_time"] <= 601

    for bad in ("-1", "1.5", "soon", "٣"):
        response = http.post("/device_authorization", data={"client_id": srv.client_id, "max_age": bad})
        assert error(response) == "invalid_request"
    with pytest.raises(ValueError):
        srv.approve(authorize(http, srv)["user_code"], session_age=-1)


def test_step_up_ignored_when_not_honoured(make_server):
    srv = make_server(honour_step_up=False)
    with httpx.Client(base_url=srv.issuer) as http:
        code = authorize_with(http, srv, acr_values=ACR_MFA, max_age="300")
        page = http.get(code["verification_uri_complete"]).text
        assert "stronger sign-in" not in page and "seconds" not in page
        with pytest.raises(ValueError, match="honour_step_up"):
            srv.approve(code["user_code"], acr=ACR_MFA)
        srv.approve(code["user_code"], session_age=600)
        tokens = poll(http, srv, code["device_code"]).json()
        claims = id_claims(tokens)
        assert claims["acr"] == ACR_PWD  # not what was asked for
        assert 599 <= claims["iat"] - claims["auth_time"] <= 601  # max_age not applied
        info = srv.access_token_info(tokens["access_token"])
        assert info["acr"] == ACR_PWD
        # What the device sent is still on record, for tests of the device.
        assert info["acr_values"] == (ACR_MFA,) and info["max_age"] == 300
        # A server that ignores max_age does not reject a malformed one either.
        response = http.post("/device_authorization", data={"client_id": srv.client_id, "max_age": "soon"})
        assert response.status_code == 200


# -- access_token_info --


def test_access_token_info(make_server, clock):
    srv = make_server(access_token_lifetime=60, interval=0)
    with httpx.Client(base_url=srv.issuer) as http:
        assert srv.access_token_info("never-issued") is None
        tokens = pair(http, srv, approve={"subject": "bob"})
        assert srv.access_token_info(tokens["refresh_token"]) is None  # access tokens only
        info = srv.access_token_info(tokens["access_token"])
        assert info["active"] is True
        assert (info["client_id"], info["sub"], info["name"]) == (srv.client_id, "bob", "Bob Example")
        assert info["exp"] - info["iat"] == 60 and info["expires_in"] == 60
        clock.advance(45)
        info = srv.access_token_info(tokens["access_token"])
        assert info["expires_in"] == 15 and info["exp"] - info["iat"] == 60
        clock.advance(15)
        assert srv.access_token_info(tokens["access_token"])["active"] is False

        tokens = refresh(http, srv, tokens["refresh_token"]).json()
        assert srv.access_token_info(tokens["access_token"])["active"] is True
        http.post("/revoke", data={"token": tokens["refresh_token"], "client_id": srv.client_id})
        assert srv.access_token_info(tokens["access_token"])["active"] is False


# -- the fault-injection seam --


def test_around_token_hook_sees_every_token_request(srv, http):
    srv.around_token = lambda respond: ("busy", 503)
    code = authorize(http, srv)
    assert poll(http, srv, code["device_code"]).status_code == 503
    srv.around_token = lambda respond: respond()
    assert error(poll(http, srv, code["device_code"])) == "authorization_pending"
    assert [e.outcome for e in srv.stats.token_log] == ["http_503", "authorization_pending"]


# -- running it on its own --


def test_port_in_use_raises_oserror():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(OSError):
            DevServer(port=taken.getsockname()[1]).start()


def test_standalone_prints_issuer_and_stops_on_sigterm():
    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": f"{root / 'src'}:{root / 'simulator'}", "PATH": "/usr/bin:/bin"}
    with subprocess.Popen(
        [sys.executable, "-m", "devicelink_sim", "server", "--port", "0", "--interval", "1",
         "--resource", "https://printer.example.com", "--no-step-up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            line = proc.stdout.readline()
            match = re.fullmatch(r"issuer (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line
            issuer = match.group(1)
            meta = httpx.get(issuer + "/.well-known/oauth-authorization-server").json()
            assert meta["issuer"] == issuer
            assert "acr_values_supported" not in meta  # --no-step-up
            data = {"client_id": "devicelink-sim", "resource": "https://printer.example.com"}
            code = httpx.post(issuer + "/device_authorization", data=data).json()
            assert code["interval"] == 1
            data["resource"] = API  # --resource replaces the defaults
            assert httpx.post(issuer + "/device_authorization", data=data).json()["error"] == "invalid_target"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert proc.stdout.read() == ""  # one line only
            assert code["device_code"] not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
