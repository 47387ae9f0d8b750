"""The state file's record: what one device keeps across restarts. No I/O here.

``tokens/store.py`` encrypts and writes it atomically; this module decides what
is in it and what a record read back means. A record from another issuer or
client is not ours; one written by an unsynchronised wall clock does not vouch
for its access token's expiry (docs/clock.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from devicelink.oauth import messages as m
from devicelink.tokens.model import TokenSet

logger = logging.getLogger(__name__)

RECORD_VERSION = 1

Revocation = tuple[str, str]  # (token, token_type_hint), owed to the server (RFC 7009)


@dataclass
class Restored:
    """What a start found: the grant (or None), the endpoints, the revocations still owed,
    and whether the stored expiry can be trusted."""

    tokens: TokenSet | None = None
    endpoints: m.Endpoints | None = None
    revocations: list[Revocation] = field(default_factory=list)
    trusted_clock: bool = False


def build(issuer: str, client_id: str, endpoints: m.Endpoints | None, tokens: TokenSet | None,
          revocations: list[Revocation], now: float, wall: float, clock_synced: bool) -> dict[str, Any]:
    return {
        "version": RECORD_VERSION,
        "issuer": issuer,
        "client_id": client_id,
        "endpoints": {name: getattr(endpoints, name) for name in m.ENDPOINT_NAMES} if endpoints else None,
        "tokens": tokens.to_record(now, wall) if tokens else None,
        "pending_revocations": revocations,
        # An expiry written by an unsynchronised clock is not trusted at the next start either.
        "wall_clock_synced": clock_synced,
    }


def restore(record: dict[str, Any], issuer: str, client_id: str, configured: dict[str, str],
            now: float, wall: float, clock_synced: bool | None) -> Restored | None:
    """None when the record is not this device's (another issuer or client_id).
    Raises KeyError, TypeError or ValueError when it is incomplete."""
    if record.get("issuer") != issuer or record.get("client_id") != client_id:
        logger.warning("the stored grant belongs to another issuer or client_id; starting unpaired")
        return None
    found = Restored(revocations=[(str(t), str(h)) for t, h in record.get("pending_revocations", [])])
    stored = record.get("endpoints")
    if stored:  # discovered at pairing; explicit endpoints in the config still win
        found.endpoints = m.Endpoints(**{k: v for k, v in {**stored, **configured}.items() if k in m.ENDPOINT_NAMES})
    if record.get("tokens") is not None:
        found.trusted_clock = clock_synced is True and record.get("wall_clock_synced") is True
        found.tokens = TokenSet.from_record(record["tokens"], now, wall, found.trusted_clock)
    return found
