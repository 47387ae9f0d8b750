"""The real daemon process against the development authorization server on loopback:
pair, token over the socket (curl and the CLI), refresh with rotation, restart, unpair with
revocation, and no secret in any file or log."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess

import httpx
import pytest

from tests.conftest import write_config


def pair(daemon, srv, name="Alice Example"):
    code = daemon.wait_for(r"pairing: enter code (\S+) at (\S+)")
    assert code.group(2) == srv.issuer + "/device"
    srv.approve(code.group(1), subject="alice", name=name)
    daemon.wait_for(r"state pairing -> paired")
    return code.group(1)


def secrets_seen(srv):
    """Every token and device code the server handed out, from its own records."""
    return srv.issued_secrets()


def test_pair_serve_refresh_restart_unpair(short_tmp, dev_server, daemons):
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    d = daemons(cfg)
    user_code = pair(d, dev_server)

    # status over the CLI: paired, the account from the ID token, never a token
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["state"] == "paired" and status["account"] == {"sub": "alice", "name": "Alice Example"}
    assert status["pairing"] is None and status["access_token_expires_in"] > 3000

    # the token through curl and through `devicelink token`
    token = d.cli("token")
    assert token.returncode == 0
    access_token = token.stdout.strip()
    assert httpx.get(dev_server.issuer + "/userinfo",
                     headers={"authorization": f"Bearer {access_token}"}).json()["sub"] == "alice"
    if shutil.which("curl"):
        curl = subprocess.run(["curl", "-sS", "--unix-socket", d.socket, "http://devicelink/v1/token"],
                              capture_output=True, text=True, timeout=30)
        answer = json.loads(curl.stdout)
        assert answer["access_token"] == access_token and answer["token_type"] == "Bearer"
        assert "refresh_token" not in answer and "device_code" not in answer
    assert stat.S_IMODE(__import__("os").stat(d.socket).st_mode) == 0o660
    assert stat.S_IMODE(d.state_dir.stat().st_mode) == 0o700

    # a restarted daemon serves without pairing again
    assert d.stop() == 0
    d2 = daemons(cfg)
    d2.wait_for(r"restored the grant as Alice Example")
    assert d2.cli("token").stdout.strip() == access_token
    assert dev_server.stats.device_authorizations == 1

    # unpair revokes at the server (RFC 7009) and forgets locally
    out = d2.cli("unpair")
    assert out.returncode == 0 and "revoked" in out.stdout
    assert dev_server.stats.revocations == 1
    assert httpx.get(dev_server.issuer + "/userinfo",
                     headers={"authorization": f"Bearer {access_token}"}).status_code == 401
    gone = d2.cli("token")
    assert gone.returncode == 3 and "not paired" in gone.stderr
    assert d2.stop() == 0

    assert_no_secrets(dev_server, [d, d2], short_tmp)
    assert user_code in "".join(d.log)  # the user code may be logged; it is on the screen anyway


def assert_no_secrets(srv, daemons, directory):
    secrets = secrets_seen(srv)
    assert secrets, "the server recorded no secrets: the check below would prove nothing"
    files = b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())
    logs = "".join("".join(x.log) + x.stdout for x in daemons)
    for secret in secrets:
        assert secret.encode() not in files
        assert secret not in logs


def test_refresh_with_rotation(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1, access_token_lifetime=4) as srv:
        cfg = write_config(short_tmp, srv.issuer, srv.client_id)
        d = daemons(cfg)
        pair(d, srv)
        first = d.cli("token").stdout.strip()
        # refreshed proactively before expiry (at most half of a 4 s lifetime), twice
        for _ in range(2):
            d.wait_for(r"state refreshing -> paired", timeout=20)
        second = d.cli("token").stdout.strip()
        assert second != first
        refreshes = [e for e in srv.stats.token_log if e.grant_type == "refresh_token"]
        assert len(refreshes) >= 2 and all(e.outcome == "ok" for e in refreshes)
        assert srv.stats.reuse_detections == 0  # every rotated refresh token was used exactly once
        # restart after rotations: the newest refresh token was on disk
        assert d.stop() == 0
        d2 = daemons(cfg)
        d2.wait_for(r"restored the grant")
        d2.wait_for(r"state refreshing -> paired", timeout=20)
        assert srv.stats.reuse_detections == 0
        assert d2.cli("token").returncode == 0
        d2.stop()
        assert_no_secrets(srv, [d, d2], short_tmp)


def test_denied_then_pair_again(short_tmp, dev_server, daemons):
    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    code = d.wait_for(r"pairing: enter code (\S+)").group(1)
    dev_server.deny(code)
    d.wait_for(r"state pairing -> reauth_required")
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["state"] == "reauth_required" and "declined" in status["last_error"]
    assert d.cli("token").returncode == 3

    out = d.cli("pair")
    assert out.returncode == 0, out.stderr
    new_code = out.stdout.split()[2]
    assert new_code != code and new_code in out.stdout
    dev_server.approve(new_code)
    d.wait_for(r"state pairing -> paired")
    assert d.cli("pair").returncode == 2  # already paired: unpair first


def test_code_expiry_restarts_then_waits_for_the_user(short_tmp, daemons):
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1, device_code_lifetime=2) as srv:
        cfg = write_config(short_tmp, srv.issuer, srv.client_id)
        cfg.write_text(cfg.read_text() + "\n[pairing]\nrestart_on_expiry = 1\n")
        d = daemons(cfg)
        first = d.wait_for(r"pairing: enter code (\S+)").group(1)
        second = d.wait_for(r"pairing: enter code (\S+)", timeout=20).group(1)
        assert first != second
        d.wait_for(r"state pairing -> unpaired", timeout=20)
        assert srv.stats.device_authorizations == 2  # RFC 8628 §3.5: then wait for the user
        status = json.loads(d.cli("status", "--json").stdout)
        assert status["state"] == "unpaired" and "expired" in status["message"]


def test_corrupt_store_starts_unpaired_with_one_clear_line(short_tmp, dev_server, daemons):
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    d = daemons(cfg)
    pair(d, dev_server)
    d.stop()
    state = d.state_dir / "state.bin"
    blob = bytearray(state.read_bytes())
    blob[-1] ^= 0xFF
    state.write_bytes(bytes(blob))
    d2 = daemons(cfg)
    assert d2.proc.poll() is None
    assert any("cannot be decrypted" in line and "starting unpaired" in line for line in d2.log)
    d2.wait_for(r"pairing: enter code")  # and it offers a new code instead of crash-looping


def test_bad_server_answers_get_a_clear_state(short_tmp, daemons):
    """A discovery document naming another issuer is refused (RFC 8414 §3.3)."""
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1) as srv:
        cfg = write_config(short_tmp, srv.issuer + "/other", srv.client_id)
        d = daemons(cfg)
        d.wait_for(r"pairing failed: .*(no discovery document|issuer)")
        status = json.loads(d.cli("status", "--json").stdout)
        assert status["state"] == "unpaired" and status["last_error"]


def test_cli_without_daemon_exits_5(short_tmp, dev_server):
    from tests.conftest import Daemon

    d = Daemon(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    out = d.cli("status")
    assert out.returncode == 5 and "agent.sock" in out.stderr and "Traceback" not in out.stderr


def test_daemon_starts_with_gpio_on_mock_pins(short_tmp, dev_server, daemons):
    """[gpio] wired into the real daemon (gpiozero's mock pin factory stands in for the header)."""
    pytest.importorskip("gpiozero")
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id,
                       extra="\n[gpio]\nled = 17\nbutton = 27\nhold_seconds = 5\n")
    d = daemons(cfg, env={"GPIOZERO_PIN_FACTORY": "mock"})
    pair(d, dev_server)
    assert d.cli("token").returncode == 0
    assert d.stop() == 0


