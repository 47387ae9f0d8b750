"""The RFC 8628 core, stepped by hand: no network, no event loop, no clock.

Covers RFC-CHECKLIST A and F and the minimum test matrix at the end of G:
every RFC 8628 error under 400/200/401/403/428/429, a missing interval, the
verification_url and camelCase aliases, slow_down with and without an
interval, pending past expires_in, transport failures, 5xx and Retry-After.
"""

from __future__ import annotations

import json
import random

import pytest

from devicelink.errors import AuthorizationDenied, DeviceCodeExpired, EndpointGone, GrantFailed, ProtocolViolation
from devicelink.oauth import grant
from devicelink.oauth import messages as m
from devicelink.oauth import metadata as md

ENDPOINTS = m.Endpoints(token_endpoint="https://id.example/token",
                        device_authorization_endpoint="https://id.example/device",
                        revocation_endpoint="https://id.example/revoke")
ISSUER, CLIENT = "https://id.example", "tv"

CODE = {"device_code": "dev-secret", "user_code": "WDJB-MJHT", "verification_uri": "https://id.example/device",
        "verification_uri_complete": "https://id.example/device?user_code=WDJB-MJHT", "expires_in": 600,
        "interval": 5}
TOKENS = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-1",
          "scope": "openid offline_access"}


def answer(status: int, body, at: float, headers: dict | None = None) -> m.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return m.Response(status, raw, at, {"content-type": "application/json", **(headers or {})})


class Flow:
    """Steps a device_flow generator the way oauth/http.py does, recording every request time."""

    def __init__(self, code=CODE, seed=1, hosts=(), insecure=False):
        rule = grant.VerificationRule.of(ISSUER, hosts, insecure)
        self.gen = grant.device_flow(ENDPOINTS, "openid offline_access", (), ISSUER, CLIENT, random.Random(seed),
                                     verification=rule)
        self.step = next(self.gen)
        assert isinstance(self.step, grant.Send) and self.step.request.kind == "device_authorization"
        self.shown = None
        self.reply(answer(200, code, at=100.0))

    def reply(self, r: m.Reply):
        self.step = self.gen.send(r)
        if isinstance(self.step, grant.Show):
            self.shown = self.step.code
            self.step = next(self.gen)
        return self.step

    def poll(self, status: int, body, headers=None, latency: float = 0.2):
        """Answer the pending poll as if it went out exactly at its not_before."""
        assert isinstance(self.step, grant.Send) and self.step.request.kind == "device_token"
        return self.reply(answer(status, body, self.step.not_before + latency, headers))


def test_shows_code_and_waits_interval_before_first_poll():
    f = Flow()
    assert f.shown.user_code == "WDJB-MJHT"
    assert f.shown.qr_payload == CODE["verification_uri_complete"]
    assert f.step.not_before == pytest.approx(105.0)
    form = dict(f.step.request.form)
    assert form == {"grant_type": m.DEVICE_CODE_GRANT, "device_code": "dev-secret"}


def test_missing_interval_means_five_seconds():
    code = {k: v for k, v in CODE.items() if k != "interval"}
    assert Flow(code).step.not_before == pytest.approx(105.0)


@pytest.mark.parametrize("status", [400, 200, 401, 403, 428])
def test_pending_under_any_status_waits_interval_from_the_answer(status):
    f = Flow()
    first = f.step.not_before
    step = f.poll(status, {"error": "authorization_pending"}, latency=3.0)
    assert step.not_before == pytest.approx(first + 3.0 + 5)  # counted from the previous answer (G11)


@pytest.mark.parametrize("status", [400, 200, 401, 403, 428, 429])
def test_slow_down_is_cumulative_under_any_status(status):
    f = Flow()
    t = f.step.not_before
    step = f.poll(status, {"error": "slow_down"}, latency=0)
    assert step.not_before == pytest.approx(t + 10)
    step = f.poll(status, {"error": "authorization_pending"}, latency=0)
    assert step.not_before == pytest.approx(t + 20)  # still 10: "this and all subsequent requests"
    step = f.poll(status, {"error": "slow_down"}, latency=0)
    assert step.not_before == pytest.approx(t + 35)


