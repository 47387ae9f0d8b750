"""The development server without a socket: its WSGI app called straight from an httpx transport.

For the fleet (fleet.py): thousands of devices on virtual time talk to the real
development server (the same Flask app, Authlib grants, state and fault layer as
``devicelink-sim server``), with no port, no thread and no network stack between
them. Each request runs to its end on the caller's loop, so the server's clock
and the devices' are one.
"""

from __future__ import annotations

import io
from typing import Any, Callable
from urllib.parse import unquote

import httpx

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


class InProcessTransport(httpx.AsyncBaseTransport):
    """Every request to ``app`` as a WSGI call, in the loop's own thread."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        url = request.url
        environ = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(url.path),
            "QUERY_STRING": url.query.decode("ascii"),
            "SERVER_NAME": url.host,
            "SERVER_PORT": str(url.port or (443 if url.scheme == "https" else 80)),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": url.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in request.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ[key] = value
            elif key != "CONTENT_LENGTH":
                environ[f"HTTP_{key}"] = value
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        chunks = self.app(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        status, headers = started
        return httpx.Response(int(status.split()[0]), headers=headers, content=content, request=request)
