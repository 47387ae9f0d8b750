"""One device's engine: its state, its grant, and what apps may have of it.

A :class:`Device` holds everything about one device and nothing is global, so
a simulator can run thousands of them in one event loop. It knows no socket
and no HTTP status: ``ipc/`` asks it on behalf of an app the per-app policy
has identified, and shapes its answers (``engine/answers.py``) into JSON. It
raises :class:`~devicelink.errors.Refused` (and the rest of ``errors.py``).

Its rooms, each in a module of its own:

- ``pairing.py``: discovery, codes, polling, until a grant is held;
- ``refresher.py``: the silent refresh schedule and what a failure costs;
- ``narrowing.py`` (pure) and ``narrowed.py``: an app's share of the grant;
- ``devicetokens.py``: device-level tokens (client credentials), whatever the state;
- ``stepup.py``: RFC 9470 step-up sessions;
- ``proofs.py``: DPoP proofs for apps (RFC 9449), for the tokens each was handed;
- ``revocations.py``: revocations owed to the server;
- ``statefile.py`` and ``record.py`` (pure): what the state file holds, and when it is written.

Every exchange with the server is a generator in ``oauth/``; ``self.http`` sends it.
Nothing here reads the wall clock except to write it to the state file.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Awaitable, Callable

from devicelink import __version__
from devicelink.budget import RequestBudget
from devicelink.clock import clock_synced as probe_clock_synced
from devicelink.config import Config, ProviderConfig
from devicelink.display.base import Display, Screen
from devicelink.display.port import ScreenPort
from devicelink.engine import narrowing
from devicelink.engine.answers import (Issued, StateChanged, Status, StepUpDone, StepUpPending, TokenQuery,
                                       Trouble, Unpaired)
from devicelink.engine.devicetokens import DeviceTokens
from devicelink.engine.warnings import grant_warnings
from devicelink.engine.narrowed import Narrowed
from devicelink.engine.networktime import WAITING, NetworkTime
from devicelink.engine.proofs import AppProofs
from devicelink.engine.refresher import Refresher
from devicelink.engine.revocations import Revocations, cancel
from devicelink.engine.statefile import StateFile
from devicelink.errors import Refused, StoreError
from devicelink.events import Hub
from devicelink.lifecycle import HOLDS_GRANT, Event, PairingCode, State, next_state
from devicelink.metrics import Metrics
from devicelink.oauth import messages as m
from devicelink.oauth.http import OAuthHttp
from devicelink.policy import ROOT, App
from devicelink.tokens.model import TokenSet
from devicelink.tokens.store import EncryptedFileStore

if TYPE_CHECKING:
    from devicelink.engine.pairing import Pairing
    from devicelink.engine.registering import Registering
    from devicelink.engine.renewing import Renewing
    from devicelink.engine.stepup import StepUps

logger = logging.getLogger(__name__)

STOP_GRACE = 35.0  # longer than one exchange's deadline (oauth/http.py DEADLINE)
MIN_REFRESH_FLOOR = 1.0  # s: how low the refresh floor ([refresh] min_interval, 30 s) may be set


class Device:
    def __init__(self, cfg: Config, store: EncryptedFileStore, http: OAuthHttp, *,
                 display: Display | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None,
                 clock_synced: Callable[[], bool | None] | None = None,
                 key_source: str | None = None,
                 refresh_floor: float | None = None) -> None:
        if refresh_floor is None:  # [refresh] min_interval, 30 s unless the config says
            refresh_floor = cfg.refresh.min_interval
        if not refresh_floor >= MIN_REFRESH_FLOOR:  # also refuses NaN
            raise ValueError(f"refresh_floor must be at least {MIN_REFRESH_FLOOR:.0f} s (got {refresh_floor!r})")
        #: No refresh sooner than this after the tokens were obtained (issue 10, item 8): a
        #: server that issues 0-second tokens gets one refresh per floor, not a storm.
        self.refresh_floor = float(refresh_floor)
        self.cfg, self.provider = cfg, cfg.provider
        self.store, self.http = store, http
        self.clock, self.wall_clock, self.sleep = clock, wall_clock, sleep
        self.rng = rng or random.Random()
        self.clock_synced = clock_synced or probe_clock_synced
        self.key_source = key_source
        self.screen = ScreenPort(display, clock)
        self.budget = RequestBudget()
        self.events = Hub()
        self.metrics = Metrics()
        #: Called with the new state after every move (the socket API and systemd subscribe).
        self.listeners: list[Callable[[State], None]] = []

        self.state = State.UNPAIRED
        self.tokens: TokenSet | None = None
        self.configured = _configured_endpoints(self.provider)
        #: Known once pairing has resolved them (or the config names them all), or from the state file.
        self.endpoints: m.Endpoints | None = (m.Endpoints(**self.configured)
                                              if m.Endpoints.complete(self.configured) else None)
        self.pairing: PairingCode | None = None  # shown while pairing
        self.message: str | None = None
        self.last_error: str | None = None
        self.last_error_kind: Trouble | None = None
        #: Why the last grant given up is still valid at the server (until the next pairing).
        self.not_revoked: str | None = None
        self.last_refresh: float | None = None  # wall clock, for status only
        self.last_refresh_at: float | None = None  # monotonic, for the metrics' age of the last good refresh
        self.reset_in: int | None = None  # factory-reset countdown while the button is held
        self.unpairing = False
        # Every use of the refresh token takes this turn: the grant's refresh and narrowed ones.
        self.exchange_lock = asyncio.Lock()

        self.network_time = NetworkTime(self)
        http.clock_ready = self.network_time.ready
        self.refresher = Refresher(self)
        self.narrowed = Narrowed(self)
        self.device_tokens = DeviceTokens(self)
        self.revocations = Revocations(self)
        self.state_file = StateFile(self)
        self.proofs = AppProofs(self)  # DPoP proofs for apps, for the tokens they were handed
        # Pairing and step-up are made on first use: a paired device that restarts may never
        # need them, and their modules (the device flow, discovery) are not even imported.
        self._pairer: Pairing | None = None
        self._step_ups: StepUps | None = None
        #: With [registration]: registers before pairing, and again after a factory reset (daemon.py sets it).
        self.registering: Registering | None = None
        #: With [identity] on_factory_reset = "new_key": the key a factory reset replaces (daemon.py sets it).
        self.renewing: Renewing | None = None

    @property
    def pairer(self) -> Pairing:
        if self._pairer is None:
            from devicelink.engine.pairing import Pairing

            self._pairer = Pairing(self)
        return self._pairer

    @property
    def step_ups(self) -> StepUps:
        if self._step_ups is None:
            from devicelink.engine.stepup import StepUps

            self._step_ups = StepUps(self)
        return self._step_ups

    def report(self, kind: Trouble, text: str) -> None:
        """``last_error``, and what it is about (status ``last_error_kind``)."""
        self.last_error, self.last_error_kind = text, kind

    def clear_error(self) -> None:
        self.last_error = self.last_error_kind = None

    # -- lifecycle --------------------------------------------------------------

    def move(self, event: Event) -> None:
        old, self.state = self.state, next_state(self.state, event)
        if old is not self.state:
            logger.info("state %s -> %s", old, self.state)
        if self.state is not State.PAIRING:
            self.pairing = None
        if self.state not in HOLDS_GRANT:
            self.narrowed.forget()
            self.proofs.forget()
            if self._step_ups is not None:
                self._step_ups.discard_all()  # stronger tokens of an account no longer the device's
        self.redraw()
        if old is not self.state:
            self.events.publish("state", self.state_event())
        for listener in self.listeners:
            listener(self.state)

    def state_event(self) -> StateChanged:
        """The ``state`` event: what an app needs to know to wait for pairing (never a token)."""
        account = self.tokens.account if self.tokens and self.state in HOLDS_GRANT else None
        return StateChanged(self.state.value, account, self.message)

    def redraw(self) -> None:
        """Hand the current screen to the display port."""
        if self.screen.headless:
            return
        account = self.tokens.account if self.tokens else None
        name = account and (account.name or account.sub)
        shown = self._step_ups.shown() if self._step_ups and self.state in HOLDS_GRANT else None
        if shown is not None:  # the standing grant stays in use; the screen asks for the stronger sign-in
            screen = Screen(State.PAIRING, shown.code, name,
                            f"Confirm on your phone: {shown.app} asks for a stronger sign-in.",
                            reset_in=self.reset_in, clock_synced=self.clock_synced())
        else:
            message = ("Waiting for network time." if self.network_time.waiting and self.state in HOLDS_GRANT
                       else self.message)
            screen = Screen(self.state, self.pairing, name, message,
                            reset_in=self.reset_in, clock_synced=self.clock_synced())
        self.screen.show(screen)

    async def tick(self) -> None:
        """Keep the countdown on screen moving while a code is shown."""
        while True:
            await self.sleep(1.0)
            if self.pairing is not None or (self._step_ups and self._step_ups.shown() is not None):
                self.redraw()

    async def start(self) -> None:
        """Restore a stored grant, or show a code (a device that boots unpaired pairs, RFC-CHECKLIST A3)."""
        tokens = await self.state_file.load()
        if tokens is not None:
            self.tokens = tokens
            self.message = _no_refresh_message(tokens)
            self.move(Event.RESTORED)
            logger.info("restored the grant%s", self._account_suffix())
            self.refresher.start(restored=True)
        else:
            self.begin_pairing()
        if self.revocations.owed:
            logger.info("%d revocation(s) still owed to the server; retrying", len(self.revocations))
            self.revocations.start(first_delay=0.0)

    async def stop(self) -> None:
        await self._settle_refresh()
        owed = len(self.revocations)
        await self._cancel_tasks()  # step-ups' own grants become owed revocations, kept for the next start
        await self.device_tokens.cancel()
        await self.state_file.settled()
        await self.screen.settled()
        if (self.state_file.unsaved and self.tokens is not None) or len(self.revocations) != owed:
            await self.state_file.save(self.tokens)
        await self.http.aclose()

    async def paired(self, tokens: TokenSet) -> None:
        """Pairing ended with a grant: keep it, and keep it fresh."""
        self.clear_error()
        self.not_revoked = None
        self.tokens = tokens
        # No refresh token (no offline_access granted): say so now, not at the first expiry.
        self.message = _no_refresh_message(tokens)
        await self.state_file.save(tokens)
        self.metrics.inc("devicelink_pairings_total")
        self.move(Event.PAIRED)
        logger.info("paired%s", self._account_suffix())
        for warning in self.warnings():
            logger.warning("%s", warning)
        self.refresher.start()

    def refreshed(self) -> None:
        self.last_refresh = self.wall_clock()
        self.last_refresh_at = self.clock()

    async def end_grant(self, reason: str) -> None:
        """The server ended the grant (``invalid_grant``): forget it, and ask for a pairing."""
        logger.error("%s", reason)
        self.report(Trouble.GRANT_ENDED, reason)
        self.tokens = None
        self.message = "Pairing needed again. Press the button or run `devicelink pair`."
        try:
            await asyncio.to_thread(self.store.clear)
        except StoreError as exc:
            logger.error("%s", exc)
        self.move(Event.REFRESH_REJECTED)

    # -- what apps ask (through ipc/) ------------------------------------------------

    def token_now(self, query: TokenQuery, app: App = ROOT) -> Issued | None:
        """The answer if it needs no request upstream, else None (call :meth:`token`).
        Raises :class:`Refused` when ``app`` may not have what it asks for."""
        if query.identity == "device":  # no user: whatever the state of the grant
            return self.device_tokens.token_now(query, app)
        key = self._narrow_key(query, app)
        tokens = self.tokens if key is None else self.narrowed.cache.get(key)
        if tokens is None or self.tokens is None:
            return None
        now = self.clock()
        if tokens.valid_for(narrowing.wanted_ttl(query.min_ttl, tokens.lifetime), now) or (
                key is None and self.refresher.backing_off(now) and tokens.valid_for(0, now)) or (
                self.refresher.too_soon(tokens, now)):  # under the floor: served as it is
            return self.issue(tokens, now)
        return None

    async def token(self, query: TokenQuery, app: App = ROOT) -> Issued:
        """A token for ``app``: the grant's own access token, or a narrowed one; or a device-level one."""
        if query.identity == "device":
            return await self.device_tokens.token(query, app)
        answer = self.token_now(query, app)
        if answer is not None:
            return answer
        key = self._narrow_key(query, app)
        if key is not None:
            return self.issue(await self.narrowed.token(key))
        if self.network_time.holds_back():  # the refresh goes out when NTP comes; no app waits for that
            self.refresher.begin()
            raise Refused("upstream_unavailable", f"the access token must be refreshed first, and {WAITING}")
        if not self.refresher.backing_off(self.clock()):
            await self.refresh()
            self.require_grant()
        tokens = self.tokens
        assert tokens is not None
        now = self.clock()
        if not tokens.valid_for(0, now) and not self.refresher.too_soon(tokens, now):  # under the floor: as it is
            if self.state_file.unsaved:
                raise Refused("upstream_unavailable", "the access token expired and is not refreshed until "
                              f"the grant can be saved ({self.last_error})")
            if self.refresher.refused:
                raise Refused("upstream_unavailable", "the access token expired and the authorization server "
                              f"refused to refresh it ({self.last_error})")
            raise Refused("upstream_unavailable", "the access token expired and the authorization server "
                          f"cannot be reached to refresh it ({self.last_error or 'no answer'})")
        return self.issue(tokens, now)

    def issue(self, tokens: TokenSet, now: float | None = None) -> Issued:
        now = self.clock() if now is None else now
        token_type = "DPoP" if tokens.token_type.lower() == "dpop" else "Bearer"  # which header apps send
        return Issued(tokens.access_token, token_type, max(0, int(tokens.expires_in(now))),
                      tokens.scope or self.provider.scope or "")

    async def refresh(self) -> None:
        """Refresh now, or join the refresh already in flight."""
        await self.refresher.refresh()

    def granted_scopes(self) -> frozenset[str]:
        assert self.tokens is not None
        return frozenset((self.tokens.scope or self.provider.scope or "").split())

    def asked_scopes(self) -> frozenset[str]:
        return frozenset((self.provider.scope or "").split())

    def _narrow_key(self, query: TokenQuery, app: App) -> narrowing.NarrowKey | None:
        self.require_grant()
        return narrowing.narrow_key(query, app, self.granted_scopes(), self.asked_scopes(), self.provider.resource)

    async def step_up(self, app: App, acr_values: str | None, max_age: int | None,
                      min_ttl: int = 60) -> StepUpPending | StepUpDone:
        return await self.step_ups.ask(app, acr_values, max_age, min_ttl)

    def status(self) -> Status:
        now = self.clock()
        code = self.pairing
        holds = self.tokens is not None and self.state in HOLDS_GRANT
        return Status(
            state=self.state.value, pairing=code, pairing_expires_in=code.expires_in(now) if code else None,
            account=self.tokens.account if self.tokens else None,
            access_token_expires_in=max(0, int(self.tokens.expires_in(now))) if holds else None,  # type: ignore[union-attr]
            last_refresh=_iso(self.last_refresh), last_error=self.last_error, last_error_kind=self.last_error_kind,
            warnings=self.warnings(), message=self.message, clock_synced=self.clock_synced(), key_source=self.key_source,
            pending_revocations=len(self.revocations), version=__version__, device_token=self.device_tokens.status())

    def warnings(self) -> tuple[str, ...]:
        """Standing conditions of the grant (or of the last one given up) a person should know of."""
        found = grant_warnings(self.tokens, self.endpoints, self.provider.client_auth, self.clock()) \
            if self.tokens is not None and self.state in HOLDS_GRANT else ()
        return (found + ((self.not_revoked,) if self.not_revoked else ())
                + ((WAITING,) if self.network_time.waiting else ()))

    @property
    def pending_revocations(self) -> int:
        """Revocations owed to the server (RFC 7009), retried until it answers 200."""
        return len(self.revocations)

    def healthy(self) -> bool:
        """Pairing, or a token held or to be had at once: a grant whose refresh was put off after
        a restart (the restart spread, a clock not yet set) refreshes as soon as an app asks."""
        if self.state is State.PAIRING:
            return True
        tokens = self.tokens
        if self.state not in HOLDS_GRANT or tokens is None:
            return False
        return tokens.valid_for(0, self.clock()) or (
            self.state is not State.OFFLINE and bool(tokens.refresh_token) and self.refresher.refused is None)

    async def halt(self) -> None:
        """Stop every task at once and save nothing: what a power cut does (the simulator's
        fleet). A write already under way lands whole or not at all (``files.write_atomic``)."""
        await self._cancel_tasks()

    def begin_pairing(self) -> None:
        """A new code, or first the registration a device with [registration] pairs as."""
        if self.registering is not None and self.registering.needed:
            self.registering.start()
        elif self.renewing is not None and self.renewing.pending:
            self.renewing.start()
        else:
            self.pairer.start()

    async def pair(self) -> Status:
        if self.state in HOLDS_GRANT:
            raise Refused("invalid_request", f"already paired{self._account_suffix()}; unpair first")
        if self.registering is not None and self.registering.needed:
            self.registering.start()
            raise Refused("pairing_in_progress", "the device registers with the authorization server before it "
                          f"pairs ({self.last_error or 'under way'}); `devicelink status` shows the code when it comes")
        if self.renewing is not None and self.renewing.pending:
            self.renewing.start()
            raise Refused("pairing_in_progress", "a factory reset is making the device a new key before it pairs; "
                          "`devicelink status` shows the code when it comes")
        self.pairer.start()
        await self.pairer.wait_for_code()
        return self.status()

    async def unpair(self) -> Unpaired:
        # From this instant no refresh or narrowed refresh starts (require_grant refuses).
        # One in flight may already have rotated the refresh token at the server: wait for it
        # (it holds the exchange lock and saves first), so the token revoked is the live one
        # and no late save brings the grant back.
        self.unpairing = True
        try:
            await self._settle_refresh()
            await self._cancel_tasks()
            async with self.exchange_lock:
                tokens = self.tokens
                self.tokens = None  # served no more
                self.message = "Unpaired. Press the button or run `devicelink pair` to pair again."
                if tokens is not None:
                    # RFC 7009 §2.2.1: until the server answers 200 the token may still be valid, so it
                    # is owed a revocation, kept encrypted on disk and retried until it goes through.
                    self.revocations.owe_grant(tokens)
                await self.state_file.save(None)  # the grant is gone from disk; owed revocations stay
                self.device_tokens.forget()  # the device's own tokens start afresh with the next owner too
                self.move(Event.UNPAIRED)
        finally:
            self.unpairing = False
        return await self.revocations.after_unpair(tokens)

    # -- the button (gpio/button.py) ----------------------------------------------

    def button_pressed(self) -> None:
        """A short press: a new code when the device is waiting for one (or showing one);
        otherwise the screen is drawn again, which is how the owner sees the status."""
        if self.state in (State.UNPAIRED, State.REAUTH_REQUIRED, State.PAIRING):
            logger.info("button: new code")
            self.begin_pairing()
        else:
            self.redraw()

    def show_reset_countdown(self, seconds: int | None) -> None:
        """While the button is held: the seconds left before a factory reset (None: cancelled)."""
        if seconds != self.reset_in:
            self.reset_in = seconds
            self.redraw()

    async def factory_reset(self) -> Unpaired:
        """The button was held to the end (or ``devicelink unpair --factory``): revoke, wipe, and
        show a code for the next owner; with [registration], register afresh first (the old
        client is deleted at the server: engine/registering.py)."""
        logger.info("factory reset")
        self.reset_in = None
        answer = await self.unpair()
        if self.renewing is not None:  # noted durably first: a power cut from here on still replaces the key
            self.renewing.begin()
        if self.registering is not None:
            await self.registering.reset()
        elif self.renewing is not None:
            self.renewing.start()
        else:
            self.pairer.start()
        return answer

    # -- what the rooms share --------------------------------------------------------

    def require_grant(self) -> None:
        if self.state in HOLDS_GRANT and self.tokens is not None and not self.unpairing:
            return
        if self.unpairing:
            raise Refused("not_paired", "the device is being unpaired")
        if self.state is State.PAIRING:
            if self.pairing is None:  # no code to approve: asking the server for one
                why = self.last_error or "the authorization server has not answered yet"
                raise Refused("pairing_in_progress", f"the device is pairing but has no code to show yet ({why})")
            raise Refused("pairing_in_progress", "the device is pairing; approve the code on screen")
        if self.state is State.REAUTH_REQUIRED:
            raise Refused("reauth_required", f"the device must be paired again ({self.last_error or 'grant ended'})")
        raise Refused("not_paired", "the device is not paired; run `devicelink pair`")

    def can_revoke(self) -> bool:
        return bool(self.endpoints and self.endpoints.revocation_endpoint)

    async def revocations_settled(self) -> None:
        """Until no revocation is owed (for tests and an orderly factory reset)."""
        await self.revocations.settled()

    async def step_ups_settled(self) -> None:
        """Until no step-up is under way (for tests)."""
        if self._step_ups is not None:
            await self._step_ups.settled()

    # -- tasks --------------------------------------------------------------------

    async def _settle_refresh(self) -> None:
        await self.refresher.settle(STOP_GRACE)
        for pending in self.narrowed.pending():  # a narrowed refresh may rotate the refresh token too
            await asyncio.wait([pending], timeout=STOP_GRACE)

    async def _cancel_tasks(self) -> None:
        if self._step_ups is not None:
            self._step_ups.discard_all()
        for task in (self._pairer and self._pairer.task, self.refresher.task, self.refresher.inflight,
                     self.refresher.trusting):
            await cancel(task)
        await self.revocations.cancel()
        if self.registering is not None:
            await self.registering.cancel()
        if self.renewing is not None:
            await self.renewing.cancel()
        if self._pairer is not None:
            self._pairer.task = None
        self.refresher.task = self.refresher.inflight = self.refresher.trusting = None

    def _account_suffix(self) -> str:
        account = self.tokens.account if self.tokens else None
        return f" as {account.name or account.sub}" if account else ""


def _no_refresh_message(tokens: TokenSet) -> str | None:
    """What the screen says of a grant that cannot renew itself (issue 10, item 12)."""
    return None if tokens.refresh_token else "No refresh token: pair again when this sign-in ends."


def _configured_endpoints(p: ProviderConfig) -> dict[str, str]:
    return {name: url for name, url in ((n, getattr(p, n)) for n in m.ENDPOINT_NAMES) if url}


def _iso(wall: float | None) -> str | None:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds") if wall else None
