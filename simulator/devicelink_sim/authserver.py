"""Development authorization server: the RFC 8628 device grant on Authlib + Flask.

    with DevServer(access_token_lifetime=60) as srv:
        ...                      # point the daemon at srv.issuer
        srv.approve(user_code)   # what the phone would do

Authlib does the protocol: `DeviceAuthorizationEndpoint` and `DeviceCodeGrant`
(RFC 8628), `RefreshTokenGrant` (RFC 6749 §6), `RevocationEndpoint` (RFC 7009)
and a Bearer `ResourceProtector` for /userinfo. This module fills in their
storage hooks from `state.State` and adds what Authlib leaves out: refresh-token
rotation with reuse detection (RFC 9700 §4.14.2), ID tokens, discovery
metadata, the verification page, resource indicators (RFC 8707) and step-up
parameters (RFC 9470) on the device authorization request.

What a device may send beyond the plain device flow:

- `scope` on a refresh (RFC 6749 §6): a subset of the grant's scope; the access
  token (and the response's `scope`) is exactly that subset, anything more is
  `invalid_scope`. The new refresh token keeps the grant's whole scope, and the
  refresh rotates it like any other.
- `resource` (RFC 8707, repeatable) on the device authorization request and on
  token requests (polls and refreshes). Only `Settings.resources` are known;
  anything else is `invalid_target`. A token request may name only resources
  its grant's device authorization named, or, if that named none, any known
  resource. An access token's audience is the token request's resources, else
  the device authorization's. Access tokens are opaque: tests read what one
  was issued for with `DevServer.access_token_info`.
- `acr_values` and `max_age` (RFC 9470, OIDC) on the device authorization
  request, honoured unless `honour_step_up=False`; see `DevServer.approve`.

Fault injection for the daemon's tests (latency, 5xx, 429, resets, timeouts,
malformed or oversized answers, revoked grants) is `srv.faults`, faults.py.

It listens on 127.0.0.1 only. Standalone:

    python -m devicelink_sim.authserver [--port N] [--access-token-lifetime S] ...

prints `issuer http://127.0.0.1:PORT` and serves until SIGINT or SIGTERM;
`--fault ENDPOINT:KIND[,FIELD=VALUE...]` injects faults (docs/faults.md).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc8628 import (
    DEVICE_CODE_GRANT_TYPE,
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
)
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

from . import pages
from .faults import Faults, parse_spec
from .records import (
    Client,
    DeviceCode,
    Grant,
    Login,
    RefreshToken,
    Stats,
    TokenEvent,
    User,
    normalize_user_code,
)
from .state import State

__all__ = [
    "ACR_MFA", "ACR_PWD", "ACR_VALUES_SUPPORTED", "DEFAULT_RESOURCES", "DEVICE_CODE_GRANT_TYPE",
    "DevServer", "Settings", "Stats", "TokenEvent", "main",
]

logger = logging.getLogger("devicelink_sim.authserver")

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
AUTH_METHODS_SUPPORTED = ["none", "client_secret_basic", "client_secret_post"]
# Authlib's grants and endpoints try methods in this order.
ALL_CLIENT_AUTH = ["client_secret_basic", "client_secret_post", "none"]


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


class DevServer:
    """An authorization server on 127.0.0.1 for tests, demos and CI.

    `clock` (default `time.monotonic`) drives every expiry and the polling
    interval, so tests can step time instead of sleeping. ID tokens carry
    wall-clock `iat`/`exp`, as their verifiers expect.
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
        client_secret: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if access_token_lifetime < 1 or device_code_lifetime < 1:
            raise ValueError("token and device code lifetimes must be at least 1 second")
        if refresh_token_lifetime is not None and refresh_token_lifetime < 1:
            raise ValueError("refresh_token_lifetime must be None or at least 1 second")
        if interval < 0:
            raise ValueError("interval must not be negative")
        if isinstance(resources, str):
            raise ValueError("resources must be a sequence of URIs, not one string")
        for resource in resources:
            if not _is_resource_uri(resource):
                raise ValueError(f"resource {resource!r} is not an absolute URI without a fragment (RFC 8707)")
        self.settings = Settings(
            access_token_lifetime=access_token_lifetime,
            refresh_token_lifetime=refresh_token_lifetime,
            device_code_lifetime=device_code_lifetime,
            interval=interval,
            rotate_refresh_tokens=rotate_refresh_tokens,
            scopes=tuple(scopes),
            resources=tuple(resources),
            honour_step_up=honour_step_up,
        )
        self._port = port
        self._clock = clock
        self.client_id = PUBLIC_CLIENT_ID
        self.confidential_client_id = CONFIDENTIAL_CLIENT_ID
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        default_scope = "profile" if "profile" in scopes else ""
        self._state = State(
            clock,
            [
                Client(PUBLIC_CLIENT_ID, frozenset({"none"}), default_scope),
                Client(
                    CONFIDENTIAL_CLIENT_ID,
                    frozenset({"client_secret_basic", "client_secret_post"}),
                    default_scope,
                    client_secret=self.client_secret,
                ),
            ],
            refresh_token_lifetime,
        )
        self._keys = _SigningKey()
        self._issuer: str | None = None
        self._httpd = None
        self._thread: threading.Thread | None = None
        # A low-level seam on the token endpoint: a callable that gets the real
        # token endpoint as `respond` and returns what the client sees. Every
        # token request still lands in `stats`.
        self.around_token: Callable[[Callable[[], Response]], object] = _pass_through
        self._app = self._build_app()
        # Fault injection on every endpoint a device uses (faults.py): latency, 5xx,
        # 429, resets, timeouts, malformed or oversized answers, revoked grants.
        self.faults = Faults(clock, revoke_grants=self._state.revoke_all)
        self._app.wsgi_app = self.faults.wrap(
            self._app.wsgi_app,
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
        """Approve a pending user code as `subject`; KeyError if unknown, expired or used.

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
            credential = self._state.pending(user_code)
            if honoured:
                if acr is None:
                    acr = _asked_acr(credential) or ACR_PWD
                if credential.max_age is not None and session_age > credential.max_age:
                    session_age = 0  # too old for max_age: a fresh sign-in
            else:
                acr = ACR_PWD
            credential.login = Login(
                acr=acr,
                authenticated_at=self._clock() - session_age,
                auth_time=int(time.time() - session_age),
            )
            credential.decision = (user, True)
        logger.info("user code %s approved as %s (%s)", user_code, subject, acr)

    def deny(self, user_code: str) -> None:
        """Deny a pending user code; KeyError if unknown, expired or used."""
        with self._state.lock:
            self._state.pending(user_code).decision = (None, False)
        logger.info("user code %s denied", user_code)

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

        - `active`, `client_id`, `sub`, `name`, `scope` (None when it has none);
        - `aud`: its resource (RFC 8707) as a string, a list when there are several,
          None when there are none; `resource`: the same, always a tuple;
        - `acr`, `auth_time` (seconds since the epoch) of the approval behind it;
        - `acr_values` (a tuple) and `max_age` (int or None) as the device authorization
          request sent them, also when the server does not honour them;
        - `iat`, `exp`: seconds since the epoch, mapped from the server's clock at the
          time of the call; `expires_in`: seconds left on the server's clock;
        - `grant`: a number for the grant (one device authorization) it belongs to.
        """
        with self._state.lock:
            token = self._state.access_tokens.get(access_token)
            if token is None:
                return None
            grant = token.grant
            now = self._clock()
            wall = time.time()
            resources = token.resources
            return {
                "active": not token.is_expired() and not token.is_revoked(),
                "client_id": grant.client_id,
                "sub": grant.user.subject,
                "name": grant.user.name,
                "scope": token.scope,
                "aud": None if not resources else resources[0] if len(resources) == 1 else list(resources),
                "resource": resources,
                "acr": grant.login.acr,
                "auth_time": grant.login.auth_time,
                "acr_values": grant.acr_values,
                "max_age": grant.max_age,
                "iat": int(wall - (now - token.issued_at)),
                "exp": int(wall + (token.expires_at - now)),
                "expires_in": token.get_expires_in(),
                "grant": grant.id,
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

    # -- the web application --

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        state = self._state
        authz = _AuthorizationServer(app, state, self.settings, self._keys, lambda: self.issuer)
        protector = ResourceProtector()
        protector.register_token_validator(_BearerTokenValidator(state))

        def metadata():
            iss = self.issuer
            step_up = {}
            if self.settings.honour_step_up:
                step_up["acr_values_supported"] = list(ACR_VALUES_SUPPORTED)
            return jsonify(
                **step_up,
                issuer=iss,
                device_authorization_endpoint=f"{iss}/device_authorization",
                token_endpoint=f"{iss}/token",
                revocation_endpoint=f"{iss}/revoke",
                userinfo_endpoint=f"{iss}/userinfo",
                jwks_uri=f"{iss}/jwks",
                grant_types_supported=[DEVICE_CODE_GRANT_TYPE, "refresh_token"],
                token_endpoint_auth_methods_supported=AUTH_METHODS_SUPPORTED,
                revocation_endpoint_auth_methods_supported=AUTH_METHODS_SUPPORTED,
                # No authorization endpoint, so no response types (RFC 8414 §2).
                response_types_supported=[],
                scopes_supported=list(self.settings.scopes),
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
                claims_supported=["iss", "sub", "aud", "iat", "exp", "auth_time", "acr", "name"],
            )

        app.add_url_rule("/.well-known/oauth-authorization-server", "rfc8414", metadata)
        app.add_url_rule("/.well-known/openid-configuration", "oidc", metadata)

        @app.get("/jwks")
        def jwks():
            return jsonify(self._keys.jwks)

        @app.post("/device_authorization")
        def device_authorization():
            with state.lock:
                return authz.create_endpoint_response("device_authorization")

        def token_response():
            with state.lock:
                return authz.create_token_response()

        @app.post("/token")
        def token():
            arrived = self._clock()
            grant_type = request.form.get("grant_type", "")
            scope = request.values.get("scope") or None  # Authlib's reading: empty is absent
            resource = tuple(request.values.getlist("resource"))
            response = app.make_response(self.around_token(token_response))
            state.record_token_request(TokenEvent(arrived, grant_type, _outcome(response), scope, resource))
            return response

        @app.post("/revoke")
        def revoke():
            with state.lock:
                return authz.create_endpoint_response(RevocationEndpoint.ENDPOINT_NAME)

        @app.route("/userinfo", methods=["GET", "POST"])
        def userinfo():
            # 401 invalid_token for unknown, expired and revoked tokens.
            with state.lock, protector.acquire() as access_token:
                user = access_token.grant.user
            return jsonify(sub=user.subject, name=user.name)

        @app.get("/device")
        def device_page():
            user_code = request.args.get("user_code", "").strip()
            if not user_code:
                return pages.enter_code()
            with state.lock:
                try:
                    credential = state.pending(user_code)
                except KeyError:
                    credential = None
            if credential is None:
                return pages.enter_code(user_code, "That code is not valid or has expired."), 404
            honoured = self.settings.honour_step_up
            # The acr that approving on this page achieves (approve() with no acr).
            acr = _asked_acr(credential) if honoured else None
            return pages.confirm(
                credential.user_code, credential.client_id, credential.scope,
                resources=credential.resources,
                stronger_sign_in=None if acr in (None, ACR_PWD) else acr,
                max_age=credential.max_age if honoured else None,
            )

        @app.post("/device")
        def device_decision():
            user_code = request.form.get("user_code", "")
            subject = request.form.get("subject", "").strip() or "alice"
            action = request.form.get("action")
            if action not in ("approve", "deny"):
                return pages.enter_code(user_code, "Choose Approve or Deny."), 400
            approved = action == "approve"
            try:
                if approved:
                    self.approve(user_code, subject, request.form.get("name", "").strip() or None)
                else:
                    self.deny(user_code)
            except KeyError:
                return pages.enter_code(user_code, "That code is not valid or has expired."), 404
            return pages.done(approved, subject)

        def sim_decision(approve: bool):
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or not isinstance(body.get("user_code"), str):
                return jsonify(error="invalid_request"), 400
            try:
                if approve:
                    subject = body.get("subject") or "alice"
                    self.approve(body["user_code"], subject, body.get("name"), body.get("acr"),
                                 session_age=body.get("session_age") or 0)
                else:
                    self.deny(body["user_code"])
            except KeyError:
                return jsonify(error="unknown_user_code"), 404
            except (ValueError, TypeError) as exc:
                return jsonify(error="invalid_request", error_description=str(exc)), 400
            return jsonify(ok=True)

        app.post("/sim/approve", endpoint="sim_approve")(lambda: sim_decision(True))
        app.post("/sim/deny", endpoint="sim_deny")(lambda: sim_decision(False))

        @app.route("/sim/faults", methods=["GET", "POST", "DELETE"])
        def sim_faults():
            # faults.py, Faults.configure: {"clear", "seed", "release", "revoke_grants", "token": [...], ...}
            if request.method == "DELETE":
                self.faults.clear()
            elif request.method == "POST":
                try:
                    self.faults.configure(request.get_json(silent=True))
                except (ValueError, RuntimeError) as exc:
                    return jsonify(error="invalid_request", error_description=str(exc)), 400
            return jsonify(self.faults.snapshot())

        return app


def _pass_through(respond: Callable[[], Response]) -> Response:
    return respond()


def _outcome(response: Response) -> str:
    body = response.get_json(silent=True)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return "ok" if response.status_code == 200 else f"http_{response.status_code}"


# -- Authlib, filled in --


class _AuthorizationServer(AuthorizationServer):
    """Authlib's Flask server over one `State`; grants reach it as `self.server`."""

    def __init__(
        self, app, state: State, settings: Settings, keys: _SigningKey, issuer: Callable[[], str]
    ):
        super().__init__(app)
        self.state = state
        self.settings = settings
        self.keys = keys
        self.issuer = issuer
        # init_app() above read these from app.config; set them after it.
        self.scopes_supported = list(settings.scopes)
        self.register_token_generator("default", self._generate_token)
        self.register_grant(_DeviceCodeGrant)
        self.register_grant(_RefreshTokenGrant)
        self.register_endpoint(_DeviceAuthorizationEndpoint(self))
        self.register_endpoint(_RevocationEndpoint)

    def query_client(self, client_id):
        return self.state.clients.get(client_id)

    def save_token(self, token, request):
        if request.payload.grant_type == DEVICE_CODE_GRANT_TYPE:
            grant = self.state.new_grant(request.credential, request.user, token.get("scope"))
            self.state.redeem(request.credential)
            refresh_scope = grant.scope
        else:
            old: RefreshToken = request.refresh_token
            grant = old.grant
            # RFC 6749 §6: a new refresh token has the old one's scope, even
            # when this access token was narrowed.
            refresh_scope = old.scope
        if "openid" in token.get("scope", "").split():
            token["id_token"] = self._id_token(request.client, grant)
        # The grant's validate_token_request set `audience` (RFC 8707).
        self.state.store_tokens(grant, token, refresh_scope, request.audience)

    def check_resources(self, request, granted: tuple[str, ...]) -> tuple[str, ...]:
        """The `resource` values of a request (RFC 8707), each one the server knows and,
        if `granted` is not empty, one of those; else invalid_target."""
        requested = tuple(dict.fromkeys(request.payload.datalist.get("resource", [])))
        allowed = granted or self.settings.resources
        for resource in requested:
            if resource not in self.settings.resources:
                raise InvalidTargetError("Unknown resource.")
            if resource not in allowed:
                raise InvalidTargetError("The grant does not cover this resource.")
        return requested

    def _generate_token(
        self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True
    ):
        # Authlib's BearerTokenGenerator drops expires_in when it is falsy and
        # knows nothing of ID tokens, so build the response here.
        scope = client.get_allowed_scope(scope)
        token = {
            "token_type": "Bearer",
            "access_token": secrets.token_urlsafe(32),
            "expires_in": self.settings.access_token_lifetime,
        }
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(48)
        if scope:
            token["scope"] = scope  # save_token adds the ID token
        return token

    def _id_token(self, client, grant: Grant) -> str:
        # Wall-clock times, as verifiers expect; auth_time and acr always (OIDC Core
        # §2 requires auth_time when max_age was asked for).
        now = int(time.time())
        return self.keys.sign(
            {
                "iss": self.issuer(),
                "sub": grant.user.subject,
                "aud": client.get_client_id(),
                "iat": now,
                "exp": now + self.settings.access_token_lifetime,
                "auth_time": grant.login.auth_time,
                "acr": grant.login.acr,
                "name": grant.user.name,
            }
        )


class _DeviceAuthorizationEndpoint(DeviceAuthorizationEndpoint):
    def __init__(self, server: _AuthorizationServer):
        super().__init__(server)
        self.EXPIRES_IN = server.settings.device_code_lifetime
        self.INTERVAL = server.settings.interval

    def get_verification_uri(self):
        return f"{self.server.issuer()}/device"

    def create_endpoint_response(self, request):
        # Authlib checks the client and the scope, then saves the credential; check
        # the RFC 8707 and RFC 9470 parameters between the two, and note them on the
        # credential it saved.
        self.authenticate_client(request)
        self.server.validate_requested_scope(request.payload.scope)
        resources = self.server.check_resources(request, ())
        acr_values = tuple(request.payload.data.get("acr_values", "").split())
        max_age = request.payload.data.get("max_age")
        if max_age is not None:
            if not (max_age.isascii() and max_age.isdigit()):
                if self.server.settings.honour_step_up:
                    raise InvalidRequestError("max_age must be a number of seconds.")
                max_age = None  # a server without RFC 9470 does not look at it
            else:
                max_age = int(max_age)
        status, data, headers = super().create_endpoint_response(request)
        credential = self.server.state.device_codes[data["device_code"]]
        credential.resources = resources
        credential.acr_values = acr_values
        credential.max_age = max_age
        return status, data, headers

    def generate_user_code(self):
        # Authlib's default is RFC 8628 §6.1's base-20 XXXX-XXXX; just avoid
        # handing out a code twice.
        while True:
            user_code = super().generate_user_code()
            if normalize_user_code(user_code) not in self.server.state.user_codes:
                return user_code

    def generate_device_code(self):
        return secrets.token_urlsafe(32)  # RFC 8628 §5.2: high entropy

    def save_device_credential(self, client_id, scope, data):
        state = self.server.state
        state.add_device_code(
            DeviceCode(
                client_id=client_id,
                scope=scope,
                device_code=data["device_code"],
                user_code=data["user_code"],
                expires_at=state.clock() + data["expires_in"],
                interval=data["interval"],
                clock=state.clock,
            )
        )
        logger.info("issued user code %s to %s", data["user_code"], client_id)


class _DeviceCodeGrant(DeviceCodeGrant):
    # Authlib checks, in order: expiry (expired_token), the user's decision
    # (tokens or access_denied), then should_slow_down, else authorization_pending.
    # A fast poll after approval therefore still gets its tokens.

    def validate_token_request(self):
        super().validate_token_request()
        # RFC 8707 §2: a token request may narrow the audience to some of the
        # resources the device authorization named (or, if it named none, any).
        credential = self.request.credential
        self.request.audience = (self.server.check_resources(self.request, credential.resources)
                                 or credential.resources)

    def query_device_credential(self, device_code):
        credential = self.server.state.device_codes.get(device_code)
        if credential is None:
            # Unknown, or already redeemed. Authlib would say invalid_request;
            # RFC 6749 §5.2 calls a used-up grant invalid_grant.
            raise InvalidGrantError("Unknown or already used device_code.")
        return credential

    def query_user_grant(self, user_code):
        return self.server.state.user_codes[normalize_user_code(user_code)].decision

    def should_slow_down(self, credential):
        # RFC 8628 §3.5: polled sooner than `interval` after the previous poll
        # means slow_down, and the interval grows by 5 s for this and all later
        # requests. The first poll is never too soon.
        now = self.server.state.clock()
        last = credential.last_poll
        too_soon = last is not None and now - last < credential.interval
        credential.last_poll = now
        if too_soon:
            credential.interval += 5
        return too_soon


class _RefreshTokenGrant(RefreshTokenGrant):
    # Authlib's default is client_secret_basic only, which shuts out public clients.
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_CLIENT_AUTH

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self):  # noqa: N802 (Authlib's name)
        return self.server.settings.rotate_refresh_tokens

    def validate_token_request(self):
        # Authlib checks the token (with reuse detection) and that `scope` is a subset
        # of the refresh token's (invalid_scope); then RFC 8707 §2.2: `resource` may
        # name resources of the grant (any known one if it has none). A refused
        # request changes nothing: the refresh token is not rotated.
        super().validate_token_request()
        grant = self.request.refresh_token.grant
        self.request.audience = self.server.check_resources(self.request, grant.resources) or grant.resources

    def authenticate_refresh_token(self, refresh_token):
        # RFC 9700 §4.14.2 reuse detection, with a grace rule for a client that
        # crashed before saving the successor: State.present_refresh_token.
        return self.server.state.present_refresh_token(refresh_token)

    def authenticate_user(self, refresh_token):
        return refresh_token.grant.user

    def revoke_old_credential(self, refresh_token):
        if self.INCLUDE_NEW_REFRESH_TOKEN:
            self.server.state.rotated(refresh_token)


class _RevocationEndpoint(RevocationEndpoint):
    # RFC 7009 §2.1 lets public clients revoke with client_id alone; Authlib's
    # default is client_secret_basic only.
    CLIENT_AUTH_METHODS = ALL_CLIENT_AUTH

    def query_token(self, token_string, token_type_hint):
        # RFC 7009 §2.1: the hint only orders the search; look everywhere.
        state = self.server.state
        return state.access_tokens.get(token_string) or state.refresh_tokens.get(token_string)

    def revoke_token(self, token, request):
        self.server.state.revoke(token)


class _BearerTokenValidator(BearerTokenValidator):
    def __init__(self, state: State):
        super().__init__()
        self.state = state

    def authenticate_token(self, token_string):
        return self.state.access_tokens.get(token_string)


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is invalid, unknown or not allowed."""

    error = "invalid_target"
    status_code = 400


def _asked_acr(credential: DeviceCode) -> str | None:
    """The first of a request's acr_values that the server supports."""
    return next((v for v in credential.acr_values if v in ACR_VALUES_SUPPORTED), None)


def _is_resource_uri(value: str) -> bool:
    # RFC 8707 §2: an absolute URI (RFC 3986 §4.3) with no fragment.
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and "#" not in value and value.isascii() and value == value.strip()


class _SigningKey:
    """The RS256 key for ID tokens, made fresh for each server."""

    def __init__(self):
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._private.public_key().public_numbers()
        public = {"kty": "RSA", "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}
        # RFC 7638 thumbprint as the key id.
        canonical = json.dumps(public, sort_keys=True, separators=(",", ":")).encode()
        self.kid = _b64(hashlib.sha256(canonical).digest())
        self.jwks = {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict) -> str:
        return jwt.encode(claims, self._private, algorithm="RS256", headers={"kid": self.kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class _QuietHandler(WSGIRequestHandler):
    """Logs the method and path only: never a query string or a body."""

    def log_request(self, code="-", size="-"):
        logger.debug("%s %s %s", self.command, urlsplit(self.path).path, code)

    def log(self, type, message, *args):
        logger.log(logging.WARNING if type == "error" else logging.DEBUG, message, *args)


# -- standalone --


def main(argv: list[str] | None = None, prog: str = "python -m devicelink_sim.authserver") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Development OAuth 2.0 device-flow authorization server on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--access-token-lifetime", type=int, default=3600, metavar="S")
    parser.add_argument("--refresh-token-lifetime", type=int, default=None, metavar="S",
                        help="default: refresh tokens never expire")
    parser.add_argument("--device-code-lifetime", type=int, default=600, metavar="S")
    parser.add_argument("--interval", type=int, default=5, metavar="S",
                        help="the polling interval given to devices")
    parser.add_argument("--no-rotate-refresh-tokens", dest="rotate_refresh_tokens",
                        action="store_false", help="keep one refresh token for the grant's life")
    parser.add_argument("--resource", dest="resources", action="append", default=None, metavar="URI",
                        help="a resource (RFC 8707) tokens may be issued for; repeatable, replaces the "
                             f"default {' '.join(DEFAULT_RESOURCES)}")
    parser.add_argument("--no-step-up", dest="honour_step_up", action="store_false",
                        help="ignore acr_values and max_age (RFC 9470), as a server without step-up does")
    parser.add_argument("--client-secret", default=None,
                        help=f"secret of {CONFIDENTIAL_CLIENT_ID} (default: random)")
    parser.add_argument("--fault", action="append", default=[], metavar="ENDPOINT:KIND[,FIELD=VALUE...]",
                        help="inject a fault (repeatable, applied in order), e.g. token:status,status=503,times=3 "
                             "or token:reset,probability=0.2,times=none; see docs/faults.md")
    parser.add_argument("--fault-seed", type=int, default=None, metavar="N",
                        help="seed of the RNG behind fault probabilities")
    args = parser.parse_args(argv)
    try:
        faults = [parse_spec(spec) for spec in args.fault]
    except ValueError as exc:
        parser.error(f"--fault: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # Block the signals in every thread and take them here, in sigwait.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        server = DevServer(
            port=args.port,
            access_token_lifetime=args.access_token_lifetime,
            refresh_token_lifetime=args.refresh_token_lifetime,
            device_code_lifetime=args.device_code_lifetime,
            interval=args.interval,
            rotate_refresh_tokens=args.rotate_refresh_tokens,
            resources=DEFAULT_RESOURCES if args.resources is None else tuple(args.resources),
            honour_step_up=args.honour_step_up,
            client_secret=args.client_secret,
        )
    except ValueError as exc:
        parser.error(str(exc))
    server.faults.seed(args.fault_seed)
    for endpoint, fault in faults:
        server.faults.endpoint(endpoint).add(fault)
    try:
        server.start()
    except OSError as exc:
        parser.exit(1, f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}\n")
    try:
        print(f"issuer {server.issuer}", flush=True)
        logger.info(
            "clients: %s (public), %s (confidential)",
            server.client_id,
            server.confidential_client_id,
        )
        signal.sigwait(stop_signals)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
