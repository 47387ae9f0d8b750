"""DPoP (RFC 9449) for the development server: proofs checked with joserfc, as a strict server does.

`Proofs.check` reads a `DPoP` header (§4.3) and returns the RFC 7638 thumbprint of its key (the
`jkt` a bound token's `cnf` names, §6.1), or raises `ProofRefused`:

- the header: `typ` `dpop+jwt`, `alg` ES256 (what discovery lists; never `none` or a MAC), a
  `jwk` that is a public EC key (a private member is refused), and a signature that key verifies;
- the claims: a `jti` never seen before from that key (within the `iat` window), `htm` the
  request's method, `htu` its URL without query and fragment, `iat` within `WINDOW` seconds of
  the server's wall clock (unless a valid nonce vouches for the proof's freshness), `ath` the
  hash of the access token presented with it (resource requests, §7), and the server's current
  `nonce` when `require_nonce` (`use_dpop_nonce` with the nonce otherwise, §8-§9).

A token endpoint answers a refused proof 400 `invalid_dpop_proof` / `use_dpop_nonce`; a
resource 401 with `WWW-Authenticate: DPoP error="..."` (§7.1). The nonce goes out in a
`DPoP-Nonce` header on every answer of the token endpoint when nonces are required.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from .replay import SeenIds

ALGORITHMS = ["ES256"]
WINDOW = 60  # seconds either side of the server's clock an iat may be (oidc-provider: 300)


class ProofRefused(Exception):
    """Why a proof is refused: `error` is `invalid_dpop_proof` or `use_dpop_nonce` (then `nonce`
    is the one to use)."""

    def __init__(self, error: str, description: str, nonce: str | None = None):
        super().__init__(description)
        self.error, self.description, self.nonce = error, description, nonce


def htu_of(url: str) -> str:
    """A URL as `htu` compares: without query and fragment, scheme and host in lower case (§4.3)."""
    parts = urlsplit(url)
    return parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower(), query="", fragment="").geturl()


def ath_of(access_token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).rstrip(b"=").decode()


class Proofs:
    """The proofs one server has checked (`checked`: the claims of each, with its `jkt`), the
    jtis it has seen, and its nonce."""

    def __init__(self, require_nonce: bool = False, wall: Callable[[], float] = time.time):
        self.require_nonce = require_nonce
        self.wall = wall
        self.nonce = secrets.token_urlsafe(16)
        self.seen = SeenIds()  # (jkt, jti), until the proof's iat window has passed (wall clock)
        self.checked: list[dict] = []

    def new_nonce(self) -> str:
        self.nonce = secrets.token_urlsafe(16)
        return self.nonce

    def check(self, proof: str, method: str, url: str, access_token: str | None = None) -> str:
        """The thumbprint of the proof's key, once every check passed; `ProofRefused` otherwise."""
        try:
            header = jws.extract_compact(proof.encode()).protected
            jwk = header.get("jwk")
            if header.get("typ") != "dpop+jwt":
                raise ProofRefused("invalid_dpop_proof", "typ must be dpop+jwt")
            if header.get("alg") not in ALGORITHMS:
                raise ProofRefused("invalid_dpop_proof", f"alg must be one of {ALGORITHMS}")
            if not isinstance(jwk, dict) or "d" in jwk or jwk.get("kty") != "EC":
                raise ProofRefused("invalid_dpop_proof", "jwk must be a public EC key")
            key = ECKey.import_key(jwk)
            claims = json.loads(jws.deserialize_compact(proof, key, algorithms=ALGORITHMS).payload)
        except ProofRefused:
            raise
        except (JoseError, ValueError, TypeError, KeyError) as exc:  # not a JWS, a bad key, a bad signature
            raise ProofRefused("invalid_dpop_proof", f"not a valid proof ({type(exc).__name__})") from None
        if not isinstance(claims, dict):
            raise ProofRefused("invalid_dpop_proof", "the payload is not a JSON object")
        jkt = key.thumbprint()
        jti, iat, nonce = claims.get("jti"), claims.get("iat"), claims.get("nonce")
        if not isinstance(jti, str) or len(jti) < 12:  # 96 bits, §4.2 (base64url: 16 characters; some say 12)
            raise ProofRefused("invalid_dpop_proof", "jti must be a unique random string")
        if claims.get("htm") != method:
            raise ProofRefused("invalid_dpop_proof", "htm does not match the request")
        if not isinstance(claims.get("htu"), str) or htu_of(claims["htu"]) != htu_of(url):
            raise ProofRefused("invalid_dpop_proof", "htu does not match the request")
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise ProofRefused("invalid_dpop_proof", "iat must be a number")
        now = self.wall()
        fresh_nonce = nonce is not None and nonce == self.nonce
        if self.require_nonce and not fresh_nonce:
            raise ProofRefused("use_dpop_nonce", "a DPoP nonce is required" if nonce is None else
                               "the DPoP nonce is not the current one", self.nonce)
        if not fresh_nonce and abs(now - iat) > WINDOW:
            raise ProofRefused("invalid_dpop_proof", "iat is not recent enough")
        if access_token is not None and claims.get("ath") != ath_of(access_token):
            raise ProofRefused("invalid_dpop_proof", "ath does not match the access token")
        if not self.seen.first_use((jkt, jti), max(now, float(iat)) + 2 * WINDOW, now):
            raise ProofRefused("invalid_dpop_proof", "jti was used before (a replayed proof)")
        self.checked.append({**claims, "jkt": jkt})
        return jkt
