"""Bad config files stop the daemon with exit 78 and one line naming the file, the key and what is expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devicelink import config
from devicelink.errors import ConfigError

GOOD = """\
[provider]
issuer = "https://id.example.com/realms/tv"
client_id = "tv-app"
scope = "openid profile offline_access"

[storage]
state_dir = "state"
"""


CONFIDENTIAL = GOOD.replace('scope = ', "client_auth = 'client_secret_basic'\nclient_secret_file = 'secret'\nscope = ")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_dpop_goes_with_every_client_auth(tmp_path):
    for auth in ("", 'client_auth = "private_key_jwt"\n', 'client_auth = "client_secret_post"\n'
                 'client_secret_file = "secret"\n'):
        cfg = config.load(write(tmp_path, GOOD.replace("[storage]", f"dpop = true\n{auth}\n[storage]")))
        assert cfg.provider.dpop is True


def test_good_config_and_relative_paths(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.provider.issuer == "https://id.example.com/realms/tv"
    assert cfg.storage.state_dir == tmp_path / "state"  # relative to the config file
    assert cfg.pairing.restart_on_expiry == 2 and cfg.display.driver == "none" and cfg.gpio is None


@pytest.mark.parametrize("text,key,expected", [
    (GOOD + "\n[socket]\npth = 'x'\n", "[socket] pth", "unknown key"),
    (GOOD.replace("[storage]", "[storag]"), "storag", "unknown key"),
    (GOOD.replace('client_id = "tv-app"\n', ""), "[provider] client_id", "missing"),
    (GOOD + "\n[pairing]\nrestart_on_expiry = 'two'\n", "[pairing] restart_on_expiry", "expected an integer"),
    (GOOD + "\n[pairing]\nrestart_on_expiry = -1\n", "[pairing] restart_on_expiry", "from 0 to 100"),
    (GOOD + "\n[display]\ndriver = 'vga'\n", "[display] driver", "expected one of"),
    (GOOD.replace("https://id.example.com/realms/tv", "http://id.example.com"), "[provider] issuer",
     "only for loopback"),
    (GOOD.replace("https://id.example.com/realms/tv", "http://127.0.0.1:8080"), "[provider] issuer",
     "allow_insecure_http"),
    (GOOD.replace("https://id.example.com/realms/tv", "ftp://x"), "[provider] issuer", "https://"),
    (GOOD + "token_endpoint = 'https://id.example/token'\n", "[storage] token_endpoint", "unknown key"),
    (GOOD.replace('scope = ', "token_endpoint = 'http://evil.example/token'\nscope = "),
     "[provider] token_endpoint", "only for loopback"),
    (GOOD.replace('scope = "openid profile offline_access"',
                  'client_auth = "client_secret_basic"'), "[provider] client_secret_file", "missing"),
    (GOOD.replace('scope = "openid profile offline_access"', "dpop = 'yes'"), "[provider] dpop", "true or false"),
    (GOOD + "\n[[client]]\nname = 'agent'\nuser = 'nobody'\ndpop_proofs_without_token = 1\n",
     "[[client]] #1 dpop_proofs_without_token", "true or false"),
    ("[provider\nissuer=", "", "not valid TOML"),
    (GOOD + "\n[[client]]\nname = 'player'\n", "[[client]] #1", "user, uid or group"),
    (GOOD.replace("https://id.example.com/realms/tv", "https://[::1"), "[provider] issuer", "https://"),
    (GOOD.replace('scope = ', "resource = ['https://[x']\nscope = "), "[provider] resource", "absolute URIs"),
    (GOOD + "\n[socket]\npath = '/" + "x" * 120 + "'\n", "[socket] path", "AF_UNIX"),
    # issue 11: the device's identity, private_key_jwt
    (GOOD + "\n[identity]\nkey = 'tpm2'\n", "[identity] key", "expected one of 'file'"),
    (GOOD + "\n[identity]\nserial = 'SN 42'\n", "[identity] serial", "printable ASCII characters without spaces"),
    (GOOD + "\n[identity]\nserial = ''\n", "[identity] serial", "1-128"),
    (GOOD + "\n[identity]\nserail = 'x'\n", "[identity] serail", "unknown key"),
    (GOOD.replace('scope = ', "client_auth = 'private_key_jwt'\nassertion_audience = 'resource'\nscope = "),
     "[provider] assertion_audience", "'issuer', 'token_endpoint', 'endpoint', or a list of them"),
    (GOOD.replace('scope = ', "client_auth = 'private_key_jwt'\nassertion_audience = ['issuer', 'issuer']\n"
                  "scope = "), "[provider] assertion_audience", "without repeats"),
    (GOOD.replace('scope = ', "client_auth = 'private_key_jwt'\nassertion_audience = []\nscope = "),
     "[provider] assertion_audience", "or a list of them"),
    (GOOD.replace('scope = ', "assertion_audience = 'issuer'\nscope = "),
     "[provider] assertion_audience", "only for client_auth = 'private_key_jwt', not 'none'"),
    # issue 11 item 4: device-level tokens (client credentials)
    (GOOD + "\n[device_token]\nscope = 'telemetry.write'\n", "[device_token]",
     "needs a confidential client (RFC 6749 §4.4): set [provider] client_auth to client_secret_basic, "
     "client_secret_post or private_key_jwt (it is 'none')"),
    (CONFIDENTIAL + "\n[device_token]\nresource = ['https://t.example']\n", "[device_token] scope", "missing"),
    (CONFIDENTIAL + "\n[device_token]\nscope = 'a\"b'\n", "[device_token] scope", "scope tokens"),
    (CONFIDENTIAL + "\n[device_token]\nscope = 'a'\nresource = ['no uri']\n", "[device_token] resource",
     "absolute URIs"),
    (CONFIDENTIAL + "\n[device_token]\nscope = 'a'\nlifetime = 60\n", "[device_token] lifetime", "unknown key"),
    (GOOD + "\n[[client]]\nname = 'x'\nuid = 5\ndevice_scope = 7\n", "[[client]] #1 device_scope",
     "scope tokens"),
])
def test_bad_config_names_file_key_and_expectation(tmp_path, text, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert key in message and expected in message
    assert "\n" not in message


def test_private_key_jwt_and_the_identity_section(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.identity == config.IdentityConfig(key="file", serial=None)
    assert cfg.provider.client_auth == "none" and cfg.provider.assertion_audience is None
    text = GOOD.replace('scope = ', "client_auth = 'private_key_jwt'\nassertion_audience = ['issuer', 'endpoint']\n"
                        "scope = ") + '\n[identity]\nkey = "file"\nserial = "10000000a1b2c3d4"\n'
    cfg = config.load(write(tmp_path, text))  # no longer refused as "arrives with per-device identity"
    assert cfg.provider.client_auth == "private_key_jwt"
    assert cfg.provider.assertion_audience == ("issuer", "endpoint")
    assert cfg.identity == config.IdentityConfig(key="file", serial="10000000a1b2c3d4")
    one = config.load(write(tmp_path, GOOD.replace('scope = ', "client_auth = 'private_key_jwt'\n"
                                                   "assertion_audience = 'token_endpoint'\nscope = ")))
    assert one.provider.assertion_audience == ("token_endpoint",)


PKJWT = GOOD.replace('scope = ', "client_auth = 'private_key_jwt'\nscope = ")
REGISTERED = PKJWT.replace('client_id = "tv-app"\n', "") + "\n[registration]\n"
DPOP_ONLY = GOOD.replace('scope = ', "dpop = true\nscope = ")


@pytest.mark.parametrize("text, expected", [
    (REGISTERED + "\n[identity]\non_factory_reset = 'rotate'\n", "expected one of 'keep', 'new_key', got 'rotate'"),
    (PKJWT + "\n[identity]\non_factory_reset = 'new_key'\n",
     "'new_key' with [provider] client_auth = 'private_key_jwt' needs [registration]: with a shared client_id the "
     "server refuses the new key until someone registers it"),
    (GOOD + "\n[identity]\non_factory_reset = 'new_key'\n",
     "'new_key' needs a key in use: [provider] client_auth = 'private_key_jwt' with [registration], "
     "or [provider] dpop = true"),
    (CONFIDENTIAL + "\n[identity]\non_factory_reset = 'new_key'\n", "needs a key in use"),
    (REGISTERED + "on_factory_reset = 'keep'\n\n[identity]\non_factory_reset = 'new_key'\n",
     "'new_key' needs [registration] on_factory_reset = 'delete' (the default): a kept registration holds the "
     "old key"),
])
def test_on_factory_reset_new_key_is_refused_where_it_would_lock_the_device_out(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [identity] on_factory_reset: ") and expected in message
    assert "\n" not in message


def test_on_factory_reset_new_key_needs_a_file_key(tmp_path, monkeypatch):
    from devicelink.identity import settings

    monkeypatch.setattr(settings, "KEY_SOURCES", ("file", "tpm2"))  # a hardware signer, as one would come
    path = write(tmp_path, REGISTERED + "\n[identity]\nkey = 'tpm2'\non_factory_reset = 'new_key'\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == (f"{path}: [identity] on_factory_reset: 'new_key' needs [identity] key = 'file', "
                               "not 'tpm2': a hardware key (TPM, secure element) cannot be replaced by software")


def test_on_factory_reset_keep_is_the_default_and_new_key_loads_where_it_can_be_used(tmp_path):
    assert config.load(write(tmp_path, REGISTERED)).identity.on_factory_reset == "keep"
    for text in (REGISTERED, DPOP_ONLY, CONFIDENTIAL.replace('scope = ', "dpop = true\nscope = ")):
        cfg = config.load(write(tmp_path, text + "\n[identity]\non_factory_reset = 'new_key'\n"))
        assert cfg.identity.new_key_on_reset
    keep = config.load(write(tmp_path, PKJWT + "\n[identity]\non_factory_reset = 'keep'\n"))
    assert not keep.identity.new_key_on_reset
    assert config.load(write(tmp_path, REGISTERED)).registration.on_factory_reset == "delete"
    kept = config.load(write(tmp_path, REGISTERED + "on_factory_reset = 'keep'\n"))
    assert kept.registration.on_factory_reset == "keep"
    path = write(tmp_path, REGISTERED + "on_factory_reset = 'forget'\n")
    with pytest.raises(ConfigError, match=r"\[registration\] on_factory_reset: expected one of 'delete', 'keep'"):
        config.load(path)


def test_the_device_token_section_and_a_clients_device_scope(tmp_path):
    assert config.load(write(tmp_path, GOOD)).device_token is None  # device-level tokens are off
    cfg = config.load(write(tmp_path, CONFIDENTIAL + """
