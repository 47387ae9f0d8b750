"""Narrowed tokens: an app's own access token for a subset of the grant's scopes, or for
one resource (RFC 8707), got with a refresh request (RFC 6749 §6) and cached per key.

- One upstream request per (scope, resource), however many apps ask at once.
- They take the same turn as the grant's refresh (``device.exchange_lock``), and a
  refresh token rotated by one is saved as the grant's before anything is served.
- A failed key backs off on its own (5 s doubling to 5 min, or Retry-After); its
  cached token is served meanwhile.
- They spend the hourly budget without the allowance kept for the grant's own refresh,
  so apps cycling through many keys cannot starve it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from devicelink.clock import explain_failure
from devicelink.engine.narrowing import NarrowKey
from devicelink.engine.perkey import Backoffs, Shared
from devicelink.errors import GrantFailed, ProtocolViolation, Refused, RefreshRejected, ScopeIgnored, TargetRefused
from devicelink.lifecycle import HOLDS_GRANT, Event, State
from devicelink.oauth import refresh as flows
from devicelink.tokens.model import TokenSet

if TYPE_CHECKING:
    from devicelink.engine.device import Device

MAX_NARROWED = 64  # keys cached; an app cycling through more only costs refreshes


class Narrowed:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.cache: dict[NarrowKey, TokenSet] = {}
        self._fetching: Shared[NarrowKey, TokenSet] = Shared()
        self._failures: Backoffs[NarrowKey] = Backoffs(device.rng, device.clock)

    def forget(self) -> None:
        """The grant ended: its narrowed tokens and their backoffs go with it."""
        self.cache.clear()
        self._failures.clear()

    def pending(self) -> list:
        return self._fetching.pending()

    async def token(self, key: NarrowKey) -> TokenSet:
        """After a failure, no request before its backoff is over (the cached token is served)."""
        device, now = self.device, self.device.clock()
        retry_at = self._failures.until(key, now)
        if retry_at is not None:
            cached = self.cache.get(key)
            if cached is not None and cached.valid_for(0, now):
                return cached
            raise Refused("upstream_unavailable", f"cannot get a narrowed token ({device.last_error or 'no answer'}); "
                          f"next try in {retry_at - now:.0f} s")
        tokens = await self._fetching.join(key, lambda: self._fetch(key))
        if not tokens.valid_for(0, device.clock()):
            raise Refused("upstream_unavailable", "the narrowed access token the server issued has already expired")
        return tokens

    async def _fetch(self, key: NarrowKey) -> TokenSet:
        scope, resource = key
        device = self.device
        if not await device.refresher.save_outstanding():  # a rotation now would be lost too
            raise Refused("upstream_unavailable", f"cannot get a narrowed token: {device.last_error}")
        async with device.exchange_lock:
            device.require_grant()
            tokens, endpoints = device.tokens, device.endpoints
            assert tokens is not None
            if not tokens.refresh_token or endpoints is None:
                raise Refused("upstream_unavailable", "this grant has no refresh token, so no narrower "
                              "token can be had; ask without scope and resource")
            now = device.clock()
            if not device.budget.allows(now):
                raise Refused("upstream_unavailable", "hourly request budget spent; try again later")
            device.budget.spend(now)
            flow = flows.narrowed(endpoints, tokens.refresh_token, device.provider.issuer,
                                  device.provider.client_id, scope=scope, resource=resource)
            try:
                parsed = await device.http.run(flow, sleep=device.sleep)
            except RefreshRejected as exc:
                if not flows.definite(exc):
                    # The grant's own refresh confirms a refusal before it ends the grant; here it
                    # may be the narrower request the server disliked. This key backs off.
                    self._count("failed")
                    self._failures.failed(key, exc.retry_after)
                    raise Refused("upstream_unavailable", "cannot get a narrowed token: "
                                  + str(exc).removesuffix("; pair again")) from None
                self._count("rejected")
                if device.state is not State.REFRESHING:
                    device.move(Event.REFRESH_STARTED)
                await device.end_grant(str(exc))
                raise Refused("reauth_required", "the grant has ended; the device must be paired again") from None
            except (TargetRefused, ScopeIgnored) as exc:
                self._count("refused")
                raise Refused(exc.code, str(exc)) from None
            except (GrantFailed, ProtocolViolation) as exc:
                self._count("failed")
                self._failures.failed(key, getattr(exc, "retry_after", None))
                reason = (explain_failure(exc.unanswered, device.clock_synced())
                          if isinstance(exc, GrantFailed) and exc.unanswered else str(exc).removeprefix("refresh failed: "))
                raise Refused("upstream_unavailable", f"cannot get a narrowed token: {reason}") from None
            self._failures.succeeded(key)
            if parsed.refresh_token and parsed.refresh_token != tokens.refresh_token:
                # Rotation (RFC 9700 §4.14.2): the old refresh token is spent. Save the new one
                # as the grant's (its scope is the grant's, RFC 6749 §6) before serving anything.
                fresh = replace(tokens, refresh_token=parsed.refresh_token)
                await device.state_file.save(fresh)
                device.tokens = fresh
            self._count("ok")
            narrowed = replace(parsed, refresh_token=None, account=None)
            if len(self.cache) >= MAX_NARROWED:
                del self.cache[next(iter(self.cache))]
            if device.state in HOLDS_GRANT:
                self.cache[key] = narrowed
            return narrowed

    def _count(self, outcome: str) -> None:
        self.device.metrics.inc("devicelink_refreshes_total", kind="narrowed", outcome=outcome)
