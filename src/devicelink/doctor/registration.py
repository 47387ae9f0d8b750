"""The ``registration`` check: with ``[registration]``, is the device registered, as which
client, and for the key it signs with?

Read from ``state_dir/registration.json`` and the public half of ``identity.jwk``
(``x`` and ``y``, never ``d``), without the state lock, the state key or a request:
the registration access token stays sealed. ``devicelink provision --check`` asks the
server itself (RFC 7592).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from devicelink.config import Config
from devicelink.doctor.findings import AS_ROOT, FAIL, OK, WARN, Finding
from devicelink.errors import IdentityError
from devicelink.identity.renewal import NOTE

CHECK = "registration"


def check_registration(cfg: Config) -> list[Finding]:
    from devicelink.identity import KEY_FILE
    from devicelink.identity import registration as r

    state_dir = cfg.storage.state_dir
    try:
        reg = r.RegistrationFile(state_dir).load()
    except PermissionError:
        return [Finding(WARN, CHECK, f"cannot look at {state_dir / r.FILE}: permission denied", AS_ROOT)]
    except IdentityError as exc:
        if "permission denied" in str(exc).lower():
            return [Finding(WARN, CHECK, f"cannot look at {state_dir / r.FILE}: permission denied", AS_ROOT)]
        return [Finding(FAIL, CHECK, str(exc), "see docs/identity.md")]
    renewing = cfg.identity.new_key_on_reset and os.path.lexists(state_dir / NOTE)
    if reg is None and renewing:
        return [Finding(WARN, CHECK, "a factory reset is unfinished: the old client is gone, a new device key "
                        "([identity] on_factory_reset = 'new_key') and its registration are owed",
                        "the daemon finishes it at its start; or run devicelink provision with the daemon stopped")]
    if reg is None:
        return [Finding(WARN, CHECK, "not registered yet ([registration] is set)",
                        "the daemon registers at its start (devicelink status says how it goes); or run "
                        "devicelink provision with the daemon stopped")]
    if reg.deleting:
        return [Finding(WARN, CHECK, f"the deletion of client_id {reg.client_id} (a factory reset) is unfinished",
                        "the daemon finishes it, and registers afresh"
                        + (" with a new device key" if renewing else "") + ", when the server answers")]
    if reg.issuer != cfg.provider.issuer:
        return [Finding(FAIL, CHECK, f"registered at {reg.issuer}, but [provider] issuer is {cfg.provider.issuer}",
                        "the daemon does not start so: delete that registration (devicelink provision --delete "
                        "with the old issuer), or move registration.json away (docs/identity.md)")]
    findings = []
    kid = _thumbprint(state_dir / KEY_FILE)
    where = f"client_id {reg.client_id} at {reg.issuer} (registered {r._iso(reg.registered_at)}, serial " \
            f"{reg.serial or 'unknown'})"
    if kid is None:
        findings.append(Finding(WARN, CHECK, f"{where}; cannot read the device key to compare it", AS_ROOT))
    elif kid != reg.kid:
        findings.append(Finding(FAIL, CHECK, f"{where} is for the key {reg.kid}, but the device's key is {kid}: "
                                "the server refuses its assertions (invalid_client)",
                                "give the server the new key: devicelink provision --update (docs/identity.md)"))
    elif r._key_in(reg.metadata.get("jwks"), kid) is False:
        findings.append(Finding(FAIL, CHECK, f"{where}: the server answered a jwks without the device's key {kid}",
                                "devicelink provision --check, then --update (docs/identity.md)"))
    else:
        findings.append(Finding(OK, CHECK, f"{where}; key thumbprint {kid} is the one registered"))
    if reg.earlier_attempts:
        findings.append(Finding(WARN, CHECK, r.duplicate_warning(reg),
                                "ask the server's administrator to delete the unused clients"))
    if not reg.manageable:
        findings.append(Finding(WARN, CHECK, "the server gave no registration access token: the registration "
                                "cannot be read, updated or deleted from the device (a factory reset leaves the "
                                "client at the server)", "delete it there when the device leaves service"))
    return findings


def _thumbprint(path: Path) -> str | None:
    """The RFC 7638 thumbprint of the key file's public half; None when it cannot be read."""
    from devicelink.identity.signer import thumbprint

    try:
        with open(path, "rb") as f:
            jwk = json.loads(f.read(4097))
        return thumbprint({k: jwk[k] for k in ("kty", "crv", "x", "y")})
    except (OSError, ValueError, KeyError, TypeError):
        return None
