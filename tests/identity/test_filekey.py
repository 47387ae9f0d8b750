"""The device's identity key, ``state_dir/identity.jwk``: made once under the state-file rules,
the same key at every start, and never used or replaced when it is not the device's own.

Real files, real keys (``cryptography``), signatures checked with pyjwt; no simulator.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from devicelink import config
from devicelink.errors import IdentityError
from devicelink.identity import filekey, jws
from devicelink.identity.provision import provision
from devicelink.identity.serial import device_serial
from devicelink.identity.signer import b64url_decode, open_signer, registration_jwk, thumbprint
from devicelink.tokens import keys
from devicelink.tokens.store import ensure_private_dir

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file owned by another uid")
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def state(tmp_path) -> Path:
    directory = tmp_path / "state"
    ensure_private_dir(directory)
    return directory


def verify(token: str, signer) -> dict:
    """The claims of ``token`` once its ES256 signature checks out against the signer's public JWK."""
    key = jwt.PyJWK(registration_jwk(signer)).key
    return jwt.decode(token, key, algorithms=["ES256"], options={"verify_aud": False, "verify_exp": False,
                                                                 "verify_iat": False})


# -- made once, 0600, then the same key -------------------------------------------------------

def test_the_key_is_made_0600_as_a_private_p256_jwk_and_reused(state):
    path = state / "identity.jwk"
    signer, made = filekey.load_or_create(path)
    assert made and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in state.iterdir()] == ["identity.jwk"]  # no temp file left
    jwk = json.loads(path.read_text())
    assert sorted(jwk) == ["crv", "d", "kty", "x", "y"] and (jwk["kty"], jwk["crv"]) == ("EC", "P-256")
    assert all(len(b64url_decode(jwk[name])) == 32 for name in ("x", "y", "d"))
    assert signer.public_jwk() == {k: jwk[k] for k in ("kty", "crv", "x", "y")}  # public only
    assert jwk["d"] not in repr(signer) and jwk["d"] not in str(vars(signer))

    again, made_again = filekey.load_or_create(path)  # the next start
    assert not made_again and again.kid == signer.kid and again.public_jwk() == signer.public_jwk()
    assert json.loads(path.read_text()) == jwk  # not rewritten
    # the key signs: pyjwt checks the signature against the public JWK
    token = jws.compact(again, {"kid": again.kid}, {"iss": "tv"})
    assert verify(token, signer) == {"iss": "tv"}
    assert jwt.get_unverified_header(token) == {"kid": signer.kid, "alg": "ES256"}


def test_a_restarted_process_signs_with_the_same_key(state):
    """Across processes, as across daemon restarts: the key written by one is what the next signs with."""
    path = state / "identity.jwk"
    code = ("import sys; from pathlib import Path; from devicelink.identity import filekey; "
            "s, made = filekey.load_or_create(Path(sys.argv[1])); print(s.kid, made)")
    env = {**os.environ, "PYTHONPATH": SRC}
    first = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    second = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    kid, made = first.stdout.split()
    assert made == "True" and second.stdout.split() == [kid, "False"]
    assert filekey.read(path).kid == kid


def test_signatures_are_raw_r_s_and_verify_with_cryptography(state):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    signer = filekey.create(state / "identity.jwk")
    jwk = signer.public_jwk()
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(b64url_decode(jwk["x"]), "big"),
                                           int.from_bytes(b64url_decode(jwk["y"]), "big"),
                                           ec.SECP256R1()).public_key()
    for n in range(20):  # R or S with leading zero bytes must still be 32 bytes each (RFC 7518 §3.4)
        message = f"header.payload-{n}".encode()
        signature = signer.sign(message)
        assert len(signature) == 64
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        public.verify(der, message, ec.ECDSA(hashes.SHA256()))


def test_thumbprint_is_rfc_7638():
    # RFC 7638 §3.1's example key and thumbprint.
    key = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPeb"
                "WKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQM"
                "icAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcR"
                "wr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# -- never used when it is not ours ---------------------------------------------------------

def refused(path: Path, match: str) -> str:
    before = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    with pytest.raises(IdentityError, match=match) as info:
        filekey.load_or_create(path)
    message = str(info.value)
    assert "\n" not in message and "docs/identity.md" in message
    if before is not None:
        assert path.read_bytes() == before  # refused, never replaced
    return message


def test_a_symlinked_key_is_refused_and_not_replaced(state, tmp_path):
    elsewhere = tmp_path / "attacker.jwk"
    filekey.create(elsewhere)
    os.symlink(elsewhere, state / "identity.jwk")
    refused(state / "identity.jwk", "identity.jwk is a symbolic link: it is not a key this device made")
    os.unlink(state / "identity.jwk")
    os.symlink(tmp_path / "nowhere", state / "identity.jwk")  # dangling: still a file of that name
    refused(state / "identity.jwk", "symbolic link")
    assert os.path.islink(state / "identity.jwk") and not (tmp_path / "nowhere").exists()


