"""One device's grant: pairing, silent refresh, unpairing, and the answers the socket gives.

A :class:`Device` holds everything about one device and nothing is global, so
a simulator can run thousands of them in one event loop. The socket API
(``ipc/api.py``) calls it after the per-app policy has said who is asking.
Rules it keeps:

- One refresh at a time, however many apps ask (RFC 9700 §4.14.2: presenting a
  rotated-away refresh token can revoke the whole grant). Callers share the
  refresh in flight. Narrowed tokens (a subset of the scopes, or one resource)
  are refreshes too: they take the same turn, one upstream request per
  (scope, resource) however many apps ask, and a refresh token rotated by one
  is saved as the grant's before the narrowed token is served.
- A rotated refresh token is written to disk before the new access token is served.
- Only ``invalid_grant`` ends a grant. Network faults, 5xx and other refusals
  keep it: the cached access token is served until it expires (state
  ``offline``) and the refresh is retried with capped, jittered backoff.
- Nothing here reads the wall clock except to write it to the state file.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from devicelink import __version__
from devicelink.config import Config, ProviderConfig, is_loopback
from devicelink.display.base import Display, NullDisplay, Screen
from devicelink.errors import (AuthorizationDenied, DeviceCodeExpired, GrantFailed, ProtocolViolation,
                               StoreError)
from devicelink.events import Hub
from devicelink.ipc.routes import ApiError, TokenQuery
from devicelink.lifecycle import HOLDS_GRANT, Event, PairingCode, State, next_state
from devicelink.oauth import grant
from devicelink.oauth import messages as m
from devicelink.oauth.http import OAuthHttp
from devicelink.budget import RequestBudget
from devicelink.clock import clock_synced as probe_clock_synced
from devicelink.clock import explain_failure
from devicelink.metrics import Metrics
from devicelink.policy import ROOT, App
from devicelink.tokens.model import TokenSet
from devicelink.tokens.store import EncryptedFileStore

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
MIN_REFRESH_SPACING = 1.0  # even a server that issues 0-second tokens is not refreshed in a loop
PAIR_ANSWER_WAIT = 30.0  # how long POST /v1/pair waits for the code it will print
STOP_GRACE = 35.0  # longer than one exchange's deadline (oauth/http.py DEADLINE)
NARROW_RETRY_CAP = 300.0  # seconds: the longest wait after failed narrowed refreshes
MAX_NARROWED = 64  # (scope, resource) keys cached; an app cycling through more only costs refreshes

MAX_STEP_UPS = 8  # step-up sessions at once, all apps together
STEP_UPS_PER_APP = 2
STEP_UP_FORGET = 300.0  # a failed step-up nobody asked about again is forgotten after this
AUTH_TIME_SKEW = 60  # seconds of clock difference allowed when checking max_age (RFC 9470 §4)

NarrowKey = tuple[str, str | None]  # (sorted scopes, resource)
StepUpKey = tuple[str, str | None, int | None]  # (app, acr_values, max_age)


@dataclass
class StepUp:
    """One RFC 9470 step-up: a device authorization of its own, for one app only."""

    app: str
    acr_values: str | None
    max_age: int | None
    code: PairingCode | None = None
    tokens: TokenSet | None = None
    error: ApiError | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # a code is shown, or it ended
    task: asyncio.Task[None] | None = None
    finished: bool = False
    finished_at: float = 0.0
    refresh_token: str | None = field(default=None, repr=False)  # revoked when the session is discarded


class Device:
    def __init__(self, cfg: Config, store: EncryptedFileStore, http: OAuthHttp, *,
                 display: Display | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None,
                 clock_synced: Callable[[], bool | None] | None = None,
                 key_source: str | None = None) -> None:
        self.cfg, self.provider = cfg, cfg.provider
        self.store, self.http = store, http
        self.display = display or NullDisplay()
        self.clock, self.wall_clock, self.sleep = clock, wall_clock, sleep
        self.rng = rng or random.Random()
        self.clock_synced = clock_synced or probe_clock_synced
        self.key_source = key_source
        self.budget = RequestBudget()
        self._pending_revocations: list[tuple[str, str]] = []  # (token, hint): kept encrypted until revoked
        self._revoking: asyncio.Task[None] | None = None
        self._revocation_backoff = grant.Backoff(self.rng, base=5.0)
        self._revocation_delay = 5.0
        self.state = State.UNPAIRED
        self.tokens: TokenSet | None = None
        self._configured = _configured_endpoints(self.provider)
        #: Known once pairing has resolved them (or the config names them all), or from the state file.
        self.endpoints: m.Endpoints | None = (m.Endpoints(**self._configured)
                                              if _complete(self._configured) else None)
        self.pairing: PairingCode | None = None
        self.message: str | None = None
        self.last_error: str | None = None
        self.last_refresh: float | None = None  # wall clock, for status only
        self.reset_in: int | None = None  # factory-reset countdown while the button is held
        self._refresh_backoff = grant.Backoff(self.rng, base=5.0)
        self._retry_at = 0.0  # no refresh attempt before this (monotonic), after a failure
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Future[None] | None = None
        self._pairing_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._pairing_settled = asyncio.Event()
        self._tokens_changed = asyncio.Event()
        self._unsaved = False
        self._saving: asyncio.Future[None] | None = None
        self._screen: Screen | None = None  # waiting to be drawn
        self._drawing: asyncio.Future[None] | None = None
        #: Called with the new state after every move (the events API and tests subscribe).
        self.listeners: list[Callable[[State], None]] = []
        self.events = Hub()
        self.metrics = Metrics()
        self.last_refresh_at: float | None = None  # monotonic, for the metrics' age of the last good refresh
        # Every use of the refresh token takes this turn: the grant's refresh and narrowed ones.
        self._exchange_lock = asyncio.Lock()
        self._narrowed: dict[NarrowKey, TokenSet] = {}
        self._narrowing: dict[NarrowKey, asyncio.Future[TokenSet]] = {}
        self._step_ups: dict[StepUpKey, StepUp] = {}
        self._narrow_failures: dict[NarrowKey, tuple[int, float]] = {}  # failures in a row, no retry before
        self._unpairing = False

    # -- lifecycle --------------------------------------------------------------

    def _move(self, event: Event) -> None:
        old, self.state = self.state, next_state(self.state, event)
        if old is not self.state:
            logger.info("state %s -> %s", old, self.state)
        if self.state is not State.PAIRING:
            self.pairing = None
        if self.state not in HOLDS_GRANT:
            self._narrowed.clear()
            self._narrow_failures.clear()
            self._discard_step_ups()  # stronger tokens of an account no longer the device's
        self._redraw()
        if old is not self.state:
            self.events.publish("state", self.state_event())
        for listener in self.listeners:
            listener(self.state)

    def state_event(self) -> dict[str, Any]:
        """The ``state`` event: what an app needs to know to wait for pairing (never a token)."""
        account = self.tokens.account if self.tokens and self.state in HOLDS_GRANT else None
        return {"state": self.state.value,
                "account": {"sub": account.sub, "name": account.name} if account else None,
                "message": self.message}

    def _redraw(self) -> None:
        """Hand the current screen to the display. Panels that draw slowly (an OLED frame is
        ~100 ms on a 100 kHz I2C bus; a 1080p frame longer on a Zero) draw in a worker thread,
        one frame at a time, newest screen wins, so token requests never wait behind them."""
        if isinstance(self.display, NullDisplay):
            return
        account = self.tokens.account if self.tokens else None
        name = account and (account.name or account.sub)
        shown = next((s for s in self._step_ups.values() if s.code and not s.finished), None) \
            if self.state in HOLDS_GRANT else None
        if shown is not None:  # the standing grant stays in use; the screen asks for the stronger sign-in
            screen = Screen(State.PAIRING, shown.code, name,
                            f"Confirm on your phone: {shown.app} asks for a stronger sign-in.",
                            reset_in=self.reset_in, clock_synced=self.clock_synced())
        else:
            screen = Screen(self.state, self.pairing, name, self.message,
                            reset_in=self.reset_in, clock_synced=self.clock_synced())
        if not getattr(self.display, "draws_slowly", False):
            try:
                self.display.show(screen, self.clock())
            except Exception:  # a broken display must not take the grant down with it
                logger.exception("the display failed to draw")
            return
        self._screen = screen
        if self._drawing is None or self._drawing.done():
            self._drawing = asyncio.ensure_future(self._draw())

    async def _draw(self) -> None:
        while self._screen is not None:
            screen, self._screen = self._screen, None
            try:
                await asyncio.to_thread(self.display.show, screen, self.clock())
            except Exception:  # a broken panel must not take the grant down with it
                logger.exception("the display failed to draw")

    async def start(self) -> None:
        """Restore a stored grant, or show a code (a device that boots unpaired pairs, RFC-CHECKLIST A3)."""
        record = await self._load()
        if record is not None:
            self.tokens = record
            self._move(Event.RESTORED)
            logger.info("restored the grant%s", self._account_suffix())
            self._refresh_task = asyncio.create_task(self._keep_fresh())
        else:
            self._start_pairing()
        if self._pending_revocations:
            logger.info("%d revocation(s) still owed to the server; retrying", len(self._pending_revocations))
            self._start_revoking(first_delay=0.0)

    async def stop(self) -> None:
        await self._settle_refresh()
        owed = len(self._pending_revocations)
        await self._cancel_tasks()  # step-ups' own grants become owed revocations, kept for the next start
        for pending in (self._saving, self._drawing):
            if pending is not None:
                await asyncio.wait([pending])
        if (self._unsaved and self.tokens is not None) or len(self._pending_revocations) != owed:
            await self._save(self.tokens)

    # -- what the socket API (ipc/api.py) calls ---------------------------------

    def token_now(self, query: TokenQuery, app: App = ROOT) -> dict[str, Any] | None:
        """The answer to a token request if it needs no request upstream, else None (call
        :meth:`token`). Raises ApiError when ``app`` may not have what it asks for."""
        key = self._narrow_key(query, app)
        tokens = self.tokens if key is None else self._narrowed.get(key)
        if tokens is None or self.tokens is None:
            return None
        now = self.clock()
        if tokens.valid_for(self._wanted_ttl(query, tokens), now) or (key is None and now < self._retry_at
                                                                     and tokens.valid_for(0, now)):
            return self._answer(tokens, now)
        return None

    async def token(self, query: TokenQuery, app: App = ROOT) -> dict[str, Any]:
        """A token for ``app``: the grant's own access token, or a narrowed one."""
        answer = self.token_now(query, app)
        if answer is not None:
            return answer
        key = self._narrow_key(query, app)
        if key is not None:
            return self._answer(await self._narrowed_token(key, query), self.clock())
        tokens = self.tokens
        assert tokens is not None
        if self.clock() >= self._retry_at:
            await self.refresh()
            self._require_grant()
            tokens = self.tokens
            assert tokens is not None
        now = self.clock()
        if not tokens.valid_for(0, now):
            raise ApiError("upstream_unavailable", "the access token expired and the authorization server "
                           f"cannot be reached to refresh it ({self.last_error or 'no answer'})")
        return self._answer(tokens, now)

    def _answer(self, tokens: TokenSet, now: float) -> dict[str, Any]:
        return {"access_token": tokens.access_token, "token_type": "Bearer",
                "expires_in": int(tokens.expires_in(now)), "scope": tokens.scope or self.provider.scope or ""}

    @staticmethod
    def _wanted_ttl(query: TokenQuery, tokens: TokenSet) -> float:
        # A token fresher than half its lifetime always satisfies min_ttl: otherwise a
        # server issuing short tokens and an app asking a long min_ttl would refresh on every call.
        return min(query.min_ttl, tokens.lifetime / 2)

    def _granted_scopes(self) -> frozenset[str]:
        assert self.tokens is not None
        return frozenset((self.tokens.scope or self.provider.scope or "").split())

    def _narrow_key(self, query: TokenQuery, app: App) -> NarrowKey | None:
        """None for the grant's own token; else which narrowed token ``app`` gets.
        Raises ApiError: never more than the app's policy allows, nor more than the grant holds."""
        self._require_grant()
        resource = query.resource
        if resource is None and app.resources is not None:
            # An app held to some resources never gets the grant's token (its audience is wider).
            mine = [r for r in self.provider.resource if r in app.resources]
            if len(mine) != 1:
                raise ApiError("forbidden", f"{app.name!r} may have tokens only for "
                               f"{' or '.join(sorted(app.resources))}: say which with resource=")
            resource = mine[0]
        if resource is not None:
            # Only resources the device authorization named (RFC 8707 §2.2): a server may spend the
            # refresh token on an invalid_target answer (oidc-provider does), and under rotation
            # that would cost the grant.
            if resource not in self.provider.resource:
                raise ApiError("forbidden", f"resource {resource!r} is not part of the grant; "
                               "list it in [provider] resource and pair again")
            if app.resources is not None and resource not in app.resources:
                raise ApiError("forbidden", f"resource {resource!r} is not allowed for {app.name!r} "
                               "by the [[client]] policy")
        granted = self._granted_scopes()
        # A resource's scopes may be in the grant without being in the default access token
        # (oidc-provider issues api:* only in tokens for that API): what was asked at pairing counts.
        grantable = granted | frozenset((self.provider.scope or "").split()) if resource else granted
        if query.scope is not None:
            wanted = frozenset(query.scope.split())
            refused = app.allows_scope(wanted)
            if refused:
                raise ApiError("forbidden", f"scope {' '.join(sorted(refused))!r} is not allowed "
                               f"for {app.name!r} by the [[client]] policy")
        elif app.scope is None:
            wanted = grantable
        else:
            wanted = app.scope & grantable
            if not wanted:
                raise ApiError("forbidden", f"the [[client]] policy gives {app.name!r} no scope of this grant")
        missing = wanted - grantable
        if missing:
            raise ApiError("forbidden", f"scope {' '.join(sorted(missing))!r} is not part of the grant")
        if wanted == granted and resource is None:
            return None
        return " ".join(sorted(wanted)), resource

    async def _narrowed_token(self, key: NarrowKey, query: TokenQuery) -> TokenSet:
        """One upstream request per key, however many apps ask at once; after a failure,
        none before its backoff is over (the cached token is served while it lasts)."""
        failed = self._narrow_failures.get(key)
        if failed is not None and self.clock() < failed[1]:
            cached = self._narrowed.get(key)
            if cached is not None and cached.valid_for(0, self.clock()):
                return cached
            raise ApiError("upstream_unavailable", f"cannot get a narrowed token ({self.last_error or 'no answer'}); "
                           f"next try in {failed[1] - self.clock():.0f} s")
        pending = self._narrowing.get(key)
        if pending is None or pending.done():
            pending = self._narrowing[key] = asyncio.ensure_future(self._fetch_narrowed(key))
            pending.add_done_callback(lambda f, key=key: self._narrowing.pop(key, None)
                                      if self._narrowing.get(key) is f else None)
        tokens = await asyncio.shield(pending)
        if not tokens.valid_for(0, self.clock()):
            raise ApiError("upstream_unavailable", "the narrowed access token the server issued has already expired")
        return tokens

    async def _fetch_narrowed(self, key: NarrowKey) -> TokenSet:
        scope, resource = key
        async with self._exchange_lock:
            self._require_grant()
            tokens, endpoints = self.tokens, self.endpoints
            assert tokens is not None
            if not tokens.refresh_token or endpoints is None:
                raise ApiError("upstream_unavailable", "this grant has no refresh token, so no narrower "
                               "token can be had; ask without scope and resource")
            now = self.clock()
            # Without the lifetime's allowance: that headroom is for the grant's own refresh,
            # so apps cycling through many (scope, resource) keys cannot starve it.
            if not self.budget.allows(now):
                raise ApiError("upstream_unavailable", "hourly request budget spent; try again later")
            self.budget.spend(now)
            reply = await self.http.send(m.refresh_request(endpoints, tokens.refresh_token, scope or None, resource))
            error = m.oauth_error(reply) if isinstance(reply, m.Response) else None
            if error == "invalid_grant":
                self.metrics.inc("devicelink_refreshes_total", kind="narrowed", outcome="rejected")
                if self.state is not State.REFRESHING:
                    self._move(Event.REFRESH_STARTED)
                await self._reject("the authorization server rejected the refresh token (invalid_grant); pair again")
                raise ApiError("reauth_required", "the grant has ended; the device must be paired again")
            if error in ("invalid_scope", "invalid_target"):
                self.metrics.inc("devicelink_refreshes_total", kind="narrowed", outcome="refused")
                what = f"scope {scope!r}" if error == "invalid_scope" else f"resource {resource!r}"
                raise ApiError("forbidden", f"the authorization server refused {what} ({error})")
            try:
                if m.is_transient(reply) or error is not None:
                    raise GrantFailed(m.describe(reply) if isinstance(reply, m.Response)
                                      else explain_failure(reply.reason, self.clock_synced()), error)
                assert isinstance(reply, m.Response)
                parsed = m.parse_tokens(reply, self.provider.issuer, self.provider.client_id, refreshable=True)
            except (GrantFailed, ProtocolViolation) as exc:
                self.metrics.inc("devicelink_refreshes_total", kind="narrowed", outcome="failed")
                count = self._narrow_failures.get(key, (0, 0.0))[0] + 1
                asked = min(m.retry_after(reply) or 0.0, 3600.0) if isinstance(reply, m.Response) else 0.0
                delay = max(min(NARROW_RETRY_CAP, 5.0 * 2 ** (count - 1)), asked)
                self._narrow_failures[key] = (count, self.clock() + delay)
                raise ApiError("upstream_unavailable", f"cannot get a narrowed token: {exc}") from None
            self._narrow_failures.pop(key, None)
            # RFC 6749 §5.1: no scope in the answer means the one asked for. A broader one is never served.
            got = frozenset((parsed.scope or scope).split())
            if not got <= frozenset(scope.split()) and scope:
                self.metrics.inc("devicelink_refreshes_total", kind="narrowed", outcome="refused")
                raise ApiError("upstream_unavailable", "the authorization server ignored the narrower scope "
                               f"(asked {scope!r}, got {parsed.scope!r}); not served")
            if parsed.refresh_token and parsed.refresh_token != tokens.refresh_token:
                # Rotation (RFC 9700 §4.14.2): the old refresh token is spent. Save the new one
                # as the grant's (its scope is the grant's, RFC 6749 §6) before serving anything.
                fresh = replace(tokens, refresh_token=parsed.refresh_token)
                await self._save(fresh)
                self.tokens = fresh
            self.metrics.inc("devicelink_refreshes_total", kind="narrowed", outcome="ok")
            narrowed = replace(parsed, refresh_token=None, account=None, scope=" ".join(sorted(got)) or None)
            if len(self._narrowed) >= MAX_NARROWED:
                del self._narrowed[next(iter(self._narrowed))]
            if self.state in HOLDS_GRANT:
                self._narrowed[key] = narrowed
            return narrowed

    def status(self) -> dict[str, Any]:
        now = self.clock()
        code = self.pairing
        account = self.tokens.account if self.tokens else None
        return {
            "state": self.state.value,
            "pairing": {"user_code": code.user_code, "verification_uri": code.verification_uri,
                        "verification_uri_complete": code.verification_uri_complete,
                        "expires_in": code.expires_in(now)} if code else None,
            "account": {"sub": account.sub, "name": account.name} if account else None,
            "access_token_expires_in": max(0, int(self.tokens.expires_in(now)))
            if self.tokens and self.state in HOLDS_GRANT else None,
            "last_refresh": _iso(self.last_refresh),
            "last_error": self.last_error,
            "message": self.message,
            "clock_synced": self.clock_synced(),
            "key_source": self.key_source,
            "pending_revocations": self.pending_revocations,
            "version": __version__,
        }

    @property
    def pending_revocations(self) -> int:
        """Revocations owed to the server (RFC 7009), retried until it answers 200."""
        return len(self._pending_revocations)

    def healthy(self) -> bool:
        if self.state is State.PAIRING:
            return True
        return bool(self.state in HOLDS_GRANT and self.tokens and self.tokens.valid_for(0, self.clock()))

    async def pair(self) -> dict[str, Any]:
        if self.state in HOLDS_GRANT:
            raise ApiError("invalid_request", f"already paired{self._account_suffix()}; unpair first")
        self._start_pairing()
        try:  # until a code is shown or pairing has ended
            await asyncio.wait_for(self._pairing_settled.wait(), PAIR_ANSWER_WAIT)
        except TimeoutError:
            pass  # still connecting: the status says so
        return self.status()

    async def unpair(self) -> dict[str, Any]:
        # From this instant no refresh or narrowed refresh starts (_require_grant refuses).
        # One in flight may already have rotated the refresh token at the server: wait for it
        # (it holds the exchange lock and saves first), so the token revoked is the live one
        # and no late save brings the grant back.
        self._unpairing = True
        try:
            await self._settle_refresh()
            await self._cancel_tasks()
            async with self._exchange_lock:
                tokens = self.tokens
                self.tokens = None  # served no more
                self.message = "Unpaired. Press the button or run `devicelink pair` to pair again."
                if tokens is not None and self._can_revoke():
                    # RFC 7009 §2.2.1: until the server answers 200 the token may still be valid, so it
                    # is owed a revocation, kept encrypted on disk and retried until it goes through.
                    self._pending_revocations.append(
                        (tokens.refresh_token, "refresh_token") if tokens.refresh_token
                        else (tokens.access_token, "access_token"))
                elif tokens is not None:
                    logger.warning("the server has no revocation endpoint; the grant was only forgotten locally")
                await self._save(None)  # the grant is gone from disk; owed revocations stay
                self._move(Event.UNPAIRED)
        finally:
            self._unpairing = False
        error = await self._revoke_pending()
        if self._pending_revocations:
            self._start_revoking(first_delay=self._revocation_delay)
        return {"state": self.state.value, "revoked": error is None and bool(tokens and self._can_revoke()),
                "revocation_error": error}

    # -- step-up (RFC 9470) ------------------------------------------------------

    async def step_up(self, app: App, acr_values: str | None, max_age: int | None,
                      min_ttl: int = 60) -> tuple[int, dict[str, Any]]:
        """``(202, the code to confirm)`` while the user has yet to confirm, ``(200, token)`` once
        they have. The stronger token is this app's alone; the standing grant is untouched.
        Raises ApiError when it failed (the next call starts afresh)."""
        self._require_grant()
        scope, resources = self._step_up_request(app)
        key = (app.name, acr_values, max_age)
        self._prune_step_ups()
        session = self._step_ups.get(key)
        if session is not None and session.finished:
            tokens = session.tokens
            if session.error is not None or tokens is None or not tokens.valid_for(
                    min(min_ttl, tokens.lifetime / 2), self.clock()):
                self._discard_step_up(key)
                if session.error is not None:
                    raise session.error
                session = None
        if session is None:
            if sum(1 for other in self._step_ups.values() if other.app == app.name) >= STEP_UPS_PER_APP \
                    or len(self._step_ups) >= MAX_STEP_UPS:
                raise ApiError("invalid_request", "too many step-ups under way; finish one first")
            session = self._step_ups[key] = StepUp(app.name, acr_values, max_age)
            session.task = asyncio.create_task(self._run_step_up(session, scope, resources, app))
            try:  # until a code is shown or it has ended
                await asyncio.wait_for(session.settled.wait(), PAIR_ANSWER_WAIT)
            except TimeoutError:
                pass
            if session.finished:
                if session.error is not None:
                    self._discard_step_up(key)
                    raise session.error
        if session.tokens is not None:
            answer = self._answer(session.tokens, self.clock())
            account = session.tokens.account
            return 200, {**answer, "acr": account and account.acr, "auth_time": account and account.auth_time}
        code = session.code
        return 202, {"status": "pending", "user_code": code and code.user_code,
                     "verification_uri": code and code.verification_uri,
                     "verification_uri_complete": code and code.verification_uri_complete,
                     "expires_in": code and code.expires_in(self.clock())}

    def _step_up_request(self, app: App) -> tuple[str, tuple[str, ...]]:
        """The scope (the app's, plus ``openid`` for the ID token that shows the acr) and the
        resources (the app's, of those the grant named) a step-up for ``app`` asks for."""
        granted = self._granted_scopes() | frozenset((self.provider.scope or "").split())
        scopes = granted if app.scope is None else app.scope & granted
        if not scopes:
            raise ApiError("forbidden", f"the [[client]] policy gives {app.name!r} no scope of this grant")
        resources = tuple(r for r in self.provider.resource if app.resources is None or r in app.resources)
        return " ".join(sorted(scopes | {"openid"})), resources

    async def _run_step_up(self, session: StepUp, scope: str, resources: tuple[str, ...], app: App) -> None:
        extra = tuple((k, str(v)) for k, v in (("acr_values", session.acr_values), ("max_age", session.max_age))
                      if v is not None)

        def show(step: grant.Show) -> None:
            session.code = step.code
            session.settled.set()
            logger.info("step-up for %s: confirm code %s at %s", session.app, step.code.user_code,
                        step.code.verification_uri)
            self.events.publish("step_up", {"app": session.app, "status": "pending"})
            self._redraw()

        ticker = asyncio.create_task(self._tick())
        try:
            endpoints = self.endpoints or await self._resolve_endpoints()
            flow = grant.device_flow(endpoints, scope, resources, self.provider.issuer,
                                     self.provider.client_id, self.rng, extra)
            tokens = await self.http.run(flow, show=show, sleep=self.sleep, observe=self._observe)
            # A grant of its own: its refresh token is revoked when the session is discarded
            # (not now: RFC 7009 §2.1 lets the server revoke the access token along with it).
            session.refresh_token = tokens.refresh_token
            session.error = self._step_up_shortfall(session, tokens)
            if session.error is None and app.scope is not None and "openid" not in app.scope:
                tokens = await self._narrow_step_up(session, tokens, endpoints, " ".join(sorted(
                    set(scope.split()) - {"openid"})))
            if session.error is None:
                session.tokens = replace(tokens, refresh_token=None)
        except asyncio.CancelledError:
            raise
        except DeviceCodeExpired:
            session.error = ApiError("forbidden", "nobody confirmed the stronger sign-in before the code expired; "
                                     "ask again for a new code")
        except AuthorizationDenied:
            session.error = ApiError("forbidden", "the user declined the stronger sign-in")
        except (GrantFailed, ProtocolViolation) as exc:
            session.error = ApiError("upstream_unavailable", f"step-up failed: {exc}")
        except ApiError as exc:
            session.error = exc
        except Exception as exc:
            logger.exception("step-up failed unexpectedly")
            session.error = ApiError("upstream_unavailable", f"step-up failed: unexpected {type(exc).__name__}")
        finally:
            ticker.cancel()
            session.finished = True
            session.finished_at = self.clock()
            session.settled.set()
            outcome = (f"failed: {session.error.description}" if session.error
                       else "done" if session.tokens else "cancelled")
            logger.info("step-up for %s: %s", session.app, outcome)
            self.events.publish("step_up", {"app": session.app,
                                            "status": "done" if session.tokens else "failed"})
            self._redraw()

    async def _narrow_step_up(self, session: StepUp, tokens: TokenSet, endpoints: m.Endpoints,
                              scope: str) -> TokenSet:
        """``openid`` was added only to learn the acr: the app gets its own scopes (RFC 6749 §6)."""
        if not tokens.refresh_token:
            raise ApiError("forbidden", "the step-up's token carries openid, which this app may not have, "
                           "and the server issued no refresh token to narrow it with")
        reply = await self.http.send(m.refresh_request(endpoints, tokens.refresh_token, scope))
        if not isinstance(reply, m.Response) or m.oauth_error(reply) is not None or reply.status != 200:
            reason = m.describe(reply) if isinstance(reply, m.Response) else reply.reason
            raise ApiError("upstream_unavailable", f"could not narrow the step-up token to {scope!r}: {reason}")
        narrowed = m.parse_tokens(reply, self.provider.issuer, self.provider.client_id, refreshable=True)
        if narrowed.scope and not set(narrowed.scope.split()) <= set(scope.split()):
            raise ApiError("upstream_unavailable", "the authorization server ignored the narrower scope "
                           "of the step-up token; not served")
        session.refresh_token = narrowed.refresh_token or tokens.refresh_token
        return replace(narrowed, account=tokens.account)

    def _step_up_shortfall(self, session: StepUp, tokens: TokenSet) -> ApiError | None:
        """RFC 9470 §4: a server that ignores acr_values or max_age says so only through the
        ID token's ``acr`` and ``auth_time``. Tell the app plainly instead of handing it a
        token its API will refuse again. And it must be the device's own account."""
        account = tokens.account
        owner = self.tokens.account if self.tokens else None
        if account and owner and account.sub != owner.sub:
            return ApiError("forbidden", f"the stronger sign-in was by another account ({account.name or account.sub}) "
                            f"than the device's ({owner.name or owner.sub})")
        if session.acr_values is not None:
            acr = account.acr if account else None
            if acr not in session.acr_values.split():
                return ApiError("step_up_unsupported", "the authorization server ignored acr_values "
                                f"{session.acr_values!r}: the sign-in it reports is "
                                f"{'acr ' + repr(acr) if acr else 'without an acr claim'}")
        if session.max_age is not None:
            auth_time = account.auth_time if account else None
            if auth_time is None:
                return ApiError("step_up_unsupported", "the authorization server ignored max_age: "
                                "its ID token has no auth_time")
            if self.clock_synced() is not False and self.wall_clock() - auth_time > session.max_age + AUTH_TIME_SKEW:
                return ApiError("step_up_unsupported", "the authorization server ignored max_age: the sign-in "
                                f"it reports is {self.wall_clock() - auth_time:.0f} s old")
        return None

    def _prune_step_ups(self) -> None:
        """Drop finished step-ups nobody will use: tokens expired, or a failure not asked about for a while."""
        now = self.clock()
        for key, session in list(self._step_ups.items()):
            if session.finished and ((session.tokens is not None and not session.tokens.valid_for(0, now))
                                     or (session.tokens is None and now - session.finished_at > STEP_UP_FORGET)):
                self._discard_step_up(key)

    def _discard_step_up(self, key: StepUpKey) -> None:
        session = self._step_ups.pop(key)
        if session.task is not None and not session.task.done():
            session.task.cancel()
        if session.refresh_token and self._can_revoke():  # give the extra grant back (RFC 7009)
            self._pending_revocations.append((session.refresh_token, "refresh_token"))
            session.refresh_token = None
            self._start_revoking(first_delay=0.0)

    def _discard_step_ups(self) -> None:
        for key in list(self._step_ups):
            self._discard_step_up(key)

    # -- the button (gpio/button.py) ----------------------------------------------

    def button_pressed(self) -> None:
        """A short press: a new code when the device is waiting for one (or showing one);
        otherwise the screen is drawn again, which is how the owner sees the status."""
        if self.state in (State.UNPAIRED, State.REAUTH_REQUIRED, State.PAIRING):
            logger.info("button: new code")
            self._start_pairing()
        else:
            self._redraw()

    def show_reset_countdown(self, seconds: int | None) -> None:
        """While the button is held: the seconds left before a factory reset (None: cancelled)."""
        if seconds != self.reset_in:
            self.reset_in = seconds
            self._redraw()

    async def factory_reset(self) -> None:
        """The button was held to the end: revoke, wipe, and show a code for the next owner."""
        logger.info("button: factory reset")
        self.reset_in = None
        await self.unpair()
        self._start_pairing()

    # -- pairing ----------------------------------------------------------------

    def _start_pairing(self) -> None:
        if self._pairing_task is not None:
            self._pairing_task.cancel()
        self._pairing_settled.clear()
        self.message = None
        self._move(Event.PAIR_REQUESTED)
        self._pairing_task = asyncio.create_task(self._pair())

    async def _pair(self) -> None:
        ticker = asyncio.create_task(self._tick())
        try:
            await self._pair_until_done()
        finally:
            ticker.cancel()

    async def _pair_until_done(self) -> None:
        expired_in_a_row = 0
        while True:
            try:
                endpoints = await self._resolve_endpoints()
                flow = grant.device_flow(endpoints, self.provider.scope, self.provider.resource,
                                         self.provider.issuer, self.provider.client_id, self.rng)
                tokens = await self.http.run(flow, show=self._show_code, sleep=self.sleep, observe=self._observe)
            except asyncio.CancelledError:
                raise
            except DeviceCodeExpired:
                expired_in_a_row += 1
                if expired_in_a_row <= self.cfg.pairing.restart_on_expiry:
                    self.metrics.inc("devicelink_codes_expired_total")
                    logger.info("the code expired; showing a new one (%d of %d)",
                                expired_in_a_row, self.cfg.pairing.restart_on_expiry)
                    self.message = "The last code expired. Here is a new one."
                    self._move(Event.CODE_REPLACED)
                    continue
                # RFC 8628 §3.5: after expired_token, wait for the user before starting again.
                self.metrics.inc("devicelink_codes_expired_total")
                self.message = "The code expired. Press the button or run `devicelink pair` for a new one."
                logger.info("the code expired; waiting for the user to ask for a new one")
                self._pairing_settled.set()
                self._move(Event.CODE_EXPIRED)
                return
            except AuthorizationDenied as exc:
                self._fail_pairing(Event.DENIED, str(exc))
                return
            except (GrantFailed, ProtocolViolation) as exc:
                self._fail_pairing(Event.PAIRING_FAILED, str(exc))
                return
            except Exception as exc:  # never leave a dead task behind a code on screen
                logger.exception("pairing failed unexpectedly")
                self._fail_pairing(Event.PAIRING_FAILED, f"unexpected {type(exc).__name__}")
                return
            self.last_error = None
            self.message = None
            self.tokens = tokens
            await self._save(tokens)
            self.metrics.inc("devicelink_pairings_total")
            self._move(Event.PAIRED)
            logger.info("paired%s", self._account_suffix())
            self._refresh_task = asyncio.create_task(self._keep_fresh())
            return

    def _fail_pairing(self, event: Event, reason: str) -> None:
        logger.error("pairing failed: %s", reason)
        self._pairing_settled.set()
        self.last_error = reason
        self.message = "Pairing failed. Press the button or run `devicelink pair` to try again."
        self._move(event)

    async def _resolve_endpoints(self) -> m.Endpoints:
        if _complete(self._configured):  # no discovery needed (GitHub has none)
            return m.Endpoints(**self._configured)
        backoff = grant.Backoff(self.rng)
        metadata = await self.http.run(grant.discover(self.provider.issuer, backoff), sleep=self.sleep,
                                       observe=self._observe)
        endpoints = grant.resolve_endpoints(metadata, self._configured)
        for name in ("device_authorization_endpoint", "token_endpoint", "revocation_endpoint"):
            url = getattr(endpoints, name)
            if url and not _transport_allowed(url, self.provider):
                raise ProtocolViolation(f"the discovery document's {name} {url!r} is not https")
        self.endpoints = endpoints
        return endpoints

    def _show_code(self, step: grant.Show) -> None:
        self.pairing = step.code
        self.last_error = None
        logger.info("pairing: enter code %s at %s", step.code.user_code, step.code.verification_uri)
        self._pairing_settled.set()
        self._redraw()
        self.metrics.inc("devicelink_codes_issued_total")
        code = step.code
        self.events.publish("pairing", {"user_code": code.user_code, "verification_uri": code.verification_uri,
                                        "verification_uri_complete": code.verification_uri_complete,
                                        "expires_in": code.expires_in(self.clock())})

    async def _tick(self) -> None:
        """Keep the countdown on screen moving while a code is shown."""
        while True:
            await self.sleep(1.0)
            if self.pairing is not None or any(s.code and not s.finished for s in self._step_ups.values()):
                self._redraw()

    def _observe(self, request: m.Request, reply: m.Reply) -> None:
        if request.kind == "device_token":
            self.metrics.inc("devicelink_polls_total")
            if isinstance(reply, m.Response) and (m.oauth_error(reply) == "slow_down" or reply.status == 429):
                self.metrics.inc("devicelink_slow_downs_total")
        if isinstance(reply, m.Failure):
            self.last_error = ("cannot reach the authorization server: "
                               f"{explain_failure(reply.reason, self.clock_synced())}")
        elif m.is_transient(reply):
            self.last_error = f"the authorization server answered {m.describe(reply)}"

    # -- refreshing -------------------------------------------------------------

    async def refresh(self) -> None:
        """Refresh now, or join the refresh already in flight."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._inflight)

    async def _refresh(self) -> None:
        tokens, endpoints = self.tokens, self.endpoints
        if tokens is None or self.state not in (State.PAIRED, State.OFFLINE) or self._unpairing:
            return
        if not tokens.refresh_token or endpoints is None:
            # Nothing to refresh with: serve the token until it expires, then ask for a pairing.
            if not tokens.valid_for(0, self.clock()):
                self._move(Event.REFRESH_STARTED)
                await self._reject("the access token expired and the server issued no refresh token; pair again")
            return
        now = self.clock()
        allowance = RequestBudget.allowance(tokens.lifetime)
        if not self.budget.allows(now, allowance):
            self._retry_at = max(self.budget.next_free(now, allowance), now + MIN_REFRESH_SPACING)
            self.last_error = (f"hourly request budget spent ({self.budget.limit} requests beyond what the "
                               f"token lifetime needs); next refresh in {self._retry_at - now:.0f} s")
            logger.warning("%s", self.last_error)
            self._tokens_changed.set()
            self.metrics.inc("devicelink_refreshes_total", kind="grant", outcome="budget")
            return
        self.budget.spend(now)
        self._move(Event.REFRESH_STARTED)
        self._last_attempt = now
        try:
            async with self._exchange_lock:  # a narrowed refresh may be using the refresh token
                if self.tokens is None or self.state is not State.REFRESHING:
                    return  # that narrowed refresh found the grant ended
                await self._exchange_refresh(self.tokens, endpoints)  # its refresh token may have rotated
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an answer nobody foresaw: never wedge in "refreshing"
            logger.exception("refresh failed unexpectedly")
            self._refresh_failed(m.Failure(type(exc).__name__, self.clock()),
                                 f"refresh failed: unexpected {type(exc).__name__}")

    async def _exchange_refresh(self, tokens: TokenSet, endpoints: m.Endpoints) -> None:
        assert tokens.refresh_token
        reply = await self.http.send(m.refresh_request(endpoints, tokens.refresh_token))
        error = m.oauth_error(reply) if isinstance(reply, m.Response) else None
        if error == "invalid_grant":
            # RFC 6749 §5.2: revoked, expired, or (under rotation) replayed. The grant is gone.
            self.metrics.inc("devicelink_refreshes_total", kind="grant", outcome="rejected")
            await self._reject("the authorization server rejected the refresh token (invalid_grant); pair again")
            return
        try:
            if m.is_transient(reply) or error is not None:
                reason = (m.describe(reply) if isinstance(reply, m.Response)
                          else explain_failure(reply.reason, self.clock_synced()))
                raise GrantFailed(f"refresh failed: {reason}", error)
            assert isinstance(reply, m.Response)
            parsed = m.parse_tokens(reply, self.provider.issuer, self.provider.client_id, refreshable=True)
        except (GrantFailed, ProtocolViolation) as exc:
            self._refresh_failed(reply, str(exc))
            return
        fresh = tokens.rotated(parsed)
        if fresh.scope and tokens.scope and not set(tokens.scope.split()) <= set(fresh.scope.split()):
            # Some servers give a refresh token the scope of the last (narrowed) refresh
            # (thephpleague/oauth2-server#1117): apps may now be refused what they had.
            logger.warning("the grant's scope shrank at this refresh: %r -> %r", tokens.scope, fresh.scope)
        # Rotation (RFC 6749 §6): the new refresh token must be on disk before the new access
        # token is served, or a crash now would leave only a dead refresh token behind.
        self.last_error = None  # _save sets it again if the disk fails
        await self._save(fresh)
        self.tokens = fresh
        self.last_refresh = self.wall_clock()
        self.last_refresh_at = self.clock()
        self._refresh_backoff.reset()
        self._retry_at = 0.0
        self.metrics.inc("devicelink_refreshes_total", kind="grant", outcome="ok")
        self._move(Event.REFRESH_SUCCEEDED)
        self._tokens_changed.set()
        self.events.publish("token_rotated", {"expires_in": int(fresh.expires_in(self.clock())),
                                              "scope": fresh.scope or self.provider.scope or ""})

    def _refresh_failed(self, reply: m.Reply, reason: str) -> None:
        delay = grant.transient_delay(reply, self._refresh_backoff)
        self.metrics.inc("devicelink_refreshes_total", kind="grant", outcome="failed")
        self._retry_at = self.clock() + delay
        self.last_error = reason
        logger.warning("%s; keeping the grant, next try in %.0f s", reason, delay)
        self._move(Event.REFRESH_FAILED)
        self._tokens_changed.set()

    async def _reject(self, reason: str) -> None:
        logger.error("%s", reason)
        self.last_error = reason
        self.tokens = None
        self.message = "Pairing needed again. Press the button or run `devicelink pair`."
        try:
            await asyncio.to_thread(self.store.clear)
        except StoreError as exc:
            logger.error("%s", exc)
        self._move(Event.REFRESH_REJECTED)

    async def _keep_fresh(self) -> None:
        """Refresh before expiry, with jitter; after a failure, at the backoff's time."""
        while self.tokens is not None and self.state in HOLDS_GRANT:
            if not self.tokens.refresh_token:
                due = self.tokens.expires_at  # nothing to refresh with: wake at expiry
            elif self.state is State.OFFLINE:
                due = self._retry_at
            else:  # the schedule, but never before a backoff or the budget allows
                due = max(self.tokens.refresh_due(self.rng), self._retry_at)
            due = max(due, self._last_attempt + MIN_REFRESH_SPACING)
            self._tokens_changed.clear()
            delay = due - self.clock()
            if delay > 0 and await self._changed_within(delay):
                continue  # an on-demand refresh moved the schedule
            await self.refresh()

    async def _changed_within(self, delay: float) -> bool:
        """Wait ``delay`` seconds on the injected clock, or until the tokens change."""
        changed = asyncio.ensure_future(self._tokens_changed.wait())
        timer = asyncio.ensure_future(self.sleep(delay))
        try:
            await asyncio.wait((changed, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            timer.cancel()
        return self._tokens_changed.is_set()

    # -- storage ----------------------------------------------------------------

    async def _load(self) -> TokenSet | None:
        from devicelink.errors import StoreUnreadable

        try:
            record = await asyncio.to_thread(self.store.load)
        except StoreUnreadable as exc:
            logger.error("%s; starting unpaired", exc)
            self.last_error = str(exc)
            return None
        if record is None:
            return None
        if record.get("issuer") != self.provider.issuer or record.get("client_id") != self.provider.client_id:
            logger.warning("the stored grant belongs to another issuer or client_id; starting unpaired")
            return None
        try:
            self._pending_revocations = [(str(t), str(h)) for t, h in record.get("pending_revocations", [])]
            stored = record.get("endpoints")
            if stored:  # discovered at pairing; explicit endpoints in the config still win
                self.endpoints = m.Endpoints(**{**stored, **self._configured})
            if record.get("tokens") is None:
                return None  # only revocations left to retry
            trusted = self.clock_synced() is True and record.get("wall_clock_synced") is True
            tokens = TokenSet.from_record(record["tokens"], self.clock(), self.wall_clock(), trusted)
            if not trusted:
                logger.info("the wall clock is not known to be synchronised: the stored access token "
                            "counts as expired and is refreshed before it is served")
        except (KeyError, TypeError, ValueError):
            logger.error("%s: the state record is incomplete; starting unpaired", self.store.path)
            return None
        return tokens

    async def _save_current(self) -> None:
        """Write the grant as it is now, from outside the refresh path: under the exchange
        lock, so it cannot land after (and undo) the save of a refresh token just rotated."""
        async with self._exchange_lock:
            await self._save(self.tokens)

    async def _save(self, tokens: TokenSet | None) -> None:
        """Write the grant (or, with ``tokens`` None, only the revocations still owed)."""
        if tokens is None and not self._pending_revocations:
            self._saving = asyncio.ensure_future(asyncio.to_thread(self.store.clear))
            await asyncio.shield(self._saving)
            return
        record = {
            "version": RECORD_VERSION,
            "issuer": self.provider.issuer,
            "client_id": self.provider.client_id,
            "endpoints": vars(self.endpoints) if self.endpoints else None,
            "tokens": tokens.to_record(self.clock(), self.wall_clock()) if tokens else None,
            "pending_revocations": self._pending_revocations,
            # An expiry written by an unsynchronised clock is not trusted at the next start either.
            "wall_clock_synced": self.clock_synced() is True,
        }
        # Shielded: a cancelled caller must not leave a write running that nobody waits for
        # (unpair's clear would race it and the grant could come back).
        self._saving = asyncio.ensure_future(asyncio.to_thread(self.store.save, record))
        try:
            await asyncio.shield(self._saving)
            self._unsaved = False
        except StoreError as exc:
            # Keep serving from memory (the old refresh token may already be dead at the
            # server); the next refresh tries to save again.
            self._unsaved = True
            self.last_error = str(exc)
            logger.error("%s; the grant is held in memory only", exc)

    # -- unpairing --------------------------------------------------------------

    def _can_revoke(self) -> bool:
        return bool(self.endpoints and self.endpoints.revocation_endpoint)

    async def _revoke_pending(self) -> str | None:
        """Try every revocation still owed, once (RFC 7009). Returns why one failed, or None."""
        error = None
        for token, hint in list(self._pending_revocations):
            if self.endpoints is None or not self.endpoints.revocation_endpoint:
                return "no revocation endpoint is known"
            now = self.clock()
            if not self.budget.allows(now):
                return "revocation failed: hourly request budget spent; will retry"
            self.budget.spend(now)
            reply = await self.http.send(m.revocation_request(self.endpoints, token, hint))
            # §2.2: 200 even if the token was already invalid. A definite refusal (400
            # unsupported_token_type, invalid_request) will not change on a retry either.
            done = isinstance(reply, m.Response) and (reply.status == 200 or not m.is_transient(reply))
            if done:
                if reply.status == 200:
                    logger.info("the grant was revoked at the server")
                else:
                    error = self.last_error = f"the server refused the revocation ({m.describe(reply)})"
                    logger.warning("%s; not retrying", error)
                self._pending_revocations.remove((token, hint))
                await self._save_current()
                continue
            reason = reply.reason if isinstance(reply, m.Failure) else m.describe(reply)
            error = self.last_error = f"revocation failed: {reason}; will retry"
            logger.warning("%s", error)
            self._revocation_delay = grant.transient_delay(reply, self._revocation_backoff)
        return error

    def _start_revoking(self, first_delay: float) -> None:
        if self._revoking is None or self._revoking.done():
            self._revoking = asyncio.create_task(self._keep_revoking(first_delay))

    async def _keep_revoking(self, delay: float) -> None:
        """Retry owed revocations with capped, jittered backoff until the server takes them."""
        while self._pending_revocations:
            await self.sleep(delay)
            await self._revoke_pending()
            delay = self._revocation_delay
        self._revocation_backoff.reset()

    async def revocations_settled(self) -> None:
        """Wait until no revocation is owed (for tests and an orderly factory reset)."""
        if self._revoking is not None:
            await asyncio.wait([self._revoking])

    async def step_ups_settled(self) -> None:
        """Wait until no step-up is under way (for tests)."""
        tasks = [s.task for s in self._step_ups.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def _settle_refresh(self) -> None:
        """Let a refresh in flight finish: the server may already have rotated the refresh
        token, and cancelling now would lose the new one (the next start would replay the old)."""
        if self._inflight is not None and not self._inflight.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._inflight), STOP_GRACE)
            except (TimeoutError, Exception):
                pass
        for pending in list(self._narrowing.values()):  # a narrowed refresh may rotate the refresh token too
            await asyncio.wait([pending], timeout=STOP_GRACE)

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        self._discard_step_ups()
        for task in (self._pairing_task, self._refresh_task, self._inflight, self._revoking):
            if task is not None and task is not current and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._pairing_task = self._refresh_task = self._inflight = self._revoking = None

    # -- helpers ----------------------------------------------------------------

    def _require_grant(self) -> None:
        if self.state in HOLDS_GRANT and self.tokens is not None and not self._unpairing:
            return
        if self._unpairing:
            raise ApiError("not_paired", "the device is being unpaired")
        if self.state is State.PAIRING:
            raise ApiError("pairing_in_progress", "the device is pairing; approve the code on screen")
        if self.state is State.REAUTH_REQUIRED:
            raise ApiError("reauth_required", f"the device must be paired again ({self.last_error or 'grant ended'})")
        raise ApiError("not_paired", "the device is not paired; run `devicelink pair`")

    def _account_suffix(self) -> str:
        account = self.tokens.account if self.tokens else None
        return f" as {account.name or account.sub}" if account else ""


def _configured_endpoints(p: ProviderConfig) -> dict[str, str]:
    names = ("token_endpoint", "device_authorization_endpoint", "revocation_endpoint")
    return {name: url for name in names if (url := getattr(p, name))}


def _complete(endpoints: dict[str, str]) -> bool:
    return "token_endpoint" in endpoints and "device_authorization_endpoint" in endpoints


def _transport_allowed(url: str, p: ProviderConfig) -> bool:
    return url.startswith("https://") or (p.allow_insecure_http and url.startswith("http://") and is_loopback(url))


def _iso(wall: float | None) -> str | None:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds") if wall else None
