"""The WSGI layer that applies the fault rules of faults.py to a development server's requests.

It reads each request to the five faultable endpoints, asks `Faults.arrive` for
its rule, and then answers for real, answers with the fault, or drops the
connection without an answer.
"""

from __future__ import annotations

import io
import json
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from .faults import Fault, Faults, outcome_of

OVERSIZED = (1 << 20) + 4096  # past the daemon's 1 MiB cap on answers


def wrap(faults: Faults, app: Callable, record_token: Callable[[str, str, float], None] | None = None) -> Callable:
    """Wrap a WSGI app. ``record_token(grant_type, outcome, arrived)`` is told about every
    token request that a fault answered (the real endpoint records the others itself)."""

    def middleware(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        endpoint = _endpoint_of(environ)
        if endpoint is None:
            return app(environ, start_response)
        arrived = faults.clock()
        body = _take_body(environ)
        grant_type = _form_value(body, "grant_type") if endpoint == "token" else ""
        rule, hit, released = faults.arrive(endpoint, grant_type, arrived)
        if rule is None or rule.kind in ("ok", "revoke"):
            if rule is not None:
                released.wait(rule.delay)
                if rule.kind == "revoke":
                    faults.revoke_grants()
            status, headers, content = _call(app, environ)
            hit.outcome = _outcome(status, content)
            start_response(status, headers)
            return [content]

        def record(outcome: str) -> None:
            if record_token is not None and endpoint == "token" and not rule.after:
                record_token(grant_type, outcome, arrived)

        released.wait(rule.delay)
        if rule.after:
            _call(app, _fresh(environ, body))  # the server acts; the device never hears of it
        if rule.kind == "timeout":
            hit.outcome = "timeout"
            record("timeout")
            released.wait(rule.hold)
            _drop(environ, rst=False)
        if rule.kind in ("reset", "close"):
            hit.outcome = rule.kind
            record(rule.kind)
            _drop(environ, rst=rule.kind == "reset")
        status, headers, content = _fault_answer(rule)
        hit.outcome = rule.kind if rule.kind != "status" else _outcome(status, content)
        record(hit.outcome)
        start_response(status, headers)
        return [content]

    return middleware


def _endpoint_of(environ: dict[str, Any]) -> str | None:
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
    if path == "/token" and method == "POST":
        return "token"
    if path == "/device_authorization" and method == "POST":
        return "device"
    if path == "/revoke" and method == "POST":
        return "revocation"
    if path.startswith("/.well-known/") and method == "GET":
        return "discovery"
    if path == "/register" and method == "POST":
        return "registration"
    return None



def _take_body(environ: dict[str, Any]) -> bytes:
    """Read the request body and put it back, so the real endpoint can read it again."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ["wsgi.input"]
    body = stream.read(length) if length > 0 else (stream.read() if environ.get("wsgi.input_terminated") else b"")
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _fresh(environ: dict[str, Any], body: bytes) -> dict[str, Any]:
    again = dict(environ)
    again["wsgi.input"] = io.BytesIO(body)
    return again


def _form_value(body: bytes, name: str) -> str:
    try:
        return parse_qs(body.decode("utf-8", "replace")).get(name, [""])[0]
    except ValueError:
        return ""


def _call(app: Callable, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run the real app to completion and keep its answer."""
    answer: dict[str, Any] = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, headers
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        content = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return answer["status"], answer["headers"], content




def _outcome(status: str, content: bytes) -> str:
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        data = None
    return outcome_of(int(status.split()[0]), data)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


def _fault_answer(rule: Fault) -> tuple[str, list[tuple[str, str]], bytes]:
    status = rule.status or 503
    headers = [("Cache-Control", "no-store")]
    if rule.kind == "status":
        if rule.error is not None:
            content = json.dumps({"error": rule.error, "error_description": "injected fault"}).encode()
            headers.append(("Content-Type", "application/json"))
        else:  # what a proxy or a load balancer answers
            content = f"<html><body><h1>{status} {_REASONS.get(status, 'Error')}</h1></body></html>".encode()
            headers.append(("Content-Type", "text/html; charset=utf-8"))
        if rule.retry_after is not None:
            headers.append(("Retry-After", str(rule.retry_after)))
    elif rule.kind == "malformed":
        content = b'{"access_token": "abc", "token_type": "Bearer", "expires_in": 36'  # cut short
        headers.append(("Content-Type", "application/json"))
    else:  # oversized: a token answer a client without a size cap would accept
        pad = OVERSIZED - 80
        content = b'{"access_token": "' + b"A" * pad + b'", "token_type": "Bearer", "expires_in": 3600}'
        headers.append(("Content-Type", "application/json"))
        status = 200
    headers.append(("Content-Length", str(len(content))))
    return f"{status} {_REASONS.get(status, 'Fault')}", headers, content


def _drop(environ: dict[str, Any], rst: bool = True) -> None:
    """Close the connection without an answer, and tell werkzeug the peer went away, so it
    neither answers nor logs a traceback. ``rst``: abort with a TCP reset (SO_LINGER 0, the
    descriptor closed before werkzeug's own shutdown(SHUT_WR) could send a FIN); else a FIN."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD if rst else socket.SHUT_RDWR)  # the keep-alive loop reads EOF
            if rst:
                sock.close()  # really closed (RST) when the handler closes its files, before any FIN
        except OSError:
            pass
    raise ConnectionResetError("fault injection: connection closed without an answer")

