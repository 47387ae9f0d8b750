"""One-time identifiers kept until they expire: a replayed client assertion or DPoP proof
(the same ``jti`` again) is caught for as long as the original would have been accepted."""

from __future__ import annotations

from collections.abc import Hashable


class SeenIds:
    """``jti``s (with whatever else identifies them) and until when each is kept, in seconds of
    the server's wall clock. Expired ones are dropped at most once per ``purge_every`` seconds,
    not on every check: a fleet of ten thousand units keeps a hundred thousand of them, and a
    scan per request would make the server's work grow with the square of the fleet."""

    def __init__(self, purge_every: float = 1.0) -> None:
        self.purge_every = purge_every
        self._until: dict[Hashable, float] = {}
        self._purged_at: float | None = None

    def first_use(self, key: Hashable, until: float, now: float) -> bool:
        """Whether ``key`` is new (or its earlier use has expired); it is then kept until ``until``."""
        if self._purged_at is None or not 0 <= now - self._purged_at < self.purge_every:
            self._until = {k: u for k, u in self._until.items() if u >= now}
            self._purged_at = now
        kept = self._until.get(key)
        if kept is not None and kept >= now:
            return False
        self._until[key] = until
        return True

    def __len__(self) -> int:
        return len(self._until)
