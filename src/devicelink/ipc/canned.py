"""The limits on a request, and the answers the socket layer writes itself.

Every answer here is built once: the error answers at import, the raw heads
and h11's ``Response`` events on first use (h11 validates every header of each
event it is given; token answers differ only in their body, so a few events
serve them all). Raw bytes serve the fast path and refused connections, which
write without h11.
"""

from __future__ import annotations

import h11

from devicelink.ipc import routes
from devicelink.ipc.routes import ApiError, Response, Stream

MAX_REQUEST_LINE_BYTES = 8 * 1024  # RFC 9112 §3 recommends supporting at least 8000
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 16 * 1024

CLOSE = ((b"connection", b"close"),)


def error(code: str, description: str, status: int | None = None) -> Response:
    return routes.error_response(ApiError(code, description), status)


SERVER_ERROR = error("server_error", "internal error; see the daemon's log")
TOO_LARGE = error("request_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
URI_TOO_LONG = error("invalid_request", f"the request line is longer than {MAX_REQUEST_LINE_BYTES} bytes", 414)
TOO_MANY_HEADERS = error("invalid_request", f"more than {MAX_HEADERS} header fields", 431)
PROTOCOL_ERRORS = {
    400: error("invalid_request", "malformed HTTP request"),
    431: error("invalid_request", f"request headers exceed {MAX_HEADER_BYTES} bytes", 431),
    501: error("invalid_request", "unsupported transfer coding", 501),
}


def over_limits(request: h11.Request) -> Response | None:
    """The answer to a request head over a limit; None if it is within them all."""
    # method SP target SP HTTP/1.1 CRLF (RFC 9112 §3); a longer one is almost
    # always a runaway query string.
    if len(request.method) + len(request.target) + 12 > MAX_REQUEST_LINE_BYTES:
        return URI_TOO_LONG
    headers = request.headers
    if len(headers) > MAX_HEADERS:
        return TOO_MANY_HEADERS
    # h11 enforces max_incomplete_event_size only on a request that arrives in
    # pieces; count here so one big read gets 431 too.
    size = len(request.target)
    for name, value in headers:
        size += len(name) + len(value)
        # len() first: h11 < 0.16 lets any number of digits through.
        if name == b"content-length" and (len(value) > 9 or int(value) > MAX_BODY_BYTES):
            return TOO_LARGE
    return PROTOCOL_ERRORS[431] if size > MAX_HEADER_BYTES else None


def protocol_error(exc: h11.RemoteProtocolError, buffered: bytes) -> Response:
    """The answer to what h11 could not read; ``buffered``: what it holds of the request."""
    status = exc.error_status_hint
    if status == 431:
        # The head is over 16 KiB and still incomplete: is it the first line?
        line_end = buffered.find(b"\n")
        if line_end < 0 or line_end > MAX_REQUEST_LINE_BYTES:
            return URI_TOO_LONG
    return PROTOCOL_ERRORS.get(status, PROTOCOL_ERRORS[400])


def timeout_answer(request_timeout: float) -> Response:
    return error("invalid_request", f"the request did not arrive within {request_timeout:g} s", 408)  # RFC 9110 §15.5.9


def raw(response: Response, close: bool = True) -> bytes:
    """A whole HTTP/1.1 answer as bytes, without h11."""
    return _raw_head(response.status, response.headers, close) + response.body


_raw_heads: dict[tuple[int, tuple[tuple[bytes, bytes], ...], bool], bytes] = {}


def _raw_head(status: int, headers: tuple[tuple[bytes, bytes], ...], close: bool) -> bytes:
    key = (status, headers, close)
    head = _raw_heads.get(key)
    if head is None:
        if len(_raw_heads) >= 256:
            _raw_heads.clear()
        fields = b"".join(b"%s: %s\r\n" % field for field in (*headers, *(CLOSE if close else ())))
        head = _raw_heads[key] = (b"HTTP/1.1 %d %s\r\n" % (status, routes.REASONS.get(status, b""))
                                  + fields + b"\r\n")
    return head


BUSY = raw(error("server_busy", "too many connections; close idle ones, or retry later"))

# The cache stays small: content-length is the only header that varies.
_response_events: dict[tuple[int, tuple[tuple[bytes, bytes], ...]], h11.Response] = {}


def response_event(response: Response | Stream, close: bool) -> h11.Response:
    """h11's ``Response`` event for the head of ``response``, reused while it is the same."""
    headers = response.headers + CLOSE if close else response.headers
    key = (response.status, headers)
    event = _response_events.get(key)
    if event is None:
        if len(_response_events) >= 256:
            _response_events.clear()
        event = _response_events[key] = h11.Response(
            status_code=response.status,
            headers=headers,
            reason=routes.REASONS.get(response.status, b""),
        )
    return event


def path_only(target: bytes) -> str:
    """The path of a request target, for logs: the query may name scopes."""
    return target.partition(b"?")[0][:200].decode("ascii", "replace")
