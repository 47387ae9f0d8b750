"""Step-up (RFC 9470): a stronger sign-in for one app, as a device authorization of its own.

The standing grant is untouched; the stronger token is the asking app's alone.
A server that ignores ``acr_values`` or ``max_age`` says so only through the ID
token's ``acr`` and ``auth_time``: the app is told plainly (``step_up_unsupported``)
instead of getting a token its API will refuse again. The session's own refresh
token is revoked when the session is discarded.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from devicelink.engine import narrowing
from devicelink.engine.answers import StepUpChanged, StepUpDone, StepUpPending
from devicelink.errors import (AuthorizationDenied, DeviceCodeExpired, GrantFailed,
                               ProtocolViolation, Refused)
from devicelink.lifecycle import PairingCode
from devicelink.oauth import grant
from devicelink.oauth import refresh as flows
from devicelink.oauth import messages as m
from devicelink.policy import App
from devicelink.tokens.model import TokenSet

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)

MAX_STEP_UPS = 8  # step-up sessions at once, all apps together
STEP_UPS_PER_APP = 2
FORGET_AFTER = 300.0  # a failed step-up nobody asked about again is forgotten after this
AUTH_TIME_SKEW = 60  # seconds of clock difference allowed when checking max_age (RFC 9470 §4)
ANSWER_WAIT = 30.0  # how long a step-up request waits for the code it will show

StepUpKey = tuple[str, str | None, int | None]  # (app, acr_values, max_age)


@dataclass
class Session:
    app: str
    acr_values: str | None
    max_age: int | None
    code: PairingCode | None = None
    tokens: TokenSet | None = None
    error: Refused | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # a code is shown, or it ended
    task: asyncio.Task[None] | None = None
    finished: bool = False
    finished_at: float = 0.0
    refresh_token: str | None = field(default=None, repr=False)  # revoked when the session is discarded


class StepUps:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.sessions: dict[StepUpKey, Session] = {}

    def shown(self) -> Session | None:
        """The session whose code is on screen (the first one still waiting)."""
        return next((s for s in self.sessions.values() if s.code and not s.finished), None)

    async def ask(self, app: App, acr_values: str | None, max_age: int | None,
                  min_ttl: int = 60) -> StepUpPending | StepUpDone:
        """Pending while the user has yet to confirm, done once they have. Raises when it
        failed (the next call starts afresh)."""
        device = self.device
        device.require_grant()
        scope, resources = narrowing.step_up_request(app, device.granted_scopes() | device.asked_scopes(),
                                                     device.provider.resource)
        key = (app.name, acr_values, max_age)
        self._prune()
        session = self.sessions.get(key)
        if session is not None and session.finished:
            tokens = session.tokens
            if session.error is not None or tokens is None or not tokens.valid_for(
                    narrowing.wanted_ttl(min_ttl, tokens.lifetime), device.clock()):
                self.discard(key)
                if session.error is not None:
                    raise session.error
                session = None
        if session is None:
            if sum(1 for other in self.sessions.values() if other.app == app.name) >= STEP_UPS_PER_APP \
                    or len(self.sessions) >= MAX_STEP_UPS:
                raise Refused("invalid_request", "too many step-ups under way; finish one first")
            session = self.sessions[key] = Session(app.name, acr_values, max_age)
            session.task = asyncio.create_task(self._run(session, scope, resources, app))
            try:  # until a code is shown or it has ended
                await asyncio.wait_for(session.settled.wait(), ANSWER_WAIT)
            except TimeoutError:
                pass
            if session.finished and session.error is not None:
                self.discard(key)
                raise session.error
        if session.tokens is not None:
            account = session.tokens.account
            return StepUpDone(device.issue(session.tokens), account and account.acr, account and account.auth_time)
        code = session.code
        return StepUpPending(code, code and code.expires_in(device.clock()))

    async def _run(self, session: Session, scope: str, resources: tuple[str, ...], app: App) -> None:
        device = self.device
        extra = tuple((k, str(v)) for k, v in (("acr_values", session.acr_values), ("max_age", session.max_age))
                      if v is not None)

        def show(step: grant.Show) -> None:
            session.code = step.code
            session.settled.set()
            logger.info("step-up for %s: confirm code %s at %s", session.app, step.code.user_code,
                        step.code.verification_uri)
            device.events.publish("step_up", StepUpChanged(session.app, "pending"))
            device.redraw()

        ticker = asyncio.create_task(device.tick())
        try:
            endpoints = device.endpoints or await device.pairer.resolve_endpoints()
            flow = grant.device_flow(endpoints, scope, resources, device.provider.issuer,
                                     device.provider.client_id, device.rng, extra,
                                     verification=device.pairer.verification())
            tokens = await device.http.run(flow, show=show, sleep=device.sleep, observe=device.pairer.observe)
            # A grant of its own: its refresh token is revoked when the session is discarded
            # (not now: RFC 7009 §2.1 lets the server revoke the access token along with it).
            session.refresh_token = tokens.refresh_token
            session.error = self._shortfall(session, tokens)
            if session.error is None and app.scope is not None and "openid" not in app.scope:
                tokens = await self._narrow(session, tokens, endpoints, " ".join(sorted(set(scope.split()) - {"openid"})))
            if session.error is None:
                session.tokens = replace(tokens, refresh_token=None)
        except asyncio.CancelledError:
            raise
        except DeviceCodeExpired:
            session.error = Refused("forbidden", "nobody confirmed the stronger sign-in before the code expired; "
                                    "ask again for a new code")
        except AuthorizationDenied:
            session.error = Refused("forbidden", "the user declined the stronger sign-in")
        except (GrantFailed, ProtocolViolation) as exc:
            session.error = Refused("upstream_unavailable", f"step-up failed: {exc}")
        except Refused as exc:
            session.error = exc
        except Exception as exc:
            logger.exception("step-up failed unexpectedly")
            session.error = Refused("upstream_unavailable", f"step-up failed: unexpected {type(exc).__name__}")
        finally:
            ticker.cancel()
            session.finished = True
            session.finished_at = device.clock()
            session.settled.set()
            outcome = (f"failed: {session.error.description}" if session.error
                       else "done" if session.tokens else "cancelled")
            logger.info("step-up for %s: %s", session.app, outcome)
            device.events.publish("step_up", StepUpChanged(session.app, "done" if session.tokens else "failed"))
            device.redraw()

    async def _narrow(self, session: Session, tokens: TokenSet, endpoints: m.Endpoints, scope: str) -> TokenSet:
        """``openid`` was added only to learn the acr: the app gets its own scopes (RFC 6749 §6)."""
        device = self.device
        if not tokens.refresh_token:
            raise Refused("forbidden", "the step-up's token carries openid, which this app may not have, "
                          "and the server issued no refresh token to narrow it with")
        flow = flows.narrowed(endpoints, tokens.refresh_token, device.provider.issuer, device.provider.client_id,
                              scope=scope, resource=None)
        try:
            narrowed = await device.http.run(flow, sleep=device.sleep)
        except (GrantFailed, ProtocolViolation) as exc:
            raise Refused("upstream_unavailable", f"could not narrow the step-up token to {scope!r}: {exc}") from None
        session.refresh_token = narrowed.refresh_token or tokens.refresh_token
        return replace(narrowed, account=tokens.account)

    def _shortfall(self, session: Session, tokens: TokenSet) -> Refused | None:
        """RFC 9470 §4: what the ID token says of the sign-in must match what was asked,
        and it must be the device's own account."""
        device = self.device
        account = tokens.account
        owner = device.tokens.account if device.tokens else None
        if account and owner and account.sub != owner.sub:
            return Refused("forbidden", f"the stronger sign-in was by another account ({account.name or account.sub}) "
                           f"than the device's ({owner.name or owner.sub})")
        if session.acr_values is not None:
            acr = account.acr if account else None
            if acr not in session.acr_values.split():
                return Refused("step_up_unsupported", "the authorization server ignored acr_values "
                               f"{session.acr_values!r}: the sign-in it reports is "
                               f"{'acr ' + repr(acr) if acr else 'without an acr claim'}")
        if session.max_age is not None:
            auth_time = account.auth_time if account else None
            if auth_time is None:
                return Refused("step_up_unsupported", "the authorization server ignored max_age: "
                               "its ID token has no auth_time")
            age = device.wall_clock() - auth_time
            if device.clock_synced() is not False and age > session.max_age + AUTH_TIME_SKEW:
                return Refused("step_up_unsupported", "the authorization server ignored max_age: the sign-in "
                               f"it reports is {age:.0f} s old")
        return None

    def _prune(self) -> None:
        """Drop finished step-ups nobody will use: tokens expired, or a failure not asked about for a while."""
        now = self.device.clock()
        for key, session in list(self.sessions.items()):
            if session.finished and ((session.tokens is not None and not session.tokens.valid_for(0, now))
                                     or (session.tokens is None and now - session.finished_at > FORGET_AFTER)):
                self.discard(key)

    def discard(self, key: StepUpKey) -> None:
        session = self.sessions.pop(key)
        if session.task is not None and not session.task.done():
            session.task.cancel()
        if session.refresh_token and self.device.can_revoke():  # give the extra grant back (RFC 7009)
            self.device.revocations.owe(session.refresh_token, "refresh_token")
            session.refresh_token = None
            self.device.revocations.start(first_delay=0.0)

    def discard_all(self) -> None:
        for key in list(self.sessions):
            self.discard(key)

    async def settled(self) -> None:
        tasks = [s.task for s in self.sessions.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks)