def test_a_key_others_may_write_is_refused(state):
    path = state / "identity.jwk"
    filekey.create(path)
    os.chmod(path, 0o646)
    refused(path, r"writable by other users \(mode 0646\)")


@as_root
def test_a_planted_key_of_another_user_is_refused(state):
    path = state / "identity.jwk"
    filekey.create(path)
    os.chown(path, NOBODY, NOBODY)
    refused(path, "is owned by nobody, not by root: it is not a key this device made, and is never used")


def test_a_key_readable_by_others_is_tightened_with_a_warning(state, caplog):
    path = state / "identity.jwk"
    kid = filekey.create(path).kid
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING):
        assert filekey.read(path).kid == kid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "was readable by other users; setting mode 0600" in caplog.text


# -- damaged: a clear error, never a new identity ---------------------------------------------

def _key_with(**members) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    n = key.private_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": _b64(n.public_numbers.x), "y": _b64(n.public_numbers.y),
           "d": _b64(n.private_value)}
    jwk.update(members)
    return json.dumps({k: v for k, v in jwk.items() if v is not None}).encode()


def _b64(number: int) -> str:
    import base64

    return base64.urlsafe_b64encode(number.to_bytes(32, "big")).rstrip(b"=").decode()


def _flip_d(data: bytes) -> bytes:
    jwk = json.loads(data)
    d = bytearray(b64url_decode(jwk["d"]))
    d[-1] ^= 1
    import base64

    jwk["d"] = base64.urlsafe_b64encode(bytes(d)).rstrip(b"=").decode()
    return json.dumps(jwk).encode()


@pytest.mark.parametrize("content, found", [
    (b"", "empty"),
    (b"\x8f\x01garbage" * 10, "90 bytes that are not JSON"),
    (b"-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n", "bytes that are not JSON"),
    (b"[1, 2]", "JSON, but not an object"),
    (b'{"kty": "RSA", "n": "x", "e": "AQAB"}', "kty 'RSA' and crv None, expected 'EC' and 'P-256'"),
    (_key_with(crv="P-384"), "crv 'P-384'"),
    (_key_with(d=None), r"a public key only \(no private member d\)"),
    (_key_with(x="c2hvcnQ"), "x is not 32 bytes of unpadded base64url"),
    (_key_with(d="!!" + "A" * 41), "d is not 32 bytes of unpadded base64url"),
    (_key_with(d=_b64(0)), r"d is not a P-256 private key \(out of range\)"),
    (_flip_d(_key_with()), r"its public part \(x, y\) does not belong to its private part \(d\): the file is damaged"),
    (b" " * 5000, "larger than 4096 bytes"),
])
def test_a_damaged_key_is_a_clear_one_line_error_and_stays(state, content, found):
    path = state / "identity.jwk"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    message = refused(path, found)
    assert message.startswith(f"{path}: not a device identity key: ")
    assert "it is never replaced on its own" in message
    if content.startswith(b"{"):
        d = json.loads(content).get("d")
        assert not d or d not in message  # the private part is never quoted


# -- the daemon's way in, and provisioning ------------------------------------------------------

