"""Issue 11 end to end, all at once, against the npm oidc-provider: a unit registers itself with a
manufacturer-signed software statement (RFC 7591), authenticates with its own key
(``private_key_jwt``), binds every token to that key (DPoP, the server's nonce required), pairs,
refreshes, serves an app a bound token with a proof, steps up (RFC 9470), gets a device-level
token (client credentials), and unpairs with a revocation; a token copied off the device is no use alone.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.test_dpop import app_calls_userinfo
from tests.support.registration import MANUFACTURER, fleet, fleet_keys

pytest.importorskip("devicelink_sim")

DEVICE_SCOPE = "telemetry.write"


@pytest.mark.oidc_provider
def test_a_registered_unit_with_its_own_key_and_bound_tokens_against_oidc_provider(short_tmp, tmp_path, daemons):
    from devicelink.factory import statements
    from tests.e2e.test_oidc_provider import Issued, pair, refreshed
    from tests.e2e.test_registration import provision
    from tests.support.oidc_provider import ACR_MFA, OidcProvider
    from tests.support.registration import SOFTWARE_ID, device_config

    key, _ = fleet()
    statement = statements.sign(key, statements.template(
        software_id=SOFTWARE_ID, issuer=MANUFACTURER, client_credentials=True,
        scope=f"openid profile offline_access {DEVICE_SCOPE}"))
    record = tmp_path / "issued.jsonl"
    op = OidcProvider(access_token_ttl=4, fleet_jwks=fleet_keys(key), statement_issuer=MANUFACTURER,
                      dpop_nonce=True, rotation="default", client_credentials=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OP_RECORD_ISSUED_TO", str(record))
        op.start()
    try:
        cfg = device_config(short_tmp, op.issuer, statement,
                            extra=f'assertion_audience = "endpoint"\ndpop = true\n\n[device_token]\n'
                                  f'scope = "{DEVICE_SCOPE}"\n')
        unit = provision(cfg)
        client_id = unit["registration"]["client_id"]
        d = daemons(cfg)
        kid = d.wait_for(r"device identity: serial \S+, key file \(thumbprint (\S+)\)").group(1)
        assert kid == unit["kid"]
        pair(d, op)
        refreshed(d)

        answer = app_calls_userinfo(d, f"{op.issuer}/me")  # a bound token, a proof; Bearer refused
        assert answer["sub"] == "alice"

        # step-up (RFC 9470): a second device authorization, signed and proven like the first
        body = {"acr_values": ACR_MFA, "max_age": 600}
        with httpx.Client(transport=httpx.HTTPTransport(uds=d.socket), base_url="http://devicelink",
                          timeout=30) as app:
            pending = app.post("/v1/step-up", json=body)
            assert pending.status_code == 202, pending.text
            code = pending.json()["user_code"]
            d.wait_for(rf"step-up for root: confirm code {code}")
            op.approve(code, login="alice", acr=ACR_MFA)
            d.wait_for(r"step-up for root: done")
            stronger = app.post("/v1/step-up", json=body)
            assert stronger.status_code == 200, stronger.text
            assert stronger.json()["acr"] == ACR_MFA and stronger.json()["token_type"] == "DPoP"
        device_token = d.cli("token", "--device")
        assert device_token.returncode == 0, device_token.stderr
        with d.client() as app:
            assert app.token(identity="device").token_type == "DPoP"

        out = d.cli("unpair")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        issued = Issued(record)
        errors = [e["error"] for e in issued.events("grant.error")]
        assert "invalid_client" not in errors and "invalid_dpop_proof" not in errors, errors
        assert issued.events("grant.revoked")
        # the daemon authenticated as the client it registered, never as anything else
        status = json.loads(d.cli("status", "--json").stdout)
        assert status["state"] == "unpaired" and client_id
    finally:
        op.stop()
