"""``POST /v1/dpop-proof``'s body, checked: what request an app wants a DPoP proof for (RFC 9449 §4.2).

``{"htm": "GET", "htu": "https://api.example.com/v1/things", "access_token": "…", "nonce": "…"}``:

- ``htm``: the HTTP method, an RFC 9110 token (``GET``, ``POST``, …);
- ``htu``: the absolute URL the app will send to: ``https://`` (``http://`` only to a
  loopback host, and only with ``[provider] allow_insecure_http``), with a host and no
  user name; its query and fragment are left out of the proof (§4.2), so the app may
  pass the whole URL;
- ``access_token`` (optional): the token the request carries; the proof's ``ath``;
- ``nonce`` (optional): the resource server's ``DPoP-Nonce`` (§9).

Anything else is 400 ``invalid_request`` with one line; unknown members are ignored.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from devicelink.config import transport_allowed
from devicelink.engine.proofs import ProofRequest
from devicelink.ipc.routes import ApiError
from devicelink.oauth.auth.dpop import NONCE

#: RFC 9110 §9.1: a method is a token (§5.6.2).
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
#: An access token as RFC 6750 §2.1 spells it (b64token), within the body's 16 KiB.
ACCESS_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_URL = 4096


def parse_proof_request(fields: dict[str, Any], allow_insecure_http: bool) -> ProofRequest:
    htm = fields.get("htm")
    if not isinstance(htm, str) or not METHOD.fullmatch(htm):
        raise ApiError("invalid_request", "htm must be the request's HTTP method, e.g. GET or POST (RFC 9449 §4.2)")
    htu = fields.get("htu")
    if not isinstance(htu, str) or len(htu) > MAX_URL or not htu.isascii() or not htu.isprintable() or " " in htu:
        raise ApiError("invalid_request", "htu must be the absolute URL the request goes to (RFC 9449 §4.2)")
    try:
        parts = urlsplit(htu)
        host = parts.hostname
    except ValueError:
        host = None
    if not host or parts.scheme not in ("https", "http") or parts.username is not None:
        raise ApiError("invalid_request", "htu must be an absolute https:// URL with a host and no user name")
    if not transport_allowed(htu, allow_insecure_http):
        raise ApiError("invalid_request", "htu must be https:// (http:// only to a loopback host, with "
                       "[provider] allow_insecure_http)")
    access_token = fields.get("access_token")
    if access_token is not None and (not isinstance(access_token, str) or not ACCESS_TOKEN.fullmatch(access_token)):
        raise ApiError("invalid_request", "access_token must be the access token the request carries")
    nonce = fields.get("nonce")
    if nonce is not None and (not isinstance(nonce, str) or not NONCE.fullmatch(nonce)):
        raise ApiError("invalid_request", "nonce must be the server's DPoP-Nonce as it sent it (RFC 9449 §8.1)")
    return ProofRequest(htm, htu, access_token, nonce)
