"""Tokens and their expiry. No I/O, no clock reads: every function takes ``now``.

Expiry runs on the monotonic clock (``time.monotonic()``): a Raspberry Pi has
no RTC and boots with a wrong wall clock that NTP later jumps. The wall clock
is used only to carry an expiry across a restart, through the state file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from devicelink.text import sanitize

#: When the server sends no ``expires_in`` (it is only RECOMMENDED, RFC 6749 §5.1),
#: assume a short life and refresh early rather than serve a dead token.
DEFAULT_LIFETIME = 300.0

#: A token with no ``expires_in`` and no refresh token: nothing better can be had, so it
#: is served until the server stops accepting it (ten years stands for "no expiry").
UNBOUNDED_LIFETIME = 10 * 365 * 86400.0

#: Refresh at least this long before expiry, so apps asking with a small
#: ``min_ttl`` never wait for a refresh.
REFRESH_MARGIN = 60.0


@dataclass(frozen=True)
class Account:
    """Who approved the device (from the ID token): shown on screen and in status.
    ``acr`` and ``auth_time`` say how and when they signed in (OIDC Core §2; RFC 9470
    step-up checks them); they are not stored."""

    sub: str
    name: str | None = None
    acr: str | None = None
    auth_time: int | None = None


@dataclass(frozen=True, repr=False)
class TokenSet:
    access_token: str
    token_type: str
    obtained_at: float  # monotonic
    expires_at: float  # monotonic
    refresh_token: str | None = None
    scope: str | None = None
    account: Account | None = None

    def __repr__(self) -> str:  # never let a secret reach a log through repr()
        return (f"TokenSet(token_type={self.token_type!r}, scope={self.scope!r}, "
                f"lifetime={self.lifetime:.0f}s, refresh_token={'yes' if self.refresh_token else 'no'})")

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at

    def expires_in(self, now: float) -> float:
        return self.expires_at - now

    def valid_for(self, seconds: float, now: float) -> bool:
        return self.expires_at - now > seconds

    def refresh_due(self, rng: random.Random) -> float:
        """When to refresh proactively: 75–85 % into the lifetime (jitter spreads a fleet's
        refreshes), and never later than REFRESH_MARGIN before expiry."""
        share = self.obtained_at + self.lifetime * rng.uniform(0.75, 0.85)
        latest = self.expires_at - min(REFRESH_MARGIN, self.lifetime / 2)
        return min(share, latest)

    def rotated(self, new: TokenSet) -> TokenSet:
        """The result of a refresh: RFC 6749 §6 lets the server omit a new refresh token,
        in which case the old one stays valid; the account is kept unless a new ID token says otherwise."""
        return replace(new, refresh_token=new.refresh_token or self.refresh_token,
                       account=new.account or self.account)

    # -- the state file carries wall-clock times ---------------------------

    def to_record(self, now: float, wall_now: float) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
            "expires_at_wall": wall_now + self.expires_in(now),
            "lifetime": self.lifetime,
            "account": {"sub": self.account.sub, "name": self.account.name} if self.account else None,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], now: float, wall_now: float,
                    trust_wall_clock: bool = True) -> TokenSet:
        """Rebuild from the state file. An unsynchronised wall clock, one that moved backwards,
        or an expiry further away than the token's lifetime is not trusted: the access token
        counts as expired (the refresh token is kept)."""
        remaining = float(record["expires_at_wall"]) - wall_now
        lifetime = float(record["lifetime"])
        if remaining > lifetime or not trust_wall_clock:
            remaining = 0.0
        account = record.get("account")
        return cls(
            access_token=str(record["access_token"]),
            token_type=str(record["token_type"]),
            refresh_token=record.get("refresh_token"),
            scope=_clean(record.get("scope")),
            obtained_at=now + remaining - lifetime,
            expires_at=now + max(0.0, remaining),
            # cleaned again: a record written before issue 10 kept the server's words as they came
            account=Account(sanitize(str(account["sub"]), 255), _clean(account.get("name"))) if account else None,
        )


def _clean(text: Any) -> str | None:
    return (sanitize(text) or None) if isinstance(text, str) else None
