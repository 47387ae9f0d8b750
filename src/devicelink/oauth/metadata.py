"""Authorization server metadata (RFC 8414, OpenID Connect Discovery): the requests, the
document, and how long it may be reused. No I/O, no clock reads.

A device asks for the document when it first pairs and keeps what it uses of it
(:class:`Discovered`: the endpoints, and ``revocation_endpoint_auth_methods_supported``)
with the wall time it was fetched, in memory and in ``state_dir/discovery.json``
(``engine/discovery.py``). It is reused while younger than its max age: a day, or a
shorter ``Cache-Control: max-age`` the server sent, but never less than an hour. A
device is not a browser: endpoints move rarely, and one that moved is found again
when it answers 404 (``engine/pairing.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from devicelink.errors import ProtocolViolation
from devicelink.oauth.messages import ENDPOINT_NAMES, Request, Response, body_fields

AUTH_METHODS = "revocation_endpoint_auth_methods_supported"
#: What is kept of a document: what pairing, refresh and revocation use.
KEPT = (*ENDPOINT_NAMES, AUTH_METHODS)
MAX_AGE = 24 * 3600.0  # a document is fetched again after a day ...
MIN_AGE = 3600.0  # ... and not more often than hourly, whatever Cache-Control says
RECORD_VERSION = 1


def metadata_requests(issuer: str) -> list[Request]:
    """RFC 8414 §3 (well-known segment between host and path), then OIDC Discovery §4 (appended)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        Request("discovery", f"{origin}/.well-known/oauth-authorization-server{path}", method="GET",
                authenticate=False),
        Request("discovery", f"{origin}{path}/.well-known/openid-configuration", method="GET",
                authenticate=False),
    ]


def parse_metadata(resp: Response, issuer: str) -> dict[str, Any]:
    """RFC 8414 §3.2/§3.3: the issuer in the document MUST be identical to ours, else it MUST NOT be used."""
    data = body_fields(resp)
    if resp.status != 200 or data is None:
        raise ProtocolViolation(f"the discovery document answered {resp.status} without a JSON object")
    if data.get("issuer") != issuer:
        raise ProtocolViolation(f"the discovery document names issuer {str(data.get('issuer'))[:80]!r}, "
                                f"expected exactly {issuer!r} (RFC 8414 §3.3)")
    return data


def max_age(resp: Response) -> float:
    """How long a document may be reused: :data:`MAX_AGE`, or the server's shorter
    ``Cache-Control: max-age`` (RFC 9111 §5.2.2.1; ``no-store`` and ``no-cache`` count as 0),
    but never less than :data:`MIN_AGE`."""
    said: float | None = None
    for directive in resp.headers.get("cache-control", "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        value = value.strip().strip('"')
        if name in ("no-store", "no-cache"):
            said = 0.0
            break
        if name == "max-age" and value.isascii() and value.isdigit():
            said = float(value)
    return MAX_AGE if said is None else max(MIN_AGE, min(MAX_AGE, said))


@dataclass(frozen=True)
class Discovered:
    """What a device keeps of a metadata document: the :data:`KEPT` fields of ``issuer``'s
    document, fetched at ``fetched_at`` (wall clock), reusable for ``max_age`` seconds."""

    issuer: str
    metadata: dict[str, Any]
    fetched_at: float
    max_age: float = MAX_AGE

    @classmethod
    def of(cls, resp: Response, issuer: str, wall: float) -> Discovered:
        """The document in a 200 answer (:func:`parse_metadata`), fetched at ``wall``."""
        data = parse_metadata(resp, issuer)
        return cls(issuer, {k: data[k] for k in KEPT if k in data and _keepable(k, data[k])}, wall, max_age(resp))

    def age(self, wall: float) -> float:
        return wall - self.fetched_at

    def fresh(self, wall: float) -> bool:
        """Younger than its max age. A negative age (the wall clock went back, or a device
        booted without its time) is not fresh: one request more is the safe side."""
        return 0.0 <= self.age(wall) < self.max_age

    def to_record(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "issuer": self.issuer, "fetched_at": self.fetched_at,
                "max_age": self.max_age, "metadata": self.metadata}

    @classmethod
    def from_record(cls, record: Any, issuer: str) -> Discovered | None:
        """The document in a record of :meth:`to_record`; None when it is another issuer's.
        ValueError when it is not such a record."""
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            raise ValueError("not a discovery record")
        if record.get("issuer") != issuer:
            return None
        metadata, fetched_at, age = record.get("metadata"), record.get("fetched_at"), record.get("max_age")
        if not (isinstance(metadata, dict) and all(k in KEPT and _keepable(k, v) for k, v in metadata.items())
                and _seconds(fetched_at) and _seconds(age)):
            raise ValueError("not a discovery record")
        return cls(issuer, metadata, float(fetched_at), min(float(age), MAX_AGE))


def _keepable(name: str, value: Any) -> bool:
    if name == AUTH_METHODS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
