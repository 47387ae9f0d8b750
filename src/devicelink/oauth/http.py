"""Runs the OAuth core over HTTP with an injected ``httpx.AsyncClient``.

This is the only place that talks to the authorization server. It adds client
authentication to every request that asks for it (RFC 6749 §2.3; per-device
keys plug in here later), bounds every exchange in time and size, and turns
whatever the network does into a :class:`Response` or a :class:`Failure` for
the core to judge. TLS verification is httpx's default and is never turned off.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Awaitable, Callable, Generator, TypeVar
from urllib.parse import quote, urlencode

import httpx

from devicelink import __version__
from devicelink.oauth import grant
from devicelink.oauth import messages as m

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # a token response is a few KiB; 1 MiB is generous
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
DEADLINE = 30.0  # whole exchange, so a server dribbling bytes cannot hold us

T = TypeVar("T")


class ClientAuth:
    """Client authentication for token, device and revocation requests (RFC 6749 §2.3.1).

    ``none`` is a public client that sends its ``client_id`` (RFC 8628 §3.1, G19);
    ``client_secret_basic`` form-encodes id and secret before base64 (§2.3.1);
    ``client_secret_post`` puts both in the body.
    """

    def __init__(self, client_id: str, method: str = "none", secret: str | None = None) -> None:
        self.client_id, self.method, self._secret = client_id, method, secret

    def __repr__(self) -> str:
        return f"ClientAuth({self.client_id!r}, {self.method!r})"

    def apply(self, form: list[tuple[str, str]], headers: dict[str, str]) -> None:
        if self.method == "client_secret_basic":
            pair = f"{quote(self.client_id, safe='')}:{quote(self._secret or '', safe='')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form.append(("client_id", self.client_id))
            if self.method == "client_secret_post":
                form.append(("client_secret", self._secret or ""))


class OAuthHttp:
    def __init__(self, client: httpx.AsyncClient, auth: ClientAuth,
                 clock: Callable[[], float] = time.monotonic, deadline: float = DEADLINE) -> None:
        self.client, self.auth, self.clock, self.deadline = client, auth, clock, deadline

    async def send(self, request: m.Request) -> m.Reply:
        """One exchange. Never raises for network trouble: that is a :class:`Failure`."""
        form = list(request.form)
        headers = {"accept": "application/json", "user-agent": f"devicelink/{__version__}"}
        if request.authenticate:
            self.auth.apply(form, headers)
        try:
            # wait_for, not asyncio.timeout: the exchange runs in a task of its own, so the
            # deadline still ends in TimeoutError under anyio 3 (httpcore 0.16, Debian 12),
            # which leaves a task's cancelling() count raised after every TCP connect.
            return await asyncio.wait_for(self._exchange(request, form, headers), self.deadline)
        except TimeoutError:
            return self._failed(request, f"no complete answer within {self.deadline:g} s")
        # httpcore < 0.17 lets ssl.SSLError (an OSError) through unwrapped; InvalidURL is
        # what a discovered endpoint with a control character in it gets.
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return self._failed(request, _describe(exc))

    async def _exchange(self, request: m.Request, form: list[tuple[str, str]], headers: dict[str, str]) -> m.Reply:
        body = None
        if request.method == "POST":
            # Encoded here, not with data=dict(...): a parameter may repeat (RFC 8707 resource).
            body = urlencode(form).encode()
            headers["content-type"] = "application/x-www-form-urlencoded"
        async with self.client.stream(request.method, request.url, headers=headers, content=body,
                                      timeout=TIMEOUT) as resp:
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    return self._failed(request, f"answer larger than {MAX_BODY} bytes")
            return m.Response(resp.status_code, bytes(body), self.clock(),
                              {k.lower(): v for k, v in resp.headers.items()})

    def _failed(self, request: m.Request, reason: str) -> m.Failure:
        logger.warning("%s request to %s failed: %s", request.kind, request.url, reason)
        return m.Failure(reason, self.clock())

    async def run(self, flow: Generator[grant.Step, m.Reply, T],
                  show: Callable[[grant.Show], None] | None = None,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                  observe: Callable[[m.Request, m.Reply], None] | None = None) -> T:
        """Drive a core generator to its result: wait until each ``not_before``, send,
        hand back the reply. ``observe`` sees every request and its reply
        (for ``last_error`` and metrics)."""
        reply: m.Reply | None = None
        while True:
            try:
                step = flow.send(reply)  # type: ignore[arg-type]
            except StopIteration as done:
                return done.value
            if isinstance(step, grant.Show):
                if show is not None:
                    show(step)
                reply = None
                continue
            if step.not_before is not None and (wait := step.not_before - self.clock()) > 0:
                await sleep(wait)
            reply = await self.send(step.request)
            if observe is not None:
                observe(step.request, reply)


def _describe(exc: Exception) -> str:
    """A short reason without URLs' query strings or bodies."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text[:120]}" if text else name
