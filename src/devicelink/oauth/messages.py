"""OAuth messages as data: the requests we build and the answers we parse. No I/O.

Servers disagree with the RFCs in many small ways (RFC-CHECKLIST F): errors
come back with any HTTP status, GitHub answers 200 with an error body, Google
says ``verification_url``, AWS speaks camelCase. The parsers here accept those
spellings and reject what cannot be used, with a :class:`ProtocolViolation`
whose message names the field but never echoes a secret.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlsplit

from devicelink.errors import ProtocolViolation
from devicelink.oauth.id_token import account_from_id_token
from devicelink.text import quotable, sanitize
from devicelink.tokens.model import DEFAULT_LIFETIME, UNBOUNDED_LIFETIME, TokenSet

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,80}")
#: What a user code may hold: it is logged, printed and drawn (RFC 8628 §6.1 suggests letters and dashes).
USER_CODE = re.compile(r"[A-Za-z0-9-]{1,64}")
MAX_SECONDS = 10**9  # larger "seconds" are nonsense, and float('inf') would poison the maths

#: RFC 8628 §3.2: "If no value is provided, clients MUST use 5 as the default."
DEFAULT_INTERVAL = 5


@dataclass(frozen=True)
class Request:
    """One HTTP request to the authorization server.

    ``kind`` names it in logs and metrics; ``authenticate`` asks the adapter to
    add client authentication (RFC 6749 §2.3), which the core never sees.
    """

    kind: str
    url: str
    form: tuple[tuple[str, str], ...] = ()
    method: str = "POST"
    authenticate: bool = True
    #: A JSON body instead of a form (RFC 7591 registration, RFC 7592 updates).
    json_body: dict[str, Any] | None = field(default=None, repr=False)
    #: A bearer token for the Authorization header (RFC 7591 §3's initial access token,
    #: RFC 7592's registration access token); never with ``authenticate``.
    bearer: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # forms carry device codes and refresh tokens
        return f"Request({self.kind} {self.method} {self.url})"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    received_at: float  # monotonic
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    #: The secrets the request carried (``oauth/http.py`` fills it in): blanked where the answer is quoted.
    sent_secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)
    #: The request carried a DPoP proof (``oauth/http.py`` fills it in): a token response must be DPoP.
    dpop: bool = field(default=False, compare=False)

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"


@dataclass(frozen=True)
class Failure:
    """No usable HTTP answer: DNS, connect, TLS, timeout, reset, or a body over the size cap.
    ``exc``, the exception behind it, is for ``doctor`` to explain: never judged, compared or logged."""

    reason: str
    at: float  # monotonic
    exc: BaseException | None = field(default=None, repr=False, compare=False)
    #: No connection was made (DNS, refused, TLS handshake): the server never saw the request.
    unsent: bool = False


Reply = Response | Failure


@dataclass(frozen=True, repr=False)
class DeviceAuthorization:
    """RFC 8628 §3.2. ``device_code`` is a bearer secret: it stays in memory and out of logs."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float  # monotonic
    interval: int

    def __repr__(self) -> str:
        return f"DeviceAuthorization(user_code={self.user_code!r}, uri={self.verification_uri!r})"


#: The endpoints a device uses, as RFC 8414 §2 and ``[provider]`` name them.
ENDPOINT_NAMES = ("device_authorization_endpoint", "token_endpoint", "revocation_endpoint")


@dataclass(frozen=True)
class Endpoints:
    token_endpoint: str
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    #: RFC 8414 §2 ``revocation_endpoint_auth_methods_supported``; None when the metadata did
    #: not say, or the endpoints came from the config or the state file.
    revocation_auth_methods: tuple[str, ...] | None = None

    @staticmethod
    def complete(configured: dict[str, str]) -> bool:
        """Whether endpoints named in the config are enough to pair without discovery."""
        return "token_endpoint" in configured and "device_authorization_endpoint" in configured


# -- parsing ------------------------------------------------------------------


