"""Every exception devicelink raises on purpose, in one tree.

::

    DeviceLinkError                 .code: the socket API's error code for it (ipc/ maps it to HTTP)
    ├─ ConfigError(ValueError)      our configuration is wrong (exit 78)
    ├─ HardwareUnavailable          configured hardware is missing
    ├─ ProtocolViolation            the server sent something malformed
    │  ├─ ScopeIgnored              ... or a broader scope than a narrowed refresh asked
    │  └─ EndpointGone              ... or an endpoint answered 404/410 (moved? discovery is asked again)
    ├─ GrantFailed                  the server said no, or could not be asked; .oauth_error
    │  ├─ AuthorizationDenied       the user declined (RFC 8628 §3.5 access_denied)
    │  ├─ DeviceCodeExpired         the code ran out before anyone approved it
    │  ├─ RefreshRejected           invalid_grant on refresh: pair again
    │  ├─ ClientRejected            the server refused this client (401, invalid_client): the config
    │  ├─ RegistrationFailed        registering the device (RFC 7591) or managing it (RFC 7592) failed
    │  └─ TargetRefused             invalid_scope / invalid_target on a narrowed refresh
    ├─ Refused                      the engine refuses a local caller; .code says why
    ├─ StoreError                   the state file could not be written
    │  ├─ StoreUnreadable           ... or read back (corrupt, wrong key)
    │  ├─ StateDirBusy              another process holds the state directory
    │  └─ IdentityError             the device's identity key cannot be used (never replaced)
    ├─ SocketInUse                  another daemon answers on our socket path
    ├─ DaemonUnreachable            a client could not reach the daemon (ConnectionError)
    ├─ DaemonError                  a client got an error answer from the daemon
    └─ IllegalMove(RuntimeError)    the lifecycle table has no such move (a bug)

The engine raises these and never an HTTP status: ``code`` is a hint that
``ipc/routes.py`` turns into one (``STATUS_BY_CODE``, ``ApiError.of``); ``ApiError``
there, a subclass, is the socket's own answer (404, 405, 413, 503 server_busy). Messages are one line a
person can act on, and never carry a token, a device code or a secret: they
end up in logs and in the socket's status answer.
"""

from __future__ import annotations

#: The codes the engine may refuse a local caller with (docs/socket-api.md, DESIGN.md).
REFUSAL_CODES = frozenset({"not_paired", "pairing_in_progress", "forbidden", "invalid_request",
                           "upstream_unavailable", "reauth_required", "step_up_unsupported"})


class DeviceLinkError(Exception):
    """Base class of every error devicelink raises on purpose."""

    code = "server_error"


class ConfigError(DeviceLinkError, ValueError):
    """The configuration file (or an option) is invalid. Exit status 78."""


class HardwareUnavailable(DeviceLinkError):
    """A configured display or GPIO device could not be opened."""


class ProtocolViolation(DeviceLinkError):
    """The authorization server answered something RFC 6749/8628 does not allow."""

    code = "upstream_unavailable"


class ScopeIgnored(ProtocolViolation):
    """A narrowed refresh came back broader than asked: such a token is never served."""


class EndpointGone(ProtocolViolation):
    """An endpoint answered 404 or 410 without an OAuth error: it is not there (any more).
    Pairing with a reused discovery document fetches the document again, once."""


class GrantFailed(DeviceLinkError):
    """The authorization server refused, or gave no usable answer; ``oauth_error`` is its
    RFC 6749 §5.2 code (None: no answer, or none in it). ``retry_after`` is how long the
    server asked us to wait, when it did; ``unanswered`` why no answer came, when none did."""

    code = "upstream_unavailable"

    def __init__(self, message: str, oauth_error: str | None = None, *,
                 retry_after: float | None = None, unanswered: str | None = None) -> None:
        super().__init__(message)
        self.oauth_error = oauth_error
        self.retry_after = retry_after
        self.unanswered = unanswered


class AuthorizationDenied(GrantFailed):
    """The user declined the request on their phone."""

    code = "forbidden"


class DeviceCodeExpired(GrantFailed):
    """The device code expired (the server said so, or its ``expires_in`` passed)."""

    code = "forbidden"


class RefreshRejected(GrantFailed):
    """The refresh token is no longer valid (``invalid_grant``): the device must pair again."""

    code = "reauth_required"


class ClientRejected(GrantFailed):
    """The server did not accept this client (401, ``invalid_client``): its id, secret or key
    in the config, not the grant, which works again once the config is fixed."""


class RegistrationFailed(GrantFailed):
    """Registering the device (RFC 7591) or managing its registration (RFC 7592) failed;
    ``transient`` when it is worth trying again (no answer, 5xx, 429)."""

    def __init__(self, message: str, oauth_error: str | None = None, *, transient: bool = False,
                 retry_after: float | None = None, unanswered: str | None = None) -> None:
        super().__init__(message, oauth_error, retry_after=retry_after, unanswered=unanswered)
        self.transient = transient


class TargetRefused(GrantFailed):
    """The server refused the narrower scope or resource asked for (RFC 6749 §5.2
    ``invalid_scope``, RFC 8707 §2 ``invalid_target``); the grant itself is untouched."""

    code = "forbidden"


class Refused(DeviceLinkError):
    """The engine's no to a local caller. ``code`` is one of :data:`REFUSAL_CODES`;
    ``description`` is sent to the caller: never a token, a device code or a secret."""

    def __init__(self, code: str, description: str) -> None:
        if code not in REFUSAL_CODES:
            raise ValueError(f"unknown refusal code {code!r}")
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class StoreError(DeviceLinkError):
    """The encrypted state could not be written."""


class StoreUnreadable(StoreError):
    """The encrypted state exists but cannot be decrypted or parsed."""


class StateDirBusy(StoreError):
    """Another process holds ``state_dir/state.lock``; ``pid`` is what it wrote there (or None)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class IdentityError(StoreError):
    """The device's identity key (``state_dir/identity.jwk``) is unusable: planted, damaged or
    unreadable. It is never replaced on its own: the key is the device's identity."""


class SocketInUse(DeviceLinkError):
    """Another process answers on the socket path: a second daemon must not steal it."""


class DaemonUnreachable(DeviceLinkError, ConnectionError):
    """The daemon could not be asked: no socket, no permission, no answer, stream cut."""


class DaemonError(DeviceLinkError):
    """The daemon answered with an error (``{"error", "error_description"}``)."""

    def __init__(self, code: str, description: str, status: int) -> None:
        super().__init__(f"{description} ({code})" if description else code)
        self.code = code
        self.description = description
        self.status = status


class IllegalMove(DeviceLinkError, RuntimeError):
    """A lifecycle event the table does not allow in the current state: a bug, never input."""

    def __init__(self, state: object, event: object) -> None:
        super().__init__(f"{getattr(event, 'value', event)} is not allowed in state "
                         f"{getattr(state, 'value', state)}")
        self.state, self.event = state, event