def test_rekey_from_the_command_line_keeps_the_grant(short_tmp, dev_server, daemons):
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    d = daemons(cfg)
    pair(d, dev_server)
    token = d.cli("token").stdout.strip()
    busy = d.cli("rekey")
    assert busy.returncode == 1 and "running" in busy.stderr  # never under a live daemon
    assert d.stop() == 0
    old_key = (d.state_dir / "state.key").read_bytes()
    out = d.cli("rekey")
    assert out.returncode == 0, out.stderr
    assert (d.state_dir / "state.key").read_bytes() != old_key
    d2 = daemons(cfg)
    d2.wait_for(r"restored the grant")
    assert d2.cli("token").stdout.strip() == token and dev_server.stats.device_authorizations == 1


# -- issue 10: a new user's stumbles --------------------------------------------------


def _unreachable_issuer() -> str:
    """A loopback address nothing listens on: every request to it is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _cli(d, *args: str, **kw) -> subprocess.Popen:
    from tests.conftest import DAEMON_PYTHON

    return subprocess.Popen([*DAEMON_PYTHON, "-m", "devicelink", "--config", str(d.config), *args],
                            env=d.env, text=True, **kw)


def _closed_pipe() -> int:
    import os

    read, write = os.pipe()
    os.close(read)
    return write


def test_a_closed_stdout_is_a_silent_exit_0_for_status_and_token(short_tmp, dev_server, daemons):
    """Item 14: ``devicelink status --json | head -1`` printed a BrokenPipeError traceback."""
    import os

    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    pair(d, dev_server)
    for args in (["status", "--json"], ["status"], ["token"]):
        pipe = _closed_pipe()
        try:
            proc = _cli(d, *args, stdout=pipe, stderr=subprocess.PIPE)
        finally:
            os.close(pipe)
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err) == (0, ""), args


def test_config_after_the_command(short_tmp, dev_server, daemons):
    """Item 15: ``devicelink status --config X`` (and ``token``, read without argparse)."""
    from tests.conftest import DAEMON_PYTHON

    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    d.wait_for(r"pairing: enter code")  # (a SIGTERM while the first code is asked for can hang the daemon)
    env = {**d.env, "DEVICELINK_CONFIG": str(short_tmp / "missing.toml"), "DEVICELINK_SOCKET": "/nowhere.sock"}
    for args in (["status", "--json", "--config", str(d.config)], ["token", "--config", str(d.config)]):
        out = subprocess.run([*DAEMON_PYTHON, "-m", "devicelink", *args], capture_output=True, text=True,
                             env=env, timeout=60)
        if args[0] == "status":
            assert out.returncode == 0 and json.loads(out.stdout)["state"] == "pairing", out.stderr
        else:
            assert out.returncode == 3 and "pairing" in out.stderr and "/nowhere.sock" not in out.stderr


def test_with_the_server_unreachable_token_names_no_code_and_pair_says_it_waits(short_tmp, daemons):
    """Item 16: ``token`` said "approve the code on screen" with no code on screen; ``pair``
    said nothing for 30 s."""
    d = daemons(write_config(short_tmp, _unreachable_issuer(), "tv"))
    d.wait_for(r"discovery request to .* failed")
    out = d.cli("token")
    assert out.returncode == 3 and "approve the code" not in out.stderr
    assert "no code to show yet (cannot reach the authorization server" in out.stderr
    proc = _cli(d, "pair", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stderr.readline()  # at once, not after the daemon's 30 s
        assert "asked the daemon for a new code; waiting for the authorization server" in first
        assert proc.poll() is None  # it is still waiting: the line came first
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_a_second_daemon_on_the_same_state_dir_says_at_once_that_it_waits(short_tmp, dev_server, daemons):
    """Item 16: a second daemon waited 31 s for the state lock in silence before failing."""
    from tests.conftest import Daemon

    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    first = daemons(cfg)
    first.wait_for(r"pairing: enter code")  # (a SIGTERM while the first code is asked for can hang the daemon)
    (short_tmp / "other").mkdir()
    second = Daemon(short_tmp / "other" / "config.toml")  # its own socket, the first one's state directory
    text = cfg.read_text()
    assert 'state_dir = "state"' in text
    second.config.write_text(text.replace('state_dir = "state"', f'state_dir = "{first.state_dir}"'))
    proc = _cli(second, "run", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = ""
        for line in proc.stderr:
            if "state.lock" in line:
                break
        assert "held by another devicelink process" in line and "waiting up to 30 s" in line, line
        assert proc.poll() is None  # said while it waits, not when it gives up
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert first.proc.poll() is None


def test_unreachable_daemon_gets_one_hint(short_tmp, dev_server):
    """Item 18: "is the daemon running? (is `devicelink run` running?)"."""
    from tests.conftest import Daemon

    d = Daemon(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    out = d.cli("status")
    assert out.returncode == 5
    assert out.stderr.count("?") == 1 and "is the daemon running?" in out.stderr, out.stderr


ASK_STATUS = """
import socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect(sys.argv[1])
    sock.sendall(b"GET /v1/status HTTP/1.1\\r\\nhost: devicelink\\r\\nconnection: close\\r\\n\\r\\n")
    while chunk := sock.recv(65536):
        sys.stdout.buffer.write(chunk)
