"""A compact JWS (RFC 7515 §7.1) whose signature comes from a :class:`~devicelink.identity.signer.Signer`.

Built here rather than with pyjwt: the signature must come from the signer (a
TPM or secure element will not hand pyjwt a key object), and what is left is
two JSON objects in base64url. It also keeps pyjwt out of the daemon (about
2.8 MiB on Bookworm, 7 MiB with a current pyjwt: docs/identity.md). Tests and
both test servers verify what this makes with their own JOSE libraries.
"""

from __future__ import annotations

import json
from typing import Any

from devicelink.identity.signer import Signer, b64url


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def compact(signer: Signer, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """``header.payload.signature``: ``alg`` is the signer's (never taken from ``header``,
    so nothing can ask for ``none``, RFC 8725 §3.1), the rest of ``header`` as given
    (``kid`` for a client assertion, ``typ`` and ``jwk`` for a DPoP proof)."""
    signing_input = f"{_segment({**header, 'alg': signer.alg})}.{_segment(claims)}"
    return f"{signing_input}.{b64url(signer.sign(signing_input.encode('ascii')))}"
