"""What the config says about device-level tokens: ``[device_token]`` (docs/config.md).

A device-level token is the device's own, with no user behind it (telemetry, updates):
the client credentials grant (RFC 6749 §4.4), served to apps whose ``[[client]]`` entry
has a ``device_scope`` (``GET /v1/token?identity=device``). Validated by
:func:`devicelink.config.parse` with its validator, so every problem is the same one
line naming the file and the key. Kept apart so that ``config.py`` does not grow with
every section; it imports nothing heavy (``devicelink token`` reads the config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devicelink.config import _Validator

#: What may authenticate a client credentials request: RFC 6749 §4.4 is for confidential clients only.
CONFIDENTIAL = ("client_secret_basic", "client_secret_post", "private_key_jwt")


@dataclass(frozen=True)
class DeviceTokenConfig:
    #: The most any device-level token may carry; what an app asking without ``scope=`` gets
    #: (its ``device_scope`` of it).
    scope: str
    #: RFC 8707 resources a device-level token may be asked for (``resource=``); none: only
    #: tokens for the server's default audience.
    resource: tuple[str, ...] = ()

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.scope.split())


def device_token_section(v: _Validator, raw: dict[str, Any], client_auth: str) -> DeviceTokenConfig | None:
    """``[device_token]``, or None when the config has none (device-level tokens are then refused)."""
    if "device_token" not in raw:
        return None
    section = v.section(raw, "device_token", DeviceTokenConfig, {"scope": v.scope, "resource": v.resources},
                        required=("scope",))
    if client_auth not in CONFIDENTIAL:
        v.fail("[device_token]", "device-level tokens use the client credentials grant, which needs a confidential "
               f"client (RFC 6749 §4.4): set [provider] client_auth to {', '.join(CONFIDENTIAL[:-1])} or "
               f"{CONFIDENTIAL[-1]} (it is {client_auth!r})")
    return section
