"""In-memory state of the development authorization server.

The records implement Authlib's model mixins, so Authlib's grants and endpoints
read them directly. Everything here is guarded by `State.lock`; authserver.py
holds it for the whole of each OAuth request, so two requests never interleave.
That is what makes refresh-token reuse detection deterministic when a client
races itself.

Refresh-token rotation (RFC 6749 §6) with reuse detection (RFC 9700 §4.14.2)
and a grace rule: each grant has one current refresh token; presenting it
rotates it. A rotated-away token whose successor is still the current, never
used token is accepted once more (the client may have crashed after the server
rotated and before it saved the successor; Okta's grace period and Auth0's
reuse interval exist for the same reason), and the unused successor is
superseded. Any other rotated-away or superseded token is reuse: a stale copy
exists somewhere, so the whole grant goes. See `present_refresh_token`.

Each device authorization that is approved becomes its own `Grant`: a second
pairing (a step-up, say) never touches the first. A grant remembers the
resources (RFC 8707) its device authorization named and the `Login` that
approved it (acr and auth_time, RFC 9470); every access token remembers its
scope and audience, for `DevServer.access_token_info`.

Expiry is measured with the injected `clock` (default `time.monotonic`), so
tests can step time instead of sleeping.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE, DeviceCredentialMixin

Clock = Callable[[], float]

logger = logging.getLogger("devicelink_sim.authserver")


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
    grant_types: frozenset[str] = frozenset({DEVICE_CODE_GRANT_TYPE, "refresh_token"})

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
    whole.
    """

    client_id: str
    user: User
    scope: str | None
    login: Login
    #: What the device authorization named: the resources a refresh may ask for (all
    #: the server knows when empty), and the step-up parameters it sent.
    resources: tuple[str, ...] = ()
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None
    id: int = 0  # numbered by State.new_grant, from 1
    revoked: bool = False
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


