"""``devicelink provision``: make the device's identity key now, register it, and say what was done.

Run once per unit at the factory or at first boot, before the daemon: it makes
``state_dir/identity.jwk`` (or reads the one there) and prints, as JSON, the
serial and the public key as a JWKS, ready for the authorization server's
client registration (``jwks``, with ``token_endpoint_auth_method``
``private_key_jwt``). The daemon makes the key too, at a start that needs it, but
then the server cannot know it before the first request (docs/identity.md).

With ``[registration]`` in the config it also registers the device (RFC 7591,
``identity/registration.py``) and prints its ``client_id`` under ``"registration"``;
``action`` manages that registration (RFC 7592): ``"check"`` reads it back from the
server, ``"update"`` sends the metadata as it is now (a new key, a new statement),
``"delete"`` deletes it at the server and forgets it here.

It is idempotent: a second run prints the same key and registration with
``"created": false`` and sends nothing; it never replaces a key or a registration.
Run as root, it writes as the state directory's owner, so the daemon can read
what it wrote. It takes the state lock only to make a key or to register, so it
refuses to do either while the daemon runs (which does both itself at its start).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from devicelink.config import Config
from devicelink.errors import ConfigError, IdentityError
from devicelink.files import as_owner, remove_stale_temps
from devicelink.identity import KEY_FILE
from devicelink.identity.filekey import load_or_create, read
from devicelink.identity.serial import device_serial
from devicelink.identity.signer import registration_jwk
from devicelink.tokens import keys
from devicelink.tokens.store import ensure_private_dir

logger = logging.getLogger(__name__)

ACTIONS = ("check", "update", "delete")


def provision(cfg: Config, action: str | None = None) -> dict[str, Any]:
    """The key (made now if absent), the serial and, with ``[registration]``, the registration
    (made now if absent, or managed as ``action`` says), as ``devicelink provision`` prints them.
    :class:`~devicelink.errors.StoreError` (:class:`~devicelink.errors.IdentityError` for the key
    and the registration), :class:`~devicelink.errors.RegistrationFailed`, :class:`ConfigError`."""
    state_dir = cfg.storage.state_dir
    path = state_dir / KEY_FILE
    if action is not None and cfg.registration is None:
        raise ConfigError(f"{cfg.path}: [registration]: missing; provision --{action} manages the device's "
                          "registration (docs/identity.md)")
    if os.geteuid() == 0 and not state_dir.is_dir():
        logger.warning("%s did not exist and is made now, owned by root: a daemon running as another user "
                       "refuses it (make it with systemd-tmpfiles --create before provisioning; docs/files.md)",
                       state_dir)
    with as_owner(state_dir):
        ensure_private_dir(state_dir)
        done = _registered_already(cfg) if action is None else None
        if done is not None:
            return done
        if os.path.lexists(path) and cfg.registration is None:
            return _identity(cfg, read(path), False)
        lock = keys.try_lock_state_dir(state_dir)  # the daemon (or another provision) is not at it
    try:
        with as_owner(state_dir):
            signer, made = load_or_create(path)
        if cfg.registration is not None and action is None and _renewal_pending(cfg):
            from devicelink.identity.signer import SwappableSigner

            signer, made = SwappableSigner(signer), True  # a factory reset's new key: made below
        out = _identity(cfg, signer, made)
        if cfg.registration is not None:
            out["registration"] = _register(cfg, signer, action)
            out.update(_identity(cfg, signer, made))  # the new key, when a factory reset made one
        return out
    finally:
        os.close(lock)


def _renewal_pending(cfg: Config) -> bool:
    from devicelink.identity import renewal

    return cfg.identity.new_key_on_reset and renewal.pending(cfg.storage.state_dir) is not None


def _identity(cfg: Config, signer: Any, made: bool) -> dict[str, Any]:
    return {"serial": device_serial(cfg.identity.serial), "key": cfg.identity.key,
            "key_file": str(cfg.storage.state_dir / KEY_FILE), "created": made, "kid": signer.kid,
            "jwks": {"keys": [registration_jwk(signer)]}}


def _registered_already(cfg: Config) -> dict[str, Any] | None:
    """A registered device prints what it is and does nothing: no lock, no state key, no
    request (so it also answers while the daemon runs). None when there is work to do."""
    from devicelink.identity import registration as r

    path = cfg.storage.state_dir / KEY_FILE
    if cfg.registration is None or not os.path.lexists(path):
        return None
    reg = r.RegistrationFile(cfg.storage.state_dir).load()
    if reg is None or reg.deleting or _renewal_pending(cfg):
        return None
    signer = read(path)
    r.usable(reg, cfg, signer.kid)
    return {**_identity(cfg, signer, False), "registration": _summary(reg, signer, created=False)}


def _summary(reg: Any, signer: Any, created: bool, **more: Any) -> dict[str, Any]:
    import time

    from devicelink.identity import registration as r

    return {"created": created, **reg.summary(), "proof": r.proof(signer, reg, time.time()), **more}


def _register(cfg: Config, signer: Any, action: str | None) -> dict[str, Any]:
    """Under the state lock: register, or manage the registration, through the daemon's own flows."""
    state_dir = cfg.storage.state_dir
    key = state_key(cfg)  # as root: systemd-creds needs root, so not as the directory's owner
    with as_owner(state_dir):
        return _registration(cfg, signer, action, key)


