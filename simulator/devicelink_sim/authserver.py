"""The development authorization server: `DevServer`, on 127.0.0.1 in a thread.

    with DevServer(access_token_lifetime=60) as srv:
        ...                      # point the daemon at srv.issuer
        srv.approve(user_code)   # what the phone would do

A `DevServer` keeps its state in memory (state.py) and serves the Flask app of
app.py, which answers OAuth requests with Authlib (grants.py) and signs ID
tokens (signing.py). Fault injection for the daemon's tests (latency, 5xx, 429,
resets, timeouts, malformed or oversized answers, revoked grants) is
`srv.faults`, faults.py.

Standalone, `devicelink-sim server [--port N] ...` (or `python -m devicelink_sim
server`, cli.py) prints `issuer http://127.0.0.1:PORT` and
serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Response
from werkzeug.serving import WSGIRequestHandler, make_server

if TYPE_CHECKING:
    import httpx

from .app import build_app
from . import fault_layer
from .faults import Faults
from .records import Client, Login, Stats, TokenEvent, User
from .settings import (
    ACR_PWD,
    ACR_VALUES_SUPPORTED,
    CONFIDENTIAL_CLIENT_ID,
    DEFAULT_RESOURCES,
    DEFAULT_SCOPES,
    KEY_CLIENT_ID,
    PUBLIC_CLIENT_ID,
    Settings,
    asked_acr,
)
from .dpop import Proofs
from .signing import SigningKey
from .state import State

__all__ = ["DevServer"]

logger = logging.getLogger("devicelink_sim.authserver")


class DevServer:
    """An authorization server on 127.0.0.1 for tests, demos and CI.

    `clock` (default `time.monotonic`) drives every expiry and the polling
    interval, so tests can step time instead of sleeping. ID tokens carry
    wall-clock `iat`/`exp`, as their verifiers expect, and client assertions, DPoP
    proofs and software statements are checked against the wall clock: `wall_clock`
    (default `time.time`; the fleet's runs on virtual time).
    """

    def __init__(
        self,
        port: int = 0,
        access_token_lifetime: int = 3600,
        refresh_token_lifetime: int | None = None,
        device_code_lifetime: int = 600,
        interval: int = 5,
        rotate_refresh_tokens: bool = True,
        *,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        resources: tuple[str, ...] = DEFAULT_RESOURCES,
        honour_step_up: bool = True,
        dpop: bool = True,
        dpop_nonce: bool = False,
        client_secret: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        registration: bool = False,
        fleet_keys: dict | None = None,
        statement_issuer: str | None = None,
        initial_access_token: str | None = None,
    ):
        fleet = None
        if registration or fleet_keys is not None or initial_access_token is not None:
            from .registration import Fleet  # RFC 7591/7592: devices register themselves

            fleet = Fleet(fleet_keys, statement_issuer, initial_access_token)
        self.settings = Settings(  # ValueError for a lifetime, interval or resource out of bounds
            access_token_lifetime=access_token_lifetime,
            refresh_token_lifetime=refresh_token_lifetime,
            device_code_lifetime=device_code_lifetime,
            interval=interval,
            rotate_refresh_tokens=rotate_refresh_tokens,
            scopes=scopes,
            resources=resources,
            honour_step_up=honour_step_up,
            fleet=fleet,
            dpop=dpop,
            dpop_nonce=dpop_nonce,
        )
        #: DPoP proofs (RFC 9449, dpop.py): checked against the wall clock (iat), as a server's are.
        self.proofs = Proofs(require_nonce=dpop_nonce, wall=wall_clock)
        self._port = port
        self._clock = clock
        self.client_id = PUBLIC_CLIENT_ID
        self.confidential_client_id = CONFIDENTIAL_CLIENT_ID
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        default_scope = "profile" if "profile" in self.settings.scopes else ""
        self._state = State(
            clock,
            [
                Client(PUBLIC_CLIENT_ID, frozenset({"none"}), default_scope),
                Client(
                    CONFIDENTIAL_CLIENT_ID,
                    frozenset({"client_secret_basic", "client_secret_post"}),
                    default_scope,
                    client_secret=self.client_secret,
                ).confidential(),
            ],
            refresh_token_lifetime,
            wall_clock,
        )
        self._keys = SigningKey()
        self._issuer: str | None = None
        self._httpd = None
        self._thread: threading.Thread | None = None
        # A low-level seam on the token endpoint: a callable that gets the real
        # token endpoint as `respond` and returns what the client sees. Every
        # token request still lands in `stats`.
        self.around_token: Callable[[Callable[[], Response]], object] = _pass_through
        self._app = build_app(self, self._state, self._keys)
        # Fault injection on every endpoint a device uses (faults.py): latency, 5xx,
        # 429, resets, timeouts, malformed or oversized answers, revoked grants.
        self.faults = Faults(clock, revoke_grants=self._state.revoke_all)
        self._app.wsgi_app = fault_layer.wrap(
            self.faults, self._app.wsgi_app,
            lambda grant_type, outcome, at: self._state.record_token_request(
                TokenEvent(at, grant_type, outcome)))

    # -- lifecycle --

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise RuntimeError("DevServer is not started")
        return self._issuer

    def start(self) -> DevServer:
        if self._httpd is not None:
            raise RuntimeError("DevServer already started")
        # Authlib logs every issued token at DEBUG ("Issue token %r to %r").
        if logging.getLogger("authlib").getEffectiveLevel() < logging.INFO:
            logging.getLogger("authlib").setLevel(logging.INFO)
        # Bind here: werkzeug's make_server calls sys.exit(1) when the port is
        # taken, and a library should raise OSError instead. Connections queue
        # from this point on.
        sock = socket.create_server(("127.0.0.1", self._port))
        port = sock.getsockname()[1]
        try:
            self._httpd = make_server(
                "127.0.0.1",
                port,
                self._app,
                threaded=True,
                request_handler=_QuietHandler,
                fd=sock.fileno(),
            )
        finally:
            sock.close()  # werkzeug serves a duplicate of it
        self._issuer = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() waits for the loop
            name="devicelink-sim",
            daemon=True,
        )
        self._thread.start()
        logger.info("authorization server listening at %s", self._issuer)
        return self

    def serve_in_process(self, issuer: str = "http://127.0.0.1:9") -> httpx.AsyncBaseTransport:
        """No socket: an httpx transport that calls the app directly (inprocess.py), for the
        fleet on virtual time. ``issuer`` only names the server (a loopback address nothing
        listens on, so that the daemon's http:// rule holds)."""
        from .inprocess import InProcessTransport

        if self._httpd is not None:
            raise RuntimeError("DevServer already started")
        self._issuer = issuer
        return InProcessTransport(self._app)

    def stop(self) -> None:
        if self._httpd is None:
            return
        self.faults.release()  # held requests end, so shutdown does not wait for them
        self._httpd.shutdown()
        self._thread.join()
        self._httpd.server_close()
        self._httpd = self._thread = None

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what the phone and the tests do --

    def approve(
        self,
        user_code: str,
        subject: str = "alice",
        name: str | None = None,
        acr: str | None = None,
        *,
        session_age: float = 0,
    ) -> None:
        """Approve a pending user code as `subject`; KeyError if unknown, expired or used
        (`state.AlreadyDecided`, a KeyError, when it was already approved or denied).

        `acr` is how the user signed in, one of ACR_VALUES_SUPPORTED. By default it is
        the first of the request's acr_values that the server supports (the user did
        the stronger sign-in that was asked for), else ACR_PWD. With
        `honour_step_up=False` every login is ACR_PWD, and any other `acr` is a
        ValueError.

        `session_age` plays a user who signed in that many seconds ago (a reused
        session) instead of just now: auth_time is that much earlier, unless the
        request's max_age is shorter and the server honours it, in which case the
        user signs in again now.
        """
        honoured = self.settings.honour_step_up
        if acr is not None and acr not in (ACR_VALUES_SUPPORTED if honoured else (ACR_PWD,)):
            raise ValueError(f"acr {acr!r} is not one this server supports"
                             + ("" if honoured else " (honour_step_up is off)"))
        if not session_age >= 0:
            raise ValueError("session_age must be 0 or more seconds")
        user = User(subject, name or f"{subject.capitalize()} Example")
        with self._state.lock:
            credential = self._state.undecided(user_code)
            if honoured:
                if acr is None:
                    acr = asked_acr(credential.acr_values) or ACR_PWD
                if credential.max_age is not None and session_age > credential.max_age:
                    session_age = 0  # too old for max_age: a fresh sign-in
            else:
                acr = ACR_PWD
            credential.login = Login(
                acr=acr,
                authenticated_at=self._clock() - session_age,
                auth_time=int(self._state.wall() - session_age),
            )
            credential.decision = (user, True)
        logger.info("user code %s approved as %s (%s)", user_code, subject, acr)

    def deny(self, user_code: str) -> None:
        """Deny a pending user code; KeyError if unknown, expired, used or already decided."""
        with self._state.lock:
            self._state.undecided(user_code).decision = (None, False)
        logger.info("user code %s denied", user_code)

    def register_device_key(self, jwks: dict, client_id: str = KEY_CLIENT_ID) -> str:
        """Register (or replace) a `private_key_jwt` client whose assertions must be signed by
        one of `jwks`: a JWKS (`{"keys": [...]}`) or a single public JWK, as `devicelink
        provision` prints it. Returns the client_id."""
        if "keys" not in jwks:
            jwks = {"keys": [jwks]}
        if any("d" in key for key in jwks["keys"]):
            raise ValueError("a private key: register the public key only")
        default_scope = "profile" if "profile" in self.settings.scopes else ""
        with self._state.lock:
            self._state.clients[client_id] = Client(client_id, frozenset({"private_key_jwt"}), default_scope,
                                                    jwks=jwks).confidential()
        return client_id

    def registered_clients(self) -> list[dict]:
        """Every client that registered itself (RFC 7591) and is not deleted, as an administrator
        would list them: `client_id`, `software_id`, `device_serial`, `kids` (the RFC 7638
        thumbprints of its keys) and the rest of its metadata under `metadata`."""
        from .registration import _thumbprint

        with self._state.lock:
            clients = [c for c in self._state.clients.values() if c.metadata is not None]
        return [{"client_id": c.client_id, "software_id": c.metadata.get("software_id"),
                 "device_serial": c.metadata.get("device_serial"),
                 "kids": [_thumbprint(k) for k in (c.jwks or {}).get("keys", [])], "metadata": dict(c.metadata)}
                for c in clients]

    @property
    def registrations(self) -> int:
        """How many registrations (RFC 7591) succeeded, deleted ones included."""
        with self._state.lock:
            return self._state.registrations

    @property
    def assertions(self) -> list[dict]:
        """The claims of every client assertion that passed its signature and claim checks,
        in order (for tests: a new jti each, the aud sent)."""
        with self._state.lock:
            return list(self._state.assertions)

    @property
    def dpop_proofs(self) -> list[dict]:
        """The claims of every DPoP proof that passed, in order, each with ``jkt``, the RFC 7638
        thumbprint of its key (for tests: one per request, a new jti each, the nonce it carried)."""
        with self._state.lock:
            return list(self.proofs.checked)

    def new_dpop_nonce(self) -> str:
        """The server's DPoP nonce moves on (``dpop_nonce=True``): proofs with the old one get use_dpop_nonce."""
        with self._state.lock:
            return self.proofs.new_nonce()

    def pending_user_codes(self) -> list[str]:
        """User codes that are live and still waiting for a decision."""
        with self._state.lock:
            return [
                c.user_code
                for c in self._state.device_codes.values()
                if c.decision is None and not c.is_expired()
            ]

    def revoked(self, refresh_token: str) -> bool:
        """Whether this refresh token's grant was revoked (by /revoke or reuse
        detection). A token merely rotated away is not revoked. KeyError if the
        server never issued it."""
        with self._state.lock:
            return self._state.refresh_tokens[refresh_token].grant.revoked

    @property
    def stats(self) -> Stats:
        return self._state.stats()

    def access_token_info(self, access_token: str) -> dict | None:
        """What the server knows of an access token it issued (None if it issued no such
        token), for tests; like an RFC 7662 introspection response, but also for an
        expired or revoked token (then `active` is False):

        - `active`, `client_id`, `sub`, `name`, `scope` (None when it has none); `sub` and
          `name` are None for a client credentials token (the client's own, no user);
        - `aud`: its resource (RFC 8707) as a string, a list when there are several,
          None when there are none; `resource`: the same, always a tuple;
        - `acr`, `auth_time` (seconds since the epoch) of the approval behind it (None for a
          client credentials token);
        - `acr_values` (a tuple) and `max_age` (int or None) as the device authorization
          request sent them, also when the server does not honour them;
        - `iat`, `exp`: seconds since the epoch, mapped from the server's clock at the
          time of the call; `expires_in`: seconds left on the server's clock;
        - `grant`: a number for the grant (one device authorization) it belongs to;
        - `token_type` (`DPoP` or `Bearer`), and `cnf` `{"jkt": ...}` for a DPoP-bound one (RFC 9449 §6.2).
        """
        with self._state.lock:
            token = self._state.access_tokens.get(access_token)
            if token is None:
                return None
            grant = token.grant
            now = self._clock()
            wall = self._state.wall()
            resources = token.resources
            return {
                "active": not token.is_expired() and not token.is_revoked(),
                "client_id": grant.client_id,
                "sub": grant.user and grant.user.subject,
                "name": grant.user and grant.user.name,
                "scope": token.scope,
                "aud": None if not resources else resources[0] if len(resources) == 1 else list(resources),
                "resource": resources,
                "acr": grant.login and grant.login.acr,
                "auth_time": grant.login and grant.login.auth_time,
                "acr_values": grant.acr_values,
                "max_age": grant.max_age,
                "iat": int(wall - (now - token.issued_at)),
                "exp": int(wall + (token.expires_at - now)),
                "expires_in": token.get_expires_in(),
                "grant": grant.id,
                "token_type": "DPoP" if token.jkt else "Bearer",
                **({"cnf": {"jkt": token.jkt}} if token.jkt else {}),
            }

    def issued_refresh_tokens(self) -> list[str]:
        with self._state.lock:
            return list(self._state.refresh_tokens)

    def issued_secrets(self) -> list[str]:
        """Every device code, access token and refresh token this server handed out, for
        tests that prove none of them reached a client's files or logs."""
        with self._state.lock:
            return ([c.device_code for c in self._state.user_codes.values()]
                    + list(self._state.access_tokens) + list(self._state.refresh_tokens))


def _pass_through(respond: Callable[[], Response]) -> Response:
    return respond()


class _QuietHandler(WSGIRequestHandler):
    """Logs the method and path only: never a query string or a body."""

    def log_request(self, code="-", size="-"):
        logger.debug("%s %s %s", self.command, urlsplit(self.path).path, code)

    def log(self, type, message, *args):
        logger.log(logging.WARNING if type == "error" else logging.DEBUG, message, *args)
