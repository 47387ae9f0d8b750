"""The device's registration at the authorization server (RFC 7591, RFC 7592): on disk, and the steps.

**What is kept.** ``state_dir/registration.json``, plain JSON, 0600, under the
state-file rules (written with ``files.write_atomic``, read with ``files.read_owned``):
the issuer, the ``client_id`` (not a secret), the registration client URI, the RFC 7638
thumbprint of the key registered, the serial, what the server answered (its secrets
left out) and the registration access token **sealed with the state key**
(``tokens/sealed.py``: it lets anyone who has it read, change or delete the
client). It outlives an unpair; a factory reset deletes the client at the server
and then the file.

**A power cut.** The one window that cannot be closed is between the server
creating the client and this device writing down its ``client_id``: the server then
holds a client nobody uses, and the next attempt registers another. So:

1. everything the record needs is ready before the request goes (the key, the
   state key, the statement, the metadata), and after a 2xx answer nothing comes
   before the durable write of ``registration.json`` (parse, seal, write: a few
   milliseconds beside the network's round trip);
2. before each request, ``registration.pending.json`` notes the attempt (when,
   where, which key and serial), durably. An attempt the server certainly never saw
   (no connection) or refused (4xx) is struck out again. A registration that finds
   attempts left over says so: ``earlier_attempts`` in the record, a warning in the
   log, ``provision``'s output and ``doctor``: the server may hold that many more
   clients for this device, each with the same ``software_id``, ``device_serial`` and
   key thumbprint, which is how an administrator finds and deletes them.

A deletion (factory reset, ``provision --delete``) first marks the record
``"deleting": true``, durably; a cut then resumes the deletion instead of using a
client that may be gone.

**The steps** are generators like every exchange (``oauth/registration.py`` has the
requests and what their answers mean): :func:`enrol` registers unless registered,
:func:`deregister` deletes, :func:`read_back` and :func:`update` manage. They do
their few file writes themselves, between the requests they yield: ``provision``
drives them with ``oauth.http.run_sync``, the daemon with its own ``OAuthHttp``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator

from devicelink.errors import ConfigError, IdentityError, ProtocolViolation, RegistrationFailed
from devicelink.files import UnsafeFile, fsync_dir, read_owned, remove_durably, write_atomic
from devicelink.oauth import messages as m
from devicelink.oauth import registration as rfc7591
from devicelink.oauth.steps import Backoff, Send, Step, reply_time, transient_delay
from devicelink.tokens import sealed

if TYPE_CHECKING:
    from devicelink.config import Config
    from devicelink.identity.signer import Signer

logger = logging.getLogger(__name__)

FILE = "registration.json"
JOURNAL = "registration.pending.json"
RECORD_VERSION = 1
MAX_BYTES = 64 * 1024  # a record is a few KiB (the server's metadata, the key)
STATEMENT_MAX = 16 * 1024
#: The metadata member that carries the serial (an extension, RFC 7591 §2: servers ignore
#: what they do not know, and keep it with the client when told to).
SERIAL_MEMBER = "device_serial"
#: Attempts kept in the journal: enough to count, not a log of every offline boot.
JOURNAL_KEPT = 20
_KEEP = ("it is never replaced on its own (that would register the device a second time): move it away "
         "to register afresh, after deleting the old client at the server (docs/identity.md)")


@dataclass
class Registration:
    """``registration.json``: this device's client at ``issuer``."""

    issuer: str
    client_id: str
    endpoint: str  # where it was registered
    kid: str  # RFC 7638 thumbprint of the key registered
    serial: str | None
    registered_at: float  # wall clock
    metadata: dict[str, Any] = field(default_factory=dict)  # the server's answer, without its secrets
    client_uri: str | None = None  # RFC 7592 registration_client_uri
    token_seals: list[str] = field(default_factory=list, repr=False)  # the registration access token, sealed
    #: Attempts before this one that may have registered too (a power cut, no answer): see the module docstring.
    earlier_attempts: list[dict[str, Any]] = field(default_factory=list)
    deleting: bool = False  # a deletion began (factory reset): finish it, never use the client

    @property
    def label(self) -> str:
        """What the sealed token is bound to (``tokens/sealed.py``)."""
        return f"registration:{self.client_id}"

    @property
    def manageable(self) -> bool:
        return bool(self.client_uri and self.token_seals)

    def access_token(self, key: bytes) -> str | None:
        return sealed.open_any(key, self.token_seals, self.label)

    def to_record(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "issuer": self.issuer, "client_id": self.client_id,
                "registration_endpoint": self.endpoint, "registration_client_uri": self.client_uri,
                "registration_access_token": {"sealed": self.token_seals} if self.token_seals else None,
                "kid": self.kid, "serial": self.serial, "registered_at": self.registered_at,
                "metadata": self.metadata, "earlier_attempts": self.earlier_attempts, "deleting": self.deleting}

    @classmethod
    def from_record(cls, record: Any) -> Registration:
        """ValueError when it is not such a record."""
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            raise ValueError("not a registration record (version 1)")
        text = {k: record.get(k) for k in ("issuer", "client_id", "registration_endpoint", "kid")}
        if not all(isinstance(v, str) and v for v in text.values()):
            raise ValueError("issuer, client_id, registration_endpoint or kid missing")
        token = record.get("registration_access_token")
        seals = token.get("sealed") if isinstance(token, dict) else []
        metadata, earlier = record.get("metadata") or {}, record.get("earlier_attempts") or []
        uri, serial, at = record.get("registration_client_uri"), record.get("serial"), record.get("registered_at")
        if (not isinstance(seals, list) or not all(isinstance(s, str) for s in seals)
                or not isinstance(metadata, dict) or not isinstance(earlier, list)
                or not isinstance(uri, (str, type(None))) or not isinstance(serial, (str, type(None)))
                or isinstance(at, bool) or not isinstance(at, (int, float))):
            raise ValueError("a member has the wrong type")
        return cls(text["issuer"], text["client_id"], text["registration_endpoint"], text["kid"], serial,
                   float(at), metadata, uri, list(seals), [e for e in earlier if isinstance(e, dict)],
                   record.get("deleting") is True)

    def summary(self) -> dict[str, Any]:
        """What ``provision`` prints and the factory collects: nothing secret."""
        md = self.metadata
        return {"issuer": self.issuer, "client_id": self.client_id, "kid": self.kid, "serial": self.serial,
                "registered_at": _iso(self.registered_at), "registration_client_uri": self.client_uri,
                "manageable": self.manageable,
                **{k: md[k] for k in ("software_id", "software_version", "client_name", "token_endpoint_auth_method",
                                      "grant_types", "client_id_issued_at") if k in md},
                "earlier_attempts": len(self.earlier_attempts), "deleting": self.deleting}


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class RegistrationFile:
    """``state_dir/registration.json`` and its journal ``registration.pending.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILE
        self.journal_path = self.dir / JOURNAL

    def load(self) -> Registration | None:
        """The registration, or None. :class:`IdentityError` when the file is not ours or not a
        record: never replaced on its own (a new registration would be a second client)."""
        data = self._read(self.path)
        if data is None:
            return None
        try:
            return Registration.from_record(json.loads(data))
        except (ValueError, RecursionError) as exc:
            raise IdentityError(f"{self.path}: not a registration record ({exc}); {_KEEP}") from None

    def save(self, reg: Registration) -> None:
        self._write(self.path, reg.to_record())

    def forget(self) -> None:
        """The registration is gone (deleted at the server): both files, durably."""
        for path in (self.journal_path, self.path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise IdentityError(f"{path}: cannot remove: {exc.strerror}") from None
        self._sync()

    # -- the journal of attempts -------------------------------------------------------

    def attempts(self) -> list[dict[str, Any]]:
        """The attempts noted and not struck out: each may have registered a client."""
        try:
            data = self._read(self.journal_path)
            record = json.loads(data) if data is not None else {}
        except (IdentityError, ValueError, RecursionError) as exc:
            logger.warning("%s: unreadable (%s); counted as one attempt that may have registered",
                           self.journal_path, exc)
            return [{"id": "unknown", "at": None, "why": "journal unreadable"}]
        found = record.get("attempts") if isinstance(record, dict) else None
        return [a for a in found if isinstance(a, dict)] if isinstance(found, list) else []

    def note(self, attempt: dict[str, Any]) -> None:
        """Before a request goes: durably, or it does not go."""
        self._write(self.journal_path, {"version": RECORD_VERSION,
                                        "attempts": [*self.attempts(), attempt][-JOURNAL_KEPT:]})

    def strike(self, attempt_id: str) -> None:
        """This attempt certainly registered nothing (no connection, or a refusal)."""
        left = [a for a in self.attempts() if a.get("id") != attempt_id]
        if left:
            self._write(self.journal_path, {"version": RECORD_VERSION, "attempts": left})
        else:
            self.clear_journal()

    def clear_journal(self) -> None:
        remove_durably(self.journal_path, IdentityError)

    # -- files ------------------------------------------------------------------------

    def _read(self, path: Path) -> bytes | None:
        try:
            data = read_owned(path, MAX_BYTES)
        except FileNotFoundError:
            return None
        except UnsafeFile as exc:
            raise IdentityError(f"{path} is {exc.strerror}: it is not a file this device wrote, and is never "
                                "used; remove it unless you put it there yourself (docs/files.md)") from None
        except OSError as exc:
            raise IdentityError(f"{path}: cannot read: {exc.strerror}") from None
        if len(data) > MAX_BYTES:
            raise IdentityError(f"{path}: larger than {MAX_BYTES} bytes; {_KEEP}")
        return data

    def _write(self, path: Path, record: dict[str, Any]) -> None:
        try:
            write_atomic(path, json.dumps(record, indent=1).encode() + b"\n", mode=0o600)
        except OSError as exc:
            raise IdentityError(f"{path}: cannot write: {exc.strerror}") from None

    def _sync(self) -> None:
        try:
            fsync_dir(self.dir)
        except OSError as exc:
            raise IdentityError(f"{self.dir}: cannot write: {exc.strerror}") from None


# -- what is sent ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Statement:
    """A software statement (RFC 7591 §2.3) as the device sees it: the JWT to send, and its
    claims read without checking the signature (the server checks it; the device has no
    reason to hold the fleet's public key)."""

    jwt: str = field(repr=False)
    claims: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Statement:
        """:class:`ConfigError` naming the file when it cannot be read or is not a JWS."""
        where = f"[registration] software_statement_file: {path}"
        try:
            with open(path, "rb") as f:
                raw = f.read(STATEMENT_MAX + 1)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
        text = raw.decode("ascii", "replace").strip()
        claims = payload(text) if len(raw) <= STATEMENT_MAX else None
        if claims is None:
            raise ConfigError(f"{where}: not a signed JWT (header.payload.signature in base64url); make it "
                              "with devicelink factory sign (docs/identity.md)")
        return cls(text, claims)

    def expired(self, wall: float) -> bool:
        exp = self.claims.get("exp")
        return isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp <= wall


def payload(token: str) -> dict[str, Any] | None:
    """The claims of a compact JWS, unverified; None when it is not one."""
    from devicelink.identity.signer import b64url_decode

    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        claims = json.loads(b64url_decode(parts[1]))
        header = json.loads(b64url_decode(parts[0]))
    except (ValueError, RecursionError):
        return None
    if not isinstance(claims, dict) or not isinstance(header, dict) or header.get("alg") in (None, "none"):
        return None
    return claims


def read_secret_file(path: Path, what: str) -> str:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text


def client_metadata(cfg: Config, signer: Signer, serial: str | None,
                    statement: Statement | None) -> dict[str, Any]:
    """RFC 7591 §2: what the device asks to be. The statement's claims win at the server
    (§3.1.1); ``software_id`` and ``software_version`` are sent plainly too, for servers that
    keep them but do not read statements."""
    from devicelink.identity.signer import registration_jwk

    reg = cfg.registration
    assert reg is not None
    metadata: dict[str, Any] = {
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": signer.alg,
        "grant_types": list(reg.grant_types),
        "response_types": [],  # no authorization endpoint: the device flow redirects nowhere
        "redirect_uris": [],
        "jwks": {"keys": [registration_jwk(signer)]},
    }
    if reg.client_name:
        metadata["client_name"] = reg.client_name
    if cfg.provider.scope:
        metadata["scope"] = cfg.provider.scope
    if statement is not None:
        for name in ("software_id", "software_version"):
            if isinstance(statement.claims.get(name), str):
                metadata[name] = statement.claims[name]
        metadata["software_statement"] = statement.jwt
    if serial:
        metadata[SERIAL_MEMBER] = serial
    return metadata


# -- the steps ----------------------------------------------------------------------------------

@dataclass
class Enrolment:
    """What registering needs, gathered before anything is sent: the config, the device's
    key, the state key (to seal the registration access token) and the clocks."""

    cfg: Config
    signer: Signer
    key: bytes = field(repr=False)
    serial: str | None
    files: RegistrationFile
    wall_clock: Callable[[], float] = time.time
    backoff: Backoff | None = None  # None: one attempt for each request (provision)

    @property
    def issuer(self) -> str:
        return self.cfg.provider.issuer


class Mismatch(IdentityError):
    """A registration for another issuer, or for another key: not used, and not replaced."""


def usable(reg: Registration, cfg: Config, kid: str | None) -> None:
    """:class:`Mismatch` when ``reg`` is not for this config's issuer or (when known) this key."""
    if reg.issuer != cfg.provider.issuer:
        raise Mismatch(f"the device is registered at {reg.issuer} (client_id {reg.client_id}), but [provider] issuer "
                       f"is {cfg.provider.issuer}: delete that registration first (devicelink provision --delete "
                       "with the old issuer in the config), or move registration.json away (docs/identity.md)")
    if kid is not None and reg.kid != kid:
        raise Mismatch(f"the registration (client_id {reg.client_id}) is for the key {reg.kid}, but the device's "
                       f"key is {kid}: give the server the new key with devicelink provision --update "
                       "(docs/identity.md)")


def enrol(e: Enrolment) -> Generator[Step, m.Reply, tuple[Registration, bool]]:
    """The registration, made now unless there is one: ``(registration, made now)``. Resumes a
    deletion that a power cut interrupted first. Raises :class:`RegistrationFailed` (refused, or no
    answer), :class:`ConfigError` (the statement, the token file), :class:`IdentityError` (files)."""
    existing = e.files.load()
    if existing is not None and existing.deleting:
        logger.info("deleting the registration %s first (a factory reset)", existing.client_id)
        yield from deregister(e, existing)
        existing = None
    if existing is not None:
        usable(existing, e.cfg, e.signer.kid)
        return existing, False
    reg_cfg = e.cfg.registration
    assert reg_cfg is not None
    statement = Statement.read(reg_cfg.software_statement_file) if reg_cfg.software_statement_file else None
    if statement is not None and statement.expired(e.wall_clock()):
        logger.warning("the software statement's exp has passed (by this device's clock): the server will "
                       "likely refuse it; sign a new one with devicelink factory sign")
    initial = (read_secret_file(reg_cfg.initial_access_token_file, "[registration] initial_access_token_file")
               if reg_cfg.initial_access_token_file else None)
    endpoint = reg_cfg.endpoint or (yield from registration_endpoint(e))
    metadata = client_metadata(e.cfg, e.signer, e.serial, statement)
    request = rfc7591.register_request(endpoint, metadata, initial)
    not_before = None
    while True:
        attempt = {"id": secrets.token_hex(8), "at": e.wall_clock(), "endpoint": endpoint, "kid": e.signer.kid,
                   "serial": e.serial}
        e.files.note(attempt)  # durably, before the request can reach the server
        reply = yield Send(request, not_before)
        if isinstance(reply, m.Response) and reply.status in (200, 201):
            return _keep(e, endpoint, reply, attempt), True
        verdict = m.classify(reply)
        if (isinstance(reply, m.Failure) and reply.unsent) or (
                isinstance(reply, m.Response) and 400 <= reply.status < 500 and not verdict.transient):
            e.files.strike(attempt["id"])  # the server never saw it, or refused it: no client was made
        if e.backoff is None or not verdict.transient:
            raise rfc7591.refusal(reply, f"the registration at {endpoint} was refused")
        not_before = reply_time(reply) + transient_delay(reply, e.backoff)


def _keep(e: Enrolment, endpoint: str, reply: m.Response, attempt: dict[str, Any]) -> Registration:
    """The answer, written down before anything else: this is the window a power cut can hit."""
    try:
        answer = rfc7591.parse_registered(reply)
    except ProtocolViolation as exc:  # a client may exist that we cannot name: the attempt stays noted
        raise ProtocolViolation(f"{exc} (the server may have registered a client all the same)") from None
    earlier = [a for a in e.files.attempts() if a.get("id") != attempt["id"]]
    reg = Registration(e.issuer, answer.client_id, endpoint, e.signer.kid, e.serial, e.wall_clock(), answer.metadata,
                       answer.client_uri, [], earlier)
    if answer.access_token is not None:
        reg.token_seals = [sealed.seal(e.key, answer.access_token, reg.label)]
    e.files.save(reg)
    e.files.clear_journal()
    logger.info("registered at %s as client_id %s (%s)%s", endpoint, reg.client_id,
                rfc7591.describe_metadata(reg.metadata),
                "" if reg.manageable else "; the server gave no registration access token: it cannot be "
                "read, changed or deleted from the device")
    if earlier:
        logger.warning("%s", duplicate_warning(reg))
    method = reg.metadata.get("token_endpoint_auth_method")
    if method not in (None, "private_key_jwt"):
        logger.warning("the server registered %s with token_endpoint_auth_method %s, not private_key_jwt: it will "
                       "refuse the device's assertions; ask its administrator to allow private_key_jwt",
                       reg.client_id, str(method)[:40])
    return reg


def duplicate_warning(reg: Registration) -> str:
    n = len(reg.earlier_attempts)
    return (f"{n} earlier registration attempt{'s' if n > 1 else ''} of this device may have reached the server "
            "before a power cut or a lost answer: it may hold as many unused clients besides "
            f"{reg.client_id}, with the same key thumbprint {reg.kid} and serial {reg.serial or 'unknown'}; "
            "delete them there (docs/identity.md)")


def registration_endpoint(e: Enrolment) -> Generator[Step, m.Reply, str]:
    """The discovery document's ``registration_endpoint`` (RFC 8414 §2), TLS-checked."""
    from devicelink.config import transport_allowed
    from devicelink.oauth import grant

    document = yield from grant.discover(e.issuer, e.backoff)
    endpoint = document.get("registration_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise ProtocolViolation("the server's discovery document has no registration_endpoint; set "
                                "[registration] endpoint")
    if not transport_allowed(endpoint, e.cfg.provider.allow_insecure_http):
        raise ProtocolViolation(f"the discovery document's registration_endpoint {endpoint[:120]} is not https")
    return endpoint


def _managed(e: Enrolment, reg: Registration) -> tuple[str, str] | None:
    """The client URI and the access token, or None when the server gave none (or the token
    does not open with this state key). The URI is TLS-checked: the token is sent to it."""
    from devicelink.config import transport_allowed

    token = reg.access_token(e.key)
    if reg.client_uri is None or token is None:
        return None
    if not transport_allowed(reg.client_uri, e.cfg.provider.allow_insecure_http):
        raise ProtocolViolation(f"the registration_client_uri {reg.client_uri[:120]} is not https: the "
                                "registration access token is not sent to it")
    return reg.client_uri, token


def deregister(e: Enrolment, reg: Registration) -> Generator[Step, m.Reply, str]:
    """RFC 7592 §2.3: delete the client at the server, then forget it here. Returns
    ``"deleted"``, ``"gone"`` (the server no longer knew it), ``"unmanaged"`` (no access
    token: the server keeps it; say so to its administrator) or ``"refused"`` (the server
    said no for good: it keeps the client, and the log says so). A failure that is
    ``transient`` raises :class:`RegistrationFailed`: the record stays, marked, and the
    next try resumes."""
    if not reg.deleting:
        reg = replace(reg, deleting=True)
        e.files.save(reg)  # a power cut from here on resumes the deletion
    managed = _managed(e, reg)
    if managed is None:
        outcome = "unmanaged"
        logger.warning("the server keeps the client %s: this device cannot delete it (%s); delete it there",
                       reg.client_id, "no registration access token" if reg.client_uri is None or not reg.token_seals
                       else "the registration access token does not open with the state key")
    else:
        try:
            outcome = yield from rfc7591.delete(*managed, e.backoff)
        except RegistrationFailed as exc:
            if exc.transient:
                raise  # the record stays marked: the next try resumes
            logger.warning("%s; forgetting the client %s here all the same: the server keeps it", exc, reg.client_id)
            outcome = "refused"
    e.files.forget()
    logger.info("the registration %s is %s; forgotten on this device", reg.client_id,
                {"deleted": "deleted at the server", "gone": "no longer known to the server"}.get(outcome, "kept "
                                                                                                     "by the server"))
    return outcome


def read_back(e: Enrolment, reg: Registration) -> Generator[Step, m.Reply, dict[str, Any]]:
    """RFC 7592 §2.1: what the server holds for this client, judged against this device:
    ``{"exists": bool | None, "key_registered": bool | None, ...}`` (None: cannot tell)."""
    managed = _managed(e, reg)
    if managed is None:
        return {"exists": None, "key_registered": _key_in(reg.metadata.get("jwks"), e.signer.kid),
                "why": "no registration access token: only what the server answered at registration is known"}
    answer = yield from rfc7591.read(*managed, e.backoff)
    if answer == rfc7591.GONE:
        return {"exists": False, "key_registered": False, "why": "the server does not know the client (any more)"}
    assert isinstance(answer, rfc7591.Registered)
    _keep_token(e, reg, answer)
    return {"exists": True, "key_registered": _key_in(answer.metadata.get("jwks"), e.signer.kid),
            "client_id": answer.client_id}


def update(e: Enrolment, reg: Registration) -> Generator[Step, m.Reply, Registration]:
    """RFC 7592 §2.2: send the metadata as it is now (the device's current key, the config's
    grant types and name, the statement): after a new key, or a new statement. The answer
    may rotate the access token: it is written down at once."""
    managed = _managed(e, reg)
    if managed is None:
        raise IdentityError(f"the registration {reg.client_id} cannot be updated from this device: the server gave "
                            "no registration access token (or it does not open with the state key)")
    reg_cfg = e.cfg.registration
    assert reg_cfg is not None
    statement = Statement.read(reg_cfg.software_statement_file) if reg_cfg.software_statement_file else None
    metadata = client_metadata(e.cfg, e.signer, e.serial, statement)
    answer = yield from rfc7591.update(*managed, reg.client_id, metadata, e.backoff)
    if answer == rfc7591.GONE:
        raise IdentityError(f"the server does not know the client {reg.client_id} (any more): delete this "
                            "registration here (devicelink provision --delete) and register afresh")
    assert isinstance(answer, rfc7591.Registered)
    fresh = replace(reg, kid=e.signer.kid, serial=e.serial, metadata=answer.metadata)
    _keep_token(e, fresh, answer, save=True)
    return fresh


def _keep_token(e: Enrolment, reg: Registration, answer: rfc7591.Registered, save: bool = False) -> None:
    """A rotated registration access token (oidc-provider's default on update) replaces the
    old one at once: the old one no longer works."""
    if answer.access_token is not None and answer.access_token != reg.access_token(e.key):
        reg.token_seals = [sealed.seal(e.key, answer.access_token, reg.label)]
        save = True
    if save:
        e.files.save(reg)


def _key_in(jwks: Any, kid: str) -> bool | None:
    """Whether a JWKS the server answered holds the key with this thumbprint (None: it sent none)."""
    from devicelink.identity.signer import thumbprint

    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        return None
    for key in keys:
        try:
            if isinstance(key, dict) and thumbprint(key) == kid:
                return True
        except (KeyError, TypeError):
            continue
    return False


# -- re-keying ---------------------------------------------------------------------------------

def reseal(state_dir: Path, old_key: bytes, new_key: bytes) -> None:
    """``devicelink rekey``, before its switch: the access token sealed under the new key too."""
    files = RegistrationFile(state_dir)
    reg = files.load()
    if reg is None:
        return
    seals = sealed.add_seal(reg.token_seals, old_key, new_key, reg.label)
    if seals is not None:
        files.save(replace(reg, token_seals=seals))


def settle_seals(state_dir: Path, key: bytes) -> None:
    """At every start (holding the state lock), and after a re-key: only the seals this key
    opens are kept; a journal left beside a record (a cut between the record's write and the
    journal's removal) is removed."""
    files = RegistrationFile(state_dir)
    reg = files.load()
    if reg is None:
        return
    if os.path.lexists(files.journal_path):
        files.clear_journal()
    seals = sealed.keep_openable(reg.token_seals, key, reg.label)
    if seals is not None:
        files.save(replace(reg, token_seals=seals))


def proof(signer: Signer, reg: Registration, wall: float) -> str:
    """A JWS by the device's key over what it registered as: the factory's ``verify`` checks it
    against the output's JWKS, so an output cannot be pasted together from two devices."""
    from devicelink.identity import jws

    return jws.compact(signer, {"kid": signer.kid, "typ": "devicelink-registration+jwt"},
                       {"iss": reg.serial or reg.kid, "sub": reg.client_id, "aud": reg.issuer, "kid": reg.kid,
                        "serial": reg.serial, "iat": int(wall)})
