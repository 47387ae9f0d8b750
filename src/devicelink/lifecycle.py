"""The device's states and the moves between them. No I/O, no clock reads.

Every screen, LED pattern and status answer is a function of the current
state, so the whole daemon agrees on one value. The allowed moves live in one
table (after h11's ``_state.py``): a move that is not in the table raises
:class:`IllegalMove` and leaves the state alone.

::

    unpaired ──PairRequested──▶ pairing ──Paired──▶ paired ◀──RefreshSucceeded── refreshing
       ▲                          │  ▲                 │  ▲                          │
       │          CodeExpired ────┘  └─ CodeReplaced   │  └──────RefreshStarted─────┘
       │                          │                    │         (also from offline)
       ├──────── PairingFailed ───┤                    │   RefreshFailed ──▶ offline
       └──────── Unpaired (from every state)
                                  Denied ──▶ reauth_required ◀── RefreshRejected

A device that holds a grant is never moved into pairing: unpair first, so a
failed or abandoned pairing cannot cost the owner a working grant.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from devicelink.errors import IllegalMove


class State(str, enum.Enum):
    UNPAIRED = "unpaired"
    PAIRING = "pairing"
    PAIRED = "paired"
    REFRESHING = "refreshing"
    OFFLINE = "offline"
    REAUTH_REQUIRED = "reauth_required"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PairingCode:
    """What the owner needs to approve the device: safe to show, never the device code."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float  # time.monotonic() deadline

    @property
    def qr_payload(self) -> str:
        """RFC 8628 §3.3.1: the complete URI when there is one, else the plain one."""
        return self.verification_uri_complete or self.verification_uri

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


class Event(enum.Enum):
    """Facts that move the lifecycle."""

    RESTORED = "restored"  # a stored grant was loaded at start
    PAIR_REQUESTED = "pair_requested"  # boot with no grant, the button, the API or the CLI
    CODE_REPLACED = "code_replaced"  # an expired code was replaced by a new one (restart_on_expiry)
    CODE_EXPIRED = "code_expired"  # no more automatic codes: wait for the user (RFC 8628 §3.5)
    PAIRED = "paired"
    DENIED = "denied"  # the user declined on their phone (access_denied)
    PAIRING_FAILED = "pairing_failed"  # the server ended the flow with another error
    REFRESH_STARTED = "refresh_started"
    REFRESH_SUCCEEDED = "refresh_succeeded"
    REFRESH_FAILED = "refresh_failed"  # network or server fault: keep the grant
    REFRESH_REJECTED = "refresh_rejected"  # invalid_grant: the grant is gone
    UNPAIRED = "unpaired"


S, E = State, Event

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.UNPAIRED, E.RESTORED): S.PAIRED,
    (S.UNPAIRED, E.PAIR_REQUESTED): S.PAIRING,
    (S.REAUTH_REQUIRED, E.PAIR_REQUESTED): S.PAIRING,
    (S.PAIRING, E.PAIR_REQUESTED): S.PAIRING,
    (S.PAIRING, E.CODE_REPLACED): S.PAIRING,
    (S.PAIRING, E.CODE_EXPIRED): S.UNPAIRED,
    (S.PAIRING, E.PAIRED): S.PAIRED,
    (S.PAIRING, E.DENIED): S.REAUTH_REQUIRED,
    (S.PAIRED, E.REFRESH_STARTED): S.REFRESHING,
    (S.OFFLINE, E.REFRESH_STARTED): S.REFRESHING,
    (S.REFRESHING, E.REFRESH_SUCCEEDED): S.PAIRED,
    (S.REFRESHING, E.REFRESH_FAILED): S.OFFLINE,
    (S.REFRESHING, E.REFRESH_REJECTED): S.REAUTH_REQUIRED,
    (S.PAIRING, E.PAIRING_FAILED): S.UNPAIRED,
    **{(state, E.UNPAIRED): S.UNPAIRED for state in State},
}

#: States in which a grant (a refresh token, or at least an access token) is held.
HOLDS_GRANT = frozenset({S.PAIRED, S.REFRESHING, S.OFFLINE})


def next_state(state: State, event: Event) -> State:
    """The state after ``event``; raises :class:`IllegalMove` if the table has no such move."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalMove(state, event) from None
