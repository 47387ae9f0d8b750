"""Which device is asking: what the verification page tells the person (RFC 8628 §5.4).

RFC 8628 §5.4 (remote phishing) asks the server to show the person what they are
about to authorize, so that a code someone else sent them does not hand over
their account unnoticed. The development server knows of the device:

- the client: ``client_name`` when the client registered itself (RFC 7591), else a
  name for the server's built-in clients, else the ``client_id``;
- the device's serial, when its registration carried one (``device_serial``,
  docs/identity.md); a device on a built-in client sends none;
- the device's key, for a ``private_key_jwt`` client: the RFC 7638 thumbprint of the
  key it must sign with, which the manufacturer's exported list names too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .settings import CONFIDENTIAL_CLIENT_ID, KEY_CLIENT_ID, PUBLIC_CLIENT_ID

BUILT_IN_NAMES = {
    PUBLIC_CLIENT_ID: "devicelink development device",
    CONFIDENTIAL_CLIENT_ID: "devicelink development device (client secret)",
    KEY_CLIENT_ID: "devicelink development device (device key)",
}
SERIAL_MEMBER = "device_serial"  # the registration metadata member (identity/registration.py)


@dataclass(frozen=True)
class Asking:
    client_id: str
    name: str
    serial: str | None = None
    key_thumbprint: str | None = None


def asking(client_id: str, client: Any | None) -> Asking:
    """What the page shows of the client ``client_id`` (``client``: its record, if the server has one)."""
    metadata = getattr(client, "metadata", None) or {}  # a registered client's (RFC 7591); None for built-ins
    name = metadata.get("client_name")
    if not isinstance(name, str) or not name.strip():
        name = BUILT_IN_NAMES.get(client_id, client_id)
    serial = metadata.get(SERIAL_MEMBER)
    return Asking(client_id, name.strip()[:200], serial if isinstance(serial, str) and serial else None,
                  _thumbprint(getattr(client, "jwks", None)))


def _thumbprint(jwks: Any) -> str | None:
    from devicelink.identity.signer import thumbprint

    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        return None
    try:
        return thumbprint(keys[0])
    except (KeyError, TypeError):
        return None