def body_fields(resp: Response) -> dict[str, Any] | None:
    """The response body as a dict: JSON, or form-encoded (GitHub without an Accept header).
    None when it is neither."""
    ctype = resp.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in ctype:
        try:
            return dict(parse_qsl(resp.body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return None
    try:
        data = json.loads(resp.body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    return data if isinstance(data, dict) else None


def oauth_error(resp: Response) -> str | None:
    """The RFC 6749 §5.2 ``error`` code, whatever the HTTP status (RFC-CHECKLIST G1, G2, G8)."""
    data = body_fields(resp)
    if data is None:
        return None
    error = data.get("error")
    if not isinstance(error, str) or not error:
        return None
    # RFC 6749 §5.2: printable ASCII without '"' and '\\'. Anything else is not echoed into
    # logs and last_error, where a hostile server could inject lines.
    return error if ERROR_CODE.fullmatch(error) else "malformed_error_code"


#: Error codes that say "not now" rather than "no" (RFC 6749 §4.1.2.1, used by token endpoints too).
#: ``use_dpop_nonce`` (RFC 9449 §8) reaches a flow only when the one send with the server's nonce
#: (``oauth/http.py``) was answered with it again: the next attempt carries the newest nonce.
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "use_dpop_nonce"})


@dataclass(frozen=True)
class Verdict:
    """What an answer from the authorization server means, for every flow alike.

    ``outcome`` is ``"ok"`` (a JSON object without an error: the flow parses it),
    ``"refused"`` (the server's real answer is no: ``error`` is its RFC 6749 §5.2
    code, or None when a 4xx came without one) or ``"transient"`` (no answer, or
    one that says "not now": worth retrying later). ``reason`` is one line for
    logs and ``last_error`` (:func:`describe`: the status and the server's words, never the
    rest of the body); ``retry_after`` is what the server asked.
    """

    outcome: str
    error: str | None
    reason: str
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        return self.outcome == "transient"


def classify(reply: Reply) -> Verdict:
    """The one reading of a token-endpoint (or device, or revocation) answer.

    - no HTTP answer, 5xx or 429 without a definite OAuth error, and
      ``temporarily_unavailable`` / ``server_error`` anywhere: transient;
    - a 200 that is not a JSON object: transient (a captive portal's page);
    - an OAuth ``error``, whatever the status (GitHub says 200; RFC-CHECKLIST G1, G2): refused;
    - any other 4xx, even with an empty or HTML body: refused. The server (or
      something answering for it) decided; glewlwyd answers a reused refresh token
      with an empty 400. Only the flow knows what a refusal costs.
    """
    if isinstance(reply, Failure):
        return Verdict("transient", None, reply.reason)
    error = oauth_error(reply)
    reason = describe(reply)
    wait = retry_after(reply)
    if error in TRANSIENT_ERRORS:
        return Verdict("transient", error, reason, wait)
    if reply.status >= 500 or reply.status == 429:
        if error in (None, "slow_down"):
            return Verdict("transient", error, reason, wait)
        return Verdict("refused", error, reason, wait)
    if error is not None:
        return Verdict("refused", error, reason, wait)
    if reply.status == 200:
        if body_fields(reply) is None:
            return Verdict("transient", None, f"{reason} without a JSON object", wait)
        return Verdict("ok", None, reason)
    return Verdict("refused", None, f"{reason} without an OAuth error" if reply.status >= 400 else reason, wait)


def is_transient(reply: Reply) -> bool:
    """Worth retrying later (see :func:`classify`)."""
    return classify(reply).transient


def retry_after(resp: Response) -> float | None:
    """RFC 9110 §10.2.3 ``Retry-After``: seconds, or an HTTP date read against the
    response's own ``Date`` (the device's wall clock may be wrong)."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(min(int(value), MAX_SECONDS))
    import email.utils  # only for the rare HTTP-date form

    try:
        then = email.utils.parsedate_to_datetime(value)
        now = email.utils.parsedate_to_datetime(resp.headers.get("date", ""))
        return max(0.0, (then - now).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):  # also naive minus aware dates
        return None


def _field(data: dict[str, Any], *names: str) -> Any:
    for name in names:
        if data.get(name) not in (None, ""):
            return data[name]
    return None


def _seconds(value: Any, name: str) -> int:
    """A positive number of seconds; some servers send it as a string (Entra v1)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    # The range check also refuses NaN and infinity (every comparison with NaN is false).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SECONDS:
        raise ProtocolViolation(f"the server sent an invalid {name} (expected seconds)")
    return int(value)


def _web_uri(value: Any, name: str) -> str:
    try:
        parts = urlsplit(value) if isinstance(value, str) and value.isprintable() else None
        valid = parts is not None and parts.scheme in ("https", "http") and bool(parts.hostname)
    except ValueError:  # e.g. "https://["
        valid = False
    if not valid:
        raise ProtocolViolation(f"the server sent an invalid {name} (expected an http(s) URL)")
    return value


def parse_device_authorization(resp: Response) -> DeviceAuthorization:
    """RFC 8628 §3.2, with the aliases of RFC-CHECKLIST F (``verification_url``, camelCase)."""
    data = body_fields(resp)
    if data is None:
        raise ProtocolViolation(f"the device authorization endpoint answered {resp.status} without a JSON object")
    device_code = _field(data, "device_code", "deviceCode")
    user_code = _field(data, "user_code", "userCode")
    uri = _field(data, "verification_uri", "verification_url", "verificationUri", "verificationUrl")
    complete = _field(data, "verification_uri_complete", "verification_url_complete", "verificationUriComplete")
    expires_in = _field(data, "expires_in", "expiresIn")
    interval = _field(data, "interval")
    for name, value in (("device_code", device_code), ("user_code", user_code),
                        ("verification_uri", uri), ("expires_in", expires_in)):
        if value is None:
            raise ProtocolViolation(f"the device authorization response has no {name}")
    if not isinstance(device_code, str) or not device_code:
        raise ProtocolViolation("the device authorization response has an invalid device_code")
    if not isinstance(user_code, str) or not USER_CODE.fullmatch(user_code):
        # Never echoed: it could carry ESC sequences or line breaks (issue 10 item 7).
        raise ProtocolViolation("the device authorization response has an invalid user_code "
                                "(expected 1-64 ASCII letters, digits and '-')")
    lifetime = _seconds(expires_in, "expires_in")
    if lifetime == 0:
        raise ProtocolViolation("the device authorization response has expires_in = 0")
    return DeviceAuthorization(
        device_code=device_code,
        user_code=user_code,
        verification_uri=_web_uri(uri, "verification_uri"),
        verification_uri_complete=_web_uri(complete, "verification_uri_complete") if complete else None,
        expires_at=resp.received_at + lifetime,
        # RFC 8628 §3.2: 5 when absent. A floor of 1 s keeps a server that says 0 from being hammered.
        interval=max(1, _seconds(interval, "interval")) if interval is not None else DEFAULT_INTERVAL,
    )


def parse_tokens(resp: Response, issuer: str, client_id: str, refreshable: bool | None = None) -> TokenSet:
    """RFC 6749 §5.1. Unknown fields are ignored (MUST); an unknown token_type is
    refused (§7.1 MUST NOT use it). The type must be ``Bearer``, or ``DPoP`` when the request
    carried a DPoP proof (``resp.dpop``): a Bearer token then is not bound to the device's key,
    and is refused (RFC 9449 §5: the client MUST discard it when DPoP matters).

    Without ``expires_in`` a refreshable token is given a short life (refresh early);
    one that cannot be refreshed (no refresh token: GitHub OAuth apps) is served until
    the server stops taking it, since dropping it early would only force a new pairing.
    ``refreshable`` defaults to whether this response carries a refresh token."""
    data = body_fields(resp)
    if data is None or resp.status != 200:
        raise ProtocolViolation(f"the token endpoint answered {resp.status} without a token response")
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProtocolViolation("the token response has no access_token")
    token_type = data.get("token_type")
    expected = "DPoP" if resp.dpop else "Bearer"
    if not isinstance(token_type, str) or token_type.lower() != expected.lower():
        if resp.dpop:
            raise ProtocolViolation(f"the token response has token_type {quotable(str(token_type), (), 40)!r}, "
                                    "not DPoP: the server did not bind the token to the device's key, and with "
                                    "[provider] dpop = true it is refused (RFC 9449 §5)")
        raise ProtocolViolation(f"the token response has token_type {str(token_type)[:40]!r}; "
                                "only Bearer is supported")
    refresh_token = data.get("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise ProtocolViolation("the token response has an invalid refresh_token")
    if refreshable is None:
        refreshable = refresh_token is not None
    expires_in = data.get("expires_in")
    if expires_in is not None:
        lifetime = float(_seconds(expires_in, "expires_in"))
    else:
        lifetime = DEFAULT_LIFETIME if refreshable else UNBOUNDED_LIFETIME
    scope = data.get("scope")
    if isinstance(scope, list):  # some servers send a JSON array
        scope = " ".join(str(s) for s in scope)
    if scope is not None and not isinstance(scope, str):
        raise ProtocolViolation("the token response has an invalid scope")
    if scope:  # it is shown by `devicelink status`: no control or bidi characters
        scope = sanitize(scope, limit=4000)
    id_token = data.get("id_token")
    return TokenSet(
        access_token=access_token,
        token_type=token_type,
        obtained_at=resp.received_at,
        expires_at=resp.received_at + lifetime,
        refresh_token=refresh_token,
        scope=scope.replace(",", " ") if scope else None,  # GitHub separates with commas
        account=account_from_id_token(id_token, issuer, client_id) if isinstance(id_token, str) else None,
    )


def error_text(resp: Response) -> str | None:
    """The server's words on an error (RFC 6749 §5.2): its ``error`` code and, quoted, its
    ``error_description`` as one clean line (:func:`~devicelink.text.quotable`, 200 characters
    at most), e.g. ``unauthorized_client ("device_code is not allowed for this client")``."""
    error = oauth_error(resp)
    if error is None:
        return None
    said = (body_fields(resp) or {}).get("error_description")
    said = quotable(said, resp.sent_secrets).replace('"', "'") if isinstance(said, str) else ""
    return f'{error} ("{said}")' if said else error


def describe(resp: Response) -> str:
    """One line about an answer for logs and ``last_error``: the status and :func:`error_text`,
    never the rest of the body (it may echo a token)."""
    said = error_text(resp)
    return f"HTTP {resp.status}" + (f" {said}" if said else "")


# -- building -----------------------------------------------------------------


def device_authorization_request(endpoints: Endpoints, scope: str | None,
                                 resource: tuple[str, ...] = (),
                                 extra: tuple[tuple[str, str], ...] = ()) -> Request:
    """RFC 8628 §3.1 (client_id or client authentication is added by the adapter).
    ``extra``: more parameters, e.g. RFC 9470 §4's ``acr_values`` and ``max_age``."""
    form = ([("scope", scope)] if scope else []) + [("resource", r) for r in resource] + list(extra)
    assert endpoints.device_authorization_endpoint
    return Request("device_authorization", endpoints.device_authorization_endpoint, tuple(form))


def device_token_request(endpoints: Endpoints, code: DeviceAuthorization) -> Request:
    """RFC 8628 §3.4."""
    return Request("device_token", endpoints.token_endpoint,
                   (("grant_type", DEVICE_CODE_GRANT), ("device_code", code.device_code)))


def refresh_request(endpoints: Endpoints, refresh_token: str, scope: str | None = None,
                    resource: str | None = None) -> Request:
    """RFC 6749 §6; a ``scope`` narrower than the grant's, and a ``resource`` (RFC 8707 §2.2),
    ask for an access token for less than the whole grant."""
    form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
    if scope:
        form.append(("scope", scope))
    if resource:
        form.append(("resource", resource))
    return Request("refresh", endpoints.token_endpoint, tuple(form))


def probe_request(url: str) -> Request:
    """A GET to an endpoint, without client authentication: does it answer at all?"""
    return Request("probe", url, method="GET", authenticate=False)


def revocation_request(endpoints: Endpoints, token: str, hint: str) -> Request:
    """RFC 7009 §2.1."""
    assert endpoints.revocation_endpoint
    return Request("revocation", endpoints.revocation_endpoint, (("token", token), ("token_type_hint", hint)))
