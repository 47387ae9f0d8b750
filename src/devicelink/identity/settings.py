"""What the config says about the device's identity: ``[identity]`` and ``[provider] assertion_audience``.

Validated by :func:`devicelink.config.parse` with its validator, so every problem
is the same one line naming the file and the key (docs/config.md). Kept beside
the identity code so that ``config.py`` does not grow with every section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from devicelink.identity import KEY_SOURCES

if TYPE_CHECKING:
    from devicelink.config import _Validator
    from devicelink.identity.registration_settings import RegistrationConfig

#: What a serial may be, from the config or the device tree: printable ASCII, no spaces.
SERIAL = re.compile(r"[\x21-\x7e]{1,128}")
#: What a ``private_key_jwt`` assertion's ``aud`` may name (docs/identity.md): the issuer
#: (RFC 7523 §3, FAPI 2.0, draft-ietf-oauth-rfc7523bis), the token endpoint (OIDC Core §9),
#: or the URL of the endpoint the request goes to (Okta).
AUDIENCES = ("issuer", "token_endpoint", "endpoint")
#: What a factory reset does with the device's key (docs/identity.md#factory-reset).
ON_FACTORY_RESET = ("keep", "new_key")


@dataclass(frozen=True)
class IdentityConfig:
    key: str = "file"  # where the private key lives: "file" is state_dir/identity.jwk
    serial: str | None = None  # None: the device tree's
    #: "keep", or "new_key": a factory reset replaces the key (after the revocations and the
    #: old registration's deletion, which the old key authenticates) and registers the new one.
    on_factory_reset: str = "keep"

    @property
    def new_key_on_reset(self) -> bool:
        return self.on_factory_reset == "new_key"


def identity_section(v: _Validator, raw: dict[str, Any]) -> IdentityConfig:
    return v.section(raw, "identity", IdentityConfig, {"key": v.choice(KEY_SOURCES), "serial": serial(v),
                                                       "on_factory_reset": v.choice(ON_FACTORY_RESET)})


def check_factory_reset(v: _Validator, ident: IdentityConfig, client_auth: str, dpop: bool,
                        registration: RegistrationConfig | None) -> None:
    """``on_factory_reset = "new_key"`` only where a new key can be made and used at once: a
    file key, and either ``[registration]`` (the new key is registered with the new client) or
    DPoP alone (a DPoP key needs no registration). With a shared ``client_id`` and
    ``private_key_jwt`` the server would refuse the new key until someone registers it."""
    if not ident.new_key_on_reset:
        return
    key = "[identity] on_factory_reset"
    if ident.key != "file":
        v.fail(key, f"'new_key' needs [identity] key = 'file', not {ident.key!r}: a hardware key (TPM, secure "
               "element) cannot be replaced by software")
    registered = registration is not None
    if registered and registration.on_factory_reset == "keep":
        v.fail(key, "'new_key' needs [registration] on_factory_reset = 'delete' (the default): a kept "
               "registration holds the old key, and the server would refuse the new one")
    if client_auth == "private_key_jwt" and not registered:
        v.fail(key, "'new_key' with [provider] client_auth = 'private_key_jwt' needs [registration]: with a shared "
               "client_id the server refuses the new key until someone registers it, locking the device out")
    if client_auth != "private_key_jwt" and not dpop:
        v.fail(key, "'new_key' needs a key in use: [provider] client_auth = 'private_key_jwt' with [registration], "
               "or [provider] dpop = true")


def serial(v: _Validator) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or not SERIAL.fullmatch(value):
            v.fail(key, f"expected 1-128 printable ASCII characters without spaces, got {_show(value)}")
        return value
    return check


def audience(v: _Validator) -> Callable[[str, Any], tuple[str, ...]]:
    """One of :data:`AUDIENCES`, or a list of them (then ``aud`` is a JSON array)."""
    def check(key: str, value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if (not isinstance(items, list) or not items or len(set(map(str, items))) != len(items)
                or any(item not in AUDIENCES for item in items)):
            v.fail(key, "expected " + ", ".join(repr(a) for a in AUDIENCES)
                   + f", or a list of them without repeats, got {_show(value)}")
        return tuple(items)
    return check


def check_private_key_jwt(v: _Validator, client_auth: str, assertion_audience: tuple[str, ...] | None) -> None:
    if assertion_audience is not None and client_auth != "private_key_jwt":
        v.fail("[provider] assertion_audience", f"only for client_auth = 'private_key_jwt', not {client_auth!r}")


def _show(value: Any) -> str:
    from devicelink.config import _show

    return _show(value)
