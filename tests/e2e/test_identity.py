"""The real daemon with ``client_auth = "private_key_jwt"`` (issue 11, items 1-2) against two servers
that verify its assertions with their own JOSE code: the development server (Authlib and
joserfc) and the npm ``oidc-provider`` (jose). Both refuse an assertion whose ``jti`` they saw
before, so every poll, refresh and revocation that succeeds carried a new one.

The key is made by ``devicelink provision`` (a process, as at the factory), its JWKS
registered with the server, then the daemon starts: pairing, the token at the server,
refresh, a restart with the same key, and unpair (revocation, authenticated too). And the
other order: a daemon that makes its own key at first start is refused (invalid_client)
until the server is given that key.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.conftest import DAEMON_PYTHON, write_config

SCOPE = "openid profile offline_access"
PKJWT = 'client_auth = "private_key_jwt"\n'


def provision(cfg) -> dict:
    out = subprocess.run([*DAEMON_PYTHON, "-m", "devicelink", "--config", str(cfg), "provision"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_pair_refresh_restart_unpair_with_a_provisioned_key_on_the_dev_server(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer
    from devicelink_sim.settings import KEY_CLIENT_ID

    with DevServer(interval=1, access_token_lifetime=4) as srv:
        cfg = write_config(short_tmp, srv.issuer, KEY_CLIENT_ID, scope=SCOPE,
                           extra=PKJWT + '\n[identity]\nserial = "SN-0001"\n')
        identity = provision(cfg)
        assert identity["created"] and identity["serial"] == "SN-0001"
        assert (short_tmp / "state" / "identity.jwk").stat().st_mode & 0o777 == 0o600
        srv.register_device_key(identity["jwks"])

        d = daemons(cfg)
        d.wait_for(rf"device identity: serial SN-0001, key file \(thumbprint {identity['kid']}\)")
        code = d.wait_for(r"pairing: enter code (\S+)").group(1)
        srv.approve(code, subject="alice")
        d.wait_for(r"state pairing -> paired")
        token = d.cli("token").stdout.strip()
        assert httpx.get(f"{srv.issuer}/userinfo", headers={"authorization": f"Bearer {token}"}).json()["sub"] \
            == "alice"
        d.wait_for(r"state refreshing -> paired", timeout=20)  # a refresh, authenticated the same way
        assert d.stop() == 0

        # one verified assertion per request, each with its own jti, all from this device's key
        assertions = srv.assertions
        kinds = [e.grant_type for e in srv.stats.token_log]
        assert "refresh_token" in kinds and len(assertions) == 1 + len(kinds)  # + the device authorization
        assert len({a["jti"] for a in assertions}) == len(assertions)
        assert all(a["iss"] == a["sub"] == KEY_CLIENT_ID and a["aud"] == srv.issuer for a in assertions)
        assert all(a["exp"] - a["iat"] == 60 for a in assertions)

        # a restart signs with the same key: the grant is kept and refreshes go on
        d2 = daemons(cfg)
        d2.wait_for(rf"thumbprint {identity['kid']}\)")
        d2.wait_for(r"restored the grant")
        d2.wait_for(r"state refreshing -> paired", timeout=20)
        assert "made a new device identity key" not in "".join(d.log + d2.log)

        before = len(srv.assertions)
        out = d2.cli("unpair")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        assert srv.stats.revocations == 1 and len(srv.assertions) == before + 1  # the revocation's own
        assert provision(cfg)["kid"] == identity["kid"]  # provisioning again changes nothing
        assert identity["jwks"]["keys"][0].get("d") is None


def test_a_key_made_at_first_start_is_refused_until_the_server_knows_it(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer
    from devicelink_sim.settings import KEY_CLIENT_ID

    with DevServer(interval=1) as srv:
        srv.register_device_key(provision_elsewhere(short_tmp)["jwks"])  # another device's key
        cfg = write_config(short_tmp, srv.issuer, KEY_CLIENT_ID, scope=SCOPE, extra=PKJWT)
        d = daemons(cfg)
        made = d.wait_for(r"made a new device identity key \S+ \(thumbprint (\S+)\)").group(1)
        d.wait_for(r"pairing failed: .*invalid_client")
        status = json.loads(d.cli("status", "--json").stdout)
        assert "invalid_client" in status["last_error"]

        identity = provision(cfg)  # what the daemon made, for the server
        assert not identity["created"] and identity["kid"] == made
        srv.register_device_key(identity["jwks"])
        out = d.cli("pair")
        assert out.returncode == 0, out.stderr
        srv.approve(out.stdout.split()[2])
        d.wait_for(r"state pairing -> paired")


def provision_elsewhere(directory) -> dict:
    other = directory / "other"
    other.mkdir()
    return provision(write_config(other, "https://id.example", "x", extra=PKJWT))


@pytest.mark.oidc_provider
def test_pair_refresh_unpair_against_oidc_provider(short_tmp, tmp_path, daemons):
    from tests.e2e.test_oidc_provider import Issued, pair, refreshed
    from tests.support.oidc_provider import OidcProvider

    cfg_dir = short_tmp
    identity = provision(write_config(cfg_dir, "http://127.0.0.1:1", "x", extra=PKJWT))  # the key first
    record = tmp_path / "issued.jsonl"
    op = OidcProvider(access_token_ttl=4, client_jwks=identity["jwks"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OP_RECORD_ISSUED_TO", str(record))
        op.start()
    try:
        cfg = write_config(cfg_dir, op.issuer, op.key_client_id, scope=SCOPE,
                           extra=PKJWT + 'assertion_audience = "endpoint"\n')
        d = daemons(cfg)
        pair(d, op)
        refreshed(d)
        refreshed(d)
        out = d.cli("unpair")
        assert out.returncode == 0 and "revoked" in out.stdout, out.stdout + out.stderr
        issued = Issued(record)
        assert len(issued.events("grant.success", grant_type="refresh_token")) >= 2
        assert not issued.events("grant.error"), issued.events("grant.error")
        assert issued.events("grant.revoked")  # the authenticated revocation ended the grant
    finally:
        op.stop()


@pytest.mark.oidc_provider
def test_oidc_provider_refuses_assertions_signed_by_another_key(short_tmp, daemons):
    from tests.support.oidc_provider import OidcProvider

    with OidcProvider(client_jwks=provision_elsewhere(short_tmp)["jwks"]) as op:
        d = daemons(write_config(short_tmp, op.issuer, op.key_client_id, scope=SCOPE, extra=PKJWT))
        d.wait_for(r"pairing failed: the authorization server refused the device authorization request: invalid_client")
        status = json.loads(d.cli("status", "--json").stdout)
        assert status["last_error_kind"] == "client" and "public key is registered" in status["last_error"]
