"""The socket API as data: routes, query parsing and response bodies.

This module is pure. It imports no asyncio and touches no socket: the server
(:mod:`devicelink.ipc.server`) parses HTTP with h11, asks :func:`resolve` which
handler a request goes to, hands the :class:`Request` to the :class:`Api`
(:mod:`devicelink.ipc.api`, which applies the per-app policy), and turns what
it gets back into bytes. Every status, error code and header the
API sends is defined here, once (as oidc-agent keeps its IPC strings in
``src/defines/ipc_values.h``).

Rules the helpers keep:

- A token answer carries only ``access_token``, ``token_type``, ``expires_in``
  and ``scope``, whatever else the agent's dict holds, so a refresh token can
  never reach a local app by accident.
- Every answer has ``cache-control: no-store`` (required on token answers by
  RFC 6749 §5.1; harmless and simpler on the rest).
- Errors are ``{"error": CODE, "error_description": TEXT}``; the status comes
  from the code (:data:`STATUS_BY_CODE`), so the two cannot disagree.
"""

from __future__ import annotations

import http
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from devicelink.config import SCOPE_RE
from devicelink.engine.answers import TokenQuery
from devicelink.errors import DeviceLinkError, Refused
from devicelink.policy import Peer

__all__ = [
    "MAX_MIN_TTL",
    "REASONS",
    "ROUTES",
    "SCOPE_RE",
    "SSE_HEADERS",
    "STATUS_BY_CODE",
    "TOKEN_FIELDS",
    "Api",
    "ApiError",
    "MethodNotAllowed",
    "Peer",
    "Request",
    "Response",
    "Stream",
    "TokenQuery",
    "error_response",
    "health_response",
    "json_response",
    "parse_token_query",
    "resolve",
    "sse_event",
    "text_response",
    "token_response",
]

MAX_MIN_TTL = 86400

#: Error code -> HTTP status. The first six are the contract (DESIGN.md);
#: the rest are what any HTTP server answers for a bad route or request.
STATUS_BY_CODE: Mapping[str, int] = {
    "not_paired": 503,
    "pairing_in_progress": 503,
    "forbidden": 403,
    "invalid_request": 400,
    "upstream_unavailable": 502,
    "reauth_required": 503,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_too_large": 413,
    "server_error": 500,
    "server_busy": 503,  # too many connections, in total or from one uid
    "step_up_unsupported": 502,  # RFC 9470: the server ignored acr_values / max_age
}

#: (method, path) -> handler name, the ``Request.handler`` the Api dispatches on.
ROUTES: Mapping[tuple[bytes, bytes], str] = {
    (b"GET", b"/v1/token"): "token",
    (b"GET", b"/v1/status"): "status",
    (b"GET", b"/v1/health"): "health",
    (b"POST", b"/v1/pair"): "pair",
    (b"POST", b"/v1/unpair"): "unpair",
    (b"POST", b"/v1/factory-reset"): "factory_reset",
    (b"POST", b"/v1/step-up"): "step_up",
    (b"POST", b"/v1/dpop-proof"): "dpop_proof",
    (b"GET", b"/v1/events"): "events",
    (b"GET", b"/metrics"): "metrics",
}

# path -> value of the Allow header, for 405 answers (RFC 9110 §15.5.6).
_ALLOWED: dict[bytes, bytes] = {}
for _method, _path in ROUTES:
    _ALLOWED[_path] = b", ".join(filter(None, (_ALLOWED.get(_path), _method)))
del _method, _path

# The fields of a token answer (RFC 6749 §5.1); anything else is dropped.
TOKEN_FIELDS = ("access_token", "token_type", "expires_in", "scope")


@dataclass(frozen=True, slots=True)
class Request:
    """A complete request, as the server hands it to the :class:`Api`."""

    handler: str  # a value of ROUTES
    query: bytes  # the raw query string, without "?"
    body: bytes
    peer: Peer


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer: status, headers (with content-length) and body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Stream:
    """An answer sent in pieces (server-sent events): the status and headers at
    once, then each chunk ``chunks`` yields, until it ends or the client leaves
    (the server then closes the iterator). No content-length: HTTP/1.1 clients
    get chunked transfer coding."""

    headers: tuple[tuple[bytes, bytes], ...]
    chunks: AsyncIterator[bytes]
    status: int = 200


class Api(Protocol):
    """What the server calls for every routed request."""

    def handle(self, request: Request) -> Response | Stream | Awaitable[Response]:
        """Answer at once (a Response or a Stream) or later (an awaitable).

        Raises ApiError for an error answer (also from the awaitable).
        """


class ApiError(DeviceLinkError):
    """An answer other than success. ``status`` follows from ``code``.

    ``description`` is sent to the caller and may be logged: never put a
    token, a device code or a secret in it. The engine raises errors of
    ``errors.py``; :meth:`of` turns each into the answer its ``code`` names.
    """

    def __init__(self, code: str, description: str) -> None:
        try:
            status = STATUS_BY_CODE[code]
        except KeyError:
            raise ValueError(f"unknown socket API error code {code!r}") from None
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status

    @classmethod
    def of(cls, err: DeviceLinkError) -> ApiError:
        if isinstance(err, ApiError):
            return err
        description = err.description if isinstance(err, Refused) else str(err)
        return cls(err.code if err.code in STATUS_BY_CODE else "server_error", description)


class MethodNotAllowed(ApiError):
    """405; ``allow`` is the value of the Allow header."""

    def __init__(self, allow: bytes) -> None:
        super().__init__("method_not_allowed", f"allowed: {allow.decode()}")
        self.allow = allow


