"""``private_key_jwt`` (RFC 7523 §2.2, OpenID Connect Core §9): the client proves itself with a JWT
signed by the device's key.

Each send gets its own assertion, retries included (the hook runs on every
send): a fresh random ``jti`` and ``iat``/``exp`` from the wall clock, valid for
:data:`LIFETIME` seconds, so a server that remembers ``jti`` values (oidc-provider
does) never sees one twice (RFC-CHECKLIST G20). ``iss`` = ``sub`` = the
``client_id`` (RFC 7523 §3 items 1-2); ``aud`` names the authorization server
(item 3) as ``[provider] assertion_audience`` says: the issuer by default
(FAPI 2.0 and draft-ietf-oauth-rfc7523bis want exactly that, one string), the
token endpoint (OIDC Core §9), or the URL the request goes to (Okta); several
make a JSON array. The header's ``kid`` is the key's RFC 7638 thumbprint and
``alg`` the signer's (ES256). ``client_id`` is sent too (RFC 6749 §2.3, RFC 8628 §3.1).

The signature comes from a :class:`~devicelink.identity.signer.Signer`, so a
hardware key works the same; nothing here imports ``cryptography``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable

from devicelink.identity import jws
from devicelink.identity.settings import AUDIENCES
from devicelink.identity.signer import Signer
from devicelink.oauth.auth import AuthParams, Outgoing, register

#: RFC 7523 §2.2.
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds an assertion is valid: one request's worth, with room for a slow link. Auth0
#: allows at most 300; a stolen assertion is good for this long (and once, where ``jti`` is checked).
LIFETIME = 60


@dataclass(frozen=True)
class PrivateKeyJwt:
    client_id: str
    signer: Signer
    issuer: str
    audience: tuple[str, ...]
    token_endpoint: Callable[[], str | None] = field(repr=False)
    wall_clock: Callable[[], float] = field(repr=False)

    def prepare(self, out: Outgoing, now: float) -> None:
        out.form += [("client_id", self.client_id), ("client_assertion_type", ASSERTION_TYPE),
                     ("client_assertion", self.assertion(out.url))]

    def assertion(self, url: str) -> str:
        """A new assertion for a request to ``url``."""
        issued = int(self.wall_clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.aud(url),
                  "jti": secrets.token_urlsafe(16),  # 128 random bits (OIDC Core §9: unique)
                  "iat": issued, "exp": issued + LIFETIME}
        return jws.compact(self.signer, {"kid": self.signer.kid}, claims)

    def aud(self, url: str) -> str | list[str]:
        values = []
        for name in self.audience:
            if name == "issuer":
                values.append(self.issuer)
            elif name == "token_endpoint":  # known from the config or discovery by the time we authenticate
                values.append(self.token_endpoint() or url)
            else:  # "endpoint"
                values.append(url)
        values = list(dict.fromkeys(values))
        return values[0] if len(values) == 1 else values


@register("private_key_jwt")
def private_key_jwt(params: AuthParams) -> PrivateKeyJwt:
    if params.signer is None or params.issuer is None:
        raise ValueError("private_key_jwt needs the device's signer and the issuer")
    if not params.audience or not set(params.audience) <= set(AUDIENCES):
        raise ValueError(f"private_key_jwt: audience must name some of {AUDIENCES}, got {params.audience!r}")
    return PrivateKeyJwt(params.client_id, params.signer, params.issuer, params.audience,
                         params.token_endpoint, params.wall_clock)