def test_slow_down_never_below_server_interval_and_never_undone():
    f = Flow()
    t = f.step.not_before
    step = f.poll(400, {"error": "slow_down", "interval": 30}, latency=0)  # GitHub sends the new interval
    assert step.not_before == pytest.approx(t + 30)
    step = f.poll(400, {"error": "slow_down", "interval": 2}, latency=0)  # G10: smaller must not undo
    assert step.not_before == pytest.approx(t + 30 + 35)


def test_bare_429_is_slow_down_and_honours_retry_after():
    f = Flow()
    t = f.step.not_before
    step = f.poll(429, b"Too Many Requests", {"content-type": "text/plain", "retry-after": "40"}, latency=0)
    assert step.not_before == pytest.approx(t + 40)
    step = f.poll(400, {"error": "authorization_pending"}, latency=0)
    assert step.not_before == pytest.approx(t + 40 + 10)  # the 429 also grew the interval


@pytest.mark.parametrize("status", [400, 200, 401, 403, 428])
@pytest.mark.parametrize("error,exc", [("access_denied", AuthorizationDenied),
                                        ("authorization_declined", AuthorizationDenied),
                                        ("expired_token", DeviceCodeExpired),
                                        ("invalid_client", GrantFailed),
                                        ("something_new", GrantFailed)])
def test_final_errors_stop_polling(status, error, exc):
    f = Flow()
    with pytest.raises(exc) as info:
        f.poll(status, {"error": error})
    assert info.value.oauth_error == error
    assert "dev-secret" not in str(info.value)


def test_tokens_end_the_flow():
    f = Flow()
    f.poll(400, {"error": "authorization_pending"})
    with pytest.raises(StopIteration) as done:
        f.poll(200, TOKENS, latency=0.5)
    tokens = done.value.value
    assert tokens.access_token == "at-1" and tokens.refresh_token == "rt-1"
    assert tokens.expires_at - tokens.obtained_at == 3600
    assert "at-1" not in repr(tokens) and "rt-1" not in repr(tokens)


def test_200_with_error_body_is_not_a_token():
    f = Flow()  # G2: GitHub answers pending with HTTP 200
    step = f.poll(200, {"error": "authorization_pending", "error_description": "wait"})
    assert isinstance(step, grant.Send)


def test_local_hard_stop_at_expires_in():
    f = Flow({**CODE, "expires_in": 20})
    polls = 0
    with pytest.raises(DeviceCodeExpired):
        while True:
            polls += 1
            f.poll(400, {"error": "authorization_pending"}, latency=0)
    # polls go out at 105, 110, 115 and 120 = the deadline itself (issue 10 item 11), never after (G6)
    assert polls == 4


def test_transport_failures_back_off_exponentially_capped_and_never_faster_than_interval():
    f = Flow({**CODE, "expires_in": 7200})
    waits = []
    at = f.step.not_before
    for _ in range(12):
        step = f.reply(m.Failure("ConnectError", at))
        waits.append(step.not_before - at)
        at = step.not_before
    assert all(w >= 5 for w in waits)  # never faster than the interval
    assert waits[3] > waits[0]  # it grows
    assert max(waits) <= 300 and waits[-1] >= 150  # capped (G14), and it reached the cap


def test_backoff_resets_after_an_answer():
    f = Flow({**CODE, "expires_in": 3600})
    at = f.step.not_before
    for _ in range(5):
        at = f.reply(m.Failure("timeout", at)).not_before
    step = f.reply(answer(400, {"error": "authorization_pending"}, at))
    assert step.not_before - at == pytest.approx(5)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_backs_off_and_honours_retry_after(status):
    f = Flow({**CODE, "expires_in": 3600})
    t = f.step.not_before
    step = f.poll(status, b"<html>oops</html>", {"content-type": "text/html", "retry-after": "120"}, latency=0)
    assert step.not_before >= t + 120


def test_temporarily_unavailable_is_transient():
    f = Flow()
    step = f.poll(400, {"error": "temporarily_unavailable"})
    assert isinstance(step, grant.Send) and step.request.kind == "device_token"


