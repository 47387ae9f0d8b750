"""An hourly budget of requests to the authorization server. No I/O, no clock reads.

Backoff spaces retries; the budget bounds their number whatever path asks
(apps asking for tokens, restarts, a bug): a device on a metered link must
never send thousands of requests an hour (Greengrass #1719). Refreshes the
server's own token lifetime calls for are on top of the budget, so a server
that issues one-minute tokens is still refreshed on time.
"""

from __future__ import annotations

from collections import deque

DEFAULT_LIMIT = 60
WINDOW = 3600.0


class RequestBudget:
    def __init__(self, limit: int = DEFAULT_LIMIT, window: float = WINDOW) -> None:
        self.limit, self.window = limit, window
        self._sent: deque[float] = deque()

    def __repr__(self) -> str:
        return f"RequestBudget({len(self._sent)}/{self.limit} per {self.window:g} s)"

    def _trim(self, now: float) -> None:
        # The same sum next_free() returns, so the instant it names is allowed exactly.
        while self._sent and self._sent[0] + self.window <= now:
            self._sent.popleft()

    def allows(self, now: float, extra: int = 0) -> bool:
        """May one more request go out at ``now``? ``extra`` widens the budget for this check."""
        self._trim(now)
        return len(self._sent) < self.limit + extra

    def spend(self, now: float) -> None:
        self._sent.append(now)

    def next_free(self, now: float, extra: int = 0) -> float:
        """The earliest time a request is allowed again."""
        self._trim(now)
        over = len(self._sent) - (self.limit + extra)
        return now if over < 0 else self._sent[over] + self.window

    @staticmethod
    def allowance(lifetime: float, window: float = WINDOW) -> int:
        """Refreshes a token of this lifetime calls for in one window, twice over."""
        return int(2 * window / max(lifetime, 1.0))
