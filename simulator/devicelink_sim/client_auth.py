"""`private_key_jwt` client authentication (RFC 7523 §2.2 and §3, OIDC Core §9) for the development server.

Authlib's `JWTBearerClientAssertion` decodes the assertion and checks its
signature with joserfc (another JOSE implementation than the device's) against
the JWKS registered for the client (`DevServer.register_device_key`), then
`iss`, `sub`, `aud` and `exp`. This adds what a strict server adds:

- `aud` must name this server: the issuer, the token endpoint or the URL of the
  endpoint the request went to (oidc-provider accepts the same three);
- `exp` at most `MAX_LIFETIME` seconds ahead (Auth0's limit);
- `jti` is required and used once (a replayed assertion is `invalid_client`,
  as on oidc-provider): every request, retries included, needs a new one;
- a `client_id` parameter, when sent, must be the assertion's `sub`.

The claims of every assertion that passed land in `assertions` (`DevServer.assertions`), for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from flask import request as flask_request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .replay import SeenIds

METHOD = "private_key_jwt"
MAX_LIFETIME = 300  # seconds from now an assertion's exp may be


class PrivateKeyJwt(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = METHOD

    def __init__(self, issuer: Callable[[], str], seen: SeenIds, assertions: list[dict],
                 wall: Callable[[], float] = time.time):
        super().__init__(validate_jti=True, leeway=5)
        self.issuer = issuer
        self.wall = wall  # seconds since the epoch: exp, iat and nbf are checked against it
        self.seen = seen  # (client_id, jti), until the assertion has expired (wall clock)
        self.assertions = assertions
        self._claims: dict | None = None  # of the assertion being checked

    def __call__(self, query_client, request):
        # One request may be authenticated twice (grants.py's device authorization endpoint
        # checks the client before Authlib does): the second time is not a replay.
        assertion = request.form.get("client_assertion")
        done = getattr(request, "_checked_assertion", None)
        if done is not None and assertion is not None and done[0] == assertion:
            return done[1]
        client_id = request.form.get("client_id")
        self._claims = None
        client = super().__call__(query_client, request)
        if client is not None and client_id is not None and client_id != client.get_client_id():
            raise InvalidClientError(description="client_id is not the assertion's sub.")
        if self._claims is not None:  # every check passed (the app holds State.lock: one request at a time)
            self.assertions.append(self._claims)
        request._checked_assertion = (assertion, client)
        return client

    def get_audiences(self):
        issuer = self.issuer()
        return [issuer, f"{issuer}/token", flask_request.base_url]

    def resolve_client_public_key(self, client):
        if not client.jwks:
            raise InvalidClientError(description="The client has no registered keys.")
        return KeySet.import_key_set(client.jwks)

    def verify_claims(self, claims):
        # Authlib's checks (RFC 7523 §3), on this server's wall clock rather than time.time().
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self.wall()), leeway=self.leeway, iss={"essential": True}, sub={"essential": True},
            aud={"essential": True, "values": self.get_audiences()}, exp={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidClientError(description=exc.description) from exc
        if claims["sub"] != claims["iss"]:
            raise InvalidClientError(description="Issuer and Subject MUST match.")
        if "jti" not in claims:
            raise InvalidClientError(description="Missing JWT ID.")
        if not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="JWT ID is used before.")
        now = self.wall()
        if claims["exp"] > now + MAX_LIFETIME:
            raise InvalidClientError(description=f"exp is more than {MAX_LIFETIME} s ahead.")
        self._claims = dict(claims)

    def validate_jti(self, claims, jti):
        return self.seen.first_use((claims["sub"], jti), float(claims["exp"]) + self.leeway, self.wall())
