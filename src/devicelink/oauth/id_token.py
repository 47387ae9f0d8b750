"""Who signed in, from the ID token (OIDC Core §2): for the screen, the status and step-up."""

from __future__ import annotations

import base64
import binascii
import json

from devicelink.text import sanitize
from devicelink.tokens.model import Account


def account_from_id_token(id_token: str, issuer: str, client_id: str) -> Account | None:
    """The signed-in account, for the screen and status only (RFC 8628 §5.1: let the owner
    notice a wrong account). The ID token came straight from the token endpoint over TLS, so
    its signature need not be checked (OIDC Core §3.1.3.7 item 6), but iss and aud must match."""
    try:
        payload = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict) or claims.get("iss") != issuer:
        return None
    aud = claims.get("aud")
    if client_id not in (aud if isinstance(aud, list) else [aud]):
        return None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or sanitize(sub, 255) != sub:  # an identity is not edited
        return None
    name = next((claims[n] for n in ("name", "preferred_username", "email") if claims.get(n) not in (None, "")), None)
    acr, auth_time = claims.get("acr"), claims.get("auth_time")
    # Names reach logs, `devicelink status`, the screen and events: no control or bidi characters.
    return Account(sub=sub, name=(sanitize(name) or None) if isinstance(name, str) else None,
                   acr=(sanitize(acr) or None) if isinstance(acr, str) else None,
                   auth_time=int(auth_time) if isinstance(auth_time, (int, float)) and not isinstance(auth_time, bool)
                   and 0 <= auth_time < 2**40 else None)

