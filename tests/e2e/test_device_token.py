"""Device-level tokens end to end (issue 11 item 4): the real daemon, never paired, serves the
device's own token (the client credentials grant, RFC 6749 §4.4) to the apps whose policy
allows it, over the socket (curl), the CLI and the client library; an app not allowed gets
403; the token works at the server, which says it has no user.

Against the development server (Authlib) with apps as real processes under other uids, as
in test_apps.py, and against the npm ``oidc-provider`` with each confidential client
authentication method. No sleeps: every wait is on a daemon log line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import httpx
import pytest

from tests.conftest import write_config
from tests.e2e.test_apps import as_app

FULL = "openid profile email offline_access"
API = "https://api.example.com"
SECRET = "a-client-secret-for-the-e2e-test"
SECRET_AUTH = 'client_auth = "{method}"\nclient_secret_file = "secret"\n'
APPS = """
[device_token]
scope = "telemetry.write updates.read"

[[client]]
name = "telemetry"
user = "nobody"
device_scope = "telemetry.write"

[[client]]
name = "player"
uid = 4000
scope = "openid profile"
"""

others = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                            reason="starts apps under other uids (needs root and setpriv)")


def curl(daemon, target: str) -> dict:
    out = subprocess.run(["curl", "-s", "--unix-socket", daemon.socket, f"http://devicelink{target}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@others
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_an_unpaired_daemon_serves_device_tokens_to_the_apps_its_policy_allows(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1) as srv:
        short_tmp.chmod(0o755)  # other uids reach the socket; the state dir inside stays 0700
        (short_tmp / "secret").write_text(srv.client_secret + "\n")
        cfg = write_config(short_tmp, srv.issuer, srv.confidential_client_id, scope=FULL,
                           extra=SECRET_AUTH.format(method="client_secret_basic") + APPS)
        d = daemons(cfg)
        code = d.wait_for(r"pairing: enter code (\S+)").group(1)  # unpaired: a code on screen, nobody approves

        root = curl(d, "/v1/token?identity=device")  # root and the daemon's user: all of [device_token]
        assert set(root) == {"access_token", "token_type", "expires_in", "scope"}
        assert root["scope"] == "telemetry.write updates.read" and root["token_type"] == "Bearer"
        info = srv.access_token_info(root["access_token"])
        assert info["active"] and info["client_id"] == srv.confidential_client_id and info["sub"] is None

        app = as_app(d, 65534, "token", "--device")  # the telemetry app, allowed telemetry.write
        assert app.returncode == 0, app.stderr
        mine = app.stdout.strip()
        assert srv.access_token_info(mine)["scope"] == "telemetry.write"
        assert as_app(d, 65534, "token", "--device").stdout.strip() == mine  # cached: asked once
        wider = as_app(d, 65534, "token", "--device", "--scope", "updates.read")
        assert wider.returncode == 4 and "is not allowed for 'telemetry'" in wider.stderr
        assert as_app(d, 65534, "token").returncode == 3  # the user's token: there is no user yet

        player = as_app(d, 4000, "token", "--device")  # listed, but no device_scope: default deny
        assert player.returncode == 4 and player.stdout == ""
        assert "'player' may not have device-level tokens" in player.stderr and len(player.stderr.splitlines()) == 1
        assert as_app(d, 4001, "token", "--device").returncode == 4  # not listed at all

        with d.client() as client:  # the client library, as root
            assert client.token(identity="device", scope="updates.read")["scope"] == "updates.read"
            status = client.status()
        with httpx.Client(transport=httpx.HTTPTransport(uds=d.socket), base_url="http://devicelink") as http:
            metrics = http.get("/metrics").text
        assert status["state"] == "pairing" and status["device_token"] == {"held": 3, "last_error": None}
        assert 'devicelink_client_credentials_requests_total{outcome="ok"} 3' in metrics
        assert srv.stats.token_requests["client_credentials"] == 3

        srv.approve(code)  # paired, then unpaired: the device's own tokens start afresh
        d.wait_for(r"state pairing -> paired")
        assert as_app(d, 65534, "token", "--device").stdout.strip() == mine
        out = d.cli("unpair")
        assert out.returncode == 0, out.stderr
        again = as_app(d, 65534, "token", "--device")
        assert again.returncode == 0 and again.stdout.strip() != mine
        assert srv.access_token_info(mine)["active"]  # dropped, not revoked
        assert srv.stats.revocations == 1  # the grant's refresh token only

        for path in (short_tmp / "state").rglob("*"):  # in memory only
            assert mine.encode() not in path.read_bytes()
        assert mine not in "".join(d.log) and srv.client_secret not in "".join(d.log)


def test_a_refused_client_is_one_line_naming_the_config_and_no_secret(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1) as srv:
        (short_tmp / "secret").write_text("not-the-right-secret-value\n")
        cfg = write_config(short_tmp, srv.issuer, srv.confidential_client_id, scope=FULL,
                           extra=SECRET_AUTH.format(method="client_secret_post") + APPS)
        d = daemons(cfg)
        out = d.cli("token", "--device")
        assert out.returncode == 6 and out.stdout == ""
        assert len(out.stderr.splitlines()) == 1
        assert ("cannot get a device-level token: the authorization server refused this client (HTTP 401 "
                "invalid_client") in out.stderr
        assert "check [provider] client_id and the secret in client_secret_file" in out.stderr
        assert "not-the-right-secret-value" not in out.stderr + "".join(d.log)
        status = json.loads(d.cli("status", "--json").stdout)
        assert "refused this client" in status["device_token"]["last_error"]
        d.wait_for(r"device-level token for scope 'telemetry.write updates.read': cannot get")


# -- oidc-provider ------------------------------------------------------------------------


@pytest.mark.oidc_provider
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "private_key_jwt"])
def test_oidc_provider_issues_device_tokens_to_each_kind_of_confidential_client(short_tmp, tmp_path, daemons,
                                                                                 method):
    from tests.e2e.test_identity import PKJWT, provision
    from tests.e2e.test_oidc_provider import Issued
    from tests.support.oidc_provider import OidcProvider

    jwks = None
    if method == "private_key_jwt":  # the device's key first, registered with the server
        jwks = provision(write_config(short_tmp, "http://127.0.0.1:1", "x", extra=PKJWT))["jwks"]
    record = tmp_path / "issued.jsonl"
    op = OidcProvider(client_secret=SECRET, client_credentials=True, client_jwks=jwks)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OP_RECORD_ISSUED_TO", str(record))
        op.start()
    try:
        (short_tmp / "secret").write_text(SECRET)
        client_id = op.key_client_id if jwks else op.secret_client_ids[method]
        auth = PKJWT if jwks else SECRET_AUTH.format(method=method)
        cfg = write_config(short_tmp, op.issuer, client_id, scope="openid profile offline_access", extra=auth + f"""
