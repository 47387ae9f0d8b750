"""``[registration]`` in the config: dynamic client registration (RFC 7591) at first boot.

Validated by :func:`devicelink.config.parse` with its validator, as ``settings.py``
does for ``[identity]``, so every problem is the same one line naming the file and
the key. The section being there is the switch: a device with it registers itself
(``devicelink provision``, or the daemon's first start) and uses the ``client_id`` it
gets instead of ``[provider] client_id``, which may then be left out (docs/identity.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from devicelink.config import ProviderConfig, _Validator

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: What a registered device asks to use (RFC 7591 §2 ``grant_types``) unless the config says.
DEFAULT_GRANT_TYPES = (DEVICE_CODE_GRANT, "refresh_token")
#: The grant types a device may ask for: it pairs, refreshes, and may get device-level tokens.
GRANT_TYPES = (*DEFAULT_GRANT_TYPES, "client_credentials")
ON_FACTORY_RESET = ("delete", "keep")


@dataclass(frozen=True)
class RegistrationConfig:
    #: The RFC 7591 registration endpoint; None: the discovery document's ``registration_endpoint``.
    endpoint: str | None = None
    #: The manufacturer's signed software statement (a JWT, RFC 7591 §2.3), baked into the image.
    software_statement_file: Path | None = None
    #: An RFC 7591 §3 initial access token, when the server wants one.
    initial_access_token_file: Path | None = None
    #: ``client_name`` sent as metadata (the statement's wins, §3.1.1); None: none sent.
    client_name: str | None = None
    grant_types: tuple[str, ...] = DEFAULT_GRANT_TYPES
    #: What a factory reset does with the registration: "delete" it at the server (RFC 7592) and
    #: register afresh, or "keep" it (the next owner pairs as the same client).
    on_factory_reset: str = "delete"


def registration_section(v: _Validator, raw: dict[str, Any]) -> RegistrationConfig | None:
    if "registration" not in raw:
        return None
    return v.section(raw, "registration", RegistrationConfig, {
        "endpoint": v.url, "software_statement_file": v.path, "initial_access_token_file": v.path,
        "client_name": v.text, "grant_types": grant_types(v), "on_factory_reset": v.choice(ON_FACTORY_RESET),
    })


def grant_types(v: _Validator) -> Callable[[str, Any], tuple[str, ...]]:
    def check(key: str, value: Any) -> tuple[str, ...]:
        if (not isinstance(value, list) or not value or len(set(map(str, value))) != len(value)
                or any(item not in GRANT_TYPES for item in value) or DEVICE_CODE_GRANT not in value):
            v.fail(key, "expected a list of " + ", ".join(repr(g) for g in GRANT_TYPES)
                   + f" without repeats, with the device code grant, got {_show(value)}")
        return tuple(value)
    return check


def check_registration(v: _Validator, reg: RegistrationConfig | None, provider: ProviderConfig) -> None:
    """Registration sends the device's public key: the client authenticates with it. Without
    ``[registration]``, ``[provider] client_id`` is required."""
    from devicelink.config import is_loopback, transport_allowed

    if reg is None:
        if not provider.client_id:
            v.fail("[provider] client_id", "missing; this value is required (unless [registration] gives the "
                   "device its own)")
        return
    if provider.client_auth != "private_key_jwt":
        v.fail("[registration]", "registers the device's public key, so it needs [provider] client_auth = "
               f"'private_key_jwt', not {provider.client_auth!r}")
    if reg.endpoint is not None and not transport_allowed(reg.endpoint, provider.allow_insecure_http):
        v.fail("[registration] endpoint", f"expected an https:// URL, got {_show(reg.endpoint)}"
               + (" (needs [provider] allow_insecure_http = true)" if is_loopback(reg.endpoint) else ""))


def _show(value: Any) -> str:
    from devicelink.config import _show

    return _show(value)
