"""Device-level tokens: the device's own access tokens, with no user behind them (telemetry,
updates), got with the client credentials grant (RFC 6749 §4.4, ``oauth/client_credentials.py``)
for apps whose ``[[client]]`` entry has a ``device_scope`` (``GET /v1/token?identity=device``).

- **Independent of the user's grant.** Served while unpaired, pairing, offline or
  ``reauth_required``; they never touch the refresh token or the exchange lock.
- **Narrowed like user tokens.** An app gets at most its ``device_scope`` of
  ``[device_token] scope``, and only resources the config allows (``narrowing.device_key``);
  each (scope, resource) is a request of its own, cached per key.
- **One upstream request per key**, however many apps ask at once; ``min_ttl`` is honoured
  as for user tokens (a token younger than half its lifetime always satisfies it), and no
  token is asked again sooner than the refresh floor after it came.
- **On demand, never on a timer.** A token nobody asks for costs nothing. One asked for
  after 75-85 % of its lifetime is served at once and renewed in the background, so an app
  that keeps asking never waits for the server.
- **In memory only.** A client credentials token is cheap to get again (one request, no
  user), so nothing is written to disk; a restart asks again when an app does.
- **Failures back off per key** (5 s doubling to 5 min, or ``Retry-After``): meanwhile the
  cached token is served while it is valid, else the same refusal, without asking the server.
- **The hourly request budget** is shared with refreshes; the renewal of a token its own
  lifetime calls for is allowed beyond it, as the grant's refresh is.
- **Unpair and factory reset drop them** without revoking: they carry no user's authority,
  expire on their own, and whoever could take one from the daemon could ask for another.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from devicelink.budget import RequestBudget
from devicelink.clock import explain_failure
from devicelink.config import transport_allowed
from devicelink.device_token import DeviceTokenConfig
from devicelink.engine import narrowing
from devicelink.engine.answers import DeviceTokenStatus, Issued, TokenQuery
from devicelink.engine.perkey import Backoffs, Shared
from devicelink.errors import ClientRejected, GrantFailed, ProtocolViolation, Refused, TargetRefused
from devicelink.oauth.client_credentials import GRANT_NOT_ALLOWED, client_credentials
from devicelink.policy import App
from devicelink.tokens.model import TokenSet

if TYPE_CHECKING:
    from devicelink.engine.device import Device

logger = logging.getLogger(__name__)

MAX_KEYS = 64  # keys cached; an app cycling through more only costs requests
Key = narrowing.NarrowKey


class DeviceTokens:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.cache: dict[Key, TokenSet] = {}
        self._renew_at: dict[Key, float] = {}  # monotonic: from then on an ask renews it in the background
        self._fetching: Shared[Key, TokenSet] = Shared()
        self._failures: Backoffs[Key] = Backoffs(device.rng, device.clock)
        self._refusals: dict[Key, Refused] = {}
        self._generation = 0  # forget() moves it on: a request in flight then is not cached
        self.last_error: str | None = None

    @property
    def settings(self) -> DeviceTokenConfig | None:
        return self.device.cfg.device_token

    def key(self, query: TokenQuery, app: App) -> Key:
        return narrowing.device_key(query, app, self.settings)

    # -- what apps ask -----------------------------------------------------------------

    def token_now(self, query: TokenQuery, app: App) -> Issued | None:
        """The answer if it needs no request upstream, else None (call :meth:`token`).
        Raises :class:`Refused` when ``app`` may not have it, or while its key backs off."""
        key = self.key(query, app)
        device, now = self.device, self.device.clock()
        tokens = self.cache.get(key)
        if tokens is not None and (tokens.valid_for(narrowing.wanted_ttl(query.min_ttl, tokens.lifetime), now)
                                   or device.refresher.too_soon(tokens, now)):  # under the floor: as it is
            if now >= self._renew_at[key] and self._failures.until(key, now) is None:
                self._fetching.start(key, lambda: self._fetch(key))  # renewed ahead: nobody waits for it
            return device.issue(tokens, now)
        retry_at = self._failures.until(key, now)
        if retry_at is None:
            return None
        if tokens is not None and tokens.valid_for(0, now):
            return device.issue(tokens, now)  # the last one, while it lasts
        refusal = self._refusals[key]
        raise Refused(refusal.code, f"{refusal.description} (next try in {retry_at - now:.0f} s)")

    async def token(self, query: TokenQuery, app: App) -> Issued:
        answer = self.token_now(query, app)
        if answer is not None:
            return answer
        key = self.key(query, app)
        tokens = await self._fetching.join(key, lambda: self._fetch(key))
        if not tokens.valid_for(0, self.device.clock()):
            raise Refused("upstream_unavailable", "the device-level token the server issued has already expired")
        return self.device.issue(tokens)

    def status(self) -> DeviceTokenStatus | None:
        if self.settings is None:
            return None
        now = self.device.clock()
        return DeviceTokenStatus(sum(t.valid_for(0, now) for t in self.cache.values()), self.last_error)

    def forget(self) -> None:
        """Unpair or factory reset: every device-level token goes (none is revoked, see above)."""
        self._generation += 1
        self.cache.clear()
        self._renew_at.clear()
        self._failures.clear()
        self._refusals.clear()
        self.last_error = None

    async def cancel(self) -> None:
        await self._fetching.cancel()

    async def settled(self) -> None:
        """Until no request is in flight, a renewal ahead of time included (for tests)."""
        while pending := [task for task in self._fetching.pending() if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- upstream ----------------------------------------------------------------------

    async def _fetch(self, key: Key) -> TokenSet:
        device, generation = self.device, self._generation
        scope, resource = key
        now = device.clock()
        cached = self.cache.get(key)
        # A renewal the token's own lifetime calls for is allowed beyond the budget, as the grant's refresh is.
        allowance = RequestBudget.allowance(cached.lifetime) if cached is not None else 0
        if not device.budget.allows(now, allowance):
            wait = device.budget.next_free(now, allowance) - now
            raise self._failed(key, "budget", Refused("upstream_unavailable", "cannot get a device-level token: "
                               f"the hourly request budget ({device.budget.limit} requests) is spent"), wait)
        device.budget.spend(now)
        try:
            endpoint = await self._token_endpoint()
            flow = client_credentials(endpoint, device.provider.issuer, device.provider.client_id,
                                      scope=scope, resource=resource)
            tokens = await device.http.run(flow, sleep=device.sleep)
        except TargetRefused as exc:
            raise self._failed(key, "refused", Refused("forbidden", str(exc)), exc.retry_after) from None
        except ClientRejected as exc:
            raise self._failed(key, "client", Refused("upstream_unavailable", "cannot get a device-level token: "
                               f"{exc}; {self._client_hint(exc)}"), exc.retry_after) from None
        except (GrantFailed, ProtocolViolation) as exc:
            if isinstance(exc, GrantFailed) and exc.unanswered is not None:
                reason = "no answer from the authorization server: " + explain_failure(exc.unanswered,
                                                                                       device.clock_synced())
            else:
                reason = str(exc)
            raise self._failed(key, "failed", Refused("upstream_unavailable", f"cannot get a device-level token: "
                               f"{reason}"), getattr(exc, "retry_after", None)) from None
        except Exception as exc:  # a bug or an answer nobody foresaw: said, and backed off like any failure
            logger.exception("device-level token request failed unexpectedly")
            raise self._failed(key, "failed", Refused("upstream_unavailable", "cannot get a device-level token: "
                               f"unexpected {type(exc).__name__}"), None) from None
        self._failures.succeeded(key)
        self._refusals.pop(key, None)
        if self.last_error is not None and generation == self._generation:
            logger.info("device-level tokens are served again")
            self.last_error = None
        self._count("ok")
        if generation == self._generation:  # not forgotten meanwhile (an unpair)
            if key not in self.cache and len(self.cache) >= MAX_KEYS:
                oldest = next(iter(self.cache))
                del self.cache[oldest], self._renew_at[oldest]
            self.cache[key] = tokens
            self._renew_at[key] = max(tokens.refresh_due(device.rng), tokens.obtained_at + device.refresh_floor)
        return tokens

    def _failed(self, key: Key, outcome: str, refusal: Refused, retry_after: float | None) -> Refused:
        """Note a failure for ``key``: askers get ``refusal`` until its backoff is over."""
        delay = self._failures.failed(key, retry_after)
        self._refusals[key] = refusal
        self.last_error = refusal.description
        self._count(outcome)
        scope, resource = key
        logger.warning("device-level token for scope %r%s: %s; next try in %.0f s", scope,
                       f" and resource {resource!r}" if resource else "", refusal.description, delay)
        return refusal

    def _client_hint(self, exc: ClientRejected) -> str:
        """What to check when the server refuses the client itself."""
        if exc.oauth_error in GRANT_NOT_ALLOWED:
            return "the server must allow [provider] client_id the client_credentials grant"
        from devicelink.engine.pairing import CLIENT_HINT  # only on this rare path

        return CLIENT_HINT[self.device.provider.client_auth]

    async def _token_endpoint(self) -> str:
        """The token endpoint: the config's, the grant's, or the discovery document's (kept
        with pairing's; fetched with one attempt when none is kept, so an unreachable server
        is an answer at once, not a wait)."""
        device = self.device
        if known := device.configured.get("token_endpoint") or (device.endpoints and device.endpoints.token_endpoint):
            return known
        from devicelink.oauth import grant
        from devicelink.oauth.metadata import Discovered

        discovery = device.pairer.discovery
        document = kept = await discovery.kept()
        if document is None:
            answer = await device.http.run(grant.discovery_answer(device.provider.issuer, None), sleep=device.sleep)
            document = Discovered.of(answer, device.provider.issuer, device.wall_clock())
        url = document.metadata.get("token_endpoint")
        if not isinstance(url, str) or not url:
            raise ProtocolViolation("the server's metadata has no token_endpoint; set it in [provider]")
        if not transport_allowed(url, device.provider.allow_insecure_http):
            raise ProtocolViolation(f"the discovery document's token_endpoint {url} is not https")
        if kept is None:
            await discovery.keep(document)
        return url

    def _count(self, outcome: str) -> None:
        self.device.metrics.inc("devicelink_client_credentials_requests_total", outcome=outcome)
