"""Standing conditions of a grant that a person should know of, before they bite (pure).

Said in ``status`` (``warnings``), logged once at pairing, and, for the missing
refresh token, on the screen too (issue 10, items 10 and 12).
"""

from __future__ import annotations

from devicelink.oauth import messages as m
from devicelink.text import sanitize
from devicelink.tokens.model import TokenSet


def grant_warnings(tokens: TokenSet, endpoints: m.Endpoints | None, client_auth: str,
                   now: float) -> tuple[str, ...]:
    found = []
    if not tokens.refresh_token:
        # RFC 6749 §5.1: the refresh token is optional; oidc-provider issues one only with
        # offline_access, Entra and Google only when asked in their own ways.
        found.append(f"the authorization server issued no refresh token: this sign-in ends when the access "
                     f"token expires (in {max(0, int(tokens.expires_in(now)))} s) and the device must then be "
                     f"paired again; ask for offline_access in [provider] scope, or allow refresh tokens for "
                     f"this client at the server")
    methods = getattr(endpoints, "revocation_auth_methods", None)
    if endpoints is not None and endpoints.revocation_endpoint and methods is not None \
            and client_auth not in methods:
        # RFC 8414 §2: revocation_endpoint_auth_methods_supported. A public client a server
        # will not let revoke (glewlwyd answers 401) cannot end its grant by unpairing.
        found.append(f"the server's revocation endpoint does not accept client_auth {client_auth!r} (it lists "
                     f"{sanitize(', '.join(methods), 120) or 'nothing'}): unpairing will not revoke the grant at the server, which "
                     f"then stays valid until it expires or the user removes this device in their account")
    return tuple(found)
