"""The real daemon process against the npm ``oidc-provider`` (9.x) as an independent
authorization server on loopback: pair, token over the socket (the CLI and ``Client``),
refresh with rotation, restart, unpair with revocation, a declined pairing, and no
secret in any file or log.

The same scenarios as ``test_daemon_e2e.py``, but the server is not ours. What the
test knows about it comes from the server itself: ``/me`` (userinfo) says whether an
access token is live, and ``server.mjs`` records, test-only (``OP_RECORD_ISSUED_TO``),
every access token, refresh token and device code it saved, consumed or destroyed,
and every grant request's outcome. The daemon never hands out refresh tokens or
device codes; that record is how the test knows them.

oidc-provider rotates refresh tokens and, when a spent one is presented again, revokes
the whole grant: so a served token that still works at ``/me`` after several rotations,
and a record with no ``refresh token already used``, mean every rotated refresh token
was used exactly once and the newest one was always the one kept.

No sleeps: every wait is on a daemon log line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import write_config
from tests.support.oidc_provider import OidcProvider

pytestmark = pytest.mark.oidc_provider

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SCOPE = "openid profile offline_access"


# --------------------------------------------------------------------------
# the server, and what it recorded


@dataclass
class Issued:
    """The lines server.mjs appended to its record file (one JSON object per event)."""

    path: Path

    def events(self, name: str | None = None, **match: str) -> list[dict]:
        if not self.path.exists():
            return []
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [e for e in lines
                if (name is None or e["event"] == name) and all(e.get(k) == v for k, v in match.items())]

    def values(self, name: str) -> list[str]:
        return [e["value"] for e in self.events(name)]

    def secrets(self) -> dict[str, set[str]]:
        return {
            "access token": set(self.values("access_token.saved")),
            "refresh token": set(self.values("refresh_token.saved")),
            "device code": set(self.values("device_code.saved")),
        }

    def grant_requests(self, grant_type: str) -> list[dict]:
        return [e for e in self.events() if e["event"] in ("grant.success", "grant.error")
                and e["grant_type"] == grant_type]


@pytest.fixture
def provider(tmp_path):
    """Start oidc-provider with ``provider(access_token_ttl=..., device_poll_interval=...)``.

    Its record of issued secrets goes to pytest's tmp_path, never under the daemon's
    directory (``short_tmp``), which the no-secrets check reads.
    """
    started: list[OidcProvider] = []

    def start(**kw) -> tuple[OidcProvider, Issued]:
        record = tmp_path / f"issued-{len(started)}.jsonl"
        op = OidcProvider(**kw)
        with pytest.MonkeyPatch.context() as mp:  # the harness passes its environment on
            mp.setenv("OP_RECORD_ISSUED_TO", str(record))
            op.start()
        started.append(op)
        return op, Issued(record)

    yield start
    for op in started:
        op.stop()


def userinfo(op: OidcProvider, access_token: str) -> httpx.Response:
    return httpx.get(f"{op.issuer}/me", headers={"Authorization": f"Bearer {access_token}"}, timeout=10)


# --------------------------------------------------------------------------
# the daemon


def pair(daemon, op: OidcProvider) -> str:
    shown = daemon.wait_for(r"pairing: enter code (\S+) at (\S+)")
    assert shown.group(2) == f"{op.issuer}/device"
    op.approve(shown.group(1), login="alice")
    daemon.wait_for(r"state pairing -> paired")
    # oidc-provider's ID token carries sub but no name: the account shows as its sub.
    daemon.wait_for(r"paired as alice$")
    return shown.group(1)


def cli_token(daemon) -> str:
    out = daemon.cli("token")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def refreshed(daemon) -> None:
    """The next refresh's outcome: it must succeed (not end in offline or reauth_required)."""
    outcome = daemon.wait_for(r"state refreshing -> (\S+)", timeout=20)
    assert outcome.group(1) == "paired", "a refresh failed; log:\n" + "".join(daemon.log[-15:])


def status(daemon) -> dict:
    out = daemon.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_rotation_chain(issued: Issued) -> None:
    """Every refresh presented the newest refresh token, once; nothing was replayed."""
    chain = [(e["event"], e["value"]) for e in issued.events()
             if e["event"] in ("refresh_token.saved", "refresh_token.consumed")]
    saved = [v for ev, v in chain if ev == "refresh_token.saved"]
    assert len(set(saved)) == len(saved)
    expected = []
    for i, value in enumerate(saved):
        expected.append(("refresh_token.saved", value))
        if i + 1 < len(saved):
            expected.append(("refresh_token.consumed", value))
    assert chain == expected, "a refresh token was presented out of turn"
    assert not issued.events("grant.error", grant_type="refresh_token")
    assert not issued.events("refresh_token.destroyed")
    assert not issued.events("grant.revoked")


