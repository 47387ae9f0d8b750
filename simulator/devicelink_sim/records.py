"""The records of the development authorization server's state.

They implement Authlib's model mixins (`ClientMixin`, `DeviceCredentialMixin`,
`TokenMixin`), so Authlib's grants and endpoints read them directly; state.py
keeps them.

Each device authorization that is approved becomes its own `Grant`: a second
pairing (a step-up, say) never touches the first. A grant remembers the
resources (RFC 8707) its device authorization named and the `Login` that
approved it (acr and auth_time, RFC 9470); every access token remembers its
scope and audience, for `DevServer.access_token_info`.

Expiry is measured with the injected `clock` (default `time.monotonic`), so
tests can step time instead of sleeping.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oauth2.rfc8628 import DeviceCredentialMixin

from .settings import CLIENT_CREDENTIALS_GRANT_TYPE, DEVICE_CODE_GRANT_TYPE

Clock = Callable[[], float]


def normalize_user_code(user_code: str) -> str:
    """RFC 8628 §6.1: user codes compare ignoring case and punctuation."""
    return "".join(ch for ch in user_code.upper() if ch.isalnum())


@dataclass(frozen=True)
class User:
    subject: str
    name: str


@dataclass(frozen=True)
class Login:
    """How the user signed in to approve a device authorization (RFC 9470 step-up)."""

    acr: str  # the authentication context class reference achieved
    authenticated_at: float  # the server's clock; what max_age is measured against
    auth_time: int  # the same moment in wall-clock seconds since the epoch (the ID token's auth_time)


@dataclass(frozen=True)
class Client(ClientMixin):
    client_id: str
    auth_methods: frozenset[str]  # token_endpoint_auth_method values it may use
    default_scope: str  # RFC 6749 §3.3: used when a request omits scope
    client_secret: str | None = field(default=None, repr=False)
    #: private_key_jwt: the client's public keys, a JWKS (RFC 7517 §5).
    jwks: dict | None = field(default=None, compare=False, hash=False)
    grant_types: frozenset[str] = frozenset({DEVICE_CODE_GRANT_TYPE, "refresh_token"})
    #: A client that registered itself (RFC 7591): its metadata as registered; None for the built-in ones.
    metadata: dict | None = field(default=None, compare=False, hash=False)

    def confidential(self) -> Client:
        """This client, also allowed the client credentials grant (RFC 6749 §4.4: confidential clients only)."""
        return Client(self.client_id, self.auth_methods, self.default_scope, self.client_secret, self.jwks,
                      self.grant_types | {CLIENT_CREDENTIALS_GRANT_TYPE})

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None  # no authorization endpoint, so no redirects

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_response_type(self, response_type):
        return False

    def get_allowed_scope(self, scope):
        # Unsupported scopes were already refused with invalid_scope by
        # AuthorizationServer.validate_requested_scope.
        return scope or self.default_scope

    def check_client_secret(self, client_secret):
        return self.client_secret is not None and secrets.compare_digest(
            self.client_secret.encode(), client_secret.encode()
        )

    def check_endpoint_auth_method(self, method, endpoint):
        return method in self.auth_methods

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


@dataclass(eq=False)
class DeviceCode(DeviceCredentialMixin):
    """One device authorization (RFC 8628 §3.2), until it is redeemed."""

    client_id: str
    scope: str | None
    device_code: str = field(repr=False)
    user_code: str
    expires_at: float
    interval: float  # grows by 5 s on every slow_down (RFC 8628 §3.5)
    clock: Clock = field(repr=False)
    #: RFC 8707 resources the request named (each one known to the server).
    resources: tuple[str, ...] = ()
    #: RFC 9470 step-up parameters as the client sent them (also when the server
    #: does not honour them).
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None
    # (user, approved), set by the verification page or DevServer.approve/deny
    decision: tuple[User | None, bool] | None = None
    login: Login | None = None  # set with an approving decision
    last_poll: float | None = None

    def get_client_id(self):
        return self.client_id

    def get_scope(self):
        return self.scope

    def get_user_code(self):
        return self.user_code

    def is_expired(self):
        return self.clock() >= self.expires_at


@dataclass(eq=False)
class Grant:
    """What one approval produced: every token issued from it, across refreshes.

    Revocation and refresh-token reuse detection (RFC 9700 §4.14.2) end it as a
    whole. A client credentials token has one of its own, with no user and no login.
    """

    client_id: str
    user: User | None
    scope: str | None
    login: Login | None
    #: What the device authorization named: the resources a refresh may ask for (all
    #: the server knows when empty), and the step-up parameters it sent.
    resources: tuple[str, ...] = ()
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None
    id: int = 0  # numbered by State.new_grant, from 1
    revoked: bool = False
    #: RFC 9449 §5: the DPoP key its refresh tokens are bound to (a public client's, paired with a proof).
    jkt: str | None = None
    #: The one refresh token of this grant that may be presented without question.
    current: RefreshToken | None = field(default=None, repr=False)


@dataclass(eq=False)
class _Token(TokenMixin):
    value: str = field(repr=False)
    grant: Grant
    scope: str | None
    expires_at: float | None  # None: never
    clock: Clock = field(repr=False)

    def check_client(self, client):
        return self.grant.client_id == client.get_client_id()

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        if self.expires_at is None:
            return None
        return max(0, int(self.expires_at - self.clock()))

    def is_expired(self):
        return self.expires_at is not None and self.clock() >= self.expires_at

    def get_user(self):
        return self.grant.user


@dataclass(eq=False)
class AccessToken(_Token):
    #: RFC 8707: the resources it was issued for (its audience); () for none.
    resources: tuple[str, ...] = ()
    issued_at: float = 0.0  # the server's clock
    revoked: bool = False
    #: The refresh token issued in the same response (None when none was).
    issued_with: str | None = field(default=None, repr=False)
    #: RFC 9449 §6: the thumbprint of the DPoP key it is bound to (cnf.jkt); None for a Bearer token.
    jkt: str | None = None

    def is_revoked(self):
        return self.revoked or self.grant.revoked


@dataclass(eq=False)
class RefreshToken(_Token):
    rotated: bool = False  # replaced by a newer refresh token (RFC 6749 §6)
    #: What presenting this token last produced. While that is still the grant's
    #: current token (never presented itself), this one may be presented again.
    successor: RefreshToken | None = field(default=None, repr=False)

    def is_revoked(self):
        return self.grant.revoked


class TokenEvent(NamedTuple):
    at: float  # the server's clock when the request arrived
    grant_type: str
    outcome: str  # "ok", the OAuth error code, or "http_NNN"
    #: The request's `scope` and `resource` parameters (None and () when absent). A
    #: request that a fault answered (faults.py) is recorded without them.
    scope: str | None = None
    resource: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stats:
    """A snapshot for tests; it does not change when the server does."""

    token_requests: dict[str, int]  # by grant_type
    token_log: tuple[TokenEvent, ...]
    device_authorizations: int
    revocations: int  # tokens revoked through /revoke
    reuse_detections: int  # refresh-token families revoked for reuse
    grace_reuses: int = 0  # rotated-away tokens accepted again because their successor was never used
    #: refresh_token requests (whatever their outcome) that carried `scope` (RFC 6749 §6
    #: narrowing) / `resource` (RFC 8707); not counting requests a fault answered.
    narrowed_refreshes: int = 0
    resource_refreshes: int = 0
