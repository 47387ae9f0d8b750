"""What the engine answers, as data: ``ipc/`` shapes each into JSON, once.

No token value ever reaches a log through these: their ``repr`` leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from devicelink.lifecycle import PairingCode
from devicelink.tokens.model import Account


@dataclass(frozen=True, slots=True)
class TokenQuery:
    """What an app asked for (``GET /v1/token``)."""

    min_ttl: int = 60
    scope: str | None = None
    resource: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """An access token handed to an app: only what RFC 6749 §5.1 lets it see."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str


@dataclass(frozen=True, slots=True)
class Status:
    """The device as ``devicelink status`` shows it (never a token)."""

    state: str
    pairing: PairingCode | None
    pairing_expires_in: int | None
    account: Account | None
    access_token_expires_in: int | None
    last_refresh: str | None  # ISO 8601, from the wall clock
    last_error: str | None
    message: str | None
    clock_synced: bool | None
    key_source: str | None
    pending_revocations: int
    version: str


@dataclass(frozen=True, slots=True)
class StepUpPending:
    """RFC 9470 step-up: the user has yet to confirm this code."""

    code: PairingCode | None
    expires_in: int | None


@dataclass(frozen=True, slots=True)
class StepUpDone:
    """The stronger token, this app's alone, and what the server says of the sign-in."""

    token: Issued
    acr: str | None
    auth_time: int | None


@dataclass(frozen=True, slots=True)
class Unpaired:
    state: str
    revoked: bool
    revocation_error: str | None


# -- events (``GET /v1/events``): what happened, never a token value ----------------------


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: str
    account: Account | None
    message: str | None


@dataclass(frozen=True, slots=True)
class CodeShown:
    code: PairingCode
    expires_in: int


@dataclass(frozen=True, slots=True)
class TokenRotated:
    expires_in: int
    scope: str


@dataclass(frozen=True, slots=True)
class StepUpChanged:
    app: str
    status: str  # pending | done | failed
