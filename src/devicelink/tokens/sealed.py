"""A small secret sealed with the state key, as text that fits in a JSON file.

The state file (``store.py``) holds the grant; some secrets live beside it in files of
their own, such as the registration access token in ``state_dir/registration.json``
(docs/identity.md), which must outlive an unpair. They are sealed the way the state
file is, AES-256-GCM under the same 32-byte key from ``keys.py``::

    base64url(b"DLS1" | 12-byte random nonce | AES-256-GCM(secret, AAD = b"DLS1" + label))

The label binds a sealed value to its purpose and owner (``registration:<client_id>``),
so a value copied into another record, or another field, does not open.

**Re-keying.** ``devicelink rekey`` gives the state a new key; a value sealed under the
old one would no longer open. So a value is kept as a list of seals, one per key it
may need to open under: ``rekey`` adds a seal under the new key before its switch
(:func:`add_seal`), and whoever next loads the key keeps only the seals that key opens
(:func:`keep_openable`). At every instant a seal opens with the key the next start
loads, whichever side of the switch a power cut falls on.
"""

from __future__ import annotations

import base64
import binascii
import os

MAGIC = b"DLS1"
NONCE_BYTES = 12


def seal(key: bytes, secret: str, label: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    blob = MAGIC + nonce + AESGCM(key).encrypt(nonce, secret.encode(), MAGIC + label.encode())
    return base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")


def unseal(key: bytes, sealed: str, label: str) -> str | None:
    """The secret, or None when ``key`` does not open it (another key, another label, damaged)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        blob = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    except (TypeError, ValueError, binascii.Error):
        return None
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
        return None
    nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
    try:
        plain = AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], MAGIC + label.encode())
    except InvalidTag:
        return None
    try:
        return plain.decode()
    except UnicodeDecodeError:
        return None


def open_any(key: bytes, seals: list[str], label: str) -> str | None:
    """The secret from the first of ``seals`` that ``key`` opens, or None."""
    for sealed in seals:
        secret = unseal(key, sealed, label)
        if secret is not None:
            return secret
    return None


def add_seal(seals: list[str], old_key: bytes, new_key: bytes, label: str) -> list[str] | None:
    """``seals`` and one more under ``new_key``, for a re-key; None when ``old_key`` opens none
    of them (nothing to carry over) or ``new_key`` opens one already."""
    if open_any(new_key, seals, label) is not None:
        return None
    secret = open_any(old_key, seals, label)
    if secret is None:
        return None
    return [*seals, seal(new_key, secret, label)]


def keep_openable(seals: list[str], key: bytes, label: str) -> list[str] | None:
    """Only the seals ``key`` opens, after a re-key was settled; None when that changes nothing
    or when ``key`` opens none (then nothing is dropped: it may be the wrong key)."""
    kept = [s for s in seals if unseal(key, s, label) is not None]
    if not kept or len(kept) == len(seals):
        return None
    return kept