def test_garbage_answer_is_retried_not_fatal():
    f = Flow()
    step = f.poll(200, b"<html>captive portal</html>", {"content-type": "text/html"})
    assert isinstance(step, grant.Send)


def test_retry_after_http_date_is_read_against_the_servers_date():
    resp = answer(429, b"", 0, {"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT",
                                "date": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert m.retry_after(resp) == 30


# -- device authorization response: aliases and validation --------------------


def test_verification_url_alias_and_no_complete_uri():
    code = {k: v for k, v in CODE.items() if k not in ("verification_uri", "verification_uri_complete")}
    f = Flow({**code, "verification_url": "https://google.example/device"}, hosts=["google.example"])  # Google (G17)
    assert f.shown.verification_uri == "https://google.example/device"
    assert f.shown.verification_uri_complete is None
    assert f.shown.qr_payload == "https://google.example/device"  # G18


def test_camel_case_aliases():
    f = Flow({"deviceCode": "d", "userCode": "ABCD-EFGH", "verificationUri": "https://aws.example/device",
              "verificationUriComplete": "https://aws.example/device?code=ABCD-EFGH", "expiresIn": 600,
              "interval": 1}, hosts=["aws.example"])
    assert f.shown.user_code == "ABCD-EFGH" and f.step.not_before == pytest.approx(101)


def test_expires_in_as_string():
    f = Flow({**CODE, "expires_in": "900"})  # Entra v1
    assert f.shown.expires_at == 1000


@pytest.mark.parametrize("missing", ["device_code", "user_code", "verification_uri", "expires_in"])
def test_missing_required_field_is_a_protocol_violation(missing):
    with pytest.raises(ProtocolViolation, match=missing):
        Flow({k: v for k, v in CODE.items() if k != missing})


def test_javascript_uri_is_refused():
    with pytest.raises(ProtocolViolation):
        Flow({**CODE, "verification_uri": "javascript:alert(1)"})


def test_device_authorization_error_ends_the_flow():
    gen = grant.device_flow(ENDPOINTS, None, (), ISSUER, CLIENT, random.Random(0))
    next(gen)
    with pytest.raises(GrantFailed) as info:
        gen.send(answer(400, {"error": "invalid_client"}, 1.0))
    assert info.value.oauth_error == "invalid_client"


def test_a_refusal_carries_the_servers_words():
    """Issue 10 item 13: the server's error_description, quoted, cleaned and capped."""
    gen = grant.device_flow(ENDPOINTS, None, (), ISSUER, CLIENT, random.Random(0))
    next(gen)
    with pytest.raises(GrantFailed) as info:
        gen.send(answer(400, {"error": "unauthorized_client",
                              "error_description": "device_code is not allowed\nfor this client"}, 1.0))
    assert str(info.value) == ('the authorization server refused the device authorization request: '
                               'unauthorized_client ("device_code is not allowed for this client")')
    f = Flow()
    with pytest.raises(GrantFailed) as info:
        f.poll(400, {"error": "something_new", "error_description": "\x1b[2J\u202eclient disabled"})
    assert str(info.value) == 'the authorization server ended the pairing: something_new ("[2Jclient disabled")'


@pytest.mark.parametrize("status", [404, 410])
def test_a_device_authorization_endpoint_that_is_not_there_says_so(status):
    """A 404 page is EndpointGone (a ProtocolViolation): pairing with a reused discovery
    document asks for the document again (engine/pairing.py)."""
    gen = grant.device_flow(ENDPOINTS, None, (), ISSUER, CLIENT, random.Random(0))
    next(gen)
    with pytest.raises(EndpointGone, match=f"https://id.example/device answered {status}"):
        gen.send(answer(status, b"<html>Not Found</html>", 1.0, {"content-type": "text/html"}))
    gen = grant.device_flow(ENDPOINTS, None, (), ISSUER, CLIENT, random.Random(0))
    next(gen)
    with pytest.raises(GrantFailed):  # an OAuth error on a 404 is the server's answer, not a missing endpoint
        gen.send(answer(status, {"error": "invalid_client"}, 1.0))


def test_device_authorization_retries_when_the_network_is_down():
    gen = grant.device_flow(ENDPOINTS, None, (), ISSUER, CLIENT, random.Random(0))
    first = next(gen)
    assert first.not_before is None
    step = gen.send(m.Failure("ConnectError", 10.0))
    assert step.request.kind == "device_authorization" and step.not_before > 10.0
    step2 = gen.send(m.Failure("ConnectError", step.not_before))
    assert step2.not_before - step.not_before > step.not_before - 10.0 - 1e-9 or step2.not_before > step.not_before


# -- token responses ----------------------------------------------------------


def test_token_type_case_insensitive_and_unknown_type_refused():
    ok = m.parse_tokens(answer(200, {**TOKENS, "token_type": "bearer"}, 0), ISSUER, CLIENT)
    assert ok.token_type == "bearer"
    with pytest.raises(ProtocolViolation, match="token_type"):
        m.parse_tokens(answer(200, {**TOKENS, "token_type": "mac"}, 0), ISSUER, CLIENT)


def test_missing_expires_in_means_short_lifetime():
    tokens = m.parse_tokens(answer(200, {k: v for k, v in TOKENS.items() if k != "expires_in"}, 10), ISSUER, CLIENT)
    assert tokens.lifetime == 300


def test_github_comma_scopes_and_form_encoding():
    resp = m.Response(200, b"access_token=gho_x&token_type=bearer&scope=repo%2Cuser", 0,
                      {"content-type": "application/x-www-form-urlencoded"})
    tokens = m.parse_tokens(resp, ISSUER, CLIENT)
    assert tokens.scope == "repo user"


def test_account_from_id_token_checks_issuer_and_audience():
    import base64

    def jwt(claims):
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
        return f"{enc({'alg': 'RS256'})}.{enc(claims)}.sig"

    good = jwt({"iss": ISSUER, "aud": CLIENT, "sub": "u1", "name": "Alice"})
    assert m.account_from_id_token(good, ISSUER, CLIENT).name == "Alice"
    assert m.account_from_id_token(jwt({"iss": "https://evil", "aud": CLIENT, "sub": "u1"}), ISSUER, CLIENT) is None
    assert m.account_from_id_token(jwt({"iss": ISSUER, "aud": ["x"], "sub": "u1"}), ISSUER, CLIENT) is None
    assert m.account_from_id_token("garbage", ISSUER, CLIENT) is None


# -- discovery ----------------------------------------------------------------


def test_metadata_urls_rfc8414_then_oidc():
    urls = [r.url for r in md.metadata_requests("https://id.example/realms/tv/")]
    assert urls == ["https://id.example/.well-known/oauth-authorization-server/realms/tv",
                    "https://id.example/realms/tv/.well-known/openid-configuration"]


def test_discovery_falls_back_to_oidc_and_checks_issuer():
    gen = grant.discover(ISSUER, grant.Backoff(random.Random(0)))
    next(gen)
    step = gen.send(answer(404, {"error": "not_found"}, 1))
    assert step.request.url.endswith("/.well-known/openid-configuration")
    with pytest.raises(StopIteration) as done:
        gen.send(answer(200, {"issuer": ISSUER, "token_endpoint": "https://id.example/t"}, 2))
    assert done.value.value["token_endpoint"] == "https://id.example/t"

    gen = grant.discover(ISSUER, grant.Backoff(random.Random(0)))
    next(gen)
    with pytest.raises(ProtocolViolation, match="RFC 8414"):
        gen.send(answer(200, {"issuer": ISSUER + "/", "token_endpoint": "x"}, 1))


def test_discovery_retries_a_5xx_on_the_same_document():
    """The daemon's discovery: a server that is down now is asked again later, not skipped."""
    gen = grant.discover(ISSUER, grant.Backoff(random.Random(0)))
    first = next(gen)
    step = gen.send(answer(503, b"", 10.0, {"retry-after": "30"}))
    assert step.request.url == first.request.url and step.not_before == pytest.approx(40.0)
    step = gen.send(m.Failure("ConnectError: refused", 41.0))
    assert step.request.url == first.request.url and step.not_before > 41.0


def test_discovery_once_asks_each_document_once_and_reports():
    """doctor's discovery: no retries, no waits; an answer that is not 200 moves on."""
    gen = grant.discover(ISSUER, None)
    first = next(gen)
    assert first.not_before is None and first.request.method == "GET" and not first.request.authenticate
    second = gen.send(answer(503, b"", 1.0, {"retry-after": "30"}))
    assert second.request.url.endswith("/.well-known/openid-configuration") and second.not_before is None
    with pytest.raises(ProtocolViolation, match=r"no discovery document: .*answered 503; .*answered 404"):
        gen.send(answer(404, b"<html>", 2.0))

    gen = grant.discover(ISSUER, None)
    next(gen)
    with pytest.raises(GrantFailed, match="no answer from https://id.example/.well-known/") as failed:
        gen.send(m.Failure("ConnectError: refused", 1.0, ConnectionRefusedError(111, "refused")))
    assert failed.value.unanswered == "ConnectError: refused" and failed.value.oauth_error is None

    gen = grant.discover(ISSUER, None)
    next(gen)
    with pytest.raises(ProtocolViolation, match="answered 200 without a JSON object"):
        gen.send(answer(200, b"<html>captive portal</html>", 1.0))  # transient to the daemon, a finding here


def test_probe_gets_each_endpoint_once_without_client_authentication():
    urls = ["https://id.example/device", "https://id.example/token"]
    gen = grant.probe(urls)
    step = next(gen)
    assert step.request == m.probe_request(urls[0])
    assert (step.request.kind, step.request.method, step.request.form, step.request.authenticate) == \
        ("probe", "GET", (), False)
    step = gen.send(answer(405, b"", 1.0))
    assert step.request.url == urls[1] and step.not_before is None
    with pytest.raises(StopIteration) as done:
        gen.send(answer(503, {"error": "temporarily_unavailable"}, 2.0))
    assert [(url, r.status) for url, r in done.value.value] == [(urls[0], 405), (urls[1], 503)]

    gen = grant.probe(urls)
    next(gen)
    with pytest.raises(GrantFailed, match="no answer from https://id.example/device: timeout"):
        gen.send(m.Failure("timeout", 1.0))


def test_a_failure_carries_its_exception_out_of_repr_and_comparison():
    cause = OSError(111, "refused, with a secret=xyz in it")
    failure = m.Failure("ConnectError: refused", 1.0, cause)
    assert failure.exc is cause and failure == m.Failure("ConnectError: refused", 1.0)
    assert "secret" not in repr(failure) and "exc" not in repr(failure)


def test_configured_endpoints_win():
    meta = {"issuer": ISSUER, "token_endpoint": "https://id.example/t",
            "device_authorization_endpoint": "https://id.example/d"}
    configured = {"token_endpoint": "https://other/t"}
    got = grant.resolve_endpoints(meta, configured)
    assert got.token_endpoint == "https://other/t" and got.device_authorization_endpoint == "https://id.example/d"
    with pytest.raises(ProtocolViolation, match="device_authorization_endpoint"):
        grant.resolve_endpoints({"token_endpoint": "https://id.example/t"}, {})  # G26


# -- hostile answers never escape the parsers ---------------------------------


@pytest.mark.parametrize("value", ["²", 1e999, float("nan"), 10**400, -5, "12abc", True])
def test_absurd_seconds_are_protocol_violations(value):
    with pytest.raises(ProtocolViolation, match="expires_in"):
        Flow({**CODE, "expires_in": value})


@pytest.mark.parametrize("headers", [{"retry-after": "²"}, {"retry-after": "99999999999999999999"},
                                     {"retry-after": "Wed, 21 Oct 2015 07:28:30 -0000",
                                      "date": "Wed, 21 Oct 2015 07:28:00 GMT"},
                                     {"retry-after": "soon"}])
def test_odd_retry_after_never_raises(headers):
    value = m.retry_after(answer(429, b"", 0, headers))
    assert value is None or 0 <= value <= m.MAX_SECONDS


@pytest.mark.parametrize("uri", ["https://[", "https://ok.example/\nInjected: yes", "ftp://x.example/"])
def test_bad_verification_uris_are_protocol_violations(uri):
    with pytest.raises(ProtocolViolation, match="verification_uri"):
        Flow({**CODE, "verification_uri": uri})


def test_deeply_nested_json_is_not_a_crash():
    body = b"[" * 100000 + b"]" * 100000
    assert m.body_fields(answer(200, body, 0)) is None
    f = Flow()
    assert isinstance(f.poll(200, body), grant.Send)  # retried like any non-OAuth page


def test_error_codes_with_control_characters_are_not_echoed():
    f = Flow()
    with pytest.raises(GrantFailed) as info:
        f.poll(400, {"error": "bad\nFAKE LOG LINE"})
    assert "\n" not in str(info.value) and info.value.oauth_error == "malformed_error_code"


def test_token_without_expiry_or_refresh_token_is_not_dropped_early():
    no_expiry = {k: v for k, v in TOKENS.items() if k not in ("expires_in", "refresh_token")}
    assert m.parse_tokens(answer(200, no_expiry, 0), ISSUER, CLIENT).lifetime > 365 * 86400  # GitHub apps
    with_rt = {k: v for k, v in TOKENS.items() if k != "expires_in"}
    assert m.parse_tokens(answer(200, with_rt, 0), ISSUER, CLIENT).lifetime == 300
    refreshed = {k: v for k, v in TOKENS.items() if k not in ("expires_in", "refresh_token")}
    assert m.parse_tokens(answer(200, refreshed, 0), ISSUER, CLIENT, refreshable=True).lifetime == 300


# -- issue 10 item 11: a code is polled up to its deadline, never past it ------------------


def test_a_code_is_polled_until_its_deadline_not_one_interval_before():
    """A 15 s code with a 5 s interval: an approval at second 11 was lost (the device gave up
    at second 10). Now the poll at second 15, the deadline itself, still goes out."""
    f = Flow({**CODE, "expires_in": 15})
    times = [f.step.not_before]
    for _ in range(2):
        times.append(f.poll(400, {"error": "authorization_pending"}, latency=0).not_before)
    assert times == [105, 110, 115]  # 115 = issued at 100 + expires_in 15: the deadline itself
    with pytest.raises(StopIteration) as done:  # approved at second 11: the last poll gets the tokens
        f.poll(200, TOKENS, latency=0)
    assert done.value.value.access_token == "at-1"


def test_last_poll_at_the_deadline_when_the_interval_allows_never_after():
    f = Flow({**CODE, "expires_in": 17})
    step = f.poll(400, {"error": "authorization_pending"}, latency=1.0)  # poll at 105, answered 106
    assert step.not_before == pytest.approx(111)
    step = f.poll(400, {"error": "authorization_pending"}, latency=1.0)  # answered 112: 117 is the deadline
    assert step.not_before == pytest.approx(117)  # the last poll, at the deadline itself
    with pytest.raises(DeviceCodeExpired):  # answered 117.5: nothing after the deadline
        f.poll(400, {"error": "authorization_pending"}, latency=0.5)


def test_a_backoff_past_the_deadline_is_cut_to_one_poll_at_the_deadline():
    f = Flow({**CODE, "expires_in": 60})
    t = f.step.not_before  # 105
    step = f.poll(503, b"", {"retry-after": "120"}, latency=0)  # would wait until 225; the code dies at 160
    assert step.not_before == pytest.approx(160)  # one interval has passed: one last poll at the deadline
    assert t == 105
    with pytest.raises(DeviceCodeExpired):
        f.poll(400, {"error": "authorization_pending"}, latency=0)


def test_no_poll_at_the_deadline_sooner_than_one_interval_after_the_last_answer():
    f = Flow({**CODE, "expires_in": 8})  # first poll at 105; its answer at 106 leaves 2 s < 5 s
    with pytest.raises(DeviceCodeExpired):
        f.poll(400, {"error": "authorization_pending"}, latency=1.0)


# -- issue 10 item 6: verification URIs a phishing server cannot choose ------------------


@pytest.mark.parametrize(("uri", "complete", "why"), [
    ("http://login-examp1e.evil.test/device", None, "verification_uri 'http://login-examp1e.evil.test' is not https"),
    ("https://id.example/device", "http://id.example/device?c=1", "verification_uri_complete .* is not https"),
    ("https://login-examp1e.evil.test/device", None, "host 'login-examp1e.evil.test', not the issuer's"),
    ("https://id.example/device", "https://evil.test/d?c=WDJB-MJHT", "complete is on host 'evil.test'"),
    ("https://id.example@evil.test/device", None, "user name"),
    ("https://id.example.evil.test/device", None, "not the issuer's"),
])
def test_phishing_verification_uris_end_the_flow_before_anything_is_shown(uri, complete, why):
    code = {**CODE, "verification_uri": uri, "verification_uri_complete": complete}
    gen = grant.device_flow(ENDPOINTS, None, (), ISSUER, CLIENT, random.Random(0),
                            verification=grant.VerificationRule.of(ISSUER, ["www.google.com"]))
    next(gen)
    with pytest.raises(ProtocolViolation, match=why):
        gen.send(answer(200, {k: v for k, v in code.items() if v is not None}, 100.0))  # no Show came first


def test_verification_hosts_admit_the_providers_own_page():
    google = {**CODE, "verification_uri": "https://www.google.com/device"}
    del google["verification_uri_complete"]
    assert Flow(google, hosts=["www.google.com"]).shown.verification_uri == "https://www.google.com/device"
    entra = {**CODE, "verification_uri": "https://microsoft.com/devicelogin",
             "verification_uri_complete": "https://MICROSOFT.com/devicelogin?otc=WDJB-MJHT"}
    assert Flow(entra, hosts=["microsoft.com", "login.microsoftonline.com"]).shown.user_code == "WDJB-MJHT"
    with pytest.raises(ProtocolViolation, match="verification_hosts"):
        Flow(google)  # not listed: refused


def test_loopback_http_verification_uri_only_with_allow_insecure_http():
    local = {**CODE, "verification_uri": "http://127.0.0.1:8080/device", "verification_uri_complete": None}
    local = {k: v for k, v in local.items() if v is not None}
    with pytest.raises(ProtocolViolation, match="not https"):
        Flow(local, hosts=["127.0.0.1"])
    assert Flow(local, hosts=["127.0.0.1"], insecure=True).shown.verification_uri == "http://127.0.0.1:8080/device"


def test_by_default_the_issuers_host_and_scheme_decide():
    gen = grant.device_flow(ENDPOINTS, None, (), "http://127.0.0.1:9000", CLIENT, random.Random(0))
    next(gen)
    step = gen.send(answer(200, {**CODE, "verification_uri": "http://127.0.0.1:9000/device",
                                 "verification_uri_complete": "http://127.0.0.1:9000/device?c=1"}, 1.0))
    assert isinstance(step, grant.Show)


# -- issue 10 item 7: nothing from the server carries control or bidi characters ----------------


@pytest.mark.parametrize("user_code", ["WDJB\nMJHT", "\x1b]0;pwned\x07", "WDJB MJHT", "WDJB\u202eMJHT", "ÄBCD", ""])
def test_user_codes_other_than_ascii_letters_digits_and_dashes_are_refused(user_code):
    with pytest.raises(ProtocolViolation, match="user_code") as info:
        Flow({**CODE, "user_code": user_code})
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)


def test_id_token_names_lose_control_and_bidi_characters():
    import base64

    def jwt(claims):
        enc = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"e30.{enc}.sig"

    hostile = {"iss": ISSUER, "aud": CLIENT, "sub": "u1", "name": "Alice\n2026-01-01 ERROR forged\x1b]0;title\x07\u202eevil",
               "acr": "urn:x\x1b[31m"}
    account = m.account_from_id_token(jwt(hostile), ISSUER, CLIENT)
    assert account.name == "Alice 2026-01-01 ERROR forged]0;titleevil" and account.acr == "urn:x[31m"
    assert m.account_from_id_token(jwt({**hostile, "sub": "u1\n"}), ISSUER, CLIENT) is None
    assert m.account_from_id_token(jwt({**hostile, "name": "\u202e\x1b"}), ISSUER, CLIENT).name is None


def test_scope_from_the_server_loses_control_characters():
    tokens = m.parse_tokens(answer(200, {**TOKENS, "scope": "openid\x1b[2J offline_access\n"}, 0), ISSUER, CLIENT)
    assert tokens.scope == "openid[2J offline_access"