REASONS: Mapping[int, bytes] = {s.value: s.phrase.encode() for s in http.HTTPStatus}

# One encoder for every answer: json.dumps(obj, separators=...) would build a
# new JSONEncoder per call. allow_nan=False keeps the output strict JSON.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

_JSON_HEADERS = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


def json_response(status: int, obj: Any) -> Response:
    """Serialise ``obj`` once; a newline at the end keeps ``curl`` output tidy."""
    body = _encode(obj).encode() + b"\n"
    return Response(status, (*_JSON_HEADERS, (b"content-length", b"%d" % len(body))), body)


def error_response(err: ApiError, status: int | None = None) -> Response:
    """The JSON error answer for ``err``; ``status`` overrides the code's (431, 501)."""
    resp = json_response(
        err.status if status is None else status,
        {"error": err.code, "error_description": err.description},
    )
    if isinstance(err, MethodNotAllowed):
        return Response(resp.status, (*resp.headers, (b"allow", err.allow)), resp.body)
    return resp


def token_response(result: Mapping[str, Any]) -> Response:
    """200 with the token fields of ``result`` only (never a refresh token)."""
    if "access_token" not in result:
        raise ValueError("the token answer has no access_token")
    return json_response(200, {k: result[k] for k in TOKEN_FIELDS if k in result})


_HEALTHY = json_response(200, {"healthy": True})
_UNHEALTHY = json_response(503, {"healthy": False})


_TEXT_HEADERS = (
    (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),  # Prometheus exposition format
    (b"cache-control", b"no-store"),
)


def text_response(status: int, text: str) -> Response:
    body = text.encode()
    return Response(status, (*_TEXT_HEADERS, (b"content-length", b"%d" % len(body))), body)


#: Headers of ``GET /v1/events``. ``x-accel-buffering`` is for a proxy someone puts in front.
SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
)


def sse_event(name: str, data: Mapping[str, Any], event_id: int | None = None) -> bytes:
    """One server-sent event (WHATWG HTML §9.2). ``data`` is one line of JSON:
    the encoder escapes newlines, so an event can never be split or forged."""
    head = f"id: {event_id}\nevent: {name}\n" if event_id is not None else f"event: {name}\n"
    return f"{head}data: {_encode(data)}\n\n".encode()


def health_response(healthy: bool) -> Response:
    return _HEALTHY if healthy else _UNHEALTHY


def resolve(method: bytes, target: bytes) -> tuple[str, bytes]:
    """Map a request line to ``(handler name, raw query)``.

    Accepts origin-form (``/v1/token?...``) and absolute-form
    (``http://devicelink/v1/token``, RFC 9112 §3.2.2) targets.
    Raises ApiError ``not_found`` or :class:`MethodNotAllowed`.
    """
    path, _, query = target.partition(b"?")
    if not path.startswith(b"/"):
        if path[:7].lower() == b"http://":
            slash = path.find(b"/", 7)
            path = path[slash:] if slash >= 0 else b"/"
        else:
            raise ApiError("not_found", "no such endpoint")
    handler = ROUTES.get((method, path))
    if handler is not None:
        return handler, query
    allow = _ALLOWED.get(path)
    if allow is None:
        raise ApiError("not_found", "no such endpoint")
    raise MethodNotAllowed(allow)


_DEFAULT_QUERY = TokenQuery()
#: ``GET /v1/token?identity=``: the signed-in user's token (the default), or the device's own.
IDENTITIES = ("user", "device")
_MAX_PARAMS = 32


def parse_token_query(query: bytes) -> TokenQuery:
    """Parse the query of ``GET /v1/token``. Raises ApiError ``invalid_request``.

    Known parameters may appear once each; unknown ones are ignored, as both
    sides of oidc-agent's IPC do, so newer clients work with older daemons.
    """
    if not query:
        return _DEFAULT_QUERY
    try:
        pairs = parse_qsl(
            query.decode("ascii"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_PARAMS,
        )
    except ValueError:  # also UnicodeDecodeError
        raise ApiError("invalid_request", "the query string is malformed") from None
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name in ("min_ttl", "scope", "resource", "identity"):
            if name in seen:
                raise ApiError("invalid_request", f"{name} is given more than once")
            seen[name] = value
    identity = seen.get("identity", "user")
    if identity not in IDENTITIES:
        # Refused, never read as the default: an app asking for another identity must not get the user's token.
        raise ApiError("invalid_request", "identity must be device (a device-level token) or user (the default)")
    min_ttl = _DEFAULT_QUERY.min_ttl
    if "min_ttl" in seen:
        raw = seen["min_ttl"]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or int(raw) > MAX_MIN_TTL:
            raise ApiError(
                "invalid_request", f"min_ttl must be an integer from 0 to {MAX_MIN_TTL}"
            )
        min_ttl = int(raw)
    scope = seen.get("scope")
    if scope is not None and not SCOPE_RE.fullmatch(scope):
        raise ApiError(
            "invalid_request", "scope must be space-separated scope tokens (RFC 6749 §3.3)"
        )
    resource = seen.get("resource")
    if resource is not None and not _is_absolute_uri(resource):
        raise ApiError(
            "invalid_request", "resource must be an absolute URI without a fragment (RFC 8707)"
        )
    return TokenQuery(min_ttl=min_ttl, scope=scope, resource=resource, identity=identity)


def _is_absolute_uri(value: str) -> bool:
    if not value.isascii() or not value.isprintable() or " " in value or "#" in value:
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and bool(parts.netloc or parts.path)
