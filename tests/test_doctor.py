"""``devicelink doctor``: real config files, real key files and modes, the real daemon
and the development authorization server; exit codes per docs/cli.md."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from devicelink import config, doctor
from tests.conftest import DAEMON_PYTHON, write_config

LINE = r"^(ok  |warn|FAIL)  [a-z]+: .+"


def run_doctor(cfg: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEVICELINK_CLOCK_SYNCED": "1", **(env or {})}
    return subprocess.run([*DAEMON_PYTHON, "-m", "devicelink", "--config", str(cfg), "doctor", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def lines(out: subprocess.CompletedProcess) -> list[str]:
    return out.stdout.splitlines()


def failed(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in lines(out) if line.startswith("FAIL")]


def closed_port() -> tuple[socket.socket, int]:
    """A loopback port that is bound but never listens: connecting is refused, and no
    other process can take it while the socket is open."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def test_config_error_is_78(short_tmp: Path) -> None:
    cfg = short_tmp / "config.toml"
    cfg.write_text('[provider]\nissuer = "https://id.example.com"\nclient_id = "tv"\ncolour = "blue"\n')
    out = run_doctor(cfg)
    assert out.returncode == 78, out
    assert failed(out)[0].startswith(f"FAIL  config: {cfg}: [provider] colour: unknown key")
    assert out.stderr == ""  # no traceback, no log noise
    assert "socket" in out.stdout  # the checks that need no config still ran

    out = run_doctor(short_tmp / "missing.toml")
    assert out.returncode == 78 and "no such file" in failed(out)[0] and "write one" in failed(out)[0]


def test_no_daemon_is_5_and_nothing_is_created(short_tmp: Path, dev_server) -> None:
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    out = run_doctor(cfg)
    assert out.returncode == 5, out
    assert failed(out) == [f"FAIL  socket: no socket at {short_tmp / 'agent.sock'} — start the daemon: "
                           "systemctl start devicelink (journalctl -u devicelink says why it stopped)"]
    assert any(line.startswith("ok    server: ") for line in lines(out))
    assert any("key: no key file yet" in line for line in lines(out))
    # doctor only looks: no state directory, key or lock appeared
    assert sorted(p.name for p in short_tmp.iterdir()) == ["config.toml"]


def test_all_ok_against_the_daemon_then_a_readable_key(short_tmp: Path, dev_server, daemons) -> None:
    cfg = write_config(short_tmp, dev_server.issuer, dev_server.client_id)
    d = daemons(cfg)
    d.wait_for(r"pairing: enter code")
    out = d.cli("doctor")
    assert out.returncode == 0, out.stdout
    assert out.stderr == ""
    text = lines(out)
    assert all(re.match(LINE, line) for line in text), text
    checks = [line.split(":")[0].split()[-1] for line in text]
    assert checks[:1] == ["config"] and {"policy", "key", "state", "clock", "socket", "daemon", "server"} <= set(checks)
    assert any(line.startswith("ok    daemon: the daemon answers: state pairing") for line in text)
    assert any(line.startswith(f"ok    key: key file {short_tmp / 'state' / 'state.key'} (the daemon says so)")
               for line in text)

    as_json = d.cli("doctor", "--json")
    assert as_json.returncode == 0
    findings = json.loads(as_json.stdout)
    assert isinstance(findings, list) and len(findings) == len(text)
    for f in findings:
        assert set(f) == {"check", "level", "message", "fix"}
        assert f["level"] in ("ok", "warn", "fail") and isinstance(f["message"], str)
        assert f["fix"] is None or isinstance(f["fix"], str)

    key = short_tmp / "state" / "state.key"
    key.chmod(0o644)
    out = d.cli("doctor")
    assert out.returncode == 1, out.stdout  # the first failure is the key: no contract code, so 1
    assert failed(out) == [f"FAIL  key: {key} has mode 0644: other users can read the state key — "
                           f"chmod 600 {key}; as it could be read, re-key: devicelink rekey (docs/keys.md)"]

    # pair, then nothing doctor printed holds a token or a device code
    key.chmod(0o600)
    status = d.client().status()
    dev_server.approve(status["pairing"]["user_code"], subject="alice", name="Alice Example")
    d.wait_for(r"state pairing -> paired")
    assert d.cli("token").returncode == 0
    out, as_json = d.cli("doctor"), d.cli("doctor", "--json")
    assert out.returncode == 0 and "state paired as Alice Example" in out.stdout
    for secret in dev_server.issued_secrets():
        assert secret not in out.stdout + out.stderr + as_json.stdout


