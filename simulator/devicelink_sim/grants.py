"""Authlib's grants and endpoints, filled in for the development server.

Authlib does the protocol: `DeviceAuthorizationEndpoint` and `DeviceCodeGrant`
(RFC 8628), `RefreshTokenGrant` (RFC 6749 §6), `ClientCredentialsGrant` (§4.4),
`RevocationEndpoint` (RFC 7009) and a Bearer `ResourceProtector` for /userinfo. This module fills in their
storage hooks from `state.State` and adds what Authlib leaves out: refresh-token
rotation with reuse detection (RFC 9700 §4.14.2, the rules are in state.py), ID
tokens (signing.py), resource indicators (RFC 8707) and step-up parameters
(RFC 9470) on the device authorization request.

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
- the client credentials grant, for confidential clients only (RFC 6749 §4.4;
  a public client is `unauthorized_client`): `scope` a subset of
  `Settings.client_scopes` (else `invalid_scope`), at most one known `resource`;
  an access token with no user and no refresh token (`/userinfo` refuses it).
- a DPoP proof (RFC 9449; checked by app.py with dpop.py): the tokens are of type
  `DPoP`, bound to its key (`cnf.jkt`), and so is a public client's refresh token,
  which then refreshes only with a proof by the same key (else `invalid_grant`).

Clients authenticate with `none`, `client_secret_basic`, `client_secret_post`
or `private_key_jwt` (client_auth.py) at every endpoint, as their record allows.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, InvalidScopeError, scope_to_list
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant
from flask import g

from .client_auth import METHOD as PRIVATE_KEY_JWT, PrivateKeyJwt
from .records import DeviceCode, RefreshToken, normalize_user_code
from .settings import ALL_CLIENT_AUTH, CLIENT_CREDENTIALS_GRANT_TYPE, DEVICE_CODE_GRANT_TYPE, Settings
from .signing import SigningKey
from .state import State

logger = logging.getLogger("devicelink_sim.authserver")


class DevAuthorizationServer(AuthorizationServer):
    """Authlib's Flask server over one `State`; grants reach it as `self.server`."""

    def __init__(
        self, app, state: State, settings: Settings, keys: SigningKey, issuer: Callable[[], str]
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
        self.register_grant(_ClientCredentialsGrant)
        self.register_endpoint(_DeviceAuthorizationEndpoint(self))
        self.register_endpoint(_RevocationEndpoint)
        self.register_client_auth_method(PRIVATE_KEY_JWT, PrivateKeyJwt(issuer, state.assertion_ids, state.assertions,
                                                                        state.wall))
        if settings.fleet is not None:  # RFC 7591 and RFC 7592: devices register themselves
            from .registration import ConfigurationEndpoint, RegistrationEndpoint

            self.register_endpoint(RegistrationEndpoint(self, settings.fleet))
            self.register_endpoint(ConfigurationEndpoint(self, settings.fleet))

    def query_client(self, client_id):
        return self.state.clients.get(client_id)

    def save_token(self, token, request):
        if request.payload.grant_type == CLIENT_CREDENTIALS_GRANT_TYPE:
            grant = self.state.client_grant(request.client.get_client_id(), token.get("scope"), request.audience)
            self.state.store_tokens(grant, token, None, request.audience, jkt=g.get("dpop_jkt"))
            return
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
            token["id_token"] = self.keys.id_token(self.issuer(), request.client.get_client_id(), grant,
                                                    self.settings.access_token_lifetime, self.state.wall())
        jkt = g.get("dpop_jkt")  # app.py checked the request's DPoP proof
        if jkt is not None and grant.jkt is None and "none" in request.client.auth_methods:
            grant.jkt = jkt  # RFC 9449 §5: a public client's refresh tokens are bound to its key
        # The grant's validate_token_request set `audience` (RFC 8707).
        self.state.store_tokens(grant, token, refresh_scope, request.audience, jkt=jkt)

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
        if grant_type != CLIENT_CREDENTIALS_GRANT_TYPE:  # the client's own token has the scope it asked, or none
            scope = client.get_allowed_scope(scope)
        token = {
            "token_type": "DPoP" if g.get("dpop_jkt") else "Bearer",  # RFC 9449 §5
            "access_token": secrets.token_urlsafe(32),
            "expires_in": self.settings.access_token_lifetime,
        }
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(48)
        if scope:
            token["scope"] = scope  # save_token adds the ID token
        return token


class _DeviceAuthorizationEndpoint(DeviceAuthorizationEndpoint):
    CLIENT_AUTH_METHODS = ALL_CLIENT_AUTH

    def __init__(self, server: DevAuthorizationServer):
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
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_CLIENT_AUTH
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
        if grant.jkt is not None and g.get("dpop_jkt") != grant.jkt:  # RFC 9449 §5
            raise InvalidGrantError("The refresh token is bound to a DPoP key this request has no proof of.")
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


class _ClientCredentialsGrant(ClientCredentialsGrant):
    # Every method authenticates; only a confidential client's record allows the grant (RFC 6749
    # §4.4), so a public client is told unauthorized_client rather than invalid_client.
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_CLIENT_AUTH

    def validate_requested_scope(self):
        scope = self.request.payload.scope
        if scope and not set(scope_to_list(scope)) <= set(self.server.settings.client_scopes):
            raise InvalidScopeError("A client may have only its own scopes, not a user's.")

    def validate_token_request(self):
        super().validate_token_request()
        audience = self.server.check_resources(self.request, ())
        if len(audience) > 1:
            raise InvalidTargetError("One resource per token.")
        self.request.audience = audience


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


def userinfo_protector(state: State) -> ResourceProtector:
    """What guards /userinfo: a Bearer access token the server issued, live and not revoked."""
    protector = ResourceProtector()
    protector.register_token_validator(_BearerTokenValidator(state))
    return protector
