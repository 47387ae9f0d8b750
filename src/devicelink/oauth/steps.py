"""What every flow in ``oauth/`` yields, and the retry rules they share. No I/O, no clock reads.

A flow yields :class:`Send` (a request, and the earliest monotonic time it may
go out) and, while pairing, :class:`Show` (a code for the screen); the driver in
``oauth/http.py`` sends the request and sends back the :class:`~messages.Response`
or :class:`~messages.Failure`, which carries the time it arrived.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Generator

from devicelink.errors import GrantFailed
from devicelink.lifecycle import PairingCode
from devicelink.oauth import messages as m

MAX_RETRY_AFTER = 3600.0  # a Retry-After longer than this is a server's mistake, not a plan


@dataclass(frozen=True)
class Send:
    request: m.Request
    not_before: float | None = None  # monotonic; None = now


@dataclass(frozen=True)
class Show:
    code: PairingCode


Step = Send | Show


@dataclass
class Backoff:
    """Capped exponential backoff with jitter: delays of base·2^(n-1), scaled by
    0.5–1.0 so a fleet that lost the same server does not come back in step."""

    rng: random.Random
    base: float = 2.0
    cap: float = 300.0
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** min(self.failures - 1, 30))
        return delay * (0.5 + self.rng.random() / 2)

    def reset(self) -> None:
        self.failures = 0


def reply_time(reply: m.Reply) -> float:
    return reply.at if isinstance(reply, m.Failure) else reply.received_at


def backoff_delay(backoff: Backoff, retry_after: float | None) -> float:
    """How long to wait after a failure: the backoff, or longer when the server asks (up to an hour)."""
    return max(backoff.next_delay(), min(retry_after or 0.0, MAX_RETRY_AFTER))


def transient_delay(reply: m.Reply, backoff: Backoff) -> float:
    return backoff_delay(backoff, m.retry_after(reply) if isinstance(reply, m.Response) else None)


def exchange(request: m.Request, backoff: Backoff | None) -> Generator[Step, m.Reply, m.Response]:
    """Send ``request`` until the server gives an answer that is not a transient failure.

    ``backoff`` None is one attempt, for a caller that tries once and reports (``doctor``):
    an answer is returned whatever its status, and no answer raises :class:`GrantFailed`."""
    not_before = None
    while True:
        reply = yield Send(request, not_before)
        if backoff is None:
            if isinstance(reply, m.Failure):
                raise GrantFailed(f"no answer from {request.url}: {reply.reason}", unanswered=reply.reason)
            return reply
        if not m.is_transient(reply):
            backoff.reset()
            assert isinstance(reply, m.Response)
            return reply
        not_before = reply_time(reply) + transient_delay(reply, backoff)
