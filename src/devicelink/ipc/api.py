"""The socket API: who is asking (the per-app policy), then what the device answers.

The server (``ipc/server.py``) speaks HTTP and hands each routed request to
:meth:`SocketApi.handle`; this module decides from the peer's credentials
which app it is (``policy.py``), refuses what the app may not do, and turns
the device's answers into responses. What needs no waiting is answered at
once (a cached token, status, health, metrics); the rest returns a coroutine
the server runs in a task.

- ``/v1/health`` answers anyone who can open the socket (monitoring).
- Everything else needs a ``[[client]]`` entry (or uid 0 / the daemon's own
  user); pair and unpair need ``admin = true``; a DPoP proof is signed only for a
  token the app was handed (``engine/proofs.py``).
- Token requests are counted by app and status for ``/metrics``; unlisted
  callers are counted as app ``unlisted``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from devicelink import __version__
from devicelink.engine import Device, Issued, StepUpDone, TokenQuery
from devicelink.errors import DeviceLinkError, Refused
from devicelink.events import Subscription
from devicelink.ipc import answers, routes
from devicelink.ipc.dpop import parse_proof_request
from devicelink.ipc.routes import ApiError, Request, Response, Stream
from devicelink.lifecycle import HOLDS_GRANT, State
from devicelink.policy import App, Peer, Policy, drop_in_dir

__all__ = ["KEEPALIVE_SECONDS", "SocketApi"]

logger = logging.getLogger(__name__)

#: A comment line this often keeps idle event streams (and proxies) from timing out.
KEEPALIVE_SECONDS = 15.0

_TOKEN_REQUESTS = "devicelink_token_requests_total"


class SocketApi:
    def __init__(self, device: Device, policy: Policy, *, keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.device = device
        self.policy = policy
        self.keepalive = keepalive
        # Apps repeat the same few queries, and an answer changes once a second (expires_in):
        # both are kept, in small maps emptied when full. Per instance: no global state.
        self._queries: dict[bytes, TokenQuery] = {}
        self._answers: dict[tuple[Any, ...], Response] = {}
        self._streams: dict[Subscription, Peer] = {}  # open event streams and who reads them
        device.listeners.append(lambda state: self._answers.clear())  # refreshed or unpaired: old tokens go
        self._handlers: dict[str, Callable[[Request, App], Response | Stream | Awaitable[Response]]] = {
            "token": self._token, "status": self._status, "pair": self._pair, "unpair": self._unpair,
            "factory_reset": self._factory_reset,
            "events": self._events, "metrics": self._metrics, "step_up": self._step_up,
            "dpop_proof": self._dpop_proof,
        }

    def reload(self, policy: Policy) -> None:
        """A new policy from SIGHUP: it decides every request from now on, on open connections
        too, and event streams of apps it no longer lists end."""
        self.policy = policy
        for subscription, peer in list(self._streams.items()):
            if policy.identify(peer) is None:
                subscription.close()

    def handle(self, request: Request) -> Response | Stream | Awaitable[Response]:
        """Raises :class:`ApiError` for an error answer (the awaitable too): the engine's
        errors (``errors.py``) become the answers their codes name, here and only here."""
        try:
            answer = self._handle(request)
        except DeviceLinkError as err:
            raise ApiError.of(err) from None
        return self._mapped(answer) if isinstance(answer, Awaitable) else answer

    @staticmethod
    async def _mapped(later: Awaitable[Response]) -> Response:
        try:
            return await later
        except DeviceLinkError as err:
            raise ApiError.of(err) from None

    def _handle(self, request: Request) -> Response | Stream | Awaitable[Response]:
        if request.handler == "health":
            return routes.health_response(self.device.healthy())
        app = self.policy.identify(request.peer)
        if app is None:
            if request.handler == "token":
                self.device.metrics.inc(_TOKEN_REQUESTS, app="unlisted", status="403")
            raise ApiError("forbidden", f"uid {request.peer.uid} is not allowed to use devicelink: "
                           f"no [[client]] entry matches it ({self._where_policy()})")
        return self._handlers[request.handler](request, app)

    def _where_policy(self) -> str:
        """Where this daemon reads its ``[[client]]`` entries."""
        cfg = self.device.cfg
        folder = drop_in_dir(cfg)
        if folder is None:
            return "the daemon runs without a config file"
        return f"see {cfg.path} and {folder}"

    # -- handlers ------------------------------------------------------------

    def _token(self, request: Request, app: App) -> Response | Awaitable[Response]:
        try:
            query = self._queries.get(request.query)
            if query is None:
                query = _remember(self._queries, request.query, routes.parse_token_query(request.query), 256)
            answer = self.device.token_now(query, app)
        except DeviceLinkError as err:
            self.device.metrics.inc(_TOKEN_REQUESTS, app=app.name, status=str(ApiError.of(err).status))
            raise
        if answer is not None:
            self.device.metrics.inc(_TOKEN_REQUESTS, app=app.name, status="200")
            return self._token_response(answer, app)
        return self._token_later(query, app)

    def _token_response(self, issued: Issued, app: App) -> Response:
        self.device.proofs.handed_out(app, issued)  # with DPoP, this app may have proofs for it
        response = self._answers.get(issued)
        if response is None:
            response = _remember(self._answers, issued, answers.token_response(issued), 64)
        return response

    async def _token_later(self, query: TokenQuery, app: App) -> Response:
        try:
            answer = await self.device.token(query, app)
        except DeviceLinkError as err:
            self.device.metrics.inc(_TOKEN_REQUESTS, app=app.name, status=str(ApiError.of(err).status))
            raise
        self.device.metrics.inc(_TOKEN_REQUESTS, app=app.name, status="200")
        return self._token_response(answer, app)

    def _status(self, request: Request, app: App) -> Response:
        return routes.json_response(200, answers.status(self.device.status()))

    def _pair(self, request: Request, app: App) -> Awaitable[Response]:
        self._require_admin(app, "pair")
        return self._accepted(self.device.pair(), answers.status)

    def _unpair(self, request: Request, app: App) -> Awaitable[Response]:
        self._require_admin(app, "unpair")
        return self._accepted(self.device.unpair(), answers.unpaired)

    def _factory_reset(self, request: Request, app: App) -> Awaitable[Response]:
        self._require_admin(app, "reset the device")
        return self._accepted(self.device.factory_reset(), answers.unpaired)

    def _step_up(self, request: Request, app: App) -> Awaitable[Response]:
        acr_values, max_age, min_ttl = parse_step_up(request.body)
        return self._step_up_later(app, acr_values, max_age, min_ttl)

    async def _step_up_later(self, app: App, acr_values: str | None, max_age: int | None,
                             min_ttl: int) -> Response:
        answer = await self.device.step_up(app, acr_values, max_age, min_ttl)
        if isinstance(answer, StepUpDone):
            self.device.proofs.handed_out(app, answer.token)
        return answers.step_up_response(answer)

    def _dpop_proof(self, request: Request, app: App) -> Response:
        asked = parse_proof_request(parse_json_body(request.body), self.device.provider.allow_insecure_http)
        return routes.json_response(200, answers.dpop_proof(self.device.proofs.sign(app, asked)))

    def _metrics(self, request: Request, app: App) -> Response:
        return routes.text_response(200, self.device.metrics.render(self._gauges()))

    def _events(self, request: Request, app: App) -> Stream:
        return Stream(routes.SSE_HEADERS, self._event_stream(request.peer))

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _require_admin(app: App, action: str) -> None:
        if not app.admin:
            raise Refused("forbidden", f"{app.name!r} may not {action}: it needs admin = true in its "
                           "[[client]] entry")

    @staticmethod
    async def _accepted(call: Awaitable[Any], shape: Callable[[Any], dict[str, Any]]) -> Response:
        return routes.json_response(202, shape(await call))

    async def _event_stream(self, peer: Peer) -> AsyncIterator[bytes]:
        """``state`` now (so an app waiting for pairing cannot miss it), then every event
        as it happens, with a comment every ``keepalive`` seconds of quiet."""
        device = self.device
        # Subscribed here, not in _events: a generator closed before it started runs no
        # finally. Before the snapshot, so nothing that happens in between is missed.
        subscription = device.events.subscribe()
        self._streams[subscription] = peer
        try:
            yield b"retry: 2000\n\n"  # reconnect after 2 s (WHATWG HTML §9.2.4)
            yield routes.sse_event("state", answers.event(device.state_event()))
            status = device.status()
            if status.pairing is not None:
                yield routes.sse_event("pairing", answers.pairing(status.pairing, status.pairing_expires_in))
            while True:
                event = await subscription.next(self.keepalive)
                if event is not None:
                    event_id, name, data = event
                    yield routes.sse_event(name, answers.event(data), event_id)
                elif subscription.closed:
                    if subscription.overflowed:
                        logger.warning("an event subscriber fell behind; its stream was ended")
                    return
                else:
                    yield b": keep-alive\n\n"
        finally:
            subscription.close()
            del self._streams[subscription]

    def _gauges(self) -> list[tuple[str, str, dict[str, str], float]]:
        device = self.device
        now = device.clock()
        holds = device.state in HOLDS_GRANT and device.tokens is not None
        gauges: list[tuple[str, str, dict[str, str], float]] = [
            ("devicelink_info", "The daemon's version.", {"version": __version__}, 1),
        ]
        gauges += [("devicelink_state", "1 for the state the device is in.", {"state": s.value},
                    int(device.state is s)) for s in State]
        gauges.append(("devicelink_token_valid", "1 when a valid access token is held.", {},
                       int(holds and device.tokens.valid_for(0, now))))  # type: ignore[union-attr]
        if holds:
            gauges.append(("devicelink_access_token_expires_in_seconds", "Seconds the access token has left.",
                           {}, max(0, int(device.tokens.expires_in(now)))))  # type: ignore[union-attr]
        if device.last_refresh_at is not None:
            gauges.append(("devicelink_last_refresh_age_seconds", "Seconds since the last good refresh.", {},
                           round(now - device.last_refresh_at, 3)))
        gauges.append(("devicelink_pending_revocations", "Revocations still owed to the server.", {},
                       device.pending_revocations))
        gauges.append(("devicelink_event_subscribers", "Open GET /v1/events streams.", {}, len(device.events)))
        return gauges


def _remember(cache: dict, key: Any, value: Any, limit: int) -> Any:
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


def parse_step_up(body: bytes) -> tuple[str | None, int | None, int]:
    """``{"acr_values": "a b" | ["a", "b"], "max_age": seconds, "min_ttl": seconds}`` (RFC 9470 §4:
    what the resource server's ``insufficient_user_authentication`` challenge asked for)."""
    fields = parse_json_body(body)
    acr_values = fields.get("acr_values")
    if isinstance(acr_values, list) and all(isinstance(v, str) for v in acr_values):
        acr_values = " ".join(acr_values)
    if acr_values is not None and (not isinstance(acr_values, str) or len(acr_values) > 1024
                                   or not routes.SCOPE_RE.fullmatch(acr_values)):
        raise ApiError("invalid_request", "acr_values must be space-separated values (RFC 9470 §4)")
    max_age = fields.get("max_age")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int)
                                or not 0 <= max_age <= 10 * 365 * 86400):
        raise ApiError("invalid_request", "max_age must be a number of seconds (RFC 9470 §4)")
    if acr_values is None and max_age is None:
        raise ApiError("invalid_request", "a step-up needs acr_values, max_age or both")
    min_ttl = fields.get("min_ttl", 60)
    if isinstance(min_ttl, bool) or not isinstance(min_ttl, int) or not 0 <= min_ttl <= routes.MAX_MIN_TTL:
        raise ApiError("invalid_request", f"min_ttl must be an integer from 0 to {routes.MAX_MIN_TTL}")
    return acr_values, max_age, min_ttl


def parse_json_body(body: bytes) -> dict[str, Any]:
    """A JSON object body; anything else is 400 invalid_request."""
    try:
        value = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise ApiError("invalid_request", "the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError("invalid_request", "the body must be a JSON object")
    return value
