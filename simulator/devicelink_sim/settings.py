"""What a development server is set up with: its clients, scopes, resources and acr values.

Plain Python, no Flask or Authlib, so the command line can read the defaults cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEVICE_CODE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 §3.4
PUBLIC_CLIENT_ID = "devicelink-sim"
CONFIDENTIAL_CLIENT_ID = "devicelink-sim-confidential"
DEFAULT_SCOPES = ("openid", "profile", "email", "offline_access")
#: RFC 8707 resources the server issues tokens for unless told otherwise.
DEFAULT_RESOURCES = ("https://api.example.com", "https://media.example.com")
#: Authentication context classes (RFC 9470, OIDC `acr`), weakest first. ACR_PWD is
#: what an approval achieves unless something stronger is asked for.
ACR_PWD = "urn:devicelink:acr:pwd"
ACR_MFA = "urn:devicelink:acr:mfa"
ACR_VALUES_SUPPORTED = (ACR_PWD, ACR_MFA)
#: What a confidential client may have for itself, with no user (the client credentials grant).
CLIENT_SCOPES = ("telemetry.write", "updates.read")
CLIENT_CREDENTIALS_GRANT_TYPE = "client_credentials"  # RFC 6749 §4.4
KEY_CLIENT_ID = "devicelink-sim-device"  # private_key_jwt, with the keys DevServer.register_device_key gives it
AUTH_METHODS_SUPPORTED = ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"]
# Authlib's grants and endpoints try methods in this order; an assertion is checked first, so a bad
# one is invalid_client rather than a public client's request.
ALL_CLIENT_AUTH = ["private_key_jwt", "client_secret_basic", "client_secret_post", "none"]


@dataclass(frozen=True)
class Settings:
    access_token_lifetime: int
    refresh_token_lifetime: int | None
    device_code_lifetime: int
    interval: int
    rotate_refresh_tokens: bool
    scopes: tuple[str, ...]
    #: RFC 8707: the resources (absolute URIs) tokens may be issued for.
    resources: tuple[str, ...] = DEFAULT_RESOURCES
    #: RFC 9470: act on acr_values and max_age and advertise acr_values_supported.
    #: False plays a server that ignores them: every login is ACR_PWD.
    honour_step_up: bool = True
    #: Scopes the client credentials grant gives (a request for any other is invalid_scope).
    client_scopes: tuple[str, ...] = CLIENT_SCOPES
    #: Dynamic registration (registration.py's `Fleet`): None, no registration endpoint.
    fleet: Any = None
    #: RFC 9449: check DPoP proofs and bind the tokens of a request with one to its key (dpop.py).
    #: False plays a server that knows nothing of DPoP: the header is ignored, tokens are Bearer.
    dpop: bool = True
    #: RFC 9449 §8-9: every proof must carry the server's current nonce (use_dpop_nonce otherwise).
    dpop_nonce: bool = False

    def __post_init__(self) -> None:
        if self.access_token_lifetime < 1 or self.device_code_lifetime < 1:
            raise ValueError("token and device code lifetimes must be at least 1 second")
        if self.refresh_token_lifetime is not None and self.refresh_token_lifetime < 1:
            raise ValueError("refresh_token_lifetime must be None or at least 1 second")
        if self.interval < 0:
            raise ValueError("interval must not be negative")
        if isinstance(self.resources, str):
            raise ValueError("resources must be a sequence of URIs, not one string")
        for resource in self.resources:
            if not is_resource_uri(resource):
                raise ValueError(f"resource {resource!r} is not an absolute URI without a fragment (RFC 8707)")
        object.__setattr__(self, "scopes", tuple(self.scopes))
        object.__setattr__(self, "resources", tuple(self.resources))
        object.__setattr__(self, "client_scopes", tuple(self.client_scopes))


def is_resource_uri(value: str) -> bool:
    # RFC 8707 §2: an absolute URI (RFC 3986 §4.3) with no fragment.
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and "#" not in value and value.isascii() and value == value.strip()


def asked_acr(acr_values: tuple[str, ...]) -> str | None:
    """The first of a request's acr_values that the server supports."""
    return next((v for v in acr_values if v in ACR_VALUES_SUPPORTED), None)
