"""Every exception devicelink raises on purpose.

::

    DeviceLinkError
    ├─ ConfigError(ValueError)      our configuration is wrong (exit 78)
    ├─ HardwareUnavailable          configured hardware is missing
    ├─ TransportError               network, timeouts, TLS (from httpx)
    ├─ ProtocolViolation            the server sent something malformed
    ├─ GrantFailed                  the server said no; .oauth_error holds the RFC code
    │  ├─ AuthorizationDenied       the user declined (RFC 8628 §3.5 access_denied)
    │  ├─ DeviceCodeExpired         the code ran out before anyone approved it
    │  └─ RefreshRejected           invalid_grant on refresh: pair again
    └─ StoreError                   the state file could not be written
       └─ StoreUnreadable           ... or read back (corrupt, wrong key)

Messages are one line a person can act on, and never carry a token, a device
code or a secret: they end up in logs and in the socket's status answer.
"""

from __future__ import annotations


class DeviceLinkError(Exception):
    """Base class of every error devicelink raises on purpose."""


class ConfigError(DeviceLinkError, ValueError):
    """The configuration file (or an option) is invalid. Exit status 78."""


class HardwareUnavailable(DeviceLinkError):
    """A configured display or GPIO device could not be opened."""


class TransportError(DeviceLinkError):
    """The request did not get an HTTP answer: DNS, connect, TLS, timeout, reset."""


class ProtocolViolation(DeviceLinkError):
    """The authorization server answered something RFC 6749/8628 does not allow."""


class GrantFailed(DeviceLinkError):
    """The authorization server refused; ``oauth_error`` is its error code."""

    def __init__(self, message: str, oauth_error: str | None = None) -> None:
        super().__init__(message)
        self.oauth_error = oauth_error


class AuthorizationDenied(GrantFailed):
    """The user declined the request on their phone."""


class DeviceCodeExpired(GrantFailed):
    """The device code expired (the server said so, or its ``expires_in`` passed)."""


class RefreshRejected(GrantFailed):
    """The refresh token is no longer valid (``invalid_grant``): the device must pair again."""


class StoreError(DeviceLinkError):
    """The encrypted state could not be written."""


class StoreUnreadable(StoreError):
    """The encrypted state exists but cannot be decrypted or parsed."""
