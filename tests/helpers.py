"""Shared test fakes. Only time is faked: servers, sockets, files and crypto are real."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    """A monotonic clock the test moves by hand, with a ``sleep`` that waits on it.

    Give the same instance to the daemon (clock= and sleep=) and to the development
    server (clock=), and RFC 8628's intervals and expiries pass in no real time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()
        self._slept: asyncio.Event | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._ids), future))
        if self._slept is not None:
            self._slept.set()
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def next_timer(self, timeout: float = 10.0) -> float:
        """The time of the next pending timer, once some task is waiting on one."""
        self._slept = self._slept or asyncio.Event()
        while self.next_wake is None:
            self._slept.clear()
            await asyncio.wait_for(self._slept.wait(), timeout)
        return self.next_wake

    async def timer_beyond(self, delay: float, timeout: float = 10.0) -> float:
        """The first pending timer at least ``delay`` from now, once a task sets one."""
        self._slept = self._slept or asyncio.Event()
        while True:
            later = [when for when, _, f in self._sleepers if not f.done() and when >= self.now + delay]
            if later:
                return min(later)
            self._slept.clear()
            await asyncio.wait_for(self._slept.wait(), timeout)

    @property
    def next_wake(self) -> float | None:
        live = [when for when, _, f in self._sleepers if not f.done()]
        return min(live) if live else None


class StateLog:
    """Collects a Device's states as they happen; ``wait`` awaits one (with a real timeout)."""

    def __init__(self, device) -> None:
        self.seen: list = []
        self._changed = asyncio.Event()
        device.listeners.append(self._on_state)

    def _on_state(self, state) -> None:
        self.seen.append(state)
        self._changed.set()

    async def wait(self, state, timeout: float = 10.0) -> None:
        async def until():
            while state not in self.seen:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(until(), timeout)
        self.seen.clear()


def shaped(answer):
    """An engine answer as the socket shapes it (``ipc/answers.py``): the JSON an app gets;
    a step-up as ``(status, JSON)``."""
    import json

    from devicelink.engine import answers as a
    from devicelink.ipc import answers

    if isinstance(answer, a.Issued):
        return answers.token(answer)
    if isinstance(answer, a.Status):
        return answers.status(answer)
    if isinstance(answer, a.Unpaired):
        return answers.unpaired(answer)
    if isinstance(answer, (a.StepUpPending, a.StepUpDone)):
        response = answers.step_up_response(answer)
        return response.status, json.loads(response.body)
    return answer


def refresh_with_retries(client_auth, failures: int = 2, on_sleep=None):
    """One refresh through the real sending path (``OAuthHttp`` over httpx's ``MockTransport``)
    against a server that answers 503 (``Retry-After: 1``) ``failures`` times, then tokens;
    retried as the flows retry. Returns the final reply and every request sent. ``on_sleep``
    sees each wait (to move another clock with it). For the tests that show client
    authentication is prepared afresh on every send."""
    import random

    import httpx

    from devicelink.oauth import grant
    from devicelink.oauth import messages as m
    from devicelink.oauth.http import OAuthHttp

    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= failures:
            return httpx.Response(503, headers={"retry-after": "1"})
        return httpx.Response(200, json={"access_token": "at-2", "token_type": "Bearer", "expires_in": 600})

    now = [100.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        if on_sleep is not None:
            on_sleep(seconds)

    async def main():
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
            http = OAuthHttp(client, client_auth, clock=lambda: now[0])
            request = m.refresh_request(m.Endpoints(token_endpoint="https://id.example/token"), "rt-1")
            return await http.run(grant.exchange(request, grant.Backoff(random.Random(1))), sleep=sleep)

    return asyncio.run(main()), seen