def cfg_for(tmp_path: Path, extra: str = "") -> config.Config:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[provider]
issuer = "https://id.example"
client_id = "tv"
client_auth = "private_key_jwt"
[storage]
state_dir = "state"
{extra}
""")
    return config.load(path)


def test_the_daemon_makes_the_key_once_and_says_so(tmp_path, state, caplog):
    cfg = cfg_for(tmp_path, '[identity]\nserial = "10000000a1b2c3d4"')
    with caplog.at_level(logging.INFO):
        first = open_signer(cfg)
    assert "made a new device identity key" in caplog.text and first.kid in caplog.text
    assert "device identity: serial 10000000a1b2c3d4, key file" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert open_signer(cfg).kid == first.kid
    assert "made a new" not in caplog.text


def test_provision_makes_the_key_prints_the_jwks_and_is_idempotent(tmp_path):
    cfg = cfg_for(tmp_path, '[identity]\nserial = "SN-0042"')
    first = provision(cfg)
    assert first["created"] and first["serial"] == "SN-0042"
    [jwk] = first["jwks"]["keys"]
    assert "d" not in jwk and jwk["kid"] == first["kid"] == thumbprint(jwk)
    assert (jwk["use"], jwk["alg"]) == ("sig", "ES256")
    assert stat.S_IMODE((tmp_path / "state" / "identity.jwk").stat().st_mode) == 0o600
    second = provision(cfg)
    assert not second["created"] and second["jwks"] == first["jwks"]
    assert open_signer(cfg).kid == first["kid"]  # what the daemon then signs with


def test_provision_does_not_make_a_key_while_a_daemon_holds_the_state(tmp_path):
    cfg = cfg_for(tmp_path)
    ensure_private_dir(cfg.storage.state_dir)
    keys.lock_state_dir(cfg.storage.state_dir)  # as a running daemon does
    try:
        code = ("import sys; from devicelink import config; from devicelink.identity.provision import provision; "
                "provision(config.load(sys.argv[1]))")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "config.toml")], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": SRC})
    finally:
        keys.release_state_lock(cfg.storage.state_dir)
    assert out.returncode != 0 and "StateDirBusy" in out.stderr
    assert not (cfg.storage.state_dir / "identity.jwk").exists()


# -- the serial number ----------------------------------------------------------------------------

def test_the_serial_comes_from_the_config_else_the_device_tree(tmp_path, caplog):
    tree = tmp_path / "serial-number"
    tree.write_bytes(b"10000000a1b2c3d4\x00")  # a device-tree string: NUL-terminated
    assert device_serial(None, tree) == "10000000a1b2c3d4"
    assert device_serial("SN-7", tree) == "SN-7"
    assert device_serial(None, tmp_path / "absent") is None
    tree.write_bytes(b"\x00\x00")
    with caplog.at_level(logging.WARNING):
        assert device_serial(None, tree) is None
    assert "not a serial number" in caplog.text


# -- loaded only when configured ------------------------------------------------------------------

def test_the_key_code_is_imported_only_when_a_method_signs(tmp_path):
    """A daemon without private_key_jwt or DPoP loads neither the key file code nor pyjwt (idle
    RSS); one with DPoP (any client_auth) loads the key and gets its proofs."""
    probe = ("import sys; from devicelink import config, daemon; cfg = config.load(sys.argv[1]); "
             "import devicelink.oauth.http, devicelink.engine; "
             "params = daemon.signing_params(cfg, lambda: None); "
             "print(','.join(sorted(params)) or '-', 'devicelink.identity.filekey' in sys.modules, "
             "'cryptography.hazmat.primitives.asymmetric.ec' in sys.modules, 'jwt' in sys.modules)")
    results = {}
    for method, dpop in (("none", False), ("private_key_jwt", False), ("none", True), ("private_key_jwt", True)):
        path = tmp_path / f"{method}-{dpop}" / "config.toml"
        path.parent.mkdir()
        path.write_text(f'[provider]\nissuer = "https://id.example"\nclient_id = "tv"\nclient_auth = "{method}"\n'
                        f'dpop = {str(dpop).lower()}\n[storage]\nstate_dir = "state"\n')
        ensure_private_dir(path.parent / "state")
        out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": SRC})
        assert out.returncode == 0, out.stderr
        results[method, dpop] = out.stdout.split()
    assert results == {
        ("none", False): ["-", "False", "False", "False"],
        ("private_key_jwt", False): ["audience,issuer,signer,token_endpoint,wall_clock", "True", "True", "False"],
        ("none", True): ["dpop", "True", "True", "False"],
        ("private_key_jwt", True): ["audience,dpop,issuer,signer,token_endpoint,wall_clock", "True", "True",
                                    "False"],
    }


def test_the_daemon_and_provision_stop_with_one_line_on_a_damaged_key(tmp_path):
    """What an operator sees: `devicelink run` and `devicelink provision` exit 1 with the one
    line, and the damaged key is still there, untouched."""
    cfg = cfg_for(tmp_path, '[socket]\npath = "agent.sock"')
    ensure_private_dir(cfg.storage.state_dir)
    key = cfg.storage.state_dir / "identity.jwk"
    key.write_bytes(b"-----BEGIN EC PRIVATE KEY-----\n")
    os.chmod(key, 0o600)
    env = {**os.environ, "PYTHONPATH": SRC, "DEVICELINK_CLOCK_SYNCED": "1"}
    for command in ("run", "provision"):
        out = subprocess.run([sys.executable, "-m", "devicelink", "--config", str(cfg.path), command],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 1, out.stderr
        [line] = [l for l in out.stderr.splitlines() if "identity.jwk" in l]
        assert "not a device identity key: 31 bytes that are not JSON; it is never replaced" in line
        assert "Traceback" not in out.stderr
    assert key.read_bytes() == b"-----BEGIN EC PRIVATE KEY-----\n"