def _registration(cfg: Config, signer: Any, action: str | None, key: bytes) -> dict[str, Any]:
    from devicelink.identity import registration as r
    from devicelink.oauth.auth import ClientAuth
    from devicelink.oauth.http import run_sync

    state_dir = cfg.storage.state_dir
    for name in remove_stale_temps(state_dir):  # a provision or daemon killed mid-write; ours, under the lock
        logger.info("%s: removed %s, left by an interrupted write", state_dir, name)
    r.settle_seals(state_dir, key)
    files = r.RegistrationFile(state_dir)
    e = r.Enrolment(cfg, signer, key, device_serial(cfg.identity.serial), files)
    auth = ClientAuth(cfg.provider.client_id or "-")  # registration requests take no client authentication
    if action is None and _renewal_pending(cfg):  # a factory reset cut off: finish it in its order
        from devicelink.identity import renewal

        old = files.load()
        if old is not None:
            run_sync(r.deregister(e, old), auth)
        renewal.finish(state_dir, signer)
    if action is None:
        reg, made = run_sync(r.enrol(e), auth)
        return _summary(reg, signer, created=made)
    reg = files.load()
    if reg is None:
        raise IdentityError(f"the device is not registered ({files.path} does not exist): run devicelink provision")
    if action == "delete":
        outcome = run_sync(r.deregister(e, reg), auth)
        return {"created": False, "client_id": reg.client_id, "issuer": reg.issuer, "deleted": outcome}
    r.usable(reg, cfg, None if action == "update" else signer.kid)
    if action == "check":
        found = run_sync(r.read_back(e, reg), auth)
        return _summary(files.load() or reg, signer, created=False, server=found)
    return _summary(run_sync(r.update(e, reg), auth), signer, created=False, updated=True)


def state_key(cfg: Config) -> bytes:
    """The state key, as the daemon will load it, to seal the registration access token with.

    In the unit (``ExecStartPre=``, or a provisioning unit with the same
    ``LoadCredentialEncrypted=``) the credential is in ``$CREDENTIALS_DIRECTORY``; run by
    hand as root, a sealed credential at the usual path is decrypted with ``systemd-creds``,
    as ``rekey`` does. Else the file key (made now if there is none, as the daemon would)."""
    state_dir = cfg.storage.state_dir
    source = cfg.storage.key
    if (source in ("credential", "auto") and keys.credential_path() is None
            and os.path.lexists(keys.CREDSTORE_PATH)):
        from devicelink.rekey import systemd_creds

        data = systemd_creds(["decrypt", f"--name={keys.CREDENTIAL_NAME}", "--newline=no", str(keys.CREDSTORE_PATH),
                              "-"], what=str(keys.CREDSTORE_PATH))
        key = keys.check_credential(data, f"the credential {keys.CREDSTORE_PATH}")
        source = "credential"
    else:
        with as_owner(state_dir):
            key, source = keys.resolve_key(source, state_dir)
    with as_owner(state_dir):
        keys.finish_rekey(state_dir, key, source)  # as a start would: an interrupted re-key is settled first
    return key
