"""The signer interface, the JOSE helpers every signer shares, and the daemon's way to open one.

What signs with the key (``private_key_jwt`` client assertions today, DPoP proofs
later) sees only the :class:`Signer` protocol: the JWS algorithm, the signature
of a signing input, the public JWK and its RFC 7638 thumbprint. The private key
never leaves the signer, so a TPM 2.0 or an ATECC608 can hold it instead of
``state_dir/identity.jwk`` (:mod:`devicelink.identity.filekey`) without a change
anywhere else (docs/identity.md).

Nothing here imports ``cryptography``: the file signer does, and only the daemon
that is configured to sign loads it (:func:`open_signer`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from typing import TYPE_CHECKING, Protocol

from devicelink.identity import KEY_FILE

if TYPE_CHECKING:
    from devicelink.config import Config

logger = logging.getLogger(__name__)

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
#: RFC 7638 §3.2: the members of a key's thumbprint, by key type.
_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


class Signer(Protocol):
    """A private key that signs and never gives itself away.

    ``alg`` is the JWS algorithm (RFC 7518 §3.1), ``"ES256"`` for every signer
    devicelink has. ``sign`` returns the JWS signature of ``signing_input`` (the
    ASCII ``base64url(header) "." base64url(payload)``): for ES256 the raw
    ``R || S``, 32 bytes each (RFC 7518 §3.4), not DER. ``public_jwk`` is the
    public key as a JWK with only its required members (``kty``, ``crv``, ``x``,
    ``y``): what a DPoP proof's ``jwk`` header carries (RFC 9449 §4.2). ``kid`` is
    its RFC 7638 thumbprint (:func:`thumbprint`).
    """

    alg: str

    @property
    def kid(self) -> str: ...

    def sign(self, signing_input: bytes) -> bytes: ...

    def public_jwk(self) -> dict[str, str]: ...


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The inverse of :func:`b64url`; ValueError for anything that is not unpadded base64url."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")  # b64decode alone would skip stray characters
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(jwk: dict[str, str]) -> str:
    """The RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic
    order, as JSON without whitespace; base64url. ``kid`` of every assertion."""
    members = {name: jwk[name] for name in _REQUIRED[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def registration_jwk(signer: Signer) -> dict[str, str]:
    """The public key as a server registers it (a client's ``jwks``, RFC 7591 §2):
    with ``kid``, ``use`` and ``alg``, never a private member."""
    return {**signer.public_jwk(), "kid": signer.kid, "use": "sig", "alg": signer.alg}


def open_signer(cfg: Config) -> Signer:
    """The signer ``[identity] key`` names, for a daemon configured to sign: the key file
    in the state directory, made when there is none (the caller holds the state lock).
    :class:`~devicelink.errors.IdentityError` when the key cannot be used."""
    from devicelink.identity.filekey import load_or_create
    from devicelink.identity.serial import device_serial

    signer, made = load_or_create(cfg.storage.state_dir / KEY_FILE)
    serial = device_serial(cfg.identity.serial)
    if made and cfg.registration is not None:
        logger.info("made a new device identity key %s (thumbprint %s); it is registered with the authorization "
                    "server next ([registration])", cfg.storage.state_dir / KEY_FILE, signer.kid)
    elif made and cfg.provider.client_auth == "private_key_jwt":
        logger.warning("made a new device identity key %s (thumbprint %s): register its public key with the "
                       "authorization server (devicelink provision prints it; docs/identity.md)",
                       cfg.storage.state_dir / KEY_FILE, signer.kid)
    elif made:  # DPoP only: a public key no server needs to know in advance (docs/dpop.md)
        logger.warning("made a new device identity key %s (thumbprint %s): DPoP binds the tokens to it; "
                       "tokens bound to an earlier key need a new pairing", cfg.storage.state_dir / KEY_FILE,
                       signer.kid)
    logger.info("device identity: serial %s, key %s (thumbprint %s)", serial or "unknown",
                cfg.identity.key, signer.kid)
    if cfg.identity.new_key_on_reset:  # a factory reset swaps in a new key (identity/renewal.py)
        return SwappableSigner(signer)
    return signer


class SwappableSigner:
    """A :class:`Signer` whose key a factory reset can replace (``[identity] on_factory_reset =
    "new_key"``): what holds it (the ``private_key_jwt`` hook, DPoP, registration) signs with
    the new key from the moment :meth:`swap` returns, without being rebuilt."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    def __repr__(self) -> str:
        return f"SwappableSigner({self._signer!r})"

    @property
    def alg(self) -> str:
        return self._signer.alg

    @property
    def kid(self) -> str:
        return self._signer.kid

    def sign(self, signing_input: bytes) -> bytes:
        return self._signer.sign(signing_input)

    def public_jwk(self) -> dict[str, str]:
        return self._signer.public_jwk()

    def swap(self, signer: Signer) -> None:
        self._signer = signer
