"""The virtual device's page: one URL that shows the device live and lets you touch it.

- ``GET /``: the page (page.html, page.js);
- ``GET /events``: server-sent events (WHATWG HTML §9.2), one event per topic of the
  hub (``frame``, ``led``, ``button``, ``status``, ``daemon``, ``log``, ``faults``,
  ``requests``, ``device``, ``server``), each a JSON object, pushed as it changes;
- ``POST /button`` ``{"pressed": true|false}``: the finger on the button goes down or up;
- ``POST /faults``: what ``POST /sim/faults`` on the server takes (faults.py,
  ``Faults.configure``): ``{"switch": [{"endpoint", "kind", "on"}]}``, ``clear``,
  ``release``, ``revoke_grants``; answers with the live rules;
- ``GET /screen.png``: the latest frame.

It listens on 127.0.0.1 only: whoever reaches it can press the button.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

from .hub import Hub

if TYPE_CHECKING:
    from ..faults import Faults
    from .board import VirtualDevice

logger = logging.getLogger(__name__)


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def build_app(hub: Hub, device: VirtualDevice, faults: Faults) -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def page():
        return Response(_asset("page.html"), mimetype="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/page.js")
    def script():
        return Response(_asset("page.js"), mimetype="text/javascript", headers={"Cache-Control": "no-store"})

    @app.get("/events")
    def events():
        def stream():
            yield "retry: 1000\n\n"
            for item in hub.stream():
                if item is None:
                    yield ": keep-alive\n\n"
                else:
                    topic, value = item
                    yield f"event: {topic}\ndata: {json.dumps(value, separators=(',', ':'))}\n\n"

        return Response(stream(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/button")
    def button():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("pressed"), bool):
            return jsonify(error="invalid_request", error_description='expected {"pressed": true|false}'), 400
        wired = device.press() if body["pressed"] else device.release()
        if not wired:
            return jsonify(error="not_running", error_description="the daemon is not running"), 409
        return jsonify(pressed=body["pressed"])

    @app.post("/faults")
    def set_faults():
        try:
            return jsonify(faults.configure(request.get_json(silent=True)))
        except (ValueError, RuntimeError) as exc:
            return jsonify(error="invalid_request", error_description=str(exc)), 400

    @app.get("/screen.png")
    def screen():
        frame = hub.get("frame")
        if frame is None:
            return jsonify(error="no_frame"), 404
        return Response(base64.b64decode(frame["png"]), mimetype="image/png", headers={"Cache-Control": "no-store"})

    return app


class PageServer:
    """The page's HTTP server on 127.0.0.1, in a thread. ``port`` 0 picks a free one; with
    ``fallback``, a taken port does too."""

    def __init__(self, app: Flask, port: int = 0, fallback: bool = False) -> None:
        self.app, self.port, self.fallback = app, port, fallback
        self._httpd = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def start(self) -> PageServer:
        try:
            sock = socket.create_server(("127.0.0.1", self.port))
        except OSError:
            if not self.fallback or self.port == 0:
                raise
            sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        try:
            self._httpd = make_server("127.0.0.1", port, self.app, threaded=True,
                                      request_handler=_QuietHandler, fd=sock.fileno())
        finally:
            sock.close()
        self._httpd.daemon_threads = True  # an open event stream must not hold up the exit
        self.url = f"http://127.0.0.1:{port}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sim-page", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._thread.join()
        self._httpd.server_close()
        self._httpd = None


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        logger.debug("%s %s %s", self.command, urlsplit(self.path).path, code)

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.log(logging.WARNING if type == "error" else logging.DEBUG, message, *args)
