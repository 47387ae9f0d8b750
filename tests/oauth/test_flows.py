"""Refresh, narrowed refresh and revocation, stepped by hand: no network, no event loop, no clock.

And the one classifier every flow reads answers with (RFC 6749 §5.2), and the
client-authentication hook that every request passes through, retries included.
"""

from __future__ import annotations

import json
import random
import unicodedata

import pytest

from devicelink.errors import GrantFailed, RefreshRejected, ScopeIgnored, TargetRefused
from devicelink.oauth import auth, grant
from devicelink.oauth import messages as m
from devicelink.oauth import refresh as flows
from devicelink.oauth.http import ClientAuth, OAuthHttp, secrets_sent
from tests.helpers import refresh_with_retries

ENDPOINTS = m.Endpoints(token_endpoint="https://id.example/token",
                        device_authorization_endpoint="https://id.example/device",
                        revocation_endpoint="https://id.example/revoke")
ISSUER, CLIENT = "https://id.example", "tv"
TOKENS = {"access_token": "at-2", "token_type": "Bearer", "expires_in": 600, "refresh_token": "rt-2",
          "scope": "openid email"}


def answer(status: int, body=b"", at: float = 50.0, headers: dict | None = None) -> m.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return m.Response(status, raw, at, {"content-type": "application/json", **(headers or {})})


def finish(flow, reply: m.Reply):
    """Send the one request's answer; the flow's result (or its exception)."""
    step = next(flow)
    assert isinstance(step, grant.Send) and step.not_before is None
    try:
        flow.send(reply)
    except StopIteration as done:
        return done.value, step.request
    raise AssertionError("the flow asked for a second request")


def refresh(**kw):
    return flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT, **kw)


# -- the classifier -------------------------------------------------------------------------


@pytest.mark.parametrize("reply, outcome, error", [
    (m.Failure("ConnectError: refused", 1.0), "transient", None),
    (answer(200, TOKENS), "ok", None),
    (answer(200, b"<html>captive portal</html>", headers={"content-type": "text/html"}), "transient", None),
    (answer(200, {"error": "authorization_pending"}), "refused", "authorization_pending"),  # GitHub: 200 + error
    (answer(400, {"error": "invalid_grant"}), "refused", "invalid_grant"),
    (answer(401, {"error": "invalid_client"}), "refused", "invalid_client"),
    (answer(400, b""), "refused", None),  # glewlwyd: a refusal, not a network fault
    (answer(403, b"<html>denied</html>", headers={"content-type": "text/html"}), "refused", None),
    (answer(400, {"error": "temporarily_unavailable"}), "transient", "temporarily_unavailable"),
    (answer(503, b""), "transient", None),
    (answer(429, b""), "transient", None),  # G3: a bare 429 is "slow down", never a refusal
    (answer(500, {"error": "invalid_grant"}), "refused", "invalid_grant"),  # a definite error wins
])
def test_one_classifier_reads_every_answer(reply, outcome, error):
    verdict = m.classify(reply)
    assert (verdict.outcome, verdict.error) == (outcome, error)
    assert verdict.transient is (outcome == "transient") and verdict.reason
    assert b"at-2" not in verdict.reason.encode()  # the body is never echoed


def test_the_verdict_carries_retry_after():
    assert m.classify(answer(503, b"", headers={"retry-after": "120"})).retry_after == 120


# -- the server's words (issue 10 item 13) -------------------------------------------------------


