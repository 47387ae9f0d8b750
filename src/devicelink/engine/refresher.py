"""The grant's silent refresh: when to refresh, one refresh at a time, what a failure costs.

- Refresh 75–85 % into the token's lifetime (jitter spreads a fleet), at the
  backoff's time after a failure, never sooner than :data:`MIN_REFRESH_SPACING`
  after the last attempt, and within the hourly request budget.
- Never sooner than ``device.refresh_floor`` (30 s) after the tokens were obtained, on
  schedule or when apps ask (``Device.refresh`` itself still forces one): a token the
  server made shorter than that is served as it is, and ``last_error`` names the odd
  lifetime (issue 10, item 8).
- One refresh at a time, however many apps ask: callers share the one in flight
  (RFC 9700 §4.14.2: presenting a rotated-away refresh token can revoke the grant).
  Every use of the refresh token, narrowed ones too, takes ``device.exchange_lock``.
- A rotated refresh token is on disk before the new access token is served. When the
  disk refuses it (full, or ``state.bin`` made a directory), the save is outstanding:
  it is retried on its own backoff, and no refresh (no narrowed one either) rotates the
  refresh token again until it succeeds, or each rotation would leave the one on disk
  further behind (issue 10, item 4). The access token in memory is served until it
  expires; ``last_error`` says why.
- ``invalid_grant`` ends the grant (:class:`RefreshRejected`). Any other refusal of the
  grant (a 4xx that is not a recognised retryable answer, ``oauth/refresh.py``) ends it
  after one confirming attempt, spaced by the backoff like any retry. Everything else
  keeps it: the cached access token is served until it expires (state ``offline``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from devicelink.budget import RequestBudget
from devicelink.clock import explain_failure
from devicelink.engine.answers import TokenRotated, Trouble
from devicelink.errors import ClientRejected, GrantFailed, ProtocolViolation, RefreshRejected
from devicelink.lifecycle import HOLDS_GRANT, Event, State
from devicelink.oauth import refresh as flows
from devicelink.oauth.steps import Backoff, backoff_delay
from devicelink.tokens.model import TokenSet

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)

MIN_REFRESH_SPACING = 1.0  # even a server that issues 0-second tokens is not refreshed in a loop
FIRST_RETRY = 5.0
#: A grant restored with its refresh overdue is refreshed at a random point of this share of
#: its lifetime (on its own; an app asking refreshes it at once): a fleet that lost power
#: together comes back spread as an unsynchronised fleet refreshes (0.75-0.85 of a lifetime
#: apart), not as one burst at the authorization server (docs/fleet.md).
RESTART_SPREAD = 0.8
CLOCK_POLL = 2.0  # seconds between looks at the clock while a stored expiry waits for NTP


class Refresher:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.backoff = Backoff(device.rng, base=FIRST_RETRY)
        self.retry_at = 0.0  # no refresh attempt before this (monotonic), after a failure
        self.last_attempt = float("-inf")
        self.refused: str | None = None  # the server refused the grant once: the next refusal ends it
        self.save_backoff = Backoff(device.rng, base=FIRST_RETRY)
        self.save_retry_at = 0.0  # an outstanding save is not tried again before this
        self.inflight: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # the tokens or the schedule changed: look again
        self.not_before = 0.0  # no proactive refresh before this (monotonic): the restart spread
        self.trusting: asyncio.Task[None] | None = None  # waits for NTP to vouch for a stored expiry

    def start(self, restored: bool = False) -> None:
        self.refused = None
        tokens = self.device.tokens
        if tokens is not None:
            self.note_lifetime(tokens)
        if restored and tokens is not None:
            self._spread_restart(tokens)
            if (stored := self.device.state_file.unverified) is not None:
                self.trusting = asyncio.create_task(self._trust_when_synced(tokens, stored))
        self.task = asyncio.create_task(self._keep_fresh())

    def _spread_restart(self, tokens: TokenSet) -> None:
        device = self.device
        now = device.clock()
        if tokens.refresh_token and tokens.refresh_due(device.rng) <= now:
            self.not_before = now + device.rng.uniform(0.0, RESTART_SPREAD * tokens.lifetime)
            logger.info("the refresh is overdue; it runs in %.0f s, or as soon as an app asks",
                        self.not_before - now)

    async def _trust_when_synced(self, restored: TokenSet, stored: dict) -> None:
        """A start before NTP cannot tell the stored token's age (docs/clock.md). Once the clock
        is synchronised, the stored expiry, written by a synchronised clock, is good again:
        a short power cut then costs no refresh at all."""
        device = self.device
        while device.clock_synced() is False:
            await device.sleep(CLOCK_POLL)
            if device.tokens is not restored:
                return  # refreshed meanwhile
        if device.clock_synced() is not True or device.tokens is not restored:
            return
        believed = TokenSet.from_record(stored, device.clock(), device.wall_clock(), True)
        if believed.expires_at > restored.expires_at:
            device.tokens = believed
            logger.info("the wall clock is synchronised: the stored access token is good for %.0f s more",
                        believed.expires_in(device.clock()))
            self.changed.set()

    def backing_off(self, now: float) -> bool:
        return now < self.retry_at

    def too_soon(self, tokens: TokenSet, now: float) -> bool:
        """Obtained less than the refresh floor ago: no refresh for them yet."""
        return now < tokens.obtained_at + self.device.refresh_floor

    async def save_outstanding(self) -> bool:
        """True when the grant on disk is the one in memory, after trying an outstanding
        save again when its time has come. False: do not rotate the refresh token."""
        device = self.device
        if not device.state_file.unsaved:
            return True
        if device.clock() < self.save_retry_at:
            return False
        async with device.exchange_lock:
            if device.state_file.unsaved and device.tokens is not None:
                await device.state_file.save(device.tokens)
        if device.state_file.unsaved:
            self._save_failed()
            return False
        logger.info("the grant is saved again")
        self.save_backoff.reset()
        self.save_retry_at = 0.0
        device.clear_error()
        if device.tokens is not None:
            self.note_lifetime(device.tokens)
        self.changed.set()
        return True

    def _save_failed(self) -> None:
        device = self.device
        delay = self.save_backoff.next_delay()
        self.save_retry_at = device.clock() + delay
        device.report(Trouble.STORAGE, f"{device.last_error}; the refresh token is not used again until the grant "
                      f"is saved (next try in {delay:.0f} s)")
        self.changed.set()

    def note_lifetime(self, tokens: TokenSet) -> None:
        """Say so when the server issues tokens shorter than the refresh floor."""
        floor = self.device.refresh_floor
        if tokens.lifetime < floor:
            self.device.report(
                Trouble.LIFETIME, f"the authorization server issued an access token that lasts {tokens.lifetime:.0f} s "
                f"(expires_in), shorter than the {floor:.0f} s refresh floor: it is served as it is "
                f"and refreshed at most every {floor:.0f} s")
            logger.warning("%s", self.device.last_error)

    async def refresh(self) -> None:
        """Refresh now, or join the refresh already in flight."""
        self.begin()
        await asyncio.shield(self.inflight)

    def begin(self) -> None:
        """Start a refresh unless one is in flight, without waiting for it."""
        if self.inflight is None or self.inflight.done():
            self.inflight = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        device = self.device
        tokens, endpoints = device.tokens, device.endpoints
        if tokens is None or device.state not in (State.PAIRED, State.OFFLINE) or device.unpairing:
            return
        if not tokens.refresh_token or endpoints is None:
            # Nothing to refresh with: serve the token until it expires, then ask for a pairing.
            if not tokens.valid_for(0, device.clock()):
                device.move(Event.REFRESH_STARTED)
                await device.end_grant("the access token expired and the server issued no refresh token; pair again")
            return
        if not await self.save_outstanding():
            return  # rotating now would leave the refresh token on disk further behind
        now = device.clock()
        allowance = RequestBudget.allowance(tokens.lifetime)
        if not device.budget.allows(now, allowance):
            self.retry_at = max(device.budget.next_free(now, allowance), now + MIN_REFRESH_SPACING)
            device.report(Trouble.BUDGET, f"hourly request budget spent ({device.budget.limit} requests beyond what "
                          f"the token lifetime needs); next refresh in {self.retry_at - now:.0f} s")
            logger.warning("%s", device.last_error)
            self.changed.set()
            device.metrics.inc("devicelink_refreshes_total", kind="grant", outcome="budget")
            return
        device.budget.spend(now)
        device.move(Event.REFRESH_STARTED)
        self.last_attempt = now
        try:
            async with device.exchange_lock:  # a narrowed refresh may be using the refresh token
                if device.tokens is None or device.state is not State.REFRESHING:
                    return  # that narrowed refresh found the grant ended
                await self._exchange(device.tokens)  # its refresh token may have rotated
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an answer nobody foresaw: never wedge in "refreshing"
            logger.exception("refresh failed unexpectedly")
            self._failed(f"refresh failed: unexpected {type(exc).__name__}", None, Trouble.UPSTREAM)

    async def _exchange(self, tokens: TokenSet) -> None:
        device = self.device
        assert tokens.refresh_token and device.endpoints
        flow = flows.refresh(device.endpoints, tokens.refresh_token, device.provider.issuer,
                             device.provider.client_id)
        try:
            parsed = await device.http.run(flow, sleep=device.sleep)
        except RefreshRejected as exc:
            if not flows.definite(exc) and self.refused is None:
                # Not invalid_grant: a proxy's page or a fluke may not come twice. One more
                # attempt, after the backoff (never at once), confirms it.
                self.refused = str(exc)
                self._failed(f"{str(exc).removesuffix('; pair again')}; confirming with one more attempt "
                             "before asking to pair again", exc.retry_after, Trouble.REFUSED)
                return
            # RFC 6749 §5.2: revoked, expired, or (under rotation) replayed. The grant is gone.
            device.metrics.inc("devicelink_refreshes_total", kind="grant", outcome="rejected")
            self.refused = None
            await device.end_grant(str(exc))
            return
        except GrantFailed as exc:
            self._failed(self._explain(exc), exc.retry_after,
                         Trouble.CLIENT if isinstance(exc, ClientRejected) else Trouble.UPSTREAM)
            return
        except ProtocolViolation as exc:
            self._failed(f"refresh failed: {exc}", None, Trouble.UPSTREAM)
            return
        fresh = tokens.rotated(parsed)
        if fresh.scope and tokens.scope and not set(tokens.scope.split()) <= set(fresh.scope.split()):
            # Some servers give a refresh token the scope of the last (narrowed) refresh
            # (thephpleague/oauth2-server#1117): apps may now be refused what they had.
            logger.warning("the grant's scope shrank at this refresh: %r -> %r", tokens.scope, fresh.scope)
        # Rotation (RFC 6749 §6): the new refresh token must be on disk before the new access
        # token is served, or a crash now would leave only a dead refresh token behind.
        device.clear_error()  # the save sets it again if the disk fails
        await device.state_file.save(fresh)
        device.tokens = fresh
        if device.state_file.unsaved:
            self._save_failed()
        else:
            self.note_lifetime(fresh)
        device.refreshed()
        self.backoff.reset()
        self.retry_at = 0.0
        self.refused = None
        device.metrics.inc("devicelink_refreshes_total", kind="grant", outcome="ok")
        device.move(Event.REFRESH_SUCCEEDED)
        self.changed.set()
        device.events.publish("token_rotated", TokenRotated(int(fresh.expires_in(device.clock())),
                                                            fresh.scope or device.provider.scope or ""))

    def _explain(self, exc: GrantFailed) -> str:
        """A network failure gets the clock's hint (a TLS date error on a board without an RTC)."""
        if exc.unanswered is not None:
            return f"refresh failed: {explain_failure(exc.unanswered, self.device.clock_synced())}"
        return str(exc)

    def _failed(self, reason: str, retry_after: float | None, kind: Trouble) -> None:
        device = self.device
        delay = backoff_delay(self.backoff, retry_after)
        device.metrics.inc("devicelink_refreshes_total", kind="grant", outcome="failed")
        self.retry_at = device.clock() + delay
        device.report(kind, reason)
        logger.warning("%s; keeping the grant for now, next try in %.0f s" if self.refused else
                       "%s; keeping the grant, next try in %.0f s", reason, delay)
        device.move(Event.REFRESH_FAILED)
        self.changed.set()

    async def _keep_fresh(self) -> None:
        """Refresh before expiry, with jitter; after a failure, at the backoff's time."""
        device = self.device
        while device.tokens is not None and device.state in HOLDS_GRANT:
            if not device.tokens.refresh_token:
                due = device.tokens.expires_at  # nothing to refresh with: wake at expiry
            elif device.state is State.OFFLINE:
                due = self.retry_at
            else:  # the schedule, but never before a backoff, the budget, the floor or the spread allows
                due = max(device.tokens.refresh_due(device.rng), self.retry_at,
                          device.tokens.obtained_at + device.refresh_floor, self.not_before)
            due = max(due, self.last_attempt + MIN_REFRESH_SPACING)
            unsaved = device.state_file.unsaved  # nothing rotates before the save: wake for it
            self.changed.clear()
            delay = (self.save_retry_at if unsaved else due) - device.clock()
            if delay > 0 and await self._changed_within(delay):
                continue  # an on-demand refresh moved the schedule
            if unsaved and device.clock() < due:
                await self.save_outstanding()
                continue
            await self.refresh()

    async def _changed_within(self, delay: float) -> bool:
        """Wait ``delay`` seconds on the injected clock, or until the tokens change."""
        changed = asyncio.ensure_future(self.changed.wait())
        timer = asyncio.ensure_future(self.device.sleep(delay))
        try:
            await asyncio.wait((changed, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            timer.cancel()
        return self.changed.is_set()

    async def settle(self, grace: float) -> None:
        """Let a refresh in flight finish: the server may already have rotated the refresh
        token, and cancelling now would lose the new one (the next start would replay the old)."""
        if self.inflight is not None and not self.inflight.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.inflight), grace)
            except (TimeoutError, Exception):
                pass
