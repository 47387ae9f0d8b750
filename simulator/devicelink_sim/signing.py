"""The development server's signing key: ID tokens (RS256) and the JWKS that verifies them."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .records import Grant

#: The claims of an ID token, as discovery lists them.
CLAIMS = ("iss", "sub", "aud", "iat", "exp", "auth_time", "acr", "name")


class SigningKey:
    """The RS256 key for ID tokens, made fresh for each server."""

    def __init__(self):
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._private.public_key().public_numbers()
        public = {"kty": "RSA", "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}
        # RFC 7638 thumbprint as the key id.
        canonical = json.dumps(public, sort_keys=True, separators=(",", ":")).encode()
        self.kid = _b64(hashlib.sha256(canonical).digest())
        self.jwks = {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict) -> str:
        return jwt.encode(claims, self._private, algorithm="RS256", headers={"kid": self.kid})

    def id_token(self, issuer: str, client_id: str, grant: Grant, lifetime: int, wall: float | None = None) -> str:
        """An ID token for `client_id` about the user and login behind `grant`, issued at
        `wall` (seconds since the epoch; default: now)."""
        # Wall-clock times, as verifiers expect; auth_time and acr always (OIDC Core
        # §2 requires auth_time when max_age was asked for).
        now = int(time.time() if wall is None else wall)
        return self.sign(
            {
                "iss": issuer,
                "sub": grant.user.subject,
                "aud": client_id,
                "iat": now,
                "exp": now + lifetime,
                "auth_time": grant.login.auth_time,
                "acr": grant.login.acr,
                "name": grant.user.name,
            }
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))
