"""Dynamic client registration (RFC 7591) and its management (RFC 7592) as generators. No I/O.

A device registers itself once: a JSON ``POST`` of its client metadata (its public
key as ``jwks``, ``token_endpoint_auth_method`` ``private_key_jwt``, the grant types,
the manufacturer's signed ``software_statement``, its serial) to the registration
endpoint, with an initial access token when the server wants one (§3). The server
answers 201 with the client's ``client_id`` and, when it supports RFC 7592, a
``registration_access_token`` and a ``registration_client_uri``: with that token
the device reads (``GET``), updates (``PUT``, the whole metadata) and deletes
(``DELETE``) its registration.

What the answers mean is decided here; where they are kept, and when a request
may go out (``identity/registration.py``: journal first), is not.

- 201 (and 200, which some servers send): :class:`Registered`; the body must be a
  JSON object with a ``client_id``;
- an RFC 7591 §3.2.2 error (``invalid_software_statement``,
  ``unapproved_software_statement``, ``invalid_client_metadata``,
  ``invalid_redirect_uri``) or any other 4xx: :class:`RegistrationFailed` with the server's
  code and words;
- no answer, 5xx, 429: retried with the backoff given, else :class:`RegistrationFailed`
  (``transient``).

RFC 7592 §2: a management request for a client the server does not know (any
more) gets 401 (and the token is revoked), some servers say 404: both mean
:data:`GONE` to the caller, who cannot manage that client any longer either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator

from devicelink.errors import ProtocolViolation, RegistrationFailed
from devicelink.oauth import messages as m
from devicelink.oauth.steps import Backoff, Send, Step, exchange
from devicelink.text import sanitize

#: RFC 7591 §3.2.2's error codes, and what each asks of the manufacturer.
ERRORS = {
    "invalid_software_statement": "the software statement is not valid (signed by a key the server does not "
                                  "trust, expired, or damaged): check [registration] software_statement_file",
    "unapproved_software_statement": "the server does not accept this software statement: ask its "
                                     "administrator to approve the fleet's key or software_id",
    "invalid_client_metadata": "the server refused the client metadata",
    "invalid_redirect_uri": "the server refused the redirect URIs",
}
#: Members of an answer that are secrets: never kept in plain text, printed or logged.
SECRET_MEMBERS = frozenset({"registration_access_token", "client_secret"})
#: A management request's answer for a client the server does not know (any more): RFC 7592 §2.1-2.3.
GONE = "gone"
MAX_CLIENT_ID = 255


@dataclass(frozen=True, repr=False)
class Registered:
    """The server's answer to a registration (or a read, or an update): the client's metadata
    without its secrets, and the registration access token (a secret, kept apart)."""

    client_id: str
    metadata: dict[str, Any]
    access_token: str | None
    client_uri: str | None

    def __repr__(self) -> str:
        return f"Registered(client_id={self.client_id!r}, manageable={self.access_token is not None})"


def register_request(endpoint: str, metadata: dict[str, Any], initial_token: str | None) -> m.Request:
    """RFC 7591 §3.1: the metadata as JSON; the initial access token, if any, as a bearer token."""
    return m.Request("registration", endpoint, json_body=metadata, bearer=initial_token, authenticate=False)


def read_request(client_uri: str, access_token: str) -> m.Request:
    """RFC 7592 §2.1."""
    return m.Request("registration_read", client_uri, method="GET", bearer=access_token, authenticate=False)


def update_request(client_uri: str, access_token: str, client_id: str, metadata: dict[str, Any]) -> m.Request:
    """RFC 7592 §2.2: the whole metadata again, with the ``client_id``; never the fields
    the server sets (``registration_access_token``, ``registration_client_uri``,
    ``client_id_issued_at``, ``client_secret_expires_at``)."""
    body = {k: v for k, v in metadata.items() if k not in _SERVER_SETS}
    return m.Request("registration_update", client_uri, method="PUT", json_body={**body, "client_id": client_id},
                     bearer=access_token, authenticate=False)


def delete_request(client_uri: str, access_token: str) -> m.Request:
    """RFC 7592 §2.3."""
    return m.Request("registration_delete", client_uri, method="DELETE", bearer=access_token, authenticate=False)


_SERVER_SETS = frozenset({"registration_access_token", "registration_client_uri", "client_id_issued_at",
                          "client_secret_expires_at", "client_secret"})


def parse_registered(resp: m.Response, known_uri: str | None = None,
                     known_token: str | None = None) -> Registered:
    """A 200 or 201 answer's client information (RFC 7591 §3.2.1). A read or an update may
    leave out the token and URI it was sent with (``known_*``), or rotate the token."""
    data = m.body_fields(resp)
    if data is None or "application/x-www-form-urlencoded" in resp.headers.get("content-type", ""):
        raise ProtocolViolation(f"the registration endpoint answered {resp.status} without a JSON object")
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID \
            or not client_id.isprintable():
        raise ProtocolViolation("the registration answer has no usable client_id")
    token = data.get("registration_access_token", known_token)
    if token is not None and (not isinstance(token, str) or not token):
        raise ProtocolViolation("the registration answer has an invalid registration_access_token")
    uri = data.get("registration_client_uri", known_uri)
    if uri is not None and not _printable_url(uri):
        raise ProtocolViolation("the registration answer has an invalid registration_client_uri")
    metadata = {k: v for k, v in data.items() if k not in SECRET_MEMBERS and k != "registration_client_uri"}
    return Registered(client_id, metadata, token, uri)


def _printable_url(value: Any) -> bool:
    return isinstance(value, str) and value.isprintable() and value.startswith(("https://", "http://")) \
        and len(value) <= 2048


def refusal(reply: m.Reply, what: str) -> RegistrationFailed:
    """The error for an answer that is not a success: the server's code and words, and what
    to do about the RFC 7591 codes."""
    verdict = m.classify(reply)
    if isinstance(reply, m.Failure):
        return RegistrationFailed(f"{what}: no answer from the server: {reply.reason}", transient=True,
                                  unanswered=reply.reason)
    said = m.error_text(reply)
    hint = ERRORS.get(verdict.error or "")
    text = f"{what}: the server answered HTTP {reply.status}" + (f" {said}" if said else "")
    return RegistrationFailed(text + (f": {hint}" if hint else ""), verdict.error, transient=verdict.transient,
                              retry_after=verdict.retry_after)


def register(endpoint: str, metadata: dict[str, Any], initial_token: str | None,
             backoff: Backoff | None) -> Generator[Step, m.Reply, Registered]:
    """RFC 7591 §3: one registration, retried with ``backoff`` while the server gives no
    usable answer (``None``: one attempt).
    Raises :class:`RegistrationFailed`."""
    reply = yield from _exchange(register_request(endpoint, metadata, initial_token), backoff)
    if isinstance(reply, m.Response) and reply.status in (200, 201):
        return parse_registered(reply)
    raise refusal(reply, "the registration was refused")


def read(client_uri: str, access_token: str, backoff: Backoff | None) -> Generator[Step, m.Reply, Registered | str]:
    """RFC 7592 §2.1: what the server holds now, or :data:`GONE`."""
    reply = yield from _exchange(read_request(client_uri, access_token), backoff)
    if isinstance(reply, m.Response) and reply.status == 200:
        return parse_registered(reply, client_uri, access_token)
    if _gone(reply):
        return GONE
    raise refusal(reply, "reading the registration failed")


def update(client_uri: str, access_token: str, client_id: str, metadata: dict[str, Any],
           backoff: Backoff | None) -> Generator[Step, m.Reply, Registered | str]:
    """RFC 7592 §2.2: the metadata replaced; the answer may carry a new access token
    (oidc-provider rotates it on every update), which the caller must keep at once."""
    reply = yield from _exchange(update_request(client_uri, access_token, client_id, metadata), backoff)
    if isinstance(reply, m.Response) and reply.status == 200:
        return parse_registered(reply, client_uri, access_token)
    if _gone(reply):
        return GONE
    raise refusal(reply, "updating the registration failed")


def delete(client_uri: str, access_token: str, backoff: Backoff | None) -> Generator[Step, m.Reply, str]:
    """RFC 7592 §2.3: ``"deleted"`` (204, or 200), or :data:`GONE` (the server did not know it)."""
    reply = yield from _exchange(delete_request(client_uri, access_token), backoff)
    if isinstance(reply, m.Response) and reply.status in (200, 204):
        return "deleted"
    if _gone(reply):
        return GONE
    raise refusal(reply, "deleting the registration failed")


def _gone(reply: m.Reply) -> bool:
    """RFC 7592 §2: 401 for a client that does not exist (or a token that is no longer
    valid, which the server revokes with it), and 404 or 410 where servers say so."""
    return isinstance(reply, m.Response) and reply.status in (401, 404, 410)


def _exchange(request: m.Request, backoff: Backoff | None) -> Generator[Step, m.Reply, m.Reply]:
    """``exchange`` with a backoff; without one, one attempt whose reply, an answer or a
    :class:`~messages.Failure`, is judged by the caller (:func:`refusal`)."""
    if backoff is not None:
        return (yield from exchange(request, backoff))
    return (yield Send(request))


def describe_metadata(metadata: dict[str, Any]) -> str:
    """``client_name`` and ``software_id`` of some metadata, for a log line (sanitized)."""
    name = metadata.get("client_name")
    software = metadata.get("software_id")
    parts = [sanitize(str(v), 80) for v in (name, software) if isinstance(v, str) and v]
    return " / ".join(parts) or "a client"
