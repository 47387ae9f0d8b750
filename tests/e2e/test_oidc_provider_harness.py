"""The oidc-provider harness works, and what that server really does.

These tests talk to tests/oidc_provider/server.mjs with raw httpx, not with the
daemon: they prove the harness (start, approve, deny, stop) and pin down the
behaviour of the pinned oidc-provider version that a device client has to cope
with. If an upgrade of oidc-provider changes any of it, a test here says what.

No test sleeps. oidc-provider 9 sends no ``interval`` in the device
authorization response and never answers ``slow_down`` (its device_code grant
has no polling-rate check), so a test may poll again at once; one test records
exactly that.

Beyond the plain device flow: narrowed refreshes (RFC 6749 section 6),
resource indicators (RFC 8707) with JWT access tokens, and acr_values/max_age
(RFC 9470 step-up) on the device authorization request, as server.mjs sets
them up.
"""

from __future__ import annotations

import base64
import json
import re
import select
import subprocess

import httpx
import pytest

from tests.support import oidc_provider as harness
from tests.support.oidc_provider import ACR_MFA, ACR_PWD, ACR_VALUES, OidcProvider, OidcProviderError

pytestmark = pytest.mark.oidc_provider

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SCOPE = "openid profile offline_access"
API = "https://api.example.com"
MEDIA = "https://media.example.com"


@pytest.fixture(scope="module")
def op():
    with OidcProvider(access_token_ttl=60) as provider:
        yield provider


@pytest.fixture
def http():
    with httpx.Client(timeout=10.0) as client:
        yield client


@pytest.fixture(scope="module")
def meta(op):
    with httpx.Client(timeout=10.0) as client:
        response = client.get(f"{op.issuer}/.well-known/openid-configuration")
    assert response.status_code == 200
    return response.json()


# --------------------------------------------------------------------------
# helpers: the device side, by hand


def device_authorization(
    http: httpx.Client, op: OidcProvider, meta: dict, scope: str | None = SCOPE, **params
) -> dict:
    data = {"client_id": op.client_id, **params}
    if scope is not None:
        data["scope"] = scope
    response = http.post(meta["device_authorization_endpoint"], data=data)
    assert response.status_code == 200, response.text
    return response.json()


def token(http: httpx.Client, op: OidcProvider, meta: dict, **form: str) -> httpx.Response:
    return http.post(meta["token_endpoint"], data={"client_id": op.client_id, **form})


def poll(http: httpx.Client, op: OidcProvider, meta: dict, device_code: str) -> httpx.Response:
    return token(http, op, meta, grant_type=DEVICE_CODE_GRANT, device_code=device_code)


def refresh(http: httpx.Client, op: OidcProvider, meta: dict, refresh_token: str, **params) -> httpx.Response:
    return token(http, op, meta, grant_type="refresh_token", refresh_token=refresh_token, **params)


def revoke(http: httpx.Client, op: OidcProvider, meta: dict, tok: str, hint: str) -> httpx.Response:
    return http.post(
        meta["revocation_endpoint"],
        data={"client_id": op.client_id, "token": tok, "token_type_hint": hint},
    )


def userinfo(http: httpx.Client, meta: dict, access_token: str) -> httpx.Response:
    return http.get(meta["userinfo_endpoint"], headers={"Authorization": f"Bearer {access_token}"})


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json().get("error")


def pair(
    http: httpx.Client, op: OidcProvider, meta: dict, login: str = "alice", scope: str = SCOPE,
    acr: str | None = None, **params,
) -> dict:
    """A whole pairing: device authorization, approval on the "phone", one poll."""
    da = device_authorization(http, op, meta, scope, **params)
    op.approve(da["user_code"], login=login, acr=acr)
    response = poll(http, op, meta, da["device_code"])
    assert response.status_code == 200, response.text
    return response.json()


def jwt_claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --------------------------------------------------------------------------
# discovery