"""


def _ask_as(uid: int, socket_path: str) -> bytes:
    """``GET /v1/status`` from a process of ``uid``; the daemon's whole answer. Run by the
    system's python3 (the test's own interpreter may be out of that user's reach)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no /usr/bin/python3 to run as another user")
    out = subprocess.run([python, "-I", "-c", ASK_STATUS, socket_path], capture_output=True, timeout=30,
                         user=uid, group=uid, extra_groups=[], cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_app_without_a_policy_entry_is_pointed_at_this_config(short_tmp, dev_server, daemons):
    """Item 18: the refusal named /etc/devicelink/clients.d when the config lives elsewhere."""
    import os

    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    if os.geteuid() != 0:
        pytest.skip("needs root to ask as another user")
    d.wait_for(r"pairing: enter code")  # (a SIGTERM while the first code is asked for can hang the daemon)
    os.chmod(short_tmp, 0o755)
    os.chmod(d.socket, 0o666)  # let nobody reach the policy, which refuses it
    head, _, body = _ask_as(65534, d.socket).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), head
    description = json.loads(body)["error_description"]
    assert description.startswith("uid 65534 is not allowed to use devicelink")
    assert f"see {d.config} and {short_tmp / 'clients.d'}" in description and "/etc/devicelink" not in description


