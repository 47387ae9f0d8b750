"""The file signer: the device's EC P-256 key in ``state_dir/identity.jwk``.

The file is a private JWK (RFC 7517 §4, RFC 7518 §6.2): one JSON object with
``kty`` ``EC``, ``crv`` ``P-256`` and the coordinates ``x``, ``y`` beside the
private ``d``, each 32 bytes in base64url. JSON rather than PEM because any
JOSE tool reads it, and it needs no ``cryptography`` serialization module
(1.8 MiB of RSS with cryptography 4x). The public half in the same file is a
check: a damaged ``d`` no longer matches ``x`` and ``y`` and is refused, where a
bare 32-byte key would silently become another identity.

The state-file rules hold (docs/files.md): it is made once, 0600, by
:func:`devicelink.files.write_atomic` (an ``O_EXCL | O_NOFOLLOW`` temp file,
fsync, rename, directory fsync), under the state lock; it is read with
:func:`devicelink.files.read_owned`, so a symlink, another user's file or one
others may write is refused, never used. An unreadable or damaged key is an
:class:`~devicelink.errors.IdentityError` and is never replaced: the key *is* the
device's identity at the authorization server, and a new one would lock the
device out until someone registers it. (A factory reset with ``[identity]
on_factory_reset = "new_key"`` replaces it on purpose: ``identity/renewal.py``.)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from devicelink.errors import IdentityError
from devicelink.files import UnsafeFile, read_owned, write_atomic
from devicelink.identity.signer import b64url, b64url_decode, thumbprint

logger = logging.getLogger(__name__)

COORDINATE = 32  # bytes of a P-256 coordinate or private scalar (RFC 7518 §6.2.1.2, §6.2.2.1)
_READ_LIMIT = 4096  # the key is ~180 bytes; a little more says what a wrong file is
_KEEP = ("it is never replaced on its own: restore it from a backup, or remove it to make a new identity "
         "whose public key the authorization server must then be given (docs/identity.md)")


class FileSigner:
    """ES256 with a key held in this process (:class:`~devicelink.identity.signer.Signer`)."""

    alg = "ES256"

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        numbers = key.public_key().public_numbers()
        self._jwk = {"kty": "EC", "crv": "P-256", "x": b64url(numbers.x.to_bytes(COORDINATE, "big")),
                     "y": b64url(numbers.y.to_bytes(COORDINATE, "big"))}
        self.kid = thumbprint(self._jwk)

    def __repr__(self) -> str:
        return f"FileSigner(kid={self.kid!r})"

    def sign(self, signing_input: bytes) -> bytes:
        # cryptography gives DER; JWS wants R || S, each left-padded to 32 bytes (RFC 7518 §3.4).
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(COORDINATE, "big") + s.to_bytes(COORDINATE, "big")

    def public_jwk(self) -> dict[str, str]:
        return dict(self._jwk)


def load_or_create(path: Path) -> tuple[FileSigner, bool]:
    """The key at ``path``, or a new one written there when there is no file of that name
    at all (a dangling symlink counts as a file, and is refused). Returns the signer and
    whether it was made now. Call it holding the state lock."""
    if os.path.lexists(path):
        return read(path), False
    return create(path), True


def create(path: Path) -> FileSigner:
    """A new P-256 key (the OS's CSPRNG, through OpenSSL) written to ``path``, 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer = FileSigner(key)
    d = b64url(key.private_numbers().private_value.to_bytes(COORDINATE, "big"))
    try:
        write_atomic(path, json.dumps({**signer.public_jwk(), "d": d}).encode("ascii") + b"\n", mode=0o600)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot write the device identity key: {exc.strerror}") from None
    return signer


def read(path: Path) -> FileSigner:
    """The key file at ``path``: :class:`IdentityError` when it is not ours (a symlink, not a
    regular file, another user's, writable by others), cannot be read, or is not an EC
    P-256 private JWK whose halves match. Readable by others: tightened to 0600, with a
    warning (the key could have been copied)."""
    try:
        data = read_owned(path, _READ_LIMIT)
        if os.lstat(path).st_mode & 0o077:
            logger.warning("%s was readable by other users; setting mode 0600. The key could have been copied: "
                           "consider a new device identity (docs/identity.md)", path)
            os.chmod(path, 0o600)  # read_owned checked it is ours; only we can write in the directory
    except UnsafeFile as exc:
        raise IdentityError(f"{path} is {exc.strerror}: it is not a key this device made, and is never used; "
                            "remove it unless you put it there yourself, and restore the device's own key "
                            "(docs/identity.md)") from None
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read the device identity key: {exc.strerror}") from None
    problem, key = parse(data)
    if key is None:
        raise IdentityError(f"{path}: not a device identity key: {problem}; {_KEEP}")
    return FileSigner(key)


def parse(data: bytes) -> tuple[str, ec.EllipticCurvePrivateKey | None]:
    """The private key in a key file's bytes, or what is wrong with them, in words that
    never quote the private part."""
    if len(data) > _READ_LIMIT:
        return f"larger than {_READ_LIMIT} bytes", None
    try:
        jwk = json.loads(data)
    except (ValueError, RecursionError):
        return f"{len(data)} bytes that are not JSON" if data.strip() else "empty", None
    if not isinstance(jwk, dict):
        return "JSON, but not an object", None
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        return f"kty {_show(jwk.get('kty'))} and crv {_show(jwk.get('crv'))}, expected 'EC' and 'P-256'", None
    if "d" not in jwk:
        return "a public key only (no private member d)", None
    values = {}
    for name in ("x", "y", "d"):
        try:
            values[name] = b64url_decode(jwk.get(name))
        except ValueError:
            values[name] = b""
        if len(values[name]) != COORDINATE:
            return f"{name} is not {COORDINATE} bytes of unpadded base64url", None
    try:
        key = ec.derive_private_key(int.from_bytes(values["d"], "big"), ec.SECP256R1())
    except ValueError:
        return "d is not a P-256 private key (out of range)", None
    public = key.public_key().public_numbers()
    if (public.x, public.y) != (int.from_bytes(values["x"], "big"), int.from_bytes(values["y"], "big")):
        return "its public part (x, y) does not belong to its private part (d): the file is damaged", None
    return "", key


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 20 else text[:17] + "..."
