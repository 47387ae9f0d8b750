"""The fleet's signing key: made once, kept by the manufacturer, used to sign software statements.

ES256 (EC P-256), the default, or RS256 (RSA, 2048 bits or more): what authorization
servers accept for software statements (Authlib takes any JOSE algorithm it is told
to, oidc-provider's and most others' JOSE libraries take both). Written as a private
JWK (RFC 7517), or as PKCS#8 PEM for tools that want PEM, mode 0600, never over an
existing file. Read back from either form. The JWS is put together by
``identity/jws.py`` with a signer built here (the device's own signer interface), and
verified with ``cryptography``, so the tools need nothing beyond the daemon's own
dependencies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from devicelink.identity.signer import b64url, b64url_decode, thumbprint

ALGORITHMS = ("ES256", "RS256")
RSA_BITS = 2048
MAX_KEY_FILE = 64 * 1024


class FleetKeyError(ValueError):
    """A key file that cannot be used, in one line naming it."""


@dataclass(frozen=True)
class FleetKey:
    """A private key and its JWS algorithm; a :class:`~devicelink.identity.signer.Signer`."""

    private: Any  # ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    alg: str

    @property
    def kid(self) -> str:
        return thumbprint(self.public_jwk())

    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.private.public_key())

    def sign(self, signing_input: bytes) -> bytes:
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    def private_jwk(self) -> dict[str, str]:
        jwk = {**self.public_jwk(), "kid": self.kid, "alg": self.alg, "use": "sig"}
        n = self.private.private_numbers()
        if self.alg == "ES256":
            return {**jwk, "d": _b64int(n.private_value, 32)}
        return {**jwk, "d": _b64int(n.d), "p": _b64int(n.p), "q": _b64int(n.q), "dp": _b64int(n.dmp1),
                "dq": _b64int(n.dmq1), "qi": _b64int(n.iqmp)}


def generate(alg: str = "ES256") -> FleetKey:
    if alg == "ES256":
        return FleetKey(ec.generate_private_key(ec.SECP256R1()), alg)
    if alg == "RS256":
        return FleetKey(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS), alg)
    raise FleetKeyError(f"alg must be one of {', '.join(ALGORITHMS)}, got {alg!r}")


def write_new(key: FleetKey, path: Path, form: str = "jwk") -> None:
    """``path``, made now with mode 0600: never over an existing file (a fleet key replaced by
    mistake makes every statement already baked into images unverifiable)."""
    if form == "pem":
        data = key.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    else:
        data = json.dumps(key.private_jwk(), indent=1).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path) -> FleetKey:
    """A private key from a JWK or PEM file. :class:`FleetKeyError` naming the file otherwise."""
    try:
        data = Path(path).read_bytes()[:MAX_KEY_FILE + 1]
    except OSError as exc:
        raise FleetKeyError(f"{path}: cannot read the fleet key: {exc.strerror}") from None
    if os.stat(path).st_mode & 0o077:
        import logging

        logging.getLogger(__name__).warning("%s: other users may read the fleet key: chmod 600 %s", path, path)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise FleetKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from None
        return _wrap(private, path)
    try:
        jwk = json.loads(data)
    except ValueError:
        raise FleetKeyError(f"{path}: neither a JWK (JSON) nor a PEM private key") from None
    if not isinstance(jwk, dict) or "d" not in jwk:
        raise FleetKeyError(f"{path}: not a private JWK (no member d): a private key signs statements")
    return _wrap(private_from_jwk(jwk, path), path)


def _wrap(private: Any, path: Path) -> FleetKey:
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
        return FleetKey(private, "ES256")
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size >= RSA_BITS:
        return FleetKey(private, "RS256")
    raise FleetKeyError(f"{path}: expected an EC P-256 key or an RSA key of {RSA_BITS} bits or more")


def private_from_jwk(jwk: dict[str, Any], where: Any = "the key") -> Any:
    try:
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            private = ec.derive_private_key(_int(jwk["d"]), ec.SECP256R1())
            if public_jwk(private.public_key()) != {k: jwk[k] for k in ("kty", "crv", "x", "y")}:
                raise FleetKeyError(f"{where}: its x and y do not belong to its d: the file is damaged")
            return private
        if jwk.get("kty") == "RSA":
            public = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"]))
            return rsa.RSAPrivateNumbers(_int(jwk["p"]), _int(jwk["q"]), _int(jwk["d"]), _int(jwk["dp"]),
                                         _int(jwk["dq"]), _int(jwk["qi"]), public).private_key()
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, FleetKeyError):
            raise
        raise FleetKeyError(f"{where}: not a usable private JWK ({type(exc).__name__}: {exc})") from None
    raise FleetKeyError(f"{where}: kty {jwk.get('kty')!r} crv {jwk.get('crv')!r}: expected EC P-256 or RSA")


def public_jwk(public: Any) -> dict[str, str]:
    """The required members only (RFC 7638 §3.2)."""
    n = public.public_numbers()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return {"kty": "EC", "crv": "P-256", "x": _b64int(n.x, 32), "y": _b64int(n.y, 32)}
    return {"kty": "RSA", "n": _b64int(n.n), "e": _b64int(n.e)}


def public_key(jwk: dict[str, Any]) -> Any:
    """A ``cryptography`` public key from a public (or private) JWK; ValueError otherwise."""
    try:
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            return ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]), ec.SECP256R1()).public_key()
        if jwk.get("kty") == "RSA":
            return rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a usable public JWK: {exc}") from None
    raise ValueError(f"kty {jwk.get('kty')!r}: expected EC P-256 or RSA")


def public_keys(path: Path) -> list[dict[str, Any]]:
    """The public JWKs in a file: a JWKS, one JWK (private members are dropped), or a PEM key."""
    try:
        data = Path(path).read_bytes()[:MAX_KEY_FILE + 1]
    except OSError as exc:
        raise FleetKeyError(f"{path}: cannot read: {exc.strerror}") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            if b"PRIVATE KEY" in data:
                return [public_jwk(serialization.load_pem_private_key(data, password=None).public_key())]
            return [public_jwk(serialization.load_pem_public_key(data))]
        except (ValueError, TypeError) as exc:
            raise FleetKeyError(f"{path}: not a PEM key ({exc})") from None
    try:
        doc = json.loads(data)
    except ValueError:
        raise FleetKeyError(f"{path}: neither a JWK, a JWKS nor a PEM key") from None
    found = doc.get("keys", [doc]) if isinstance(doc, dict) else None
    if not isinstance(found, list) or not all(isinstance(k, dict) for k in found):
        raise FleetKeyError(f"{path}: neither a JWK, a JWKS nor a PEM key")
    return [{k: v for k, v in key.items() if k not in PRIVATE_MEMBERS} for key in found]


#: JWK members that hold private key material (RFC 7518 §6.2.2, §6.3.2).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def verify(token: str, keys: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (header, claims) of a compact JWS signed by one of ``keys`` (ES256 or RS256; the
    header's ``kid`` picks the key when it names one). ValueError saying why not."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS (three base64url parts)")
    try:
        header, claims = (json.loads(b64url_decode(p)) for p in parts[:2])
        signature = b64url_decode(parts[2])
    except (ValueError, RecursionError):
        raise ValueError("not a compact JWS (its parts are not base64url JSON)") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT: header or claims not a JSON object")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise ValueError(f"alg {str(alg)[:20]!r} is not one of {', '.join(ALGORITHMS)}")
    candidates = [k for k in keys if header.get("kid") in (None, k.get("kid"), _kid(k))] or keys
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    for jwk in candidates:
        try:
            key = public_key(jwk)
        except ValueError:
            continue
        try:
            if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
                return header, claims
            if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
                return header, claims
        except InvalidSignature:
            continue
    raise ValueError("its signature does not verify with the key(s) given")


def _kid(jwk: dict[str, Any]) -> str | None:
    try:
        return thumbprint(jwk)
    except (KeyError, TypeError):
        return None


def _b64int(value: int, size: int | None = None) -> str:
    return b64url(value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big"))


def _int(text: Any) -> int:
    return int.from_bytes(b64url_decode(text), "big")