[device_token]
scope = "telemetry.write  updates.read"
resource = "https://telemetry.example.com"

[[client]]
name = "telemetry"
user = "nobody"
device_scope = "telemetry.write"
"""))
    assert cfg.device_token == config.DeviceTokenConfig("telemetry.write updates.read", ("https://telemetry.example.com",))
    assert cfg.device_token.scopes == {"telemetry.write", "updates.read"}
    assert cfg.clients[0].device_scope == "telemetry.write" and cfg.clients[0].scope is None
    jwt = GOOD.replace('scope = ', "client_auth = 'private_key_jwt'\nscope = ") + "[device_token]\nscope = 'x'\n"
    assert config.load(write(tmp_path, jwt)).device_token.scope == "x"


def test_loopback_http_allowed_when_asked(tmp_path):
    text = GOOD.replace("https://id.example.com/realms/tv", "http://localhost:9000") + ""
    text = text.replace('scope = ', 'allow_insecure_http = true\nscope = ')
    assert config.load(write(tmp_path, text)).provider.issuer == "http://localhost:9000"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


@pytest.mark.parametrize("text", [GOOD.replace("https://id.example.com/realms/tv", "http://id.example.com"),
                                  GOOD + "\n[oops]\n"])
def test_daemon_exits_78_with_one_line(tmp_path, text):
    path = write(tmp_path, text)
    proc = subprocess.run([sys.executable, "-m", "devicelink", "--config", str(path), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in proc.stderr


def test_configured_but_missing_hardware_is_a_clear_startup_error(tmp_path):
    path = write(tmp_path, GOOD + "\n[display]\ndriver = 'ssd1306'\ni2c_port = 97\n")
    proc = subprocess.run([sys.executable, "-m", "devicelink", "--config", str(path), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "/dev/i2c-97" in proc.stderr and "enable I2C" in proc.stderr


# -- who may change the config (issue 10, item 2) ------------------------------------------


def test_a_config_file_others_can_write_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[provider]\nissuer = "https://id.example.com"\nclient_id = "tv"\n')
    for mode, whom in ((0o666, "its group and others"), (0o664, "its group"), (0o646, "others")):
        path.chmod(mode)
        with pytest.raises(config.UntrustedFile) as caught:
            config.load(path)
        assert str(caught.value) == (f"{path}: refused: writable by {whom} (mode {mode:04o}), who could change it; "
                                     f"fix: chmod go-w {path}")
    path.chmod(0o644)
    assert config.load(path).provider.client_id == "tv"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_config_file_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[provider]\nissuer = "https://id.example.com"\nclient_id = "tv"\n')
    os.chown(path, 65534, 65534)
    with pytest.raises(config.UntrustedFile, match=r"refused: owned by nobody \(uid 65534\), not by root, who "
                                                   r"could change it; fix: chown root:root .* && chmod go-w "):
        config.load(path)
    # ... unless that user is the daemon's own
    assert config.load(path, owners=config.trusted_owners(65534)).provider.client_id == "tv"
    os.chown(path, 0, 0)
    assert config.load(path, owners=config.trusted_owners(65534)).provider.client_id == "tv"  # root always


# -- issue 10 item 6: [provider] verification_hosts ----------------------------------------


def test_verification_hosts_are_exact_lower_case_host_names(tmp_path):
    text = GOOD.replace('scope = ', 'verification_hosts = ["www.google.com", "Microsoft.COM", '
                                    '"login.microsoftonline.com."]\nscope = ')
    cfg = config.load(write(tmp_path, text))
    assert cfg.provider.verification_hosts == ("www.google.com", "microsoft.com", "login.microsoftonline.com")
    assert config.load(write(tmp_path, GOOD)).provider.verification_hosts == ()


@pytest.mark.parametrize("value", ['"https://www.google.com/device"', '["*.google.com"]', '["www.google.com:443"]',
                                   '["www.google.com/device"]', '[]', '[42]', '["a b"]', '["evil\\u001b.test"]'])
def test_bad_verification_hosts_name_the_key_and_what_is_expected(tmp_path, value):
    path = write(tmp_path, GOOD.replace('scope = ', f'verification_hosts = {value}\nscope = '))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "[provider] verification_hosts" in message and "host names" in message
    assert "\n" not in message and "\x1b" not in message