[device_token]
scope = "telemetry.write updates.read api:read"
resource = ["{API}"]
""")
        d = daemons(cfg)
        d.wait_for(r"pairing: enter code")  # unpaired

        out = d.cli("token", "--device", "--scope", "telemetry.write")
        assert out.returncode == 0, out.stderr
        opaque = out.stdout.strip()
        info = op.access_token_info(opaque)  # introspected
        assert info["active"] and info["client_id"] == client_id and "sub" not in info
        assert info["scope"] == "telemetry.write"

        out = d.cli("token", "--device", "--scope", "api:read", "--resource", API)
        assert out.returncode == 0, out.stderr
        claims = op.access_token_info(out.stdout.strip())  # a JWT for the API, verified with the server's keys
        assert claims["aud"] == API and claims["scope"] == "api:read" and claims["client_id"] == client_id

        refused = d.cli("token", "--device", "--scope", "updates.read")  # the server does not give it this client
        assert refused.returncode == 4, refused.stderr
        assert "refused scope 'updates.read' for this client: invalid_scope" in refused.stderr

        issued = Issued(record)
        assert issued.values("client_credentials.saved") == [opaque]  # the JWT is not stored: it is signed
        assert [e.get("error") for e in issued.grant_requests("client_credentials")] == [None, None, "invalid_scope"]
    finally:
        op.stop()