def test_the_reason_quotes_the_servers_error_description():
    verdict = m.classify(answer(400, {"error": "unauthorized_client",
                                      "error_description": "device_code is not allowed for this client"}))
    assert verdict.reason == 'HTTP 400 unauthorized_client ("device_code is not allowed for this client")'
    assert m.classify(answer(400, {"error": "invalid_grant"})).reason == "HTTP 400 invalid_grant"  # none: as before
    assert m.classify(answer(400, {"error": "invalid_grant", "error_description": ["not", "text"]})).reason \
        == "HTTP 400 invalid_grant"
    form = answer(200, b"error=bad_verification_code&error_description=The+code+is+wrong",  # GitHub, form-encoded
                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert m.error_text(form) == 'bad_verification_code ("The code is wrong")'


@pytest.mark.parametrize("description", [
    "line one\nFORGED 12:00 devicelink: paired\r\n",
    "\x1b]0;owned\x07\x1b[31mred\x1b[0m text",
    "\u202edesrever\u202c and \u200bzero-width\u2066",
    "Refused. " + "x" * 10_240,
    "\n" * 5000 + "at the end",
    '"); pair again ("',
])
def test_a_hostile_description_comes_out_as_one_clean_capped_line(description):
    said = m.error_text(answer(400, {"error": "access_denied", "error_description": description}))
    assert said.startswith('access_denied ("') and said.endswith('")')
    quoted = said[len('access_denied ("'):-2]
    assert quoted and len(quoted) <= 200 and '"' not in quoted
    assert all(unicodedata.category(c)[0] != "C" for c in said)  # no control, bidi or zero-width character
    assert quoted.endswith("…") is description.startswith("Refused.")  # the cut is marked


def test_a_secret_the_server_echoes_is_blanked():
    """Spring's "Invalid refresh token: <the token>": the token must not reach logs or last_error."""
    rt = "rt-Zx8QmB3kLp0w"
    echoed = m.Response(400, json.dumps({"error": "invalid_grant", "error_description":
                                         f"Invalid refresh token: {rt[:5]}\u200b{rt[5:]} (" + "y" * 300 + f") {rt}"}
                                        ).encode(), 1.0, {"content-type": "application/json"}, sent_secrets=(rt,))
    said = m.error_text(echoed)
    assert "rt-Zx" not in said and said.startswith('invalid_grant ("Invalid refresh token: [redacted] (yyy')
    with pytest.raises(RefreshRejected) as info:
        finish(refresh(), echoed)
    assert "[redacted]" in str(info.value) and rt not in str(info.value)


def test_the_driver_tells_the_answer_which_secrets_went_out():
    out = auth.Outgoing("refresh", "POST", ENDPOINTS.token_endpoint, [("grant_type", "refresh_token"),
                                                                      ("refresh_token", "rt-secret-1")])
    ClientAuth("tv", "client_secret_basic", "s3cr:t/+é%x").prepare(out)
    sent = secrets_sent(out)
    assert "rt-secret-1" in sent and "s3cr:t/+é%x" in sent and out.headers["authorization"][6:] in sent
    assert "refresh_token" not in sent and "tv" not in sent


# -- refresh ---------------------------------------------------------------------------------


def test_refresh_sends_the_refresh_token_and_returns_the_tokens():
    tokens, request = finish(refresh(), answer(200, TOKENS, at=50.0))
    assert dict(request.form) == {"grant_type": "refresh_token", "refresh_token": "rt-1"}
    assert request.url == ENDPOINTS.token_endpoint and request.authenticate
    assert (tokens.access_token, tokens.refresh_token, tokens.expires_at) == ("at-2", "rt-2", 650.0)


@pytest.mark.parametrize("reply", [answer(400, {"error": "invalid_grant"}), answer(400, b""), answer(400, b" \n")])
def test_invalid_grant_and_a_bare_400_end_the_grant(reply):
    with pytest.raises(RefreshRejected) as info:
        finish(refresh(), reply)
    assert info.value.code == "reauth_required"


@pytest.mark.parametrize("reply, transient", [
    (m.Failure("ReadTimeout", 9.0), True),
    (answer(503, {"error": "temporarily_unavailable"}, headers={"retry-after": "30"}), True),
    (answer(401, {"error": "invalid_client"}), False),
    (answer(200, {"access_token": "x", "token_type": "mac"}), None),  # unusable: a ProtocolViolation
])
def test_other_failures_keep_the_grant_and_say_whether_the_server_refused(reply, transient):
    with pytest.raises((GrantFailed, m.ProtocolViolation)) as info:
        finish(refresh(), reply)
    assert not isinstance(info.value, RefreshRejected)
    if transient is True:
        assert "refused" not in str(info.value)
    elif transient is False:
        assert "the server refused it" in str(info.value)
    if isinstance(reply, m.Failure):
        assert info.value.unanswered == "ReadTimeout"  # the engine adds the clock's hint to it
    elif reply.status == 503:
        assert info.value.retry_after == 30


def test_narrowed_refresh_asks_for_less_and_refuses_more():
    flow = flows.narrowed(ENDPOINTS, "rt-1", ISSUER, CLIENT, scope="email", resource="https://api.example")
    tokens, request = finish(flow, answer(200, {**TOKENS, "scope": "email"}))
    assert request.form == (("grant_type", "refresh_token"), ("refresh_token", "rt-1"), ("scope", "email"),
                            ("resource", "https://api.example"))
    assert tokens.scope == "email"
    no_scope = {k: v for k, v in TOKENS.items() if k != "scope"}  # RFC 6749 §5.1: the one asked for
    assert finish(flows.narrowed(ENDPOINTS, "rt-1", ISSUER, CLIENT, scope="email", resource=None),
                  answer(200, no_scope))[0].scope == "email"
    with pytest.raises(ScopeIgnored):  # Google ignores a narrower scope: never served
        finish(flows.narrowed(ENDPOINTS, "rt-1", ISSUER, CLIENT, scope="email", resource=None), answer(200, TOKENS))


@pytest.mark.parametrize("error", ["invalid_scope", "invalid_target"])
def test_a_refused_target_is_forbidden_not_the_end_of_the_grant(error):
    with pytest.raises(TargetRefused) as info:
        finish(flows.narrowed(ENDPOINTS, "rt-1", ISSUER, CLIENT, scope="email", resource="https://x"),
               answer(400, {"error": error, "error_description": "not for this client"}))
    assert info.value.code == "forbidden" and info.value.oauth_error == error
    assert f'{error} ("not for this client")' in str(info.value)


# -- revocation --------------------------------------------------------------------------------


def test_revocation_is_done_on_any_200_even_empty():
    done, request = finish(flows.revoke(ENDPOINTS, "rt-1", "refresh_token"), answer(200, b"", headers={}))
    assert done is None and request.url == ENDPOINTS.revocation_endpoint
    assert dict(request.form) == {"token": "rt-1", "token_type_hint": "refresh_token"}


def test_a_refused_revocation_is_final_and_a_transient_one_is_retried_later():
    refused, _ = finish(flows.revoke(ENDPOINTS, "rt-1", "refresh_token"),
                        answer(400, {"error": "unsupported_token_type", "error_description": "only refresh tokens"}))
    assert refused == 'the server refused the revocation (HTTP 400 unsupported_token_type ("only refresh tokens"))'
    with pytest.raises(GrantFailed) as info:
        finish(flows.revoke(ENDPOINTS, "rt-1", "refresh_token"), answer(503, b"", headers={"retry-after": "30"}))
    assert info.value.retry_after == 30


# -- client authentication: one hook, on every send ------------------------------------------------


class Counting:
    """A client-authentication method as the next issue adds them: one module, one registration."""

    def __init__(self, params: auth.AuthParams) -> None:
        self.client_id, self.sent = params.client_id, 0

    def prepare(self, out: auth.Outgoing, now: float) -> None:
        self.sent += 1
        out.form.append(("client_id", self.client_id))
        out.headers["x-proof"] = f"{self.sent}@{now:g}"


def test_a_registered_method_signs_every_request_retries_included(monkeypatch):
    monkeypatch.setitem(auth.METHODS, "counting", Counting)
    client_auth = ClientAuth("tv", "counting")
    reply, seen = refresh_with_retries(client_auth)
    assert reply.status == 200 and len(seen) == 3
    proofs = [r.headers["x-proof"] for r in seen]
    assert [p.split("@")[0] for p in proofs] == ["1", "2", "3"]  # made afresh for each send
    assert len(set(p.split("@")[1] for p in proofs)) == 3  # each at the time it was sent


def test_discovery_takes_no_client_authentication_and_token_requests_do():
    out = auth.Outgoing("discovery", "GET", "https://id.example/.well-known/x", authenticate=False)
    ClientAuth("tv", "client_secret_post", "s3cret").prepare(out)
    assert out.form == [] and "authorization" not in out.headers
    out = auth.Outgoing("refresh", "POST", ENDPOINTS.token_endpoint)
    ClientAuth("tv", "client_secret_post", "s3cret").prepare(out)
    assert out.form == [("client_id", "tv"), ("client_secret", "s3cret")]
    assert "s3cret" not in repr(out) and "s3cret" not in repr(ClientAuth("tv", "client_secret_post", "s3cret"))


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown client authentication method 'client_secret_jwt'"):
        ClientAuth("tv", "client_secret_jwt")


# -- issue 10 item 9: a 4xx that is not a recognised retryable answer refuses the grant ---------


@pytest.mark.parametrize("reply", [
    answer(400, b""),  # glewlwyd, for a reused or disabled refresh token
    answer(400, b"<html>proxy</html>", headers={"content-type": "text/html"}),
    answer(400, b"{not json", headers={"content-type": "application/json"}),
    answer(400, {"error": "invalid_request"}),
    answer(400, {"error": "unauthorized_client"}),
    answer(403, b"<html>Forbidden</html>", headers={"content-type": "text/html"}),
    answer(404, b""),
    answer(200, {"error": "bad_refresh_token"}),  # GitHub says no with a 200 (RFC-CHECKLIST G1)
])
def test_a_4xx_that_is_not_retryable_refuses_the_grant_pending_one_confirmation(reply):
    with pytest.raises(RefreshRejected) as info:
        finish(refresh(), reply)
    assert info.value.code == "reauth_required" and not flows.definite(info.value)
    assert "the authorization server refused the grant" in str(info.value)
    if not reply.body.strip():
        assert f"HTTP {reply.status} with no body" in str(info.value)


def test_only_invalid_grant_is_definite():
    with pytest.raises(RefreshRejected) as info:
        finish(refresh(), answer(400, {"error": "invalid_grant"}))
    assert flows.definite(info.value)


@pytest.mark.parametrize("reply", [
    answer(401, {"error": "invalid_client"}),
    answer(400, {"error": "invalid_client"}),
    answer(401, b""),
])
def test_a_refused_client_keeps_the_grant_and_points_at_the_config(reply):
    with pytest.raises(GrantFailed) as info:
        finish(refresh(), reply)
    assert not isinstance(info.value, RefreshRejected)
    assert "client_secret in the config" in str(info.value) and "the grant is kept" in str(info.value)


@pytest.mark.parametrize("reply", [
    answer(429, b""), answer(408, b""), answer(400, {"error": "slow_down"}),
    answer(400, {"error": "temporarily_unavailable"}), answer(400, {"error": "server_error"}),
    answer(503, b""), m.Failure("ConnectError", 9.0),
])
def test_recognised_retryable_answers_keep_the_grant(reply):
    with pytest.raises(GrantFailed) as info:
        finish(refresh(), reply)
    assert not isinstance(info.value, RefreshRejected) and "refused" not in str(info.value)