def test_unreachable_server_is_6(short_tmp: Path, daemons) -> None:
    blocker, port = closed_port()
    with blocker:
        cfg = write_config(short_tmp, f"http://127.0.0.1:{port}", "tv")
        d = daemons(cfg)
        d.wait_for(r"discovery request to \S+ failed")  # its first try (httpx loads when a request is due)
        out = d.cli("doctor")
        assert out.returncode == 6, out.stdout
        assert failed(out) == [f"FAIL  server: 127.0.0.1:{port} refused the connection — is the server up, "
                               "and the port in [provider] issuer right?"]
        # the daemon runs, and says why it cannot pair
        assert any(line.startswith("warn  daemon: last error: ") for line in lines(out))


def test_server_answers_without_discovery(short_tmp: Path, dev_server) -> None:
    cfg = config.load(write_config(short_tmp, dev_server.issuer + "/nowhere", dev_server.client_id))
    [finding] = doctor.check_server(cfg)
    assert finding.level == doctor.FAIL and finding.what.startswith("no discovery document: ")
    assert "/.well-known/oauth-authorization-server/nowhere answered 404" in finding.what

    explicit = f'device_authorization_endpoint = "{dev_server.issuer}/device_authorization"\n' \
               f'token_endpoint = "{dev_server.issuer}/token"\n'
    cfg = config.load(write_config(short_tmp, dev_server.issuer + "/nowhere", dev_server.client_id, extra=explicit))
    findings = doctor.check_server(cfg)
    assert [f.level for f in findings] == ["ok", "ok"] and "token_endpoint" in findings[1].what


def test_dns_and_tls_failures_are_explained(short_tmp: Path) -> None:
    what, fix = doctor.describe_network_failure(_failure("https://devicelink-doctor.invalid/"),
                                                "https://devicelink-doctor.invalid/")
    assert what == "cannot resolve devicelink-doctor.invalid (DNS)" and "resolv" in fix

    with _tls_server(short_tmp) as port:
        url = f"https://127.0.0.1:{port}"
        cfg = config.load(write_config(short_tmp, url, "tv"))
        [finding] = doctor.check_server(cfg)
    assert finding.level == doctor.FAIL
    assert finding.what.startswith("the TLS certificate of 127.0.0.1 was refused: ")
    assert "certificate chain" in finding.fix


def _failure(url: str) -> Exception:
    import httpx

    try:
        httpx.get(url, timeout=10)
    except Exception as exc:  # noqa: BLE001 - whatever httpx raises is what doctor sees
        return exc
    raise AssertionError(f"{url} answered")


