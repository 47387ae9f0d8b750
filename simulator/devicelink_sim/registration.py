"""Dynamic client registration (RFC 7591) and its management (RFC 7592) for the development server.

Authlib's `ClientRegistrationEndpoint` and `ClientConfigurationEndpoint` do the
protocol; this fills in their storage hooks from `state.State` and adds the
policy of a manufacturer's fleet:

- With fleet keys (`DevServer(fleet_keys=...)`, `devicelink-sim server --fleet-key FILE`)
  a registration must carry a `software_statement` signed by one of them (ES256 or
  RS256; joserfc checks the signature), from `statement_issuer` when one is set,
  not expired and not issued in the future. Its claims win over the metadata sent
  beside it (RFC 7591 §3.1.1). A statement bound to one unit (`cnf.jkt`) must
  match the key registered. Anything else is `invalid_software_statement`; none at
  all is `unapproved_software_statement`.
- Every client registered here is a device: `token_endpoint_auth_method`
  `private_key_jwt` with its own `jwks` (else `invalid_client_metadata`). It gets
  its own random `client_id`, no secret, a `registration_access_token` and a
  `registration_client_uri` (`/register/<client_id>`) for RFC 7592 read, update
  (the statement is checked again) and delete.
- An `initial_access_token` (RFC 7591 §3), when set, must come as a bearer token.

The serial a device sends (`device_serial`, or the statement's) is kept with its
`software_id`, for `DevServer.registered_clients` (what an administrator would list
to find a device's duplicate registrations).
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from authlib.oauth2.rfc6749 import AccessDeniedError
from authlib.oauth2.rfc7591 import (ClientRegistrationEndpoint, InvalidClientMetadataError,
                                    InvalidSoftwareStatementError, UnapprovedSoftwareStatementError)
from authlib.oauth2.rfc6750 import InvalidTokenError
from authlib.oauth2.rfc7592 import ClientConfigurationEndpoint
from flask import request as flask_request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .records import Client
from .settings import DEVICE_CODE_GRANT_TYPE

SERIAL_MEMBER = "device_serial"
STATEMENT_ALGS = ["ES256", "RS256"]
LEEWAY = 60  # seconds of clock difference allowed on iat


class Fleet:
    """What the server trusts registrations from: the fleet's public keys, the statement's
    issuer, the initial access token."""

    def __init__(self, keys: dict | None, issuer: str | None, initial_access_token: str | None):
        if keys is not None and "keys" not in keys:
            keys = {"keys": [keys]}
        if keys is not None and any(m in key for key in keys["keys"] for m in ("d", "p", "q", "k")):
            raise ValueError("fleet keys must be public keys")
        self.keys = keys
        self.issuer = issuer
        self.initial_access_token = initial_access_token


def _statement_claims(server, fleet: Fleet, statement: str) -> dict:
    try:
        token = jwt.decode(statement, KeySet.import_key_set(fleet.keys), algorithms=STATEMENT_ALGS)
    except (JoseError, ValueError) as exc:
        raise InvalidSoftwareStatementError(
            description=f"The software statement does not verify with the fleet key ({type(exc).__name__}).")
    claims = dict(token.claims)
    now = server.state.wall()
    if fleet.issuer is not None and claims.get("iss") != fleet.issuer:
        raise InvalidSoftwareStatementError(description=f"The software statement is not from {fleet.issuer}.")
    if isinstance(claims.get("exp"), (int, float)) and claims["exp"] <= now:
        raise InvalidSoftwareStatementError(description="The software statement has expired.")
    if isinstance(claims.get("iat"), (int, float)) and claims["iat"] > now + LEEWAY:
        raise InvalidSoftwareStatementError(description="The software statement is issued in the future.")
    if not isinstance(claims.get("software_id"), str):
        raise InvalidSoftwareStatementError(description="The software statement has no software_id.")
    return claims


def _device_metadata(server, fleet: Fleet, data: dict, metadata: dict, claims: dict | None) -> dict:
    """The metadata Authlib kept, checked as a device's, with what it drops that we keep."""
    if metadata.get("token_endpoint_auth_method") != "private_key_jwt" or not metadata.get("jwks"):
        raise InvalidClientMetadataError(description="Devices register with private_key_jwt and their jwks.")
    keys = metadata["jwks"].get("keys") if isinstance(metadata["jwks"], dict) else None
    if not isinstance(keys, list) or not keys or any(m in k for k in keys for m in ("d", "p", "q", "k")):
        raise InvalidClientMetadataError(description="jwks must hold public keys only.")
    bound = ((claims or {}).get("cnf") or {}).get("jkt")
    if bound is not None and bound not in {_thumbprint(k) for k in keys}:
        raise InvalidSoftwareStatementError(description="The software statement is bound to another key.")
    serial = (claims or {}).get(SERIAL_MEMBER, data.get(SERIAL_MEMBER))
    if serial is not None:
        metadata[SERIAL_MEMBER] = str(serial)[:128]
    for name in ("software_id", "software_version"):
        if claims and name in claims:
            metadata[name] = claims[name]
    return metadata


def _thumbprint(jwk: dict) -> str | None:
    from joserfc.jwk import import_key

    try:
        return import_key(jwk).thumbprint()
    except (JoseError, ValueError, TypeError):
        return None


