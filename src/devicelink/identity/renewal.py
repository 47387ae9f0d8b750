"""A new device key at a factory reset (``[identity] on_factory_reset = "new_key"``), resumable.

The order is what makes it safe (docs/identity.md#factory-reset):

1. :func:`begin` writes ``state_dir/identity.renew.json`` (the old key's thumbprint),
   durably, before anything else of the reset's registration part: from then on a
   restart knows the key is to be replaced;
2. the revocations still owed go, and the old registration is deleted at the server
   (RFC 7592), all authenticated as before, with the old key;
3. :func:`finish` makes the new key (``identity.jwk`` replaced by ``write_atomic``:
   the old key or the new one, never neither), swaps it into the signer everything
   holds, then removes the note;
4. the device registers afresh with the new public key (or, with DPoP alone, pairs).

A power cut between 1 and 3 leaves the note: the next start authenticates with the old
key (still in the file), finishes the deletion, then replaces the key. A cut inside 3,
after the new key's write, leaves the note and a key whose thumbprint is not the old
one: :func:`finish` then only removes the note. So the device never registers the dead
key, and never holds a key it has not registered (beyond the moment before step 4).
Call these holding the state lock (the daemon holds it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from devicelink.errors import IdentityError
from devicelink.files import UnsafeFile, read_owned, remove_durably, write_atomic
from devicelink.identity import KEY_FILE
from devicelink.identity.signer import SwappableSigner

logger = logging.getLogger(__name__)

NOTE = "identity.renew.json"
_VERSION = 1


def note_path(state_dir: Path) -> Path:
    return Path(state_dir) / NOTE


def pending(state_dir: Path) -> str | None:
    """The old key's thumbprint when a new key is owed (a factory reset under way), else None."""
    path = note_path(state_dir)
    if not os.path.lexists(path):
        return None
    try:
        record = json.loads(read_owned(path, 4096))
        old = record.get("old_kid") if isinstance(record, dict) else None
    except UnsafeFile as exc:
        raise IdentityError(f"{path} is {exc.strerror}: not a note this device made; remove it (docs/identity.md)") \
            from None
    except (OSError, ValueError, RecursionError) as exc:
        raise IdentityError(f"{path}: unreadable ({exc}); remove it to keep the current key, or see "
                            "docs/identity.md") from None
    if not isinstance(old, str) or not old:
        raise IdentityError(f"{path}: not a new-key note (no old_kid); remove it to keep the current key")
    return old


def begin(state_dir: Path, old_kid: str) -> None:
    """Durably: the key with thumbprint ``old_kid`` is to be replaced once the reset is done with it."""
    if pending(state_dir) is not None:
        return
    try:
        write_atomic(note_path(state_dir), json.dumps({"version": _VERSION, "old_kid": old_kid}).encode() + b"\n",
                     mode=0o600)
    except OSError as exc:
        raise IdentityError(f"{note_path(state_dir)}: cannot write: {exc.strerror}") from None
    logger.info("factory reset: the device key %s is replaced once the old registration is gone", old_kid)


def finish(state_dir: Path, signer: SwappableSigner) -> bool:
    """Make the new key, if not made yet, and swap it in; remove the note. Returns whether a
    key was owed. :class:`IdentityError` when the key file cannot be read or written."""
    from devicelink.identity import filekey

    old = pending(state_dir)
    if old is None:
        return False
    path = Path(state_dir) / KEY_FILE
    current = filekey.read(path) if os.path.lexists(path) else None
    if current is None or current.kid == old:
        fresh = filekey.create(path)  # write_atomic: a cut leaves the old key or the new one
    else:
        fresh = current  # made before a power cut; the note outlived it
    signer.swap(fresh)
    remove_durably(note_path(state_dir), IdentityError)
    logger.warning("factory reset: new device identity key %s (thumbprint %s), replacing %s", path, fresh.kid, old)
    return True
