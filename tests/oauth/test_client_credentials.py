"""The client credentials grant (RFC 6749 §4.4), stepped by hand: no network, no event loop, no clock."""

from __future__ import annotations

import pytest

from devicelink.errors import ClientRejected, GrantFailed, ScopeIgnored, TargetRefused
from devicelink.oauth import client_credentials as cc
from devicelink.oauth import messages as m
from devicelink.oauth.http import ClientAuth, outgoing
from tests.oauth.test_flows import CLIENT, ISSUER, answer, finish

TOKEN_ENDPOINT = "https://id.example/token"
TELEMETRY = "https://telemetry.example"


def flow(scope: str = "telemetry.write", resource: str | None = None):
    return cc.client_credentials(TOKEN_ENDPOINT, ISSUER, CLIENT, scope=scope, resource=resource)


def test_one_request_for_the_scope_and_resource_gives_a_token_with_no_refresh_token_or_account():
    tokens, request = finish(flow("telemetry.write updates.read", TELEMETRY), answer(200, {
        "access_token": "at-cc", "token_type": "bearer", "expires_in": 900, "scope": "telemetry.write updates.read",
        "refresh_token": "rt-should-not-be-here", "id_token": "x.y.z"}, at=50.0))
    assert request.url == TOKEN_ENDPOINT and request.kind == "client_credentials" and request.authenticate
    assert request.form == (("grant_type", "client_credentials"), ("scope", "telemetry.write updates.read"),
                            ("resource", TELEMETRY))
    assert tokens.access_token == "at-cc" and tokens.expires_at == 950.0 and tokens.obtained_at == 50.0
    assert tokens.refresh_token is None and tokens.account is None  # §4.4.3: none needed, none kept
    assert tokens.scope == "telemetry.write updates.read"


def test_the_request_is_authenticated_by_the_hook_like_every_other():
    out = outgoing(cc.request(TOKEN_ENDPOINT, "telemetry.write", None), ClientAuth(CLIENT, "client_secret_post", "s3"),
                   0.0)
    assert out.form == [("grant_type", "client_credentials"), ("scope", "telemetry.write"),
                        ("client_id", CLIENT), ("client_secret", "s3")]


def test_an_answer_without_scope_covers_what_was_asked_and_one_without_expiry_lives_short():
    tokens, _ = finish(flow(), answer(200, {"access_token": "at", "token_type": "Bearer"}))
    assert tokens.scope == "telemetry.write"  # RFC 6749 §5.1
    assert tokens.lifetime == 300  # asked again soon, not served forever


def test_more_scope_than_asked_is_never_served():
    with pytest.raises(ScopeIgnored, match="issued more than the scope asked"):
        finish(flow(), answer(200, {"access_token": "at", "token_type": "Bearer", "scope": "telemetry.write admin"}))


@pytest.mark.parametrize("reply, kind, words", [
    (answer(401, {"error": "invalid_client", "error_description": "bad secret"}), ClientRejected,
     'refused this client (HTTP 401 invalid_client ("bad secret"))'),
    (answer(400, {"error": "invalid_client"}), ClientRejected, "refused this client"),
    (answer(401, b""), ClientRejected, "refused this client (HTTP 401 without an OAuth error)"),
    (answer(400, {"error": "unauthorized_client"}), ClientRejected, "does not let this client use the client "
     "credentials grant"),
    (answer(400, {"error": "unsupported_grant_type"}), ClientRejected, "does not let this client"),
    (answer(400, {"error": "invalid_scope", "error_description": "no"}), TargetRefused,
     "refused scope 'telemetry.write' for this client: invalid_scope (\"no\")"),
    (answer(400, {"error": "invalid_target"}), TargetRefused, "refused resource"),
    (answer(503, b"", headers={"retry-after": "30"}), GrantFailed, "the authorization server answered HTTP 503"),
    (answer(429, b""), GrantFailed, "HTTP 429"),
    (answer(400, {"error": "slow_down"}), GrantFailed, "slow_down"),
    (answer(400, {"error": "temporarily_unavailable"}), GrantFailed, "temporarily_unavailable"),
    (answer(200, b"<html>portal</html>", headers={"content-type": "text/html"}), GrantFailed, "without a JSON"),
    (m.Failure("ConnectError: refused", 3.0), GrantFailed, "no answer from the authorization server: ConnectError"),
    (answer(400, b""), GrantFailed, "the authorization server refused it (HTTP 400 without an OAuth error)"),
    (answer(403, b"<html>no</html>", headers={"content-type": "text/html"}), GrantFailed, "refused it (HTTP 403"),
])
def test_each_answer_is_read_once(reply, kind, words):
    with pytest.raises(GrantFailed) as info:
        finish(flow(), reply)
    assert type(info.value) is kind and words in str(info.value)
    if kind is TargetRefused:
        assert info.value.code == "forbidden"
    if isinstance(reply, m.Failure):
        assert info.value.unanswered == "ConnectError: refused"
    elif reply.status == 503:
        assert info.value.retry_after == 30


def test_a_secret_the_server_echoes_is_blanked():
    secret = "client-secret-value-1234"
    reply = m.Response(401, b'{"error":"invalid_client","error_description":"wrong secret client-secret-value-1234"}',
                       1.0, {"content-type": "application/json"}, sent_secrets=(secret,))
    with pytest.raises(ClientRejected) as info:
        finish(flow(), reply)
    assert secret not in str(info.value) and "[redacted]" in str(info.value)