class _tls_server:
    """A loopback TLS server with a self-signed certificate, accepting handshakes."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        (directory / "tls.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / "tls.pem")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()

    def __enter__(self) -> int:
        threading.Thread(target=self._serve, daemon=True).start()
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate


def test_key_and_state_dir_by_stat_alone(short_tmp: Path) -> None:
    cfg = config.load(write_config(short_tmp, "https://id.example.com", "tv"))
    state = short_tmp / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    key = state / "state.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    assert [f.level for f in doctor.check_key(cfg, None)] == ["ok"]
    [loose] = doctor.check_state_dir(state, None)
    assert loose.level == doctor.WARN and "mode 0755, expected 0700" in loose.what

    key.write_bytes(b"ab" * 32)  # 64 bytes: the key written as hex
    [short] = doctor.check_key(cfg, None)
    assert short.level == doctor.FAIL and "is 64 bytes, a key is exactly 32" in short.what
    key.unlink()
    (state / "state.0.bin").write_bytes(b"x")
    [lost] = doctor.check_key(cfg, None)
    assert lost.level == doctor.FAIL and "a state file exists" in lost.what
    assert not key.exists()  # looked, never made one

    running = doctor.check_key(cfg, {"key_source": "credential"})
    assert running == [doctor.Finding(doctor.OK, "key", "the daemon reads the systemd credential devicelink.key")]


def test_display_and_gpio_devices(short_tmp: Path) -> None:
    def cfg(display: str, extra: str = "") -> config.Config:
        path = write_config(short_tmp, "https://id.example.com", "tv", display="none")
        text = path.read_text().replace('driver = "none"', display) + extra
        path.write_text(text)
        return config.load(path)

    assert doctor.check_display(cfg('driver = "none"')) == []
    [fb] = doctor.check_display(cfg(f'driver = "framebuffer"\nframebuffer = "{short_tmp}/fb9"'))
    assert fb.level == doctor.FAIL and fb.what == f"{short_tmp}/fb9 not found" and "HDMI" in fb.fix
    (short_tmp / "fb8").write_bytes(b"")
    [fb] = doctor.check_display(cfg(f'driver = "framebuffer"\nframebuffer = "{short_tmp}/fb8"'))
    assert fb.level == doctor.FAIL and "is not a device" in fb.what
    [fb] = doctor.check_display(cfg('driver = "framebuffer"\nframebuffer = "/dev/null"'))
    assert fb.level == doctor.OK and fb.what.startswith("/dev/null present")
    [png] = doctor.check_display(cfg(f'driver = "png"\npng_dir = "{short_tmp}/frames/new"'))
    assert png.level == doctor.OK and "(made at start)" in png.what
    [oled] = doctor.check_display(cfg('driver = "ssd1306"\ni2c_port = 255'))
    assert oled.level == doctor.FAIL and oled.what == "/dev/i2c-255 not found" and "I2C" in oled.fix

    [gpio] = doctor.check_gpio(cfg('driver = "none"', "\n[gpio]\nled = 17\nbutton = 27\n"))
    assert gpio.check == "gpio" and (gpio.level == doctor.FAIL) == (not os.path.exists("/dev/gpiochip0"))
    [same] = doctor.check_gpio(cfg('driver = "none"', "\n[gpio]\nled = 17\nbutton = 17\n"))
    assert same.level == doctor.FAIL and "both on GPIO17" in same.what


def test_policy_problems_are_warnings(short_tmp: Path) -> None:
    pytest.importorskip("devicelink.policy")
    path = write_config(short_tmp, "https://id.example.com", "tv")
    path.write_text(path.read_text() + '\n[[client]]\nname = "player"\nuser = "no-such-user-here"\n')
    [finding] = doctor.check_policy(config.load(path))
    assert finding.level == doctor.WARN and "no-such-user-here" in finding.what and "skips" in finding.fix


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root, setpriv and /usr/bin/python3 to run doctor as another user")
def test_without_root_permission_errors_are_findings(short_tmp: Path, dev_server, daemons) -> None:
    d = daemons(write_config(short_tmp, dev_server.issuer, dev_server.client_id))
    d.wait_for(r"pairing: enter code")
    short_tmp.chmod(0o755)  # the config is readable; the state dir (0700) and the socket (0660) are not ours
    src = Path(__file__).resolve().parents[1]
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                            "-c", "import devicelink.doctor, httpx"], env={"PYTHONPATH": f"{src}/src"},
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot import devicelink from {src}: {probe.stderr.strip()[-200:]}")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-m",
                          "devicelink", "--config", str(short_tmp / "config.toml"), "doctor"],
                         env={"PYTHONPATH": f"{src}/src", "DEVICELINK_CLOCK_SYNCED": "1"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 5, out
    assert out.stderr == ""
    assert any(line.startswith("warn  key: cannot look at ") and "permission denied" in line for line in lines(out))
    [fail] = failed(out)
    assert fail.startswith(f"FAIL  daemon: permission denied on {short_tmp / 'agent.sock'}")
    assert "add this user to group" in fail


def test_server_check_asks_once_and_stays_quiet(short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon's discovery, each document asked for once: a server in trouble is reported
    at once, not retried with backoff; what went wrong is a finding, not a log line."""
    import http.server
    import logging

    paths = []

    class Down(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer = f"http://127.0.0.1:{server.server_port}/realm"
    try:
        with caplog.at_level(logging.DEBUG):
            [finding] = doctor.check_server(config.load(write_config(short_tmp, issuer, "tv")))
    finally:
        server.shutdown()
    assert paths == ["/.well-known/oauth-authorization-server/realm", "/realm/.well-known/openid-configuration"]
    assert finding.level == doctor.FAIL and finding.what.startswith("no discovery document: ")
    assert finding.what.count("answered 503") == 2 and "check [provider] issuer" in finding.fix
    assert not [r for r in caplog.records if r.name in ("asyncio", "devicelink.oauth.http")]


def test_timeouts_and_grouped_causes_are_explained() -> None:
    """httpx's timeouts are raised from a TimeoutError; anyio raises a refused connection
    to a name with several addresses from a group of them."""
    def raised(exc: BaseException, cause: BaseException) -> BaseException:
        try:
            raise exc from cause
        except BaseException as caught:  # noqa: BLE001
            return caught

    url = "https://id.example.com:8443/realm"
    what, fix = doctor.describe_network_failure(raised(RuntimeError("ReadTimeout"), TimeoutError()), url)
    assert what == "no answer from id.example.com:8443 within 10 s" and "firewall" in fix
    group = ExceptionGroup("attempts", [OSError(101, "Network is unreachable"),
                                        ConnectionRefusedError(111, "Connection refused")])
    what, _ = doctor.describe_network_failure(raised(OSError("All connection attempts failed"), group), url)
    assert what == "id.example.com:8443 is not reachable: Network is unreachable"


def test_policy_files_others_can_write_fail(short_tmp: Path) -> None:
    """Issue 10, item 2: a world-writable clients.d or drop-in let any user make itself an
    admin app, and doctor said ``ok policy``."""
    path = write_config(short_tmp, "https://id.example.com", "tv")
    (short_tmp / "clients.d").mkdir()
    drop_in = short_tmp / "clients.d" / "player.toml"
    drop_in.write_text('[[client]]\nname = "player"\nuser = "nobody"\nadmin = true\n')
    drop_in.chmod(0o666)
    out = run_doctor(path)
    assert out.returncode == 78, out
    assert failed(out)[0] == (f"FAIL  policy: {drop_in}: refused: writable by its group and others (mode 0666), "
                              f"who could change it; fix: chmod go-w {drop_in} — fix it; the daemon will not start")
    assert not any(line.startswith("ok    policy") for line in lines(out))

    drop_in.chmod(0o644)
    (short_tmp / "clients.d").chmod(0o777)
    [finding] = doctor.check_policy(config.load(path))
    assert finding.level == doctor.FAIL and finding.what.startswith(f"{short_tmp / 'clients.d'}: refused: writable")

    (short_tmp / "clients.d").chmod(0o755)
    path.chmod(0o646)
    out = run_doctor(path)
    assert out.returncode == 78 and failed(out)[0].startswith(f"FAIL  config: {path}: refused: writable by others")


# -- issue 10: the state directory as the daemon's user (items 1, 5, 17) -----------------

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act for another uid")


@needs_root
def test_doctor_flags_a_state_dir_the_daemons_user_cannot_write(short_tmp: Path) -> None:
    """Item 17: root's state dir, a daemon running as nobody: doctor (as root) must not say ok."""
    os.chmod(short_tmp, 0o755)
    state = short_tmp / "state"
    state.mkdir(mode=0o700)
    findings = doctor.check_state_dir(state, NOBODY)
    assert [f.level for f in findings] == [doctor.FAIL]
    assert "is owned by root, but the daemon runs as nobody" in findings[0].what
    assert f"chown -R nobody: {state}" in findings[0].fix and f"d {state} 0700 nobody nogroup -" in findings[0].fix

    os.chown(state, NOBODY, NOBODY)
    assert [f.level for f in doctor.check_state_dir(state, NOBODY)] == [doctor.OK]
    os.chmod(short_tmp, 0o700)  # its own, but a parent it cannot pass: only a probe as nobody sees it
    [blocked] = doctor.check_state_dir(state, NOBODY)
    assert blocked.level == doctor.FAIL and "is not writable by nobody, the daemon's user" in blocked.what
    assert f"chown -R nobody: {state}" in blocked.fix


@needs_root
def test_doctor_flags_planted_files_in_the_state_dir(short_tmp: Path) -> None:
    """Item 1: what the daemon refuses at start, doctor names with the fix."""
    state = short_tmp / "state"
    state.mkdir(mode=0o700)
    (state / "state.key").write_bytes(os.urandom(32))
    os.chown(state / "state.key", NOBODY, NOBODY)
    os.symlink(short_tmp / "loot", state / ".state.bin.tmp")
    [link, key] = doctor.check_state_dir(state, 0)
    assert key.level == link.level == doctor.FAIL
    assert "state.key is owned by nobody, not by root" in key.what and "does not start" in key.what
    assert ".state.bin.tmp is a symbolic link" in link.what and "remove it" in link.fix
    os.chmod(state, 0o777)
    [loose] = doctor.check_state_dir(state, 0)
    assert loose.level == doctor.FAIL and "writable by other users (mode 0777)" in loose.what


def test_doctor_lists_state_files_set_aside_as_unreadable(short_tmp: Path) -> None:
    """Item 5: a grant set aside is named, with how to get it back."""
    state = short_tmp / "state"
    state.mkdir(mode=0o700)
    (state / "state.bin.unreadable-20261203T103000Z").write_bytes(b"DLS1")
    os.chmod(state / "state.bin.unreadable-20261203T103000Z", 0o600)
    [aside] = doctor.check_state_dir(state, os.geteuid())
    assert aside.level == doctor.WARN and "state.bin.unreadable-20261203T103000Z" in aside.what
    assert "restore the key that wrote it" in aside.fix


@needs_root
def test_config_and_policy_are_judged_as_the_daemons_user_not_doctors(short_tmp: Path) -> None:
    """Doctor (root) used to judge file owners against itself: a config owned by the daemon's
    user was a false FAIL, and one owned by another user passed when doctor ran as that user.
    Now the daemon's uid decides, as at the daemon's own start."""
    path = write_config(short_tmp, "https://id.example.com", "tv")
    (short_tmp / "clients.d").mkdir()
    drop_in = short_tmp / "clients.d" / "player.toml"
    drop_in.write_text('[[client]]\nname = "player"\nuid = 4242\nadmin = true\n')
    for owned in (path, drop_in):
        os.chown(owned, NOBODY, NOBODY)

    findings, cfg = doctor.check_config(path, NOBODY)  # the daemon runs as nobody: its own files
    assert [f.level for f in findings] == [doctor.OK] and cfg is not None
    assert [f.level for f in doctor.check_policy(cfg, NOBODY)] == [doctor.OK]

    [refused], none = doctor.check_config(path, 4000)  # another daemon user: nobody's file is refused
    assert none is None and refused.level == doctor.FAIL and "owned by nobody" in refused.what
    [policy] = doctor.check_policy(cfg, 4000)
    assert policy.level == doctor.FAIL and f"{drop_in}: refused: owned by nobody" in policy.what

    # as a whole: with no unit and no socket, the daemon's user is whoever runs doctor (root)
    out = run_doctor(path)
    assert any(line.startswith(f"FAIL  config: {path}: refused: owned by nobody") for line in lines(out)), out


def test_the_daemons_user_comes_from_the_socket_when_systemd_does_not_know_the_unit(short_tmp: Path,
                                                                                 monkeypatch) -> None:
    from devicelink.doctor import local

    monkeypatch.setattr(local, "_service_uid", lambda: None)
    assert local.daemon_uid(4000) == 4000 and local.daemon_uid(None) == os.geteuid()
    monkeypatch.setattr(local, "_service_uid", lambda: 123)
    assert local.daemon_uid(4000) == 123  # the unit's User= wins: devicelink.socket makes the socket as root
