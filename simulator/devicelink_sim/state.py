"""In-memory state of the development authorization server.

`State` keeps the records of records.py. Everything here is guarded by
`State.lock`; the app holds it for the whole of each OAuth request, so two
requests never interleave. That is what makes refresh-token reuse detection
deterministic when a client races itself.

Refresh-token rotation (RFC 6749 §6) with reuse detection (RFC 9700 §4.14.2)
and a grace rule: each grant has one current refresh token; presenting it
rotates it. A rotated-away token whose successor is still the current, never
used token is accepted once more (the client may have crashed after the server
rotated and before it saved the successor; Okta's grace period and Auth0's
reuse interval exist for the same reason), and the unused successor is
superseded. Any other rotated-away or superseded token is reuse: a stale copy
exists somewhere, so the whole grant goes. See `present_refresh_token`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from .records import (
    AccessToken,
    Client,
    Clock,
    DeviceCode,
    Grant,
    RefreshToken,
    Stats,
    TokenEvent,
    User,
    normalize_user_code,
)
from .replay import SeenIds

logger = logging.getLogger("devicelink_sim.authserver")


class AlreadyDecided(KeyError):
    """The user already approved or denied this code: the decision is final (a denial ends the
    device's flow with access_denied, RFC 8628 §3.5; it is never turned into an approval)."""


class State:
    def __init__(self, clock: Clock, clients: list[Client], refresh_token_lifetime: float | None,
                 wall: Clock = time.time):
        self.lock = threading.RLock()
        self.clock = clock
        #: Seconds since the epoch: what JWTs are dated and checked by (the fleet's is virtual).
        self.wall = wall
        self.refresh_token_lifetime = refresh_token_lifetime
        self.clients = {c.client_id: c for c in clients}
        self.device_codes: dict[str, DeviceCode] = {}
        self.user_codes: dict[str, DeviceCode] = {}  # by normalize_user_code()
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        #: private_key_jwt (client_auth.py): (client_id, jti) seen, until when; every assertion checked.
        self.assertion_ids = SeenIds()
        self.assertions: list[dict] = []
        #: RFC 7591/7592 (registration.py): registration access token -> client_id; registrations made.
        self.registration_tokens: dict[str, str] = {}
        self.registrations = 0
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

    def undecided(self, user_code: str) -> DeviceCode:
        """``pending``, and not yet approved or denied; :class:`AlreadyDecided` otherwise."""
        credential = self.pending(user_code)
        if credential.decision is not None:
            raise AlreadyDecided(user_code)
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

    def client_grant(self, client_id: str, scope: str | None, resources: tuple[str, ...]) -> Grant:
        """What one client credentials request (RFC 6749 §4.4) produced: the client's own, no user."""
        self._grants += 1
        return Grant(client_id, None, scope, None, resources=resources, id=self._grants)

    def store_tokens(self, grant: Grant, token: dict, refresh_scope: str | None,
                     resources: tuple[str, ...] = (), jkt: str | None = None) -> None:
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
            jkt=jkt,
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

    def revoke_all(self) -> int:
        """Revoke every grant now, as an administrator's "sign out everywhere" would; how many."""
        with self.lock:
            grants = {id(t.grant): t.grant for t in (*self.refresh_tokens.values(), *self.access_tokens.values())}
            for grant in grants.values():
                grant.revoked = True
        return len(grants)

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
