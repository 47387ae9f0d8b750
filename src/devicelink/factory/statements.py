"""Software statements (RFC 7591 §2.3): a JWT of client metadata, signed by the manufacturer.

Every unit of a model carries the same statement (baked into the image at
``/etc/devicelink/software_statement.jwt``) and sends it when it registers; the
server checks the signature with the fleet's public key and takes the statement's
claims over the metadata sent beside it (§3.1.1). So the statement says what the
software is allowed to be (its ``software_id``, name, grant types, authentication
method), not which unit sends it: it is not a secret and proves no device. A
statement can be bound to one unit as well (``device``: its serial and key
thumbprint as ``device_serial`` and ``cnf.jkt``), for a line that signs one per unit
after ``devicelink provision`` made the key.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

from devicelink.factory.keys import FleetKey
from devicelink.identity import jws
from devicelink.identity.registration_settings import DEFAULT_GRANT_TYPES

#: Claims ``sign`` sets itself (RFC 7519 §4.1); a template may not hold them.
SET_WHEN_SIGNED = ("iat", "jti", "exp", "nbf")
#: Members that must never be in a statement: secrets, and what the server gives.
FORBIDDEN = ("client_secret", "registration_access_token", "client_id", "client_id_issued_at")


def template(*, software_id: str | None = None, software_version: str = "1.0.0",
             client_name: str = "devicelink device", scope: str | None = "openid profile offline_access",
             client_credentials: bool = False, issuer: str | None = None) -> dict[str, Any]:
    """The metadata a statement carries for a devicelink device: the device flow and refresh
    (and client credentials for device-level tokens), ``private_key_jwt`` with ES256, no
    redirects. ``software_id`` is a new UUID unless given: keep it for the model's life."""
    statement: dict[str, Any] = {}
    if issuer:
        statement["iss"] = issuer
    statement.update({
        "software_id": software_id or str(uuid.uuid4()),
        "software_version": software_version,
        "client_name": client_name,
        "grant_types": [*DEFAULT_GRANT_TYPES, *(["client_credentials"] if client_credentials else [])],
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "response_types": [],
        "redirect_uris": [],
    })
    if scope:
        statement["scope"] = scope
    return statement


def check_template(data: Any, where: str) -> dict[str, Any]:
    """A template's claims, or ValueError naming ``where`` and what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of client metadata")
    if not isinstance(data.get("software_id"), str) or not data["software_id"]:
        raise ValueError(f"{where}: software_id missing: it names the software across the fleet (RFC 7591 §2)")
    for name in (*SET_WHEN_SIGNED, *FORBIDDEN):
        if name in data:
            raise ValueError(f"{where}: {name} must not be in a template ("
                             + ("set when signing" if name in SET_WHEN_SIGNED else "the server's, or a secret") + ")")
    if "jwks" in data or "jwks_uri" in data:
        raise ValueError(f"{where}: jwks belongs to each device (it sends its own), not to the statement")
    return data


def sign(key: FleetKey, claims: dict[str, Any], *, issuer: str | None = None, lifetime: float | None = None,
         device: dict[str, Any] | None = None, now: float | None = None) -> str:
    """The statement: ``claims`` with ``iss`` (the manufacturer), ``iat``, a fresh ``jti`` and,
    with ``lifetime`` (seconds), ``exp``. ``device`` (a ``devicelink provision`` output) binds
    it to one unit. ValueError when no issuer is known."""
    iss = issuer or claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise ValueError("no issuer: give --iss (the manufacturer, e.g. https://acme.example) or put iss in "
                         "the template")
    issued = int(time.time() if now is None else now)
    out = {**claims, "iss": iss, "iat": issued, "jti": secrets.token_urlsafe(16)}
    if lifetime is not None:
        out["exp"] = issued + int(lifetime)
    if device is not None:
        out.update(bound_to(device))
    return jws.compact(key, {"kid": key.kid, "typ": "JWT"}, out)


def bound_to(device: dict[str, Any]) -> dict[str, Any]:
    """Claims that tie a statement to one unit: its serial, and its key (RFC 7800 ``cnf``
    with the RFC 7638 thumbprint, as RFC 9449 §6.1 writes ``jkt``)."""
    kid, serial = device.get("kid"), device.get("serial")
    if not isinstance(kid, str):
        raise ValueError("the device file has no kid: give devicelink provision's JSON output")
    claims: dict[str, Any] = {"cnf": {"jkt": kid}}
    if isinstance(serial, str):
        claims["device_serial"] = serial
    return claims


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
