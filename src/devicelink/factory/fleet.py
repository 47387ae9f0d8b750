"""The fleet's identities: checking one device's registration, and listing them all.

At the factory line each unit runs ``devicelink provision`` and prints JSON: its
serial, its public key (``jwks``, ``kid`` its RFC 7638 thumbprint) and, registered,
its ``registration`` (``client_id``, issuer, ``software_id``, and ``proof``: a JWS by
the unit's own key over the client_id, issuer, serial and thumbprint). The line keeps
one file per unit in a directory; :func:`verify` checks one, :func:`export` lists
them all as serial -> client_id -> key thumbprint.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from devicelink.factory import keys
from devicelink.identity.signer import thumbprint

#: The columns of the export, in order.
COLUMNS = ("serial", "client_id", "kid", "issuer", "software_id", "software_version", "registered_at",
           "registration_client_uri", "file")


@dataclass(frozen=True)
class Check:
    ok: bool
    what: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<4}  {self.what}"


def verify(device: dict[str, Any], *, issuer: str | None = None, statement: str | None = None,
           fleet_keys: list[dict[str, Any]] | None = None, server: dict[str, Any] | None = None,
           now: float | None = None) -> list[Check]:
    """What holds of one unit's ``provision`` output: its key and thumbprint agree, it is
    registered (at ``issuer``), its proof is signed by its own key and names the same
    client, and, given the statement baked into its image (and the fleet's public keys),
    that statement verifies and names the ``software_id`` it registered with. ``server``:
    what an RFC 7592 read answered (``fleet.read_server``), when there was a token to ask with."""
    now = time.time() if now is None else now
    checks: list[Check] = []
    key = _device_key(device, checks)
    reg = device.get("registration")
    if not isinstance(reg, dict) or not isinstance(reg.get("client_id"), str):
        checks.append(Check(False, "not registered: the output has no registration.client_id (is [registration] "
                                   "in the device's config?)"))
        return checks
    client_id = reg["client_id"]
    checks.append(Check(reg.get("kid") == device.get("kid"),
                        f"client_id {client_id} is registered for the key {reg.get('kid')}"
                        + ("" if reg.get("kid") == device.get("kid") else f", not the device's {device.get('kid')}")))
    if issuer is not None:
        checks.append(Check(reg.get("issuer") == issuer, f"registered at {reg.get('issuer')}"
                            + ("" if reg.get("issuer") == issuer else f", not {issuer}")))
    checks.append(_proof(reg, device, key))
    if reg.get("earlier_attempts"):
        checks.append(Check(False, f"{reg['earlier_attempts']} earlier registration attempt(s) may have left "
                                   f"unused clients at the server for serial {device.get('serial')}: delete them "
                                   "there"))
    if statement is not None:
        checks += _statement(statement, fleet_keys, reg, device, now)
    if server is not None:
        checks += _server(server, device)
    return checks


def _device_key(device: dict[str, Any], checks: list[Check]) -> dict[str, Any] | None:
    found = (device.get("jwks") or {}).get("keys") if isinstance(device.get("jwks"), dict) else None
    key = found[0] if isinstance(found, list) and found and isinstance(found[0], dict) else None
    if key is None or any(m in key for m in keys.PRIVATE_MEMBERS):
        checks.append(Check(False, "no public key in jwks" if key is None else "jwks holds a PRIVATE key: the "
                                   "device's key is compromised; never collect private keys"))
        return None
    try:
        kid = thumbprint(key)
    except (KeyError, TypeError):
        kid = None
    checks.append(Check(kid is not None and kid == device.get("kid"),
                        f"key thumbprint {kid} " + ("matches kid" if kid == device.get("kid")
                                                    else f"does not match kid {device.get('kid')}")))
    return key


def _proof(reg: dict[str, Any], device: dict[str, Any], key: dict[str, Any] | None) -> Check:
    token = reg.get("proof")
    if not isinstance(token, str) or key is None:
        return Check(False, "no proof signed by the device's key (registration.proof)")
    try:
        _, claims = keys.verify(token, [key])
    except ValueError as exc:
        return Check(False, f"the proof does not verify with the device's key: {exc}")
    expected = {"sub": reg.get("client_id"), "aud": reg.get("issuer"), "kid": device.get("kid"),
                "serial": device.get("serial")}
    wrong = [k for k, v in expected.items() if claims.get(k) != v]
    return Check(not wrong, "the proof is signed by the device's key and names this client_id, issuer, "
                 "thumbprint and serial" if not wrong else f"the proof names another {', '.join(wrong)}")


def _statement(token: str, fleet_keys: list[dict[str, Any]] | None, reg: dict[str, Any], device: dict[str, Any],
               now: float) -> list[Check]:
    checks = []
    if fleet_keys:
        try:
            _, claims = keys.verify(token, fleet_keys)
            checks.append(Check(True, f"the software statement is signed by the fleet key (iss {claims.get('iss')})"))
        except ValueError as exc:
            return [Check(False, f"the software statement does not verify with the fleet key: {exc}")]
    else:
        from devicelink.identity.registration import payload

        claims = payload(token) or {}
        checks.append(Check(bool(claims), "the software statement is a JWT (its signature not checked: give "
                                          "--fleet-key)"))
    if isinstance(claims.get("exp"), (int, float)):
        checks.append(Check(claims["exp"] > now, "the software statement "
                            + ("has not expired" if claims["exp"] > now else "has expired")))
    sid = claims.get("software_id")
    checks.append(Check(sid == reg.get("software_id"), f"registered with software_id {reg.get('software_id')}"
                        + ("" if sid == reg.get("software_id") else f", the statement's is {sid}")))
    bound = (claims.get("cnf") or {}).get("jkt") if isinstance(claims.get("cnf"), dict) else None
    if bound is not None:
        checks.append(Check(bound == device.get("kid"), "the statement is bound to this device's key"
                            if bound == device.get("kid") else f"the statement is bound to another key ({bound})"))
    return checks


def _server(server: dict[str, Any], device: dict[str, Any]) -> list[Check]:
    if not server.get("exists"):
        return [Check(False, f"the server does not know the client: {server.get('why', 'gone')}")]
    return [Check(True, "the server knows the client (RFC 7592 read)"),
            Check(server.get("key_registered") is True, "the server holds the device's key for it"
                  if server.get("key_registered") else "the server's jwks for it does not hold the device's key "
                  f"{device.get('kid')}")]


def read_server(device: dict[str, Any], access_token: str, allow_insecure_http: bool = False) -> dict[str, Any]:
    """RFC 7592 read of the device's client, with a registration access token the caller has:
    ``{"exists", "key_registered", "why"?}``."""
    from devicelink.config import transport_allowed
    from devicelink.identity.registration import _key_in
    from devicelink.oauth import registration as rfc7591
    from devicelink.oauth.auth import ClientAuth
    from devicelink.oauth.http import run_sync

    uri = (device.get("registration") or {}).get("registration_client_uri")
    if not isinstance(uri, str):
        return {"exists": False, "why": "the output has no registration_client_uri (the server manages none)"}
    if not transport_allowed(uri, allow_insecure_http):
        return {"exists": False, "why": f"{uri} is not https (--allow-insecure-http for a loopback server)"}
    answer = run_sync(rfc7591.read(uri, access_token, None), ClientAuth("-"))
    if answer == rfc7591.GONE:
        return {"exists": False, "why": "it answered that the client does not exist (or the token is not valid)"}
    return {"exists": True, "key_registered": _key_in(answer.metadata.get("jwks"), device.get("kid") or "")}


# -- the list ------------------------------------------------------------------------------------

def rows(directory: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per ``*.json`` in ``directory`` that is a registered device's provision output,
    sorted by serial; and the problems (files that are not, duplicates)."""
    found: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            device = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: not readable JSON ({exc})")
            continue
        reg = device.get("registration") if isinstance(device, dict) else None
        if not isinstance(reg, dict) or not isinstance(reg.get("client_id"), str):
            problems.append(f"{path}: not a registered device's provision output (no registration.client_id)")
            continue
        found.append({"serial": device.get("serial"), "client_id": reg["client_id"], "kid": device.get("kid"),
                      "issuer": reg.get("issuer"), "software_id": reg.get("software_id"),
                      "software_version": reg.get("software_version"), "registered_at": reg.get("registered_at"),
                      "registration_client_uri": reg.get("registration_client_uri"), "file": path.name})
    found.sort(key=lambda r: (str(r["serial"]), r["file"]))
    for column in ("serial", "client_id", "kid"):
        problems += _duplicates(found, column)
    return found, problems


def _duplicates(found: Iterable[dict[str, Any]], column: str) -> list[str]:
    seen: dict[Any, list[str]] = {}
    for row in found:
        if row[column] is not None:
            seen.setdefault(row[column], []).append(row["file"])
    return [f"{column} {value} appears in {', '.join(files)}" for value, files in seen.items() if len(files) > 1]


def to_csv(found: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in found:
        writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
    return out.getvalue()


def to_json(found: list[dict[str, Any]]) -> str:
    return json.dumps([{k: row[k] for k in COLUMNS} for row in found], indent=1) + "\n"