class State:
    def __init__(self, clock: Clock, clients: list[Client], refresh_token_lifetime: float | None):
        self.lock = threading.RLock()
        self.clock = clock
        self.refresh_token_lifetime = refresh_token_lifetime
        self.clients = {c.client_id: c for c in clients}
        self.device_codes: dict[str, DeviceCode] = {}
        self.user_codes: dict[str, DeviceCode] = {}  # by normalize_user_code()
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self._token_requests: Counter[str] = Counter()
        self._token_log: list[TokenEvent] = []
        self._device_authorizations = 0
        self._revocations = 0
        self._reuse_detections = 0
        self._grace_reuses = 0
        self._grants = 0

    # -- device codes --

    def add_device_code(self, credential: DeviceCode) -> None:
        self.device_codes[credential.device_code] = credential
        self.user_codes[normalize_user_code(credential.user_code)] = credential
        self._device_authorizations += 1

    def pending(self, user_code: str) -> DeviceCode:
        """The live, unredeemed authorization for a user code; KeyError if none."""
        credential = self.user_codes[normalize_user_code(user_code)]
        if credential.is_expired() or credential.device_code not in self.device_codes:
            raise KeyError(user_code)
        return credential

    def redeem(self, credential: DeviceCode) -> None:
        # A device code gives one set of tokens; later polls get invalid_grant.
        # The user code stays reserved so it is never handed out again.
        del self.device_codes[credential.device_code]

    # -- tokens --

    def new_grant(self, credential: DeviceCode, user: User, scope: str | None) -> Grant:
        """The grant an approved device authorization becomes when it is redeemed."""
        self._grants += 1
        return Grant(
            credential.client_id, user, scope, credential.login,
            resources=credential.resources, acr_values=credential.acr_values,
            max_age=credential.max_age, id=self._grants,
        )

    def store_tokens(self, grant: Grant, token: dict, refresh_scope: str | None,
                     resources: tuple[str, ...] = ()) -> None:
        now = self.clock()
        self.access_tokens[token["access_token"]] = AccessToken(
            value=token["access_token"],
            grant=grant,
            scope=token.get("scope"),
            expires_at=now + token["expires_in"],
            clock=self.clock,
            resources=resources,
            issued_at=now,
            issued_with=token.get("refresh_token"),
        )
        if "refresh_token" in token:
            lifetime = self.refresh_token_lifetime
            grant.current = self.refresh_tokens[token["refresh_token"]] = RefreshToken(
                value=token["refresh_token"],
                grant=grant,
                scope=refresh_scope,
                expires_at=None if lifetime is None else now + lifetime,
                clock=self.clock,
            )

    def present_refresh_token(self, value: str) -> RefreshToken | None:
        """The refresh token a refresh request may use, or None (invalid_grant).

        - unknown, of a revoked grant, or expired: None;
        - the grant's current token: itself;
        - rotated away, and its successor is still the current token (so was never
          used): itself, under the grace rule (a crash between the server's rotation
          and the client's save is not the client's fault), counted in `grace_reuses`
          by `rotated` once the refresh succeeds;
        - any other token (its successor was used, or it was superseded by a grace
          reuse): reuse, RFC 9700 §4.14.2. The whole grant is revoked.
        """
        token = self.refresh_tokens.get(value)
        if token is None or token.grant.revoked:
            return None
        grant = token.grant
        if grant.current not in (token, token.successor):
            self.reuse_detected(grant)
            logger.warning("refresh token reuse by %s: grant revoked", grant.client_id)
            return None
        if token.is_expired():
            return None
        return token

    def refresh_token_standing(self, value: str) -> str:
        """What presenting this refresh token now would meet, for tests and harnesses:
        ``current``, ``grace`` (rotated away, successor never used), ``stale`` (reuse),
        ``revoked`` (its grant is gone) or ``unknown``."""
        with self.lock:
            token = self.refresh_tokens.get(value)
            if token is None:
                return "unknown"
            if token.grant.revoked:
                return "revoked"
            if token is token.grant.current:
                return "current"
            return "grace" if token.successor is token.grant.current else "stale"

    def refresh_token_issued_with(self, access_token: str) -> str | None:
        """The refresh token that came in the same response as this access token."""
        with self.lock:
            token = self.access_tokens.get(access_token)
            return token.issued_with if token else None

    def same_or_later(self, refresh_token: str, than: str) -> bool:
        """Whether ``refresh_token`` is ``than`` or came from it by rotations (following each
        token's latest successor): a client holding it has not gone back past ``than``."""
        with self.lock:
            token = self.refresh_tokens.get(than)
            seen = set()
            while token is not None and id(token) not in seen:
                if token.value == refresh_token:
                    return True
                seen.add(id(token))
                token = token.successor
            return False

    def rotated(self, old: RefreshToken) -> None:
        """`old` was just presented and the new refresh token stored (it is the grant's
        current one now). The successor a grace reuse replaces is superseded: presenting
        it later is reuse."""
        if old.rotated:
            self._grace_reuses += 1
            logger.info("refresh token presented again before its successor was used (grace): rotated again")
        old.rotated = True
        old.successor = old.grant.current

    def revoke(self, token: AccessToken | RefreshToken) -> None:
        # RFC 7009 §2.1: revoking a refresh token SHOULD also invalidate the
        # access tokens of the same grant; revoking an access token MAY leave
        # the refresh token alone, and here it does.
        if isinstance(token, RefreshToken):
            token.grant.revoked = True
        else:
            token.revoked = True
        self._revocations += 1

    def reuse_detected(self, grant: Grant) -> None:
        grant.revoked = True
        self._reuse_detections += 1

    # -- statistics --

    def record_token_request(self, event: TokenEvent) -> None:
        with self.lock:
            self._token_requests[event.grant_type] += 1
            self._token_log.append(event)

    def stats(self) -> Stats:
        with self.lock:
            refreshes = [e for e in self._token_log if e.grant_type == "refresh_token"]
            return Stats(
                token_requests=dict(self._token_requests),
                token_log=tuple(self._token_log),
                device_authorizations=self._device_authorizations,
                revocations=self._revocations,
                reuse_detections=self._reuse_detections,
                grace_reuses=self._grace_reuses,
                narrowed_refreshes=sum(1 for e in refreshes if e.scope is not None),
                resource_refreshes=sum(1 for e in refreshes if e.resource),
            )
