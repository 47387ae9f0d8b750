"""``devicelink provision``: make the device's identity key now, and say what to register.

Run once per unit at the factory or at first boot, before the daemon: it makes
``state_dir/identity.jwk`` (or reads the one there) and prints, as JSON, the
serial and the public key as a JWKS, ready for the authorization server's
client registration (``jwks``, with ``token_endpoint_auth_method``
``private_key_jwt``). The daemon makes the key too, at a start that needs it, but
then the server cannot know it before the first request (docs/identity.md).

It is idempotent: a second run prints the same key and ``"created": false``; it
never replaces a key. Run as root, it writes as the state directory's owner, so
the daemon can read the key. It takes the state lock only to make a key, so it
refuses to make one while the daemon runs (which makes its own when configured).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from devicelink.config import Config
from devicelink.files import as_owner
from devicelink.identity import KEY_FILE
from devicelink.identity.filekey import load_or_create, read
from devicelink.identity.serial import device_serial
from devicelink.identity.signer import registration_jwk
from devicelink.tokens import keys
from devicelink.tokens.store import ensure_private_dir

logger = logging.getLogger(__name__)


def provision(cfg: Config) -> dict[str, Any]:
    """The key (made now if absent) and the serial, as ``devicelink provision`` prints them.
    :class:`~devicelink.errors.StoreError` (:class:`~devicelink.errors.IdentityError` for the key)."""
    state_dir = cfg.storage.state_dir
    path = state_dir / KEY_FILE
    if os.geteuid() == 0 and not state_dir.is_dir():
        logger.warning("%s did not exist and is made now, owned by root: a daemon running as another user "
                       "refuses it (make it with systemd-tmpfiles --create before provisioning; docs/files.md)",
                       state_dir)
    with as_owner(state_dir):
        ensure_private_dir(state_dir)
        if os.path.lexists(path):
            signer, made = read(path), False
        else:
            lock = keys.try_lock_state_dir(state_dir)  # the daemon (or another provision) is not making one
            try:
                signer, made = load_or_create(path)
            finally:
                os.close(lock)
    return {"serial": device_serial(cfg.identity.serial), "key": cfg.identity.key, "key_file": str(path),
            "created": made, "kid": signer.kid, "jwks": {"keys": [registration_jwk(signer)]}}
