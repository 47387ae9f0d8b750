"""The real daemon with ``[provider] dpop = true`` (issue 11, item 3) against two servers that check
its DPoP proofs (RFC 9449) with their own JOSE code and want their nonce in every one: the
development server (joserfc) and the npm ``oidc-provider`` (jose).

The daemon pairs, refreshes through a nonce that moved, and unpairs: every request to the
authorization server carries a proof by the device key. Its tokens are bound to that key
(``cnf.jkt`` = the key's thumbprint): an app gets one over the socket (``token_type`` ``DPoP``)
with a proof from ``POST /v1/dpop-proof`` and calls the server's userinfo with them, answering the
resource's own nonce challenge; the same token sent as Bearer is refused. Against oidc-provider
also with ``private_key_jwt``, and with the library's own rotation rule, which leaves a DPoP-bound
refresh token as it is (RFC 9700 §4.14.2): the daemon keeps using the one it has.

No sleeps: every wait is on a daemon log line.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import write_config

SCOPE = "openid profile offline_access"
DPOP = "dpop = true\n"


def call(url: str, token: str, scheme: str = "DPoP", proof: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"{scheme} {token}", **({"DPoP": proof} if proof else {})}
    return httpx.get(url, headers=headers, timeout=10)


def app_calls_userinfo(d, url: str) -> dict:
    """What an app does: a token and a proof from the daemon, the resource's nonce when it asks.
    Returns the userinfo answer; checks a Bearer use of the same token is refused."""
    with d.client() as app:
        token = app.token()
        assert token.token_type == "DPoP"
        bearer = call(url, token.access_token, "Bearer")
        assert bearer.status_code == 401, bearer.text  # a copied token alone is no use
        first = call(url, token.access_token, proof=app.dpop_proof("GET", url, access_token=token.access_token))
        assert first.status_code == 401 and 'error="use_dpop_nonce"' in first.headers["www-authenticate"]
        nonce = first.headers["dpop-nonce"]
        answer = call(url, token.access_token,
                      proof=app.dpop_proof("GET", url, access_token=token.access_token, nonce=nonce))
        assert answer.status_code == 200, answer.headers.get("www-authenticate")
        return {**answer.json(), "access_token": token.access_token}


def test_tokens_bound_to_the_device_key_and_an_app_uses_one_with_a_proof(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1, access_token_lifetime=6, dpop_nonce=True) as srv:
        d = daemons(write_config(short_tmp, srv.issuer, srv.client_id, scope=SCOPE, extra=DPOP))
        kid = d.wait_for(r"made a new device identity key \S+ \(thumbprint (\S+)\): DPoP").group(1)
        srv.approve(d.wait_for(r"pairing: enter code (\S+)").group(1))
        d.wait_for(r"state pairing -> paired")

        out = d.cli("token")
        assert out.returncode == 0 and len(out.stdout.split()) == 1  # unchanged: the token, nothing else
        answer = app_calls_userinfo(d, f"{srv.issuer}/userinfo")
        assert answer["sub"] == "alice"
        assert srv.access_token_info(answer["access_token"])["cnf"] == {"jkt": kid}

        srv.new_dpop_nonce()  # the nonce the daemon holds goes stale before its next refresh
        d.wait_for(r"refresh request to \S+: the server asked for a DPoP nonce; sending it again", timeout=20)
        assert d.wait_for(r"state refreshing -> (\S+)", timeout=20).group(1) == "paired"
        out = d.cli("unpair")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr

        to_server = [p for p in srv.dpop_proofs if not p["htu"].endswith("/userinfo")]
        assert {p["htu"].rsplit("/", 1)[1] for p in to_server} == {"device_authorization", "token", "revoke"}
        assert all(p["jkt"] == kid and p["htm"] == "POST" for p in to_server)
        assert len({p["jti"] for p in srv.dpop_proofs}) == len(srv.dpop_proofs)  # a new proof for every request
        outcomes = [e.outcome for e in srv.stats.token_log]
        assert "slow_down" not in outcomes and "refresh_token" in {e.grant_type for e in srv.stats.token_log}
        assert srv.stats.device_authorizations == 1 and srv.stats.revocations == 1


def test_a_server_that_ignores_dpop_gets_no_pairing(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1, dpop=False) as srv:
        d = daemons(write_config(short_tmp, srv.issuer, srv.client_id, scope=SCOPE, extra=DPOP))
        srv.approve(d.wait_for(r"pairing: enter code (\S+)").group(1))
        d.wait_for(r"pairing failed: the token response has token_type 'Bearer', not DPoP")
        out = d.cli("token")
        assert out.returncode != 0 and srv.issued_refresh_tokens()  # issued, and never kept or served
        assert not (short_tmp / "state" / "state.bin").exists()


@pytest.mark.oidc_provider
@pytest.mark.parametrize("client_auth", ["none", "private_key_jwt"])
def test_oidc_provider_checks_every_proof_and_keeps_a_bound_refresh_token(short_tmp, tmp_path, daemons,
                                                                          client_auth):
    from tests.e2e.test_identity import PKJWT, provision
    from tests.e2e.test_oidc_provider import Issued, pair, refreshed
    from tests.support.oidc_provider import OidcProvider

    extra = DPOP
    jwks = None
    if client_auth == "private_key_jwt":
        extra += PKJWT + 'assertion_audience = "endpoint"\n'
        jwks = provision(write_config(short_tmp, "http://127.0.0.1:1", "x", extra=extra))["jwks"]
    record = tmp_path / "issued.jsonl"
    op = OidcProvider(access_token_ttl=4, client_jwks=jwks, dpop_nonce=True, rotation="default")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OP_RECORD_ISSUED_TO", str(record))
        op.start()
    try:
        client_id = op.key_client_id if jwks else op.client_id
        d = daemons(write_config(short_tmp, op.issuer, client_id, scope=SCOPE, extra=extra))
        kid = d.wait_for(r"device identity: serial \S+, key file \(thumbprint (\S+)\)").group(1)
        pair(d, op)
        refreshed(d)
        refreshed(d)
        answer = app_calls_userinfo(d, f"{op.issuer}/me")
        assert answer["sub"] == "alice"
        if client_auth == "none":  # the harness introspects as the public client: its own tokens only
            assert op.access_token_info(answer["access_token"])["cnf"] == {"jkt": kid}
        out = d.cli("unpair")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr

        issued = Issued(record)
        assert not issued.events("grant.error", grant_type="refresh_token")
        assert len(issued.events("grant.success", grant_type="refresh_token")) >= 2
        if client_auth == "none":  # RFC 9700 §4.14.2: a bound refresh token is not rotated; the daemon kept it
            assert len(issued.values("refresh_token.saved")) == 1 and not issued.values("refresh_token.consumed")
        # the first poll and the first refresh were asked for the nonce and sent again, assertion and all
        errors = [e["error"] for e in issued.events("grant.error")]
        assert "use_dpop_nonce" in errors and "invalid_client" not in errors and "slow_down" not in errors
        assert issued.events("grant.revoked")
    finally:
        op.stop()