def _server_metadata(server) -> dict:
    # No response_types_supported: Authlib reads an empty response_types (a device's: it has no
    # redirects) as the default ["code"], which this server, with no authorization endpoint, lacks.
    return {"scopes_supported": list(server.settings.scopes),
            "grant_types_supported": [DEVICE_CODE_GRANT_TYPE, "refresh_token"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"]}


class _Token:
    """A registration access token, as Authlib's endpoints want it."""

    def __init__(self, value: str, client_id: str):
        self.value, self.client_id = value, client_id

    def check_client(self, client) -> bool:
        return client.get_client_id() == self.client_id


def _bearer() -> str | None:
    scheme, _, value = flask_request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class RegistrationEndpoint(ClientRegistrationEndpoint):
    software_statement_alg_values_supported = STATEMENT_ALGS

    def __init__(self, server, fleet: Fleet):
        super().__init__(server)
        self.fleet = fleet

    def authenticate_token(self, request):
        expected = self.fleet.initial_access_token
        if expected is None:
            return True  # open registration (on loopback)
        given = _bearer()
        if given is None or not secrets.compare_digest(given, expected):
            raise AccessDeniedError(description="An initial access token is required.")
        return True

    def resolve_public_key(self, request):
        return self.fleet.keys

    def extract_client_metadata(self, request):
        data = request.payload.data or {}
        statement = data.get("software_statement")
        if self.fleet.keys is not None and not isinstance(statement, str):
            raise UnapprovedSoftwareStatementError(
                description="A software statement signed by the fleet key is required.")
        request.statement_claims = (_statement_claims(self.server, self.fleet, statement)
                                    if self.fleet.keys is not None else None)
        metadata = super().extract_client_metadata(request)
        return _device_metadata(self.server, self.fleet, data, metadata, request.statement_claims)

    def extract_software_statement(self, software_statement, request):
        return request.statement_claims or {}

    def generate_client_info(self, request):
        # No client_secret: a device authenticates with its key.
        return {"client_id": f"dev-{secrets.token_urlsafe(12)}", "client_id_issued_at": int(self.server.state.wall())}

    def save_client(self, client_info, client_metadata, request):
        state = self.server.state
        default_scope = "profile" if "profile" in self.server.settings.scopes else ""
        client = Client(client_info["client_id"], frozenset({"private_key_jwt"}), default_scope,
                        jwks=client_metadata["jwks"],
                        grant_types=frozenset(client_metadata.get("grant_types") or ()),
                        metadata={**client_metadata, **client_info})
        token = secrets.token_urlsafe(32)
        state.clients[client.client_id] = client
        state.registration_tokens[token] = client.client_id
        state.registrations += 1
        request.registration_token = token
        return client

    def generate_client_registration_info(self, client, request):
        return {"registration_client_uri": f"{self.server.issuer()}/register/{client.client_id}",
                "registration_access_token": request.registration_token}

    def get_server_metadata(self):
        return _server_metadata(self.server)


class ConfigurationEndpoint(ClientConfigurationEndpoint):
    def __init__(self, server, fleet: Fleet):
        super().__init__(server)
        self.fleet = fleet

    def authenticate_token(self, request):
        value = _bearer()
        client_id = self.server.state.registration_tokens.get(value) if value else None
        if not client_id:  # RFC 7592 §2: an invalid token is RFC 6750's 401 invalid_token
            raise InvalidTokenError(description="Unknown registration access token.")
        return _Token(value, client_id)

    def authenticate_client(self, request):
        client_id = flask_request.view_args.get("client_id")
        client = self.server.state.clients.get(client_id)
        return client if client is not None and client.metadata is not None else None

    def revoke_access_token(self, request, token):
        self.server.state.registration_tokens.pop(token.value, None)

    def check_permission(self, client, request):
        return True

    def introspect_client(self, client):
        return dict(client.metadata)

    def extract_client_metadata(self, request):
        data = request.payload.data or {}
        claims = None
        if self.fleet.keys is not None:
            statement = data.get("software_statement")
            if not isinstance(statement, str):
                raise UnapprovedSoftwareStatementError(
                    description="A software statement signed by the fleet key is required.")
            claims = _statement_claims(self.server, self.fleet, statement)
            request.payload.data.update(claims)  # §3.1.1 on an update too
        metadata = super().extract_client_metadata(request)
        return _device_metadata(self.server, self.fleet, data, metadata, claims)

    def update_client(self, client, client_metadata, request):
        metadata = {**client.metadata, **client_metadata}
        updated = replace(client, jwks=metadata["jwks"], grant_types=frozenset(metadata.get("grant_types") or ()),
                          metadata=metadata)
        self.server.state.clients[client.client_id] = updated
        return updated

    def delete_client(self, client, request):
        state = self.server.state
        del state.clients[client.client_id]
        for value, client_id in list(state.registration_tokens.items()):
            if client_id == client.client_id:
                del state.registration_tokens[value]

    def generate_client_registration_info(self, client, request):
        return {"registration_client_uri": f"{self.server.issuer()}/register/{client.client_id}",
                "registration_access_token": _bearer()}

    def get_server_metadata(self):
        return _server_metadata(self.server)
