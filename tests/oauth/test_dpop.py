"""DPoP (RFC 9449) on the daemon's own requests: the proof on every send (retries included, with
any client authentication), the server's nonces (one more send, never an end to a device flow,
never a slow poll), and the token type a DPoP request must get back.

Every proof is verified by pyjwt with the key in its own header, claim by claim, as a server
would (RFC 9449 §4.3). A real key (``cryptography``); servers are ``httpx.MockTransport``
handlers or flows stepped by hand; the clocks are lists the test moves. No simulator.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
from urllib.parse import parse_qsl

import httpx
import jwt
import pytest

from devicelink.errors import GrantFailed, ProtocolViolation
from devicelink.identity import filekey
from devicelink.oauth import auth, grant
from devicelink.oauth import messages as m
from devicelink.oauth import refresh as flows
from devicelink.oauth.auth.dpop import DPoP, ath, htu, server_of
from devicelink.oauth.auth.private_key_jwt import ASSERTION_TYPE
from devicelink.oauth.http import ClientAuth, OAuthHttp
from tests.helpers import refresh_with_retries

ISSUER, CLIENT = "https://id.example", "tv"
TOKEN = f"{ISSUER}/token"
ENDPOINTS = m.Endpoints(token_endpoint=TOKEN, device_authorization_endpoint=f"{ISSUER}/device",
                        revocation_endpoint=f"{ISSUER}/revoke")
WALL = 1_900_000_000.25


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return filekey.create(tmp_path_factory.mktemp("identity") / "identity.jwk")


def proof_claims(proof: str, htm: str | None = None, url: str | None = None) -> dict:
    """What a server checks (RFC 9449 §4.3): typ, an asymmetric alg, a public jwk that verifies the
    signature; then the claims, returned with the header under ``_header``."""
    header = jwt.get_unverified_header(proof)
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert set(header["jwk"]) == {"kty", "crv", "x", "y"}  # the public key only: never d
    claims = jwt.decode(proof, jwt.PyJWK(header["jwk"]).key, algorithms=["ES256"],
                        options={"verify_iat": False, "verify_aud": False})
    if htm is not None:
        assert claims["htm"] == htm
    if url is not None:
        assert claims["htu"] == url
    return {**claims, "_header": header}


def dpop(signer, wall=None) -> DPoP:
    return DPoP(signer, wall_clock=wall or (lambda: WALL))


# -- the proof -------------------------------------------------------------------------------


def test_a_proof_carries_every_claim_and_verifies_with_the_key_in_its_header(signer, tmp_path):
    proof = dpop(signer).proof("POST", "https://id.example/token?x=1#frag")
    claims = proof_claims(proof, "POST", "https://id.example/token")  # no query, no fragment (§4.2)
    assert set(claims) == {"jti", "htm", "htu", "iat", "_header"}
    assert claims["iat"] == int(WALL) and len(claims["jti"]) >= 22  # 128 random bits
    assert claims["_header"]["jwk"] == signer.public_jwk()
    other = filekey.create(tmp_path / "other.jwk")
    forged = dpop(other).proof("POST", TOKEN)
    header, payload, signature = forged.split(".")
    theirs = proof.split(".")[0]  # this device's header (its jwk) over another key's signature
    with pytest.raises(jwt.InvalidSignatureError):
        proof_claims(f"{theirs}.{payload}.{signature}")


def test_nonce_and_ath_go_in_when_given(signer):
    token = "eyJhbGciOi.some-access-token"
    claims = proof_claims(dpop(signer).proof("GET", "https://api.example/v1/me", nonce="n-1", access_token=token))
    digest = base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
    assert claims["ath"] == digest == ath(token)  # RFC 9449 §4.2
    assert claims["nonce"] == "n-1" and claims["htm"] == "GET"


def test_htu_and_the_server_a_nonce_belongs_to():
    assert htu("https://a.example:8443/p/q?r#s") == "https://a.example:8443/p/q"
    assert server_of("https://ID.example/token") == server_of("https://id.example:443/revoke")
    assert server_of("https://id.example/token") != server_of("https://id.example:8443/token")


# -- the hook: every request to the authorization server, with any client authentication --------


@pytest.mark.parametrize("method, params, expect", [
    ("none", {}, {"client_id"}),
    ("client_secret_post", {"secret": "s3cret-value"}, {"client_id", "client_secret"}),
    ("client_secret_basic", {"secret": "s3cret-value"}, set()),
    ("private_key_jwt", {"issuer": ISSUER}, {"client_id", "client_assertion_type", "client_assertion"}),
])
def test_every_client_authentication_gets_a_proof_beside_it(signer, method, params, expect):
    if method == "private_key_jwt":
        params = {**params, "signer": signer, "wall_clock": lambda: WALL}
    client_auth = ClientAuth(CLIENT, method, dpop=dpop(signer), **params)
    for request in (m.device_authorization_request(ENDPOINTS, "openid"),
                    m.refresh_request(ENDPOINTS, "rt-1", scope="openid"),
                    m.revocation_request(ENDPOINTS, "rt-1", "refresh_token")):
        out = auth.Outgoing(request.kind, request.method, request.url, list(request.form))
        client_auth.prepare(out, 1.0)
        assert set(dict(out.form)) - set(dict(request.form)) == expect
        assert ("authorization" in out.headers) == (method == "client_secret_basic")
        proof_claims(out.headers["dpop"], "POST", request.url)
        if method == "private_key_jwt":
            assert dict(out.form)["client_assertion_type"] == ASSERTION_TYPE
    discovery = auth.Outgoing("discovery", "GET", f"{ISSUER}/.well-known/openid-configuration", authenticate=False)
    client_auth.prepare(discovery, 1.0)
    assert discovery.headers == {} and discovery.form == []  # no client authentication, no proof
    assert "dpop" in repr(client_auth) and "eyJ" not in repr(client_auth)


def test_every_send_gets_a_new_proof_retries_included(signer):
    wall = [WALL]

    def moved(seconds: float) -> None:
        wall[0] += seconds

    reply, seen = refresh_with_retries(ClientAuth(CLIENT, dpop=dpop(signer, lambda: wall[0])), on_sleep=moved)
    assert len(seen) == 3
    claims = [proof_claims(r.headers["dpop"], "POST", TOKEN) for r in seen]
    assert len({c["jti"] for c in claims}) == 3
    assert claims[0]["iat"] < claims[1]["iat"] < claims[2]["iat"]  # minted at each send, after the waits


# -- nonces ----------------------------------------------------------------------------------


class NonceServer:
    """An authorization server that checks every proof (signature, typ, htm, htu, a jti it never saw)
    and wants its current nonce in it: ``use_dpop_nonce`` with the nonce otherwise (RFC 9449 §8).
    ``rotate`` gives a new nonce with every answer, as a server may. Answers each kind of request
    with ``answers[kind]`` (a list, consumed) once the proof is good."""

    def __init__(self, answers: dict, *, rotate: bool = False, insist: bool = False) -> None:
        self.answers = answers
        self.rotate, self.insist = rotate, insist  # insist: use_dpop_nonce whatever it gets
        self.nonce_count = 1
        self.seen: list[tuple[str, dict, dict]] = []  # (path, form, proof claims)
        self.jtis: set[str] = set()

    @property
    def nonce(self) -> str:
        return f"nonce-{self.nonce_count}"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        claims = proof_claims(request.headers["dpop"], request.method, str(request.url).split("?")[0])
        assert claims["jti"] not in self.jtis, "a proof was sent twice"
        self.jtis.add(claims["jti"])
        self.seen.append((request.url.path, form, claims))
        if self.insist or claims.get("nonce") != self.nonce:
            return httpx.Response(400, json={"error": "use_dpop_nonce", "error_description": "nonce needed"},
                                  headers={"dpop-nonce": self.nonce})
        if self.rotate:
            self.nonce_count += 1
        status, body = self.answers[request.url.path].pop(0)
        return httpx.Response(status, json=body, headers={"dpop-nonce": self.nonce} if self.rotate else {})


def drive(flow, server, client_auth, start: float = 100.0):
    """Run ``flow`` through the real driver over ``server``; the times each request went out."""
    now = [start]
    sent_at: list[float] = []

    def handler(request):
        sent_at.append(now[0])
        return server(request)

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def main():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await OAuthHttp(client, client_auth, clock=lambda: now[0]).run(flow, sleep=sleep)

    return asyncio.run(main()), sent_at


def dpop_tokens(**extra) -> dict:
    return {"access_token": "at-1", "token_type": "DPoP", "expires_in": 600, "refresh_token": "rt-2", **extra}


def test_use_dpop_nonce_is_sent_once_more_with_the_nonce_and_fresh_credentials(signer):
    server = NonceServer({"/token": [(200, dpop_tokens())]})
    client_auth = ClientAuth(CLIENT, "private_key_jwt", signer=signer, issuer=ISSUER, dpop=dpop(signer))
    tokens, _ = drive(flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT), server, client_auth)
    assert tokens.token_type == "DPoP" and tokens.access_token == "at-1"
    (_, first, no_nonce), (_, second, with_nonce) = server.seen
    assert "nonce" not in no_nonce and with_nonce["nonce"] == "nonce-1"
    assert no_nonce["jti"] != with_nonce["jti"]
    # the client assertion is made afresh too: a server that keeps jti values would refuse a replay (G20)
    assert first["client_assertion"] != second["client_assertion"]
    assert jwt.decode(first["client_assertion"], options={"verify_signature": False})["jti"] != \
        jwt.decode(second["client_assertion"], options={"verify_signature": False})["jti"]


def test_only_one_more_send_and_then_the_flow_decides(signer):
    server = NonceServer({}, insist=True)
    with pytest.raises(GrantFailed, match="use_dpop_nonce") as failed:
        drive(flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT), server, ClientAuth(CLIENT, dpop=dpop(signer)))
    assert len(server.seen) == 2  # the send and the one with the nonce: no loop
    assert type(failed.value) is GrantFailed  # "not now": the grant is kept (not RefreshRejected)


def test_the_latest_nonce_of_any_answer_is_used_next_per_server(signer):
    proofs = dpop(signer)
    server = NonceServer({"/token": [(200, dpop_tokens()), (200, dpop_tokens(access_token="at-2"))]}, rotate=True)
    client_auth = ClientAuth(CLIENT, dpop=proofs)
    drive(flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT), server, client_auth)
    assert proofs.nonces == {server_of(TOKEN): "nonce-2"}  # from the 200 itself (§8.2)
    drive(flows.refresh(ENDPOINTS, "rt-2", ISSUER, CLIENT), server, client_auth)
    assert [c.get("nonce") for _, _, c in server.seen] == [None, "nonce-1", "nonce-2"]  # no use_dpop_nonce
    out = auth.Outgoing("refresh", "POST", "https://other.example/token")
    client_auth.prepare(out)
    assert "nonce" not in proof_claims(out.headers["dpop"])  # another server's nonce is not sent there


def test_a_hostile_nonce_is_not_taken(signer):
    proofs = dpop(signer)
    assert proofs.answered(TOKEN, {"dpop-nonce": "bad\nnonce"}) is None
    assert proofs.answered(TOKEN, {"dpop-nonce": "x" * 2000}) is None
    assert proofs.answered(TOKEN, {"dpop-nonce": 'has"quote'}) is None and proofs.nonces == {}


def test_a_nonce_demand_while_polling_is_neither_a_slow_poll_nor_an_end(signer):
    """Every poll is first refused with use_dpop_nonce (the server rotates its nonce with every
    answer, and a poll waits longer than it keeps one): each is sent once more at once, the
    polls keep the code's 5 s interval, and the approval's tokens come back."""
    pending = (400, {"error": "authorization_pending"})
    code = {"device_code": "dc-1", "user_code": "BDWP-HQPK", "verification_uri": f"{ISSUER}/device",
            "expires_in": 600, "interval": 5}
    server = NonceServer({"/device": [(200, code)], "/token": [pending, pending, (200, dpop_tokens())]},
                         rotate=True)
    real = server.__call__

    def forgetful(request):  # the nonce went stale while the device waited for the interval
        reply = real(request)
        if reply.status_code == 200 or "authorization_pending" in reply.text:
            server.nonce_count += 1
        return reply

    flow = grant.device_flow(ENDPOINTS, "openid", (), ISSUER, CLIENT, random.Random(3))
    tokens, sent_at = drive(flow, forgetful, ClientAuth(CLIENT, dpop=dpop(signer)))
    assert tokens.token_type == "DPoP"
    assert [path for path, _, _ in server.seen] == ["/device"] * 2 + ["/token"] * 6
    # each first send carries the nonce of the previous answer, gone stale; its second the fresh one
    assert [claims.get("nonce") for _, _, claims in server.seen] == [None] + [f"nonce-{n}" for n in range(1, 8)]
    polls = [t for (path, _, _), t in zip(server.seen, sent_at) if path == "/token"]
    assert len(polls) == 6  # three polls, each sent twice
    assert [polls[i + 1] - polls[i] for i in range(0, 6, 2)] == [0, 0, 0]  # once more at once
    assert [polls[i + 2] - polls[i] for i in (0, 2)] == [5, 5]  # the interval, never +5 s of slow_down


# -- the token type --------------------------------------------------------------------------


def reply(body: dict, dpop: bool) -> m.Response:
    return m.Response(200, json.dumps(body).encode(), 10.0, {"content-type": "application/json"}, dpop=dpop)


@pytest.mark.parametrize("token_type", ["DPoP", "dpop", "DPOP"])
def test_a_dpop_request_takes_a_dpop_token_whatever_the_case(token_type):
    flow = flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT)
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(reply(dpop_tokens(token_type=token_type), dpop=True))
    assert done.value.value.token_type == token_type


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "N_A", None])
def test_a_dpop_request_refuses_any_other_token_type(token_type):
    flow = flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT)
    next(flow)
    with pytest.raises(ProtocolViolation) as refused:
        flow.send(reply(dpop_tokens(token_type=token_type), dpop=True))
    text = str(refused.value)
    assert "not DPoP" in text and "dpop = true" in text and "\n" not in text and "at-1" not in text


def test_without_dpop_only_bearer_as_before():
    for token_type, ok in (("Bearer", True), ("DPoP", False)):
        flow = flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT)
        next(flow)
        if ok:
            with pytest.raises(StopIteration):
                flow.send(reply(dpop_tokens(token_type=token_type), dpop=False))
        else:
            with pytest.raises(ProtocolViolation, match="only Bearer is supported"):
                flow.send(reply(dpop_tokens(token_type=token_type), dpop=False))


def test_the_driver_says_whether_a_proof_went(signer):
    server = NonceServer({"/token": [(200, dpop_tokens(token_type="Bearer"))]})
    with pytest.raises(ProtocolViolation, match="not DPoP"):  # a server that ignored the proof
        drive(flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT), server, ClientAuth(CLIENT, dpop=dpop(signer)))


def test_a_poll_still_refused_for_its_nonce_backs_off_and_polling_goes_on():
    """What a flow sees when the one more send was refused for its nonce again (a server whose
    nonces go stale at once): not an end to the pairing (RFC 8628 §3.5 would stop on an unknown
    error), not a slow_down; a transient answer, with backoff, and the next poll's answer counts."""
    code = {"device_code": "dc-1", "user_code": "BDWP-HQPK", "verification_uri": f"{ISSUER}/device",
            "expires_in": 600, "interval": 5}
    flow = grant.device_flow(ENDPOINTS, "openid", (), ISSUER, CLIENT, random.Random(3))
    next(flow)
    assert isinstance(flow.send(m.Response(200, json.dumps(code).encode(), 100.0)), grant.Show)
    poll = flow.send(None)
    assert poll.not_before == 105.0
    refused = m.Response(400, json.dumps({"error": "use_dpop_nonce"}).encode(), 105.0, {"dpop-nonce": "n-9"})
    again = flow.send(refused)
    assert isinstance(again, grant.Send) and again.request == poll.request
    assert again.not_before >= 110.0  # at least the interval: backoff, never faster
    pending = m.Response(400, json.dumps({"error": "authorization_pending"}).encode(), again.not_before)
    assert flow.send(pending).not_before == again.not_before + 5  # the interval did not grow (no slow_down)


def test_a_refused_proof_at_a_refresh_keeps_the_grant():
    from devicelink.errors import ClientRejected

    flow = flows.refresh(ENDPOINTS, "rt-1", ISSUER, CLIENT)
    next(flow)
    body = {"error": "invalid_dpop_proof", "error_description": "DPoP proof iat is not recent enough"}
    with pytest.raises(ClientRejected, match="DPoP proof .*check the device's clock.*grant is kept"):
        flow.send(m.Response(400, json.dumps(body).encode(), 10.0, dpop=True))
