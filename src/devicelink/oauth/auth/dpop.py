"""DPoP (RFC 9449): proofs that the sender holds the device's key, so its tokens are bound to it.

Not a client-authentication method: it goes with any of them (``none``, a secret,
``private_key_jwt``; RFC 9449 §3 keeps the two apart). :class:`DPoP` adds a proof to
every request the client-authentication hook prepares (``ClientAuth.prepare``), retries
included, and signs proofs for the apps the daemon gives DPoP-bound tokens to
(``POST /v1/dpop-proof``). Each proof (§4.2):

- header: ``typ`` ``dpop+jwt``, ``alg`` the signer's (ES256), ``jwk`` the device's
  public key (``Signer.public_jwk``: the required members only, never a private one);
- claims: ``jti`` (128 random bits, new for every proof), ``htm`` (the method), ``htu``
  (the URL without its query and fragment), ``iat`` (the wall clock, injected), and
  ``nonce`` (the server's latest, §8) and ``ath`` (base64url SHA-256 of the access token
  it goes with, §4.2) when there is one.

Nonces (§8): every answer's ``DPoP-Nonce`` is remembered per server (scheme, host and
port: nonces belong to the server that issued them, §9) and put in the next proofs to
that server. ``oauth/http.py`` sends a request once more, with a fresh proof (and client
authentication), when the answer is ``use_dpop_nonce`` with a nonce: once, and the flows never
see the first answer, so it neither ends a device flow nor counts as a slow poll or a failure.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from devicelink.identity import jws
from devicelink.identity.signer import b64url

if TYPE_CHECKING:
    from devicelink.identity.signer import Signer
    from devicelink.oauth.auth import Outgoing

TYP = "dpop+jwt"
#: The error a server answers when it wants its nonce in the proof (RFC 9449 §8).
NONCE_ERROR = "use_dpop_nonce"
#: RFC 9449 §8.1: ``nonce = 1*NQCHAR``, NQCHAR = %x21 / %x23-5B / %x5D-7E. Longer than this is not a nonce.
NONCE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,1024}")
#: Servers whose nonces are remembered; more than this many is not one device's authorization server.
MAX_SERVERS = 16


def htu(url: str) -> str:
    """The ``htu`` of a request to ``url``: without its query and fragment (RFC 9449 §4.2)."""
    return urlsplit(url)._replace(query="", fragment="").geturl()


def ath(access_token: str) -> str:
    """base64url(SHA-256(ASCII(access_token))) (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def server_of(url: str) -> str:
    """Whose nonce a request to ``url`` carries: its scheme, host and port."""
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


@dataclass
class DPoP:
    """Proofs signed by ``signer``, with ``iat`` from ``wall_clock``; the servers' nonces."""

    signer: Signer
    wall_clock: Callable[[], float] = field(default=time.time, repr=False)
    nonces: dict[str, str] = field(default_factory=dict, repr=False)  # server_of(url) -> its latest nonce

    def proof(self, htm: str, url: str, *, nonce: str | None = None, access_token: str | None = None) -> str:
        """A new proof for a ``htm`` request to ``url`` (its query and fragment left out)."""
        claims: dict[str, str | int] = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu(url),
                                        "iat": int(self.wall_clock())}
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = ath(access_token)
        return jws.compact(self.signer, {"typ": TYP, "jwk": self.signer.public_jwk()}, claims)

    def prepare(self, out: Outgoing, now: float) -> None:
        """A proof for ``out`` in its ``DPoP`` header (RFC 9449 §4.1), with the server's latest nonce."""
        out.headers["dpop"] = self.proof(out.method, out.url, nonce=self.nonces.get(server_of(out.url)))

    def answered(self, url: str, headers: Mapping[str, str]) -> str | None:
        """Remember the ``DPoP-Nonce`` of an answer from ``url`` (lower-case header names), on
        any answer, success included (§8.2); the nonce, or None when it brought none."""
        nonce = headers.get("dpop-nonce", "").strip()
        if not NONCE.fullmatch(nonce):
            return None
        server = server_of(url)
        if server not in self.nonces and len(self.nonces) >= MAX_SERVERS:
            self.nonces.clear()
        self.nonces[server] = nonce
        return nonce
