"""What the engine answers, as data: ``ipc/`` shapes each into JSON, once.

No token value ever reaches a log through these: their ``repr`` leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from devicelink.lifecycle import PairingCode
from devicelink.tokens.model import Account


@dataclass(frozen=True, slots=True)
class TokenQuery:
    """What an app asked for (``GET /v1/token``)."""

    min_ttl: int = 60
    scope: str | None = None
    resource: str | None = None
    identity: str = "user"  # "device": a device-level token (client credentials, no user)


@dataclass(frozen=True, slots=True)
class Issued:
    """An access token handed to an app: only what RFC 6749 §5.1 lets it see."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str


class Trouble(StrEnum):
    """What ``last_error`` is about (status ``last_error_kind``): whether the daemon gets
    past it by itself, and what a person must do when it cannot. ``doctor`` advises on it."""

    UPSTREAM = "upstream"          # no answer, 5xx, 429, a malformed answer: retried with backoff
    BUDGET = "budget"              # the hourly request budget is spent: waits for it
    REFUSED = "refused"            # the server refused the grant: one confirming attempt to come
    CLIENT = "client"              # the server refused this client: the config, not the grant
    STORAGE = "storage"            # the grant cannot be saved: nothing rotates until it is
    UNREADABLE = "unreadable"      # the state could not be read and was set aside
    GRANT_ENDED = "grant_ended"    # the server ended the grant: pair again
    PAIRING = "pairing"            # a pairing failed: pair again, after fixing what it names
    NOT_REVOKED = "not_revoked"    # unpaired here, but the grant stays valid at the server
    LIFETIME = "lifetime"          # the server issues tokens shorter than the refresh floor


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
    last_error_kind: Trouble | None
    warnings: tuple[str, ...]  # standing conditions of the grant a person should know of
    message: str | None
    clock_synced: bool | None
    key_source: str | None
    pending_revocations: int
    version: str
    device_token: DeviceTokenStatus | None = None  # None: [device_token] is not configured


@dataclass(frozen=True, slots=True)
class DeviceTokenStatus:
    """Device-level tokens (client credentials), for ``devicelink status``: never a token."""

    held: int  # valid tokens cached, one per (scope, resource) asked for
    last_error: str | None  # the last failure to get one, cleared by the next success


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
    revocation: str  # revoked | pending (owed, retried) | refused | unsupported (no endpoint) | none (no grant)
    revocation_error: str | None

    @property
    def revoked(self) -> bool:
        return self.revocation == "revoked"


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