def test_a_refused_revocation_says_the_grant_stays_valid_and_doctor_claims_no_retry(short_tmp, dev_server, daemons):
    """Issue 10, item 10: glewlwyd answers a public client's revocation with 401. The token
    is served no more, nothing is retried, and nobody is told the grant is gone at the server."""
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    d = daemons(cfg)
    pair(d, dev_server)
    access_token = d.cli("token").stdout.strip()
    dev_server.faults.revocation.fail(401, error="invalid_client", times=None)
    out = d.cli("unpair")
    assert out.returncode == 6, out
    assert "unpaired on this device" in out.stdout and out.stderr.count("\n") == 1
    assert "stays valid at the server" in out.stderr and "retr" not in out.stderr
    assert d.cli("token").returncode == 3  # served no more
    assert httpx.get(dev_server.issuer + "/userinfo",  # and, as said, still valid at the server
                     headers={"authorization": f"Bearer {access_token}"}).status_code == 200
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["last_error_kind"] == "not_revoked" and status["pending_revocations"] == 0
    assert "warning: " in d.cli("status").stdout
    doctor = d.cli("doctor").stdout
    assert "stays valid at the server" in doctor and "retries" not in doctor and "retried" not in doctor
    assert len(dev_server.faults.hits("revocation")) == 1