def test_discovery_advertises_device_flow_and_revocation(op, meta):
    assert op.issuer.startswith("http://127.0.0.1:")
    assert meta["issuer"] == op.issuer  # exactly, no trailing slash
    assert meta["device_authorization_endpoint"] == f"{op.issuer}/device/auth"
    assert meta["token_endpoint"] == f"{op.issuer}/token"
    assert meta["revocation_endpoint"] == f"{op.issuer}/token/revocation"
    assert meta["userinfo_endpoint"] == f"{op.issuer}/me"
    assert {DEVICE_CODE_GRANT, "refresh_token"} <= set(meta["grant_types_supported"])
    assert {"openid", "profile", "offline_access"} <= set(meta["scopes_supported"])
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    assert op.client_id == "devicelink-test"


def test_device_authorization_response_has_no_interval(op, meta, http):
    da = device_authorization(http, op, meta)
    assert set(da) == {"device_code", "user_code", "verification_uri", "verification_uri_complete", "expires_in"}
    # No `interval`: a client must fall back to RFC 8628's 5 seconds.
    assert "interval" not in da
    assert da["expires_in"] == 600
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", da["user_code"])
    assert da["verification_uri"] == f"{op.issuer}/device"
    assert da["verification_uri_complete"] == f"{op.issuer}/device?user_code={da['user_code']}"


def test_unknown_client_is_401_invalid_client(op, meta, http):
    response = http.post(meta["device_authorization_endpoint"], data={"client_id": "nobody", "scope": SCOPE})
    assert error_of(response) == (401, "invalid_client")


# --------------------------------------------------------------------------
# pairing