def read_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def assert_no_secrets(issued: Issued, daemons, directory: Path, served: list[str],
                      earlier_files: dict[str, bytes] | None = None) -> None:
    """No access token, refresh token or device code the server issued is in a file under
    ``directory`` (now, or in ``earlier_files``, a snapshot taken while paired) or in any
    daemon's log or stdout."""
    secrets = issued.secrets()
    for kind, values in secrets.items():
        assert values, f"the server recorded no {kind}: the check below would prove nothing"
    assert served and set(served) <= secrets["access token"]  # the record covers what was served
    snapshots = [read_files(directory), *([earlier_files] if earlier_files is not None else [])]
    assert any("state/state.bin" in files for files in snapshots), \
        "no state file was checked: the check below would prove little"
    logs = "".join("".join(d.log) + d.stdout for d in daemons)
    for kind, values in secrets.items():
        for value in values:
            for files in snapshots:
                leaked = [name for name, blob in files.items() if value.encode() in blob]
                assert not leaked, f"a {kind} is in {leaked}"
            assert value not in logs, f"a {kind} is in the daemon's log or stdout"


# --------------------------------------------------------------------------
# the scenarios


def test_pair_serve_and_unpair(short_tmp, provider, daemons):
    # The server's own polling rules: no `interval` (so RFC 8628's 5 s), no slow_down.
    op, issued = provider(access_token_ttl=60)
    cfg = write_config(short_tmp, op.issuer, op.client_id, scope=SCOPE)
    d = daemons(cfg)
    user_code = pair(d, op)

    # The daemon waited 5 s before its first poll and between polls (§3.2, §3.5).
    created = issued.events("device_code.saved")[0]["t"]
    polls = [e["t"] for e in issued.grant_requests(DEVICE_CODE_GRANT)]
    assert polls and issued.grant_requests(DEVICE_CODE_GRANT)[-1]["event"] == "grant.success"
    gaps = [b - a for a, b in zip([created, *polls], polls)]
    assert min(gaps) >= 4900, f"polled {gaps} ms apart; with no interval sent, 5 s is the floor"

    s = status(d)
    assert s["state"] == "paired" and s["pairing"] is None and s["last_error"] is None
    assert s["account"] == {"sub": "alice", "name": None}
    assert 0 < s["access_token_expires_in"] <= 60

    # the token over the socket: the CLI and the Python client agree
    access_token = cli_token(d)
    with d.client() as client:
        answer = client.token()
    assert answer == {"access_token": access_token, "token_type": "Bearer",
                      "expires_in": answer["expires_in"], "scope": SCOPE}
    assert 0 < answer["expires_in"] <= 60
    # ... and the provider takes it
    me = userinfo(op, access_token)
    assert me.status_code == 200 and me.json() == {"sub": "alice", "name": "Alice"}
    assert access_token in issued.values("access_token.saved")

    # unpair revokes the refresh token at the server (RFC 7009); oidc-provider drops the grant
    [refresh_token] = issued.values("refresh_token.saved")
    paired_files = read_files(short_tmp)  # unpairing deletes the state file: look at it now
    out = d.cli("unpair")
    assert out.returncode == 0, out.stderr
    assert "revoked" in out.stdout
    assert issued.values("refresh_token.destroyed") == [refresh_token]  # the one it held, by its hint
    assert len(issued.events("grant.revoked")) == 1
    assert userinfo(op, access_token).status_code == 401
    gone = d.cli("token")
    assert gone.returncode == 3 and "not paired" in gone.stderr
    assert status(d)["state"] == "unpaired"
    assert d.stop() == 0

    assert "state/state.bin" not in read_files(short_tmp)  # forgotten locally, too
    assert_no_secrets(issued, [d], short_tmp, [access_token], paired_files)
    assert user_code in "".join(d.log)  # the user code may be logged: it is on the screen anyway


def test_refresh_rotation_and_restart(short_tmp, provider, daemons):
    # 4 s access tokens: the daemon refreshes at half-life, every ~2 s. The pairing
    # itself is test_pair_serve_and_unpair's subject; a 1 s interval keeps this one short.
    op, issued = provider(access_token_ttl=4, device_poll_interval=1)
    cfg = write_config(short_tmp, op.issuer, op.client_id, scope=SCOPE)
    d = daemons(cfg)
    pair(d, op)
    served = [cli_token(d)]
    assert userinfo(op, served[0]).status_code == 200

    for _ in range(2):
        refreshed(d)
    served.append(cli_token(d))
    assert served[-1] != served[0]
    # Alive after two rotations: a replayed refresh token would have revoked the grant.
    me = userinfo(op, served[-1])
    assert me.status_code == 200 and me.json()["sub"] == "alice"
    assert len([e for e in issued.grant_requests("refresh_token") if e["event"] == "grant.success"]) >= 2
    assert_rotation_chain(issued)
    assert status(d)["last_refresh"] is not None

    # Stop right after a refresh (the next is ~2 s away), restart: no pairing, and the
    # refresh after the restart presents the newest refresh token, which was on disk.
    refreshed(d)
    assert d.stop() == 0
    rotations_before = len(issued.values("refresh_token.consumed"))
    d2 = daemons(cfg)
    d2.wait_for(r"restored the grant as alice$")
    assert not any(re.search(r"pairing: enter code", line) for line in d2.log)
    served.append(cli_token(d2))
    assert userinfo(op, served[-1]).status_code == 200
    refreshed(d2)
    served.append(cli_token(d2))
    assert userinfo(op, served[-1]).status_code == 200
    assert len(issued.values("refresh_token.consumed")) > rotations_before
    assert_rotation_chain(issued)
    assert len(set(issued.values("device_code.saved"))) == 1  # one pairing in all
    assert d2.stop() == 0

    assert_no_secrets(issued, [d, d2], short_tmp, served)


