"""Drives the OAuth generators over HTTP: the only module that imports httpx.

Every exchange with the authorization server is a generator in ``oauth/``
(``grant.py``, ``refresh.py``) that yields :class:`~devicelink.oauth.steps.Send`
and is sent the :class:`Response` or :class:`Failure`. :class:`OAuthHttp` sends
them: it passes every request through the client-authentication hook
(``oauth/auth``: client authentication, and DPoP proofs) just before it goes out, retries
included, sends once more with a DPoP server's nonce when it asks for it, bounds every
exchange in time and size, and turns whatever the network does into a
:class:`Failure` for the flow to judge. TLS verification is httpx's default and
is never turned off.

The daemon may hold a grant for hours without a request due, so its
``httpx.AsyncClient`` (a CA bundle, an SSL context, a connection pool: ~30 ms
and ~3 MiB) is made when a request is due and closed after :data:`IDLE_CLOSE`
seconds without one. ``doctor`` drives the same flows with :func:`run_sync`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, Awaitable, Callable, Generator, TypeVar
from urllib.parse import urlencode

from devicelink import __version__
from devicelink.oauth import steps
from devicelink.oauth import messages as m
from devicelink.oauth.auth import ClientAuth, Outgoing
from devicelink.oauth.auth.dpop import NONCE_ERROR

__all__ = ["DEADLINE", "IDLE_CLOSE", "MAX_BODY", "ClientAuth", "OAuthHttp", "run_sync"]

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # a token response is a few KiB; 1 MiB is generous
CONNECT_TIMEOUT, READ_TIMEOUT = 5.0, 10.0
DEADLINE = 30.0  # whole exchange, so a server dribbling bytes cannot hold us
IDLE_CLOSE = 60.0  # seconds without a request before the HTTP client (and its pool) is closed

T = TypeVar("T")


class OAuthHttp:
    """Sends requests for one device. ``client``: an ``httpx.AsyncClient`` the caller owns
    (tests), or None to make one when needed and close it when idle."""

    def __init__(self, client: Any | None, auth: ClientAuth,
                 clock: Callable[[], float] = time.monotonic, deadline: float = DEADLINE,
                 idle_close: float = IDLE_CLOSE) -> None:
        self.auth, self.clock, self.deadline, self.idle_close = auth, clock, deadline, idle_close
        self._client, self._owned = client, client is None
        self._busy = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        #: Awaited before a request signed with the wall clock goes out (the engine waits there
        #: for network time: a Pi boots with a clock that can be days behind). None: never wait.
        self.clock_ready: Callable[[], Awaitable[None]] | None = None

    @property
    def connected(self) -> bool:
        """Whether an HTTP client is open now (for tests and the memory benchmark)."""
        return self._client is not None

    async def send(self, request: m.Request) -> m.Reply:
        """One exchange. Never raises for network trouble: that is a :class:`Failure`.

        With DPoP, an answer ``use_dpop_nonce`` that brings a nonce (RFC 9449 §8) is followed
        by one more send of the same request, prepared afresh (a new proof with that nonce, a
        new client assertion); the caller gets the second answer only."""
        if self.clock_ready is not None and request.authenticate and self.auth.signs:
            await self.clock_ready()
        out = outgoing(request, self.auth, self.clock())
        self._busy += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        try:
            reply = await self._bounded(out)
            if self._nonce_asked(out, reply):
                logger.info("%s request to %s: the server asked for a DPoP nonce; sending it again with it",
                            out.kind, out.url)
                out = outgoing(request, self.auth, self.clock())
                reply = await self._bounded(out)
                self._nonce_asked(out, reply)  # remembers its nonce for the next request; no third send
            return reply
        finally:
            self._busy -= 1
            if self._owned and self._busy == 0 and self._client is not None:
                self._idle_timer = asyncio.get_running_loop().call_later(
                    self.idle_close, lambda: asyncio.ensure_future(self._close_idle()))

    async def _bounded(self, out: Outgoing) -> m.Reply:
        httpx = _httpx()
        try:
            # wait_for, not asyncio.timeout: the exchange runs in a task of its own, so the
            # deadline still ends in TimeoutError under anyio 3 (httpcore 0.16, Debian 12),
            # which leaves a task's cancelling() count raised after every TCP connect.
            return await asyncio.wait_for(self._exchange(out), self.deadline)
        except TimeoutError as exc:
            return self._failed(out, f"no complete answer within {self.deadline:g} s", exc)
        # httpcore < 0.17 lets ssl.SSLError (an OSError) through unwrapped; InvalidURL is
        # what a discovered endpoint with a control character in it gets.
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return self._failed(out, describe_exception(exc), exc,
                                unsent=isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)))

    def _nonce_asked(self, out: Outgoing, reply: m.Reply) -> bool:
        """Whether ``reply`` to a request with a DPoP proof is ``use_dpop_nonce`` with a nonce to
        use (RFC 9449 §8). Any answer's nonce is kept for the next proofs to that server."""
        dpop = self.auth.dpop
        if dpop is None or "dpop" not in out.headers or not isinstance(reply, m.Response):
            return False
        return dpop.answered(out.url, reply.headers) is not None and m.oauth_error(reply) == NONCE_ERROR

    async def _exchange(self, out: Outgoing) -> m.Reply:
        httpx = _httpx()

        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        async with self._client.stream(out.method, out.url, headers=out.headers, content=encode(out),
                                       timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)) as resp:
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    return self._failed(out, f"answer larger than {MAX_BODY} bytes")
            return m.Response(resp.status_code, bytes(body), self.clock(),
                              {k.lower(): v for k, v in resp.headers.items()}, secrets_sent(out),
                              dpop="dpop" in out.headers)

    def _failed(self, out: Outgoing, reason: str, exc: BaseException | None = None,
                unsent: bool = False) -> m.Failure:
        logger.warning("%s request to %s failed: %s", out.kind, out.url, reason)
        return m.Failure(reason, self.clock(), exc, unsent)

    async def _close_idle(self) -> None:
        client, self._idle_timer = self._client, None
        if self._busy == 0 and client is not None:
            self._client = None
            await client.aclose()

    async def aclose(self) -> None:
        """Close the client this object made (never one it was given)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._owned:
            await self._close_idle()

    async def run(self, flow: Generator[steps.Step, m.Reply, T],
                  show: Callable[[steps.Show], None] | None = None,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                  observe: Callable[[m.Request, m.Reply], None] | None = None) -> T:
        """Drive a flow to its result: wait until each ``not_before``, send, hand back the
        reply. ``observe`` sees every request and its reply (for ``last_error`` and metrics)."""
        reply: m.Reply | None = None
        while True:
            try:
                step = flow.send(reply)  # type: ignore[arg-type]
            except StopIteration as done:
                return done.value
            if isinstance(step, steps.Show):
                if show is not None:
                    show(step)
                reply = None
                continue
            if step.not_before is not None and (wait := step.not_before - self.clock()) > 0:
                await sleep(wait)
            reply = await self.send(step.request)
            if observe is not None:
                observe(step.request, reply)


def run_sync(flow: Generator[steps.Step, m.Reply, T], auth: ClientAuth, *, deadline: float = DEADLINE,
             clock: Callable[[], float] = time.monotonic,
             observe: Callable[[m.Request, m.Reply], None] | None = None) -> T:
    """Drive ``flow`` from synchronous code (``doctor``, ``provision``): the same sends,
    hook and bounds as the daemon's, on an event loop of its own for the duration.
    ``observe`` sees every request and its reply, as in :meth:`OAuthHttp.run`."""
    async def drive() -> T:
        http = OAuthHttp(None, auth, clock=clock, deadline=deadline)
        try:
            return await http.run(flow, observe=observe)
        finally:
            await http.aclose()

    return asyncio.run(drive())


def _httpx() -> Any:
    """httpx, imported when the first request is due. Its ``__init__`` imports its own
    command-line client (click, rich, pygments) when they are installed, as Debian's
    python3-httpx always does: ~7 MiB and ~80 ms. Marked absent, httpx uses its stub."""
    sys.modules.setdefault("httpx._main", None)
    import httpx

    return httpx


def outgoing(request: m.Request, auth: ClientAuth, now: float) -> Outgoing:
    """The wire form of ``request``, with client authentication added (afresh on every send)."""
    out = Outgoing(request.kind, request.method, request.url, list(request.form),
                   {"accept": "application/json", "user-agent": f"devicelink/{__version__}"},
                   authenticate=request.authenticate)
    if request.json_body is not None:
        import json

        out.body = json.dumps(request.json_body, separators=(",", ":")).encode()
    if request.bearer is not None:
        out.headers["authorization"] = f"Bearer {request.bearer}"
    auth.prepare(out, now)
    return out


def encode(out: Outgoing) -> bytes | None:
    """The form body (or the JSON one). Encoded here, not with data=dict(...): a parameter
    may repeat (RFC 8707 resource)."""
    if out.body is not None:
        out.headers["content-type"] = "application/json"
        return out.body
    if out.method != "POST":
        return None
    out.headers["content-type"] = "application/x-www-form-urlencoded"
    return urlencode(out.form).encode()


#: Form fields whose values are secrets. A server that echoes one in its error_description
#: (Spring's "Invalid refresh token: <the token>") has it blanked (``messages.error_text``).
SECRET_FIELDS = frozenset({"device_code", "refresh_token", "token", "client_secret", "client_assertion",
                           "code", "code_verifier"})


def secrets_sent(out: Outgoing) -> tuple[str, ...]:
    """The secrets in ``out``: secret form values and the Authorization header's credentials
    (for Basic, the client secret inside them too, as sent and as meant, RFC 6749 §2.3.1)."""
    found = [value for name, value in out.form if name in SECRET_FIELDS and value]
    scheme, _, credentials = out.headers.get("authorization", "").partition(" ")
    if credentials:
        found.append(credentials)
    if scheme.lower() == "basic":
        import base64
        import binascii
        from urllib.parse import unquote_plus

        try:
            secret = base64.b64decode(credentials).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            secret = ""
        found += [secret, unquote_plus(secret)]
    return tuple(found)


def describe_exception(exc: Exception) -> str:
    """A short reason without URLs' query strings or bodies."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text[:120]}" if text else name