def test_pairing_pending_then_approved(op, meta, http):
    da = device_authorization(http, op, meta)

    first = poll(http, op, meta, da["device_code"])
    assert error_of(first) == (400, "authorization_pending")
    # An immediate second poll is still just pending: this server never says
    # slow_down, whatever the polling rate.
    second = poll(http, op, meta, da["device_code"])
    assert error_of(second) == (400, "authorization_pending")

    op.approve(da["user_code"], login="alice")

    response = poll(http, op, meta, da["device_code"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert set(tokens) == {"access_token", "expires_in", "id_token", "refresh_token", "scope", "token_type"}
    assert tokens["token_type"] == "Bearer"  # capitalised
    assert tokens["expires_in"] == 60  # OP_ACCESS_TOKEN_TTL
    assert tokens["scope"] == SCOPE
    assert tokens["refresh_token"] and tokens["access_token"]
    assert "." not in tokens["access_token"]  # opaque, not a JWT

    claims = jwt_claims(tokens["id_token"])
    assert claims["iss"] == op.issuer
    assert claims["aud"] == op.client_id
    assert claims["sub"] == "alice"
    # The profile claims are not in the ID token (an access token was issued);
    # they come from userinfo.
    assert "name" not in claims
    me = userinfo(http, meta, tokens["access_token"])
    assert me.status_code == 200
    assert me.json() == {"sub": "alice", "name": "Alice"}


def test_polling_again_after_success_revokes_everything(op, meta, http):
    # A device code is single-use, like an authorization code: presenting it
    # again (say, a retry after the success response was lost) is treated as
    # replay and revokes every token issued from it.
    da = device_authorization(http, op, meta)
    op.approve(da["user_code"], login="bob")
    tokens = poll(http, op, meta, da["device_code"]).json()

    assert error_of(poll(http, op, meta, da["device_code"])) == (400, "invalid_grant")
    assert error_of(refresh(http, op, meta, tokens["refresh_token"])) == (400, "invalid_grant")
    assert userinfo(http, meta, tokens["access_token"]).status_code == 401


def test_scope_without_offline_access_still_gets_a_refresh_token(op, meta, http):
    # server.mjs's issueRefreshToken: any client allowed the refresh_token grant
    # gets one (the library default would demand offline_access).
    tokens = pair(http, op, meta, login="dave", scope="openid")
    assert tokens["scope"] == "openid"
    assert "refresh_token" in tokens and "id_token" in tokens


def test_deny_leads_to_access_denied(op, meta, http):
    da = device_authorization(http, op, meta)
    op.deny(da["user_code"])

    response = poll(http, op, meta, da["device_code"])
    assert error_of(response) == (400, "access_denied")
    assert response.json()["error_description"] == "End-User aborted interaction"

    # The user code is used up: approving it afterwards fails on the phone.
    with pytest.raises(OidcProviderError, match=r"step 'approve: submit user code' got HTTP 200"):
        op.approve(da["user_code"])


def test_approve_with_a_wrong_code_names_the_step(op):
    with pytest.raises(OidcProviderError) as info:
        op.approve("BCDF-GHJK")
    message = str(info.value)
    assert "step 'approve: submit user code'" in message
    assert "incorrect" in message


# --------------------------------------------------------------------------
# refresh (rotation) and revocation


def test_refresh_rotates_and_reuse_is_rejected_and_revokes_the_grant(op, meta, http):
    first = pair(http, op, meta, login="alice")

    response = refresh(http, op, meta, first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert set(second) == {"access_token", "expires_in", "id_token", "refresh_token", "scope", "token_type"}
    assert second["refresh_token"] != first["refresh_token"]  # rotated
    assert second["access_token"] != first["access_token"]
    assert second["token_type"] == "Bearer"
    assert second["expires_in"] == 60
    assert second["scope"] == SCOPE
    assert jwt_claims(second["id_token"])["sub"] == "alice"  # a fresh ID token on every refresh

    # The old refresh token is spent ...
    assert error_of(refresh(http, op, meta, first["refresh_token"])) == (400, "invalid_grant")
    # ... and presenting it counts as reuse: the whole grant is revoked, so the
    # new refresh token and the new access token die with it.
    assert error_of(refresh(http, op, meta, second["refresh_token"])) == (400, "invalid_grant")
    assert userinfo(http, meta, second["access_token"]).status_code == 401


def test_revoking_the_refresh_token(op, meta, http):
    tokens = pair(http, op, meta, login="carol")

    response = revoke(http, op, meta, tokens["refresh_token"], "refresh_token")
    assert response.status_code == 200
    assert response.content == b""

    assert error_of(refresh(http, op, meta, tokens["refresh_token"])) == (400, "invalid_grant")
    # The grant goes with it: the access token is dead too.
    assert userinfo(http, meta, tokens["access_token"]).status_code == 401
    # Revoking it again (or any unknown token) is still 200 (RFC 7009 2.2).
    assert revoke(http, op, meta, tokens["refresh_token"], "refresh_token").status_code == 200
    assert revoke(http, op, meta, "not-a-token", "refresh_token").status_code == 200


def test_revoking_the_access_token_also_kills_the_refresh_token(op, meta, http):
    # oidc-provider revokes every token of the grant whichever token is revoked.
    tokens = pair(http, op, meta, login="erin")
    assert revoke(http, op, meta, tokens["access_token"], "access_token").status_code == 200
    assert userinfo(http, meta, tokens["access_token"]).status_code == 401
    assert error_of(refresh(http, op, meta, tokens["refresh_token"])) == (400, "invalid_grant")


def test_revocation_needs_the_client_id(op, meta, http):
    response = http.post(meta["revocation_endpoint"], data={"token": "whatever"})
    assert error_of(response) == (400, "invalid_request")


# --------------------------------------------------------------------------
# narrowed refresh (RFC 6749 section 6)


def test_narrowed_refresh_gives_exactly_the_subset_and_rotates(op, meta, http):
    first = pair(http, op, meta, login="frank")

    response = refresh(http, op, meta, first["refresh_token"], scope="openid")
    assert response.status_code == 200, response.text
    narrow = response.json()
    assert narrow["scope"] == "openid"
    assert "id_token" in narrow
    assert narrow["refresh_token"] != first["refresh_token"]  # rotated like any refresh
    assert op.access_token_info(narrow["access_token"])["scope"] == "openid"
    # A scope without openid: no ID token.
    profile = refresh(http, op, meta, narrow["refresh_token"], scope="profile").json()
    assert profile["scope"] == "profile" and "id_token" not in profile
    # The rotated refresh token keeps the whole original scope.
    full = refresh(http, op, meta, profile["refresh_token"]).json()
    assert full["scope"] == SCOPE
    assert op.access_token_info(full["access_token"])["scope"] == SCOPE

    # Reuse of the narrowed refresh's predecessor still revokes the whole grant.
    assert error_of(refresh(http, op, meta, first["refresh_token"], scope="openid")) == (400, "invalid_grant")
    assert error_of(refresh(http, op, meta, full["refresh_token"])) == (400, "invalid_grant")


def test_widening_is_invalid_scope_and_spends_nothing(op, meta, http):
    tokens = pair(http, op, meta, login="grace", scope="openid offline_access")
    response = refresh(http, op, meta, tokens["refresh_token"], scope="openid profile")
    assert error_of(response) == (400, "invalid_scope")
    assert response.json()["scope"] == "profile"  # oidc-provider names the missing scope
    # The refresh token was not consumed: using it now is no reuse.
    response = refresh(http, op, meta, tokens["refresh_token"])
    assert response.status_code == 200, response.text
    assert userinfo(http, meta, response.json()["access_token"]).status_code == 200


# --------------------------------------------------------------------------
# resource indicators (RFC 8707)


def test_discovery_and_unknown_resource(op, meta, http):
    assert meta["acr_values_supported"] == list(ACR_VALUES)
    assert meta["introspection_endpoint"] == f"{op.issuer}/token/introspection"
    for resource in ("https://unknown.example.com", f"{API}#fragment", "not a uri"):
        data = {"client_id": op.client_id, "scope": SCOPE, "resource": resource}
        response = http.post(meta["device_authorization_endpoint"], data=data)
        assert error_of(response) == (400, "invalid_target")


def test_resource_gives_a_jwt_for_it_and_none_gives_the_usual_token(op, meta, http):
    tokens = pair(http, op, meta, login="heidi", scope=f"{SCOPE} api:read api:write", resource=API)
    # No `resource` at the token request: the usual opaque token for userinfo, with
    # only the OpenID scopes.
    assert "." not in tokens["access_token"]
    assert tokens["scope"] == SCOPE
    assert userinfo(http, meta, tokens["access_token"]).status_code == 200

    response = refresh(http, op, meta, tokens["refresh_token"], resource=API)
    assert response.status_code == 200, response.text
    api = response.json()
    assert api["scope"] == "api:read api:write"  # only the resource's own scopes
    claims = op.access_token_info(api["access_token"])
    assert claims["aud"] == API and claims["scope"] == "api:read api:write"
    assert claims["sub"] == "heidi" and claims["client_id"] == op.client_id and claims["active"]
    assert "id_token" in api  # the grant has openid
    # A JWT for an API is no userinfo token.
    assert userinfo(http, meta, api["access_token"]).status_code == 401

    narrow = refresh(http, op, meta, api["refresh_token"], resource=API, scope="api:read").json()
    assert op.access_token_info(narrow["access_token"])["scope"] == "api:read"
    assert narrow["scope"] == "api:read"
    # Back to the usual token: no resource, the whole scope.
    plain = refresh(http, op, meta, narrow["refresh_token"]).json()
    assert "." not in plain["access_token"] and plain["scope"] == SCOPE
    info = op.access_token_info(plain["access_token"])
    assert info["active"] and info["scope"] == SCOPE and "aud" not in info


def test_invalid_target_on_refresh_has_already_spent_the_refresh_token(op, meta, http):
    # A refresh may only name resources the device authorization named (stricter than
    # the development server, which allows any resource to a grant that named none).
    # TRAP: oidc-provider rotates the refresh token BEFORE it resolves `resource`, so
    # the refused refresh has consumed the token (the successor was saved but never
    # sent). Presenting it again is reuse, and the whole grant is revoked.
    # invalid_scope, by contrast, is checked before rotation and spends nothing.
    for resource, scope in ((MEDIA, f"{SCOPE} api:read"), (API, SCOPE), ("https://unknown.example.com", SCOPE)):
        params = {"resource": API} if "api:read" in scope else {}
        tokens = pair(http, op, meta, login="ivan", scope=scope, **params)
        response = refresh(http, op, meta, tokens["refresh_token"], resource=resource)
        assert error_of(response) == (400, "invalid_target")
        assert error_of(refresh(http, op, meta, tokens["refresh_token"])) == (400, "invalid_grant")
        assert userinfo(http, meta, tokens["access_token"]).status_code == 401


def test_several_resources_one_token_each(op, meta, http):
    tokens = pair(http, op, meta, login="judy", scope=f"{SCOPE} api:read media:read", resource=[API, MEDIA])
    assert "." not in tokens["access_token"]
    rt = tokens["refresh_token"]
    for resource, scope in ((API, "api:read"), (MEDIA, "media:read")):
        body = refresh(http, op, meta, rt, resource=resource).json()
        claims = op.access_token_info(body["access_token"])
        assert (claims["aud"], claims["scope"], body["scope"]) == (resource, scope, scope)
        rt = body["refresh_token"]
    # One token has one audience: both at once is refused.
    assert error_of(refresh(http, op, meta, rt, resource=[API, MEDIA])) == (400, "invalid_target")


def test_without_openid_one_resource_is_the_default_audience(op, meta, http):
    tokens = pair(http, op, meta, login="ken", scope="offline_access api:read", resource=API)
    claims = op.access_token_info(tokens["access_token"])
    assert claims["aud"] == API and claims["scope"] == "api:read"
    assert "id_token" not in tokens and "refresh_token" in tokens


# --------------------------------------------------------------------------
# step-up (RFC 9470): acr_values and max_age at the device authorization endpoint


def test_acr_values_are_reflected_in_the_id_token(op, meta, http):
    # The ID token carries acr only when acr_values were requested; the login achieves
    # the first supported value asked for, unless the harness says otherwise.
    plain = jwt_claims(pair(http, op, meta, login="leo")["id_token"])
    assert "acr" not in plain and "auth_time" not in plain

    stepped = pair(http, op, meta, login="leo", acr_values=f"urn:example:unknown {ACR_MFA}")
    assert jwt_claims(stepped["id_token"])["acr"] == ACR_MFA
    again = refresh(http, op, meta, stepped["refresh_token"]).json()
    assert jwt_claims(again["id_token"])["acr"] == ACR_MFA  # kept across refreshes

    weaker = pair(http, op, meta, login="leo", acr_values=ACR_MFA, acr=ACR_PWD)
    assert jwt_claims(weaker["id_token"])["acr"] == ACR_PWD
    unknown = pair(http, op, meta, login="leo", acr_values="urn:example:unknown")
    assert jwt_claims(unknown["id_token"])["acr"] == ACR_PWD
    with pytest.raises(ValueError):
        op.approve("BCDF-GHJK", acr="urn:example:unknown")


def test_max_age_puts_auth_time_in_the_id_token(op, meta, http):
    tokens = pair(http, op, meta, login="mia", max_age="300")
    claims = jwt_claims(tokens["id_token"])
    assert abs(claims["iat"] - claims["auth_time"]) <= 2  # each approval is a fresh login
    again = refresh(http, op, meta, tokens["refresh_token"]).json()
    assert jwt_claims(again["id_token"])["auth_time"] == claims["auth_time"]
    # max_age=0 becomes prompt=login, which the device flow does not keep: no auth_time.
    assert "auth_time" not in jwt_claims(pair(http, op, meta, login="mia", max_age="0")["id_token"])
    for bad in ("-1", "soon"):
        data = {"client_id": op.client_id, "scope": SCOPE, "max_age": bad}
        assert error_of(http.post(meta["device_authorization_endpoint"], data=data)) == (400, "invalid_request")


def test_a_step_up_pairing_is_a_second_grant(op, meta, http):
    first = pair(http, op, meta, login="nina")
    second = pair(http, op, meta, login="nina", acr_values=ACR_MFA, max_age="60")
    for tokens, acr in ((first, None), (second, ACR_MFA)):
        response = refresh(http, op, meta, tokens["refresh_token"])
        assert response.status_code == 200, response.text
        assert jwt_claims(response.json()["id_token"]).get("acr") == acr
        assert userinfo(http, meta, response.json()["access_token"]).status_code == 200


# --------------------------------------------------------------------------
# the harness itself


def test_env_knobs_and_clean_stop(http):
    provider = OidcProvider(access_token_ttl=5, device_poll_interval=1)
    with provider:
        proc = provider._proc
        with httpx.Client(timeout=10.0) as client:
            meta = client.get(f"{provider.issuer}/.well-known/openid-configuration").json()
        da = device_authorization(http, provider, meta)
        assert da["interval"] == 1  # only added because OP_DEVICE_POLL_INTERVAL is set
        provider.approve(da["user_code"])
        assert poll(http, provider, meta, da["device_code"]).json()["expires_in"] == 5
    # stop() sends SIGTERM; server.mjs closes and exits 0.
    assert proc.returncode == 0
    assert not provider.running
    with pytest.raises(OidcProviderError, match="not running"):
        provider.issuer
    with pytest.raises(httpx.TransportError):
        http.get(meta["issuer"] + "/.well-known/openid-configuration")


def test_server_prints_only_the_issuer_line_on_stdout():
    proc = subprocess.Popen(
        ["node", str(harness.SERVER_SCRIPT), "0"],
        cwd=harness.SERVER_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        # Bounded wait for the first line, which comes once the server listens.
        ready, _, _ = select.select([proc.stdout], [], [], harness.START_TIMEOUT)
        assert ready, "no issuer line in time"
        line = proc.stdout.readline()
        assert re.fullmatch(r"issuer http://127\.0\.0\.1:\d+\n", line)
        issuer = line.split()[1]
        with httpx.Client(timeout=10.0) as client:
            # Drive the pages that make oidc-provider print its notices.
            assert client.get(f"{issuer}/device").status_code == 200
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert rest == ""


def test_start_without_node_modules_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(harness, "SERVER_DIR", tmp_path)
    with pytest.raises(OidcProviderError, match=r"run npm ci --prefix tests/oidc_provider"):
        OidcProvider().start()


def test_client_credentials_for_the_confidential_clients_only(http):
    """OP_CLIENT_SECRET and OP_CLIENT_CREDENTIALS: what tests/e2e/test_device_token.py relies on."""
    with OidcProvider(client_secret="harness-secret", client_credentials=True) as provider:
        token_endpoint = f"{provider.issuer}/token"
        basic = provider.secret_client_ids["client_secret_basic"]
        answer = http.post(token_endpoint, data={"grant_type": "client_credentials", "scope": "telemetry.write"},
                           auth=(basic, "harness-secret"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["scope"] == "telemetry.write" and "refresh_token" not in answer.json()
        info = provider.access_token_info(answer.json()["access_token"])
        assert info["active"] and info["client_id"] == basic and "sub" not in info
        post = http.post(token_endpoint, data={"grant_type": "client_credentials", "scope": "api:read",
                                               "resource": API, "client_id": provider.secret_client_ids[
                                                   "client_secret_post"], "client_secret": "harness-secret"})
        assert post.status_code == 200, post.text
        claims = provider.access_token_info(post.json()["access_token"])  # a JWT for the API
        assert claims["aud"] == API and claims["scope"] == "api:read"
        narrower = http.post(token_endpoint, data={"grant_type": "client_credentials", "scope": "updates.read"},
                             auth=(basic, "harness-secret"))
        assert narrower.json()["error"] == "invalid_scope"  # a known scope, not one this client may have
        public = http.post(token_endpoint, data={"grant_type": "client_credentials", "client_id": provider.client_id})
        assert public.json() == {"error": "invalid_request",  # not RFC 6749's unauthorized_client
                                 "error_description": "requested grant type is not allowed for this client"}
        wrong = http.post(token_endpoint, data={"grant_type": "client_credentials"}, auth=(basic, "wrong"))
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