def test_no_offline_access_is_said_at_pairing(short_tmp, provider, daemons, monkeypatch):
    """Issue 10, item 12: without offline_access oidc-provider issues no refresh token. The
    daemon says so when it pairs (log, screen message, status warnings), not an hour later."""
    monkeypatch.setenv("OP_REFRESH_NEEDS_OFFLINE_ACCESS", "1")  # oidc-provider's own default
    op, issued = provider(access_token_ttl=600, device_poll_interval=1)
    cfg = write_config(short_tmp, op.issuer, op.client_id, scope="openid profile")
    d = daemons(cfg)
    pair(d, op)
    assert not issued.values("refresh_token.saved")  # the premise: none was issued
    d.wait_for(r"issued no refresh token")
    s = status(d)
    [warning] = s["warnings"]
    assert "no refresh token" in warning and "offline_access" in warning
    assert "No refresh token" in s["message"]
    assert "warning: the authorization server issued no refresh token" in d.cli("status").stdout
    assert d.stop() == 0


def test_denied_pairing_is_reauth_required(short_tmp, provider, daemons):
    op, issued = provider(access_token_ttl=60, device_poll_interval=1)
    cfg = write_config(short_tmp, op.issuer, op.client_id, scope=SCOPE)
    d = daemons(cfg)
    code = d.wait_for(r"pairing: enter code (\S+)").group(1)
    op.deny(code)  # "Abort" on oidc-provider's confirm page
    d.wait_for(r"state pairing -> reauth_required", timeout=20)

    [denied] = [e for e in issued.grant_requests(DEVICE_CODE_GRANT) if e["event"] == "grant.error"
                and e["error"] != "authorization_pending"]
    assert denied["error"] == "access_denied"
    s = status(d)
    assert s["state"] == "reauth_required" and s["account"] is None and s["pairing"] is None
    assert "declined" in s["last_error"]  # "the request was declined on the phone"
    refused = d.cli("token")
    assert refused.returncode == 3 and "declined" in refused.stderr
    assert not issued.values("access_token.saved")

    # the way out the status names: a new code, and this time the user approves
    out = d.cli("pair")
    assert out.returncode == 0, out.stderr
    new_code = d.wait_for(r"pairing: enter code (\S+)").group(1)
    assert new_code != code and new_code in out.stdout
    op.approve(new_code, login="alice")
    d.wait_for(r"state pairing -> paired")
    access_token = cli_token(d)
    assert userinfo(op, access_token).status_code == 200
    assert d.stop() == 0

    assert_no_secrets(issued, [d], short_tmp, [access_token])


def test_narrowed_tokens_per_app_keep_the_rotating_grant(short_tmp, provider, daemons):
    """Per-app tokens against a server that is not ours: a narrower scope (RFC 6749 §6) for an
    app under another uid, an audience-restricted JWT for a resource (RFC 8707), and every
    rotation they cause chained correctly (a replay would revoke the grant)."""
    import os
    import shutil

    from tests.e2e.test_apps import as_app

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("starts an app under another uid (needs root and setpriv)")
    api = "https://api.example.com"
    op, issued = provider(access_token_ttl=6, device_poll_interval=1)  # the grant refreshes every ~3 s
    short_tmp.chmod(0o755)
    cfg = write_config(short_tmp, op.issuer, op.client_id, scope=f"{SCOPE} api:read api:write",
                       extra=f'resource = ["{api}"]\n')
    (short_tmp / "clients.d").mkdir()
    (short_tmp / "clients.d" / "player.toml").write_text(
        '[[client]]\nname = "player"\nuser = "nobody"\nscope = "openid profile api:read"\n')
    d = daemons(cfg)
    pair(d, op)

    narrowed = as_app(d, 65534, "token", "--scope", "openid profile")
    assert narrowed.returncode == 0, narrowed.stderr
    info = op.access_token_info(narrowed.stdout.strip())
    assert info["active"] and set(info["scope"].split()) == {"openid", "profile"}

    for_api = as_app(d, 65534, "token", "--scope", "api:read", "--resource", api)
    assert for_api.returncode == 0, for_api.stderr
    claims = op.access_token_info(for_api.stdout.strip())
    assert claims["aud"] == api and claims["scope"] == "api:read"  # not api:write: not the app's

    refused = as_app(d, 65534, "token", "--scope", "api:write", "--resource", api)
    assert refused.returncode == 4
    # the grant's own token and refresh still work after the narrowed rotations
    assert userinfo(op, cli_token(d)).status_code == 200
    refreshed(d)  # the grant's own refresh, after the narrowed ones rotated its refresh token
    assert userinfo(op, cli_token(d)).status_code == 200
    assert len(issued.values("refresh_token.consumed")) >= 3
    assert_rotation_chain(issued)
