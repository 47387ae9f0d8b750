"""One device's grant: pairing, silent refresh, unpairing, and the answers the socket gives.

A :class:`Device` holds everything about one device and nothing is global, so
a simulator can run thousands of them in one event loop. It implements the
socket's ``Agent`` protocol (``ipc/routes.py``). Rules it keeps:

- One refresh at a time, however many apps ask (RFC 9700 §4.14.2: presenting a
  rotated-away refresh token can revoke the whole grant). Callers share the
  refresh in flight.
- A rotated refresh token is written to disk before the new access token is served.
- Only ``invalid_grant`` ends a grant. Network faults, 5xx and other refusals
  keep it: the cached access token is served until it expires (state
  ``offline``) and the refresh is retried with capped, jittered backoff.
- Nothing here reads the wall clock except to write it to the state file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from devicelink import __version__
from devicelink.config import Config, ProviderConfig, is_loopback
from devicelink.display.base import Display, NullDisplay, Screen
from devicelink.errors import (AuthorizationDenied, DeviceCodeExpired, GrantFailed, ProtocolViolation,
                               StoreError)
from devicelink.ipc.routes import ApiError, Peer, TokenQuery
from devicelink.lifecycle import HOLDS_GRANT, Event, PairingCode, State, next_state
from devicelink.oauth import grant
from devicelink.oauth import messages as m
from devicelink.oauth.http import OAuthHttp
from devicelink.budget import RequestBudget
from devicelink.clock import clock_synced as probe_clock_synced
from devicelink.clock import explain_failure
from devicelink.tokens.model import TokenSet
from devicelink.tokens.store import EncryptedFileStore

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
MIN_REFRESH_SPACING = 1.0  # even a server that issues 0-second tokens is not refreshed in a loop
PAIR_ANSWER_WAIT = 30.0  # how long POST /v1/pair waits for the code it will print
STOP_GRACE = 35.0  # longer than one exchange's deadline (oauth/http.py DEADLINE)


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

    # -- lifecycle --------------------------------------------------------------

    def _move(self, event: Event) -> None:
        old, self.state = self.state, next_state(self.state, event)
        if old is not self.state:
            logger.info("state %s -> %s", old, self.state)
        if self.state is not State.PAIRING:
            self.pairing = None
        self._redraw()
        for listener in self.listeners:
            listener(self.state)

    def _redraw(self) -> None:
        """Hand the current screen to the display. Panels that draw slowly (an OLED frame is
        ~100 ms on a 100 kHz I2C bus; a 1080p frame longer on a Zero) draw in a worker thread,
        one frame at a time, newest screen wins, so token requests never wait behind them."""
        if isinstance(self.display, NullDisplay):
            return
        account = self.tokens.account if self.tokens else None
        screen = Screen(self.state, self.pairing, account and (account.name or account.sub), self.message,
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
        await self._cancel_tasks()
        for pending in (self._saving, self._drawing):
            if pending is not None:
                await asyncio.wait([pending])
        if self._unsaved and self.tokens is not None:
            await self._save(self.tokens)

    # -- the Agent protocol of ipc/routes.py ------------------------------------

    async def token(self, query: TokenQuery, peer: Peer) -> dict[str, Any]:
        self._require_grant()
        if query.resource:
            raise ApiError("invalid_request", "resource indicators (RFC 8707) are not supported in this version")
        if query.scope:
            granted = set((self.tokens.scope if self.tokens and self.tokens.scope else self.provider.scope or "").split())
            missing = [s for s in query.scope.split() if s not in granted]
            if missing:
                raise ApiError("forbidden", f"scope {' '.join(missing)!r} is not part of the grant")
        tokens = self.tokens
        assert tokens is not None
        now = self.clock()
        # A token fresher than half its lifetime always satisfies min_ttl: otherwise a
        # server issuing short tokens and an app asking a long min_ttl would refresh on every call.
        wanted = min(query.min_ttl, tokens.lifetime / 2)
        if not tokens.valid_for(wanted, now) and now >= self._retry_at:
            await self.refresh()
            self._require_grant()
            tokens = self.tokens
            assert tokens is not None
            now = self.clock()
        if not tokens.valid_for(0, now):
            raise ApiError("upstream_unavailable", "the access token expired and the authorization server "
                           f"cannot be reached to refresh it ({self.last_error or 'no answer'})")
        return {"access_token": tokens.access_token, "token_type": "Bearer",
                "expires_in": int(tokens.expires_in(now)), "scope": tokens.scope or self.provider.scope or ""}

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
            "pending_revocations": len(self._pending_revocations),
            "version": __version__,
        }

    def healthy(self) -> bool:
        if self.state is State.PAIRING:
            return True
        return bool(self.state in HOLDS_GRANT and self.tokens and self.tokens.valid_for(0, self.clock()))

    async def pair(self, peer: Peer) -> dict[str, Any]:
        self._require_admin(peer, "pair")
        if self.state in HOLDS_GRANT:
            raise ApiError("invalid_request", f"already paired{self._account_suffix()}; unpair first")
        self._start_pairing()
        try:  # until a code is shown or pairing has ended
            await asyncio.wait_for(self._pairing_settled.wait(), PAIR_ANSWER_WAIT)
        except TimeoutError:
            pass  # still connecting: the status says so
        return self.status()

    async def unpair(self, peer: Peer) -> dict[str, Any]:
        self._require_admin(peer, "unpair")
        # A refresh in flight may already have rotated the refresh token at the server:
        # wait for it, so the token revoked is the live one and no late save restores the grant.
        await self._settle_refresh()
        await self._cancel_tasks()
        if self._saving is not None:
            await asyncio.wait([self._saving])
        tokens = self.tokens
        self.tokens = None  # served no more, from this instant
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
        error = await self._revoke_pending()
        if self._pending_revocations:
            self._start_revoking(first_delay=self._revocation_delay)
        return {"state": self.state.value, "revoked": error is None and bool(tokens and self._can_revoke()),
                "revocation_error": error}

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
        await self.unpair(Peer(os.getpid(), os.getuid(), os.getgid()))
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
                    logger.info("the code expired; showing a new one (%d of %d)",
                                expired_in_a_row, self.cfg.pairing.restart_on_expiry)
                    self.message = "The last code expired. Here is a new one."
                    self._move(Event.CODE_REPLACED)
                    continue
                # RFC 8628 §3.5: after expired_token, wait for the user before starting again.
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

    async def _tick(self) -> None:
        """Keep the countdown on screen moving while a code is shown."""
        while True:
            await self.sleep(1.0)
            if self.pairing is not None:
                self._redraw()

    def _observe(self, reply: m.Reply) -> None:
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
        if tokens is None or self.state not in (State.PAIRED, State.OFFLINE):
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
            return
        self.budget.spend(now)
        self._move(Event.REFRESH_STARTED)
        self._last_attempt = now
        try:
            await self._exchange_refresh(tokens, endpoints)
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
        # Rotation (RFC 6749 §6): the new refresh token must be on disk before the new access
        # token is served, or a crash now would leave only a dead refresh token behind.
        self.last_error = None  # _save sets it again if the disk fails
        await self._save(fresh)
        self.tokens = fresh
        self.last_refresh = self.wall_clock()
        self._refresh_backoff.reset()
        self._retry_at = 0.0
        self._move(Event.REFRESH_SUCCEEDED)
        self._tokens_changed.set()

    def _refresh_failed(self, reply: m.Reply, reason: str) -> None:
        delay = grant.transient_delay(reply, self._refresh_backoff)
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
                await self._save(self.tokens)
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

    async def _settle_refresh(self) -> None:
        """Let a refresh in flight finish: the server may already have rotated the refresh
        token, and cancelling now would lose the new one (the next start would replay the old)."""
        if self._inflight is not None and not self._inflight.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._inflight), STOP_GRACE)
            except (TimeoutError, Exception):
                pass

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
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
        if self.state in HOLDS_GRANT and self.tokens is not None:
            return
        if self.state is State.PAIRING:
            raise ApiError("pairing_in_progress", "the device is pairing; approve the code on screen")
        if self.state is State.REAUTH_REQUIRED:
            raise ApiError("reauth_required", f"the device must be paired again ({self.last_error or 'grant ended'})")
        raise ApiError("not_paired", "the device is not paired; run `devicelink pair`")

    def _require_admin(self, peer: Peer, action: str) -> None:
        """Until per-app policy lands, root, the daemon's own user, and [[client]] entries
        with admin = true (matched by uid or user) may pair and unpair."""
        if peer.uid in (0, os.getuid()):
            return
        for client in self.cfg.clients:
            if client.admin and (client.uid == peer.uid or (client.user and _uid_of(client.user) == peer.uid)):
                return
        raise ApiError("forbidden", f"uid {peer.uid} may not {action} (not an admin client)")

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


def _uid_of(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _iso(wall: float | None) -> str | None:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds") if wall else None
