"""What the per-key token caches share (narrowed tokens, device-level tokens): one upstream
request per key however many apps ask at once, and a backoff per key after a failure.
No I/O; the clock is the device's."""

from __future__ import annotations

import asyncio
import random
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

from devicelink.oauth.steps import Backoff, backoff_delay

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

RETRY_BASE = 5.0
RETRY_CAP = 300.0  # seconds: the longest wait after failures for one key


class Shared(Generic[K, T]):
    """One task per key: whoever asks while it runs awaits the same one (shielded, so an
    asker that goes away does not cancel it for the others)."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Future[T]] = {}

    def join(self, key: K, start: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """The task for ``key``, started if none runs, to await."""
        return asyncio.shield(self.start(key, start))

    def start(self, key: K, start: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The task for ``key``, started if none runs (for a caller that does not wait for it)."""
        task = self._tasks.get(key)
        if task is None or task.done():
            task = self._tasks[key] = asyncio.ensure_future(start())
            task.add_done_callback(lambda done, key=key: self._done(key, done))
        return task

    def pending(self) -> list[asyncio.Future[T]]:
        return list(self._tasks.values())

    async def cancel(self) -> None:
        for task in self.pending():
            task.cancel()
        await asyncio.gather(*self.pending(), return_exceptions=True)

    def _done(self, key: K, task: asyncio.Future[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # a task nobody awaits (a renewal ahead of time) fails quietly: its caller keeps why


class Backoffs(Generic[K]):
    """After a failure a key waits :data:`RETRY_BASE` s, doubling to :data:`RETRY_CAP` (or
    longer when the server sent ``Retry-After``), before its next request."""

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        self.rng, self.clock = rng, clock
        self._keys: dict[K, tuple[Backoff, float]] = {}  # backoff, no request before

    def failed(self, key: K, retry_after: float | None) -> float:
        """Note a failure; the delay before the next request for ``key``."""
        backoff = self._keys[key][0] if key in self._keys else Backoff(self.rng, base=RETRY_BASE, cap=RETRY_CAP)
        delay = backoff_delay(backoff, retry_after)
        self._keys[key] = (backoff, self.clock() + delay)
        return delay

    def until(self, key: K, now: float) -> float | None:
        """When ``key`` may be asked for again, while it is backing off; else None."""
        failed = self._keys.get(key)
        return failed[1] if failed is not None and now < failed[1] else None

    def succeeded(self, key: K) -> None:
        self._keys.pop(key, None)

    def clear(self) -> None:
        self._keys.clear()
