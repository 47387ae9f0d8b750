"""What happened, for whoever listens: the events behind ``GET /v1/events``.

A :class:`Hub` belongs to one device (no global state). Publishing never
blocks and never fails: each subscriber has a small queue, and one that falls
more than ``limit`` events behind is dropped (its stream ends; an SSE client
reconnects and starts again from the current state), so a stuck app cannot
make the daemon hold events without bound.

Events carry no token values, ever: ``state``, ``pairing`` (the user code is
on the screen anyway) and ``token_rotated``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["Event", "Hub", "Subscription"]

Event = tuple[int, str, Any]  # (id, name, data: one of engine/answers.py's events; ipc/ shapes it)


class Subscription:
    def __init__(self, hub: Hub, limit: int) -> None:
        self._hub = hub
        self._queue: deque[Event] = deque()
        self._limit = limit
        self._wakeup: asyncio.Future[None] | None = None
        self.overflowed = False
        self.closed = False

    def _put(self, event: Event) -> None:
        if len(self._queue) >= self._limit:
            self.overflowed = True
            self.close()
        else:
            self._queue.append(event)
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def next(self, timeout: float) -> Event | None:
        """The next event; None after ``timeout`` seconds without one (send a keep-alive)
        or once closed (check ``closed``; ``overflowed`` when it fell behind)."""
        if not self._queue and not self.closed:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._wakeup, timeout)
            except TimeoutError:
                pass
            finally:
                self._wakeup = None
        return self._queue.popleft() if self._queue and not self.closed else None

    def close(self) -> None:
        """No more events; a reader waiting in :meth:`next` gets None at once."""
        self.closed = True
        self._hub._subscribers.discard(self)
        self._wake()


class Hub:
    def __init__(self, limit: int = 64) -> None:
        self._subscribers: set[Subscription] = set()
        self._limit = limit
        self._last_id = 0

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._limit)
        self._subscribers.add(sub)
        return sub

    def publish(self, name: str, data: Any) -> None:
        if not self._subscribers:
            return
        self._last_id += 1
        event = (self._last_id, name, data)
        for sub in list(self._subscribers):
            sub._put(event)

    def __len__(self) -> int:
        return len(self._subscribers)
