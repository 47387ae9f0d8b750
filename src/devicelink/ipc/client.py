"""Ask the devicelink daemon for tokens over its Unix socket: the library local apps import.

Blocking::

    from devicelink.client import Client

    with Client() as dl:
        headers = {"Authorization": f"Bearer {dl.token(min_ttl=120).access_token}"}

and with a DPoP-bound token (``token.token_type == "DPoP"``), a proof per request::

        token = dl.token()
        headers = {"Authorization": f"DPoP {token.access_token}",
                   "DPoP": dl.dpop_proof("GET", url, access_token=token.access_token)}

and the same with ``async with AsyncClient() as dl: await dl.token(...)``. Both
speak the socket API (docs/socket-api.md) in HTTP/1.1 straight over the
socket; the socket is ``path``, else ``$DEVICELINK_SOCKET``, else
``/run/devicelink/agent.sock``.

Two errors, so callers can tell "no daemon" from "the daemon said no":

- :class:`DaemonUnreachable`: the socket is missing, refuses us, is not ours
  to open, nobody answered in time, the answer was not HTTP as the daemon
  writes it, or the event stream broke off. The message names the socket path.
- :class:`DaemonError`: the daemon answered with an error. ``code`` is the
  socket API's error code (``not_paired``, ``forbidden``, ...), ``status`` the
  HTTP status and ``description`` the daemon's explanation.

Where things are: this module holds the public names, what each call sends and
how its answer is read, and the blocking :class:`Client`;
:mod:`~devicelink.ipc.transport` the connections and their deadlines;
:mod:`~devicelink.ipc.wire` the strict HTTP/1.1 reader;
:mod:`~devicelink.ipc.async_client` and :mod:`~devicelink.ipc.sse` are loaded
on first use (``AsyncClient``, ``SseParser``; PEP 562), so importing this
module costs the socket and json modules and no more: no asyncio, no TLS.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

from devicelink import paths
from devicelink.errors import DaemonError, DaemonUnreachable
from devicelink.ipc import transport, wire

if TYPE_CHECKING:
    from devicelink.ipc.async_client import AsyncClient
    from devicelink.ipc.sse import SseParser

__all__ = [
    "DEFAULT_SOCKET_PATH", "SOCKET_ENV", "PAIRED_STATES",
    "Client", "AsyncClient", "Token", "Event", "StepUp",
    "DaemonError", "DaemonUnreachable", "default_socket_path",
]

DEFAULT_SOCKET_PATH = paths.SOCKET_PATH
SOCKET_ENV = paths.SOCKET_ENV
#: States in which the daemon holds a grant (``offline`` serves the cached token).
PAIRED_STATES = frozenset({"paired", "refreshing", "offline"})
#: Seconds per request, from connecting to the answer's last byte. Longer than the daemon's
#: own 30 s budgets for the authorization server (a refresh before a token, a new code for
#: pair, a step-up), so a slow server is reported by the daemon (``upstream_unavailable``),
#: not mistaken for a missing daemon.
DEFAULT_TIMEOUT = 45.0
#: One event (or one unterminated line) larger than this is not from a devicelink daemon.
MAX_EVENT_BYTES = 1 << 20


def default_socket_path() -> str:
    """``$DEVICELINK_SOCKET`` when set, else ``/run/devicelink/agent.sock``."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET_PATH


class Token(dict):
    """``GET /v1/token``'s answer: a dict (``token["access_token"]``) that also has
    attributes. Its repr leaves the access token out, so logging it leaks nothing."""

    @property
    def access_token(self) -> str:
        return self["access_token"]

    @property
    def token_type(self) -> str | None:
        return self.get("token_type")

    @property
    def expires_in(self) -> int | None:
        return self.get("expires_in")

    @property
    def scope(self) -> str | None:
        return self.get("scope")

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.items() if k != "access_token")
        return f"Token(access_token=<hidden>{', ' if shown else ''}{shown})"


class Event(NamedTuple):
    """One server-sent event from ``GET /v1/events``: ``name`` (``state``,
    ``token_rotated``, ...), ``data`` (its JSON object) and ``id`` (the last
    ``id:`` the stream sent, or None)."""

    name: str
    data: dict
    id: str | None = None


class StepUp(NamedTuple):
    """``POST /v1/step-up``'s answer: 202 while the user must still confirm on
    their phone (``data`` says where), 200 with the stronger :class:`Token`."""

    status: int
    data: dict

    @property
    def done(self) -> bool:
        return self.status == 200


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from devicelink.ipc.async_client import AsyncClient

        return AsyncClient
    if name == "SseParser":
        from devicelink.ipc.sse import SseParser

        return SseParser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- one description of each call, shared by the blocking and the async client ----------


def _json(response: transport.Response) -> Any:
    if not 200 <= response.status < 300:
        raise _error(response)
    try:
        return json.loads(response.body)
    except ValueError:
        raise DaemonError("invalid_response", "the daemon's answer is not JSON", response.status) from None


def _token(response: transport.Response) -> Token:
    return Token(_json(response))


def _health(response: transport.Response) -> bool:
    if response.status in (200, 503):
        return response.status == 200
    raise _error(response)


def _step_up(response: transport.Response) -> StepUp:
    data = _json(response)
    if response.status == 200 and isinstance(data, dict) and "access_token" in data:
        data = Token(data)
    return StepUp(response.status, data)


def _proof(response: transport.Response) -> str:
    data = _json(response)
    if not isinstance(data, dict) or not isinstance(data.get("proof"), str):
        raise DaemonError("invalid_response", "the daemon's answer has no proof", response.status)
    return data["proof"]


def _error(response: transport.Response) -> DaemonError:
    try:
        body = json.loads(response.body)
        code, description = body["error"], body.get("error_description", "")
        if not isinstance(code, str) or not isinstance(description, str):
            raise TypeError
    except (ValueError, TypeError, KeyError, AttributeError):
        return DaemonError(
            "invalid_response",
            f"the daemon answered HTTP {response.status} without an error object",
            response.status,
        )
    return DaemonError(code, description, response.status)


class _Call(NamedTuple):
    method: str
    path: str
    parse: Callable[[Any], Any] = _json
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None

    def encode(self) -> bytes:
        body = None if self.method == "GET" else json.dumps(self.body).encode() if self.body is not None else b""
        return wire.request(self.method, wire.target(self.path, self.params), body)


def _token_call(scope: str | None, resource: str | None, min_ttl: int | None, identity: str | None = None) -> _Call:
    params: dict[str, str] = {}
    if identity is not None:
        params["identity"] = identity
    if min_ttl is not None:
        params["min_ttl"] = str(int(min_ttl))
    if scope is not None:
        params["scope"] = scope
    if resource is not None:
        params["resource"] = resource
    return _Call("GET", "/v1/token", _token, params)


def _step_up_call(acr_values: str | list[str] | tuple[str, ...] | None, max_age: int | None,
                  min_ttl: int | None) -> _Call:
    body: dict[str, Any] = {}
    if acr_values is not None:
        body["acr_values"] = acr_values if isinstance(acr_values, str) else " ".join(acr_values)
    if max_age is not None:
        body["max_age"] = int(max_age)
    if min_ttl is not None:
        body["min_ttl"] = int(min_ttl)
    return _Call("POST", "/v1/step-up", _step_up, body=body)


def _dpop_proof_call(htm: str, htu: str, access_token: str | None, nonce: str | None) -> _Call:
    body: dict[str, Any] = {"htm": htm, "htu": htu}
    if access_token is not None:
        body["access_token"] = access_token
    if nonce is not None:
        body["nonce"] = nonce
    return _Call("POST", "/v1/dpop-proof", _proof, body=body)


_STATUS = _Call("GET", "/v1/status")
_PAIR = _Call("POST", "/v1/pair")
_UNPAIR = _Call("POST", "/v1/unpair")
_FACTORY_RESET = _Call("POST", "/v1/factory-reset")
_HEALTH = _Call("GET", "/v1/health", _health)
_EVENTS = wire.request("GET", "/v1/events", fields=(("accept", "text/event-stream"), ("cache-control", "no-store")))
#: What ends a request or a subscription with DaemonUnreachable (TimeoutError is an OSError).
_TRANSPORT_ERRORS = (OSError, wire.ProtocolError)


def _is_paired_event(event: Event | None) -> bool:
    return event is not None and event.name == "state" and event.data.get("state") in PAIRED_STATES


class _Base:
    def __init__(self, path: str | os.PathLike[str] | None, timeout: float) -> None:
        self.path = os.fspath(path) if path is not None else default_socket_path()
        self.timeout = timeout

    def _unreachable(self, exc: Exception) -> DaemonUnreachable:
        if isinstance(exc, TimeoutError):
            why = f"the devicelink daemon on {self.path} did not answer within {self.timeout:g}s"
        elif isinstance(exc, wire.NoAnswer):
            why = f"the devicelink daemon on {self.path} closed the connection without answering"
        elif isinstance(exc, wire.ProtocolError):
            why = f"the devicelink daemon on {self.path} sent a malformed answer: {exc}"
        else:
            why = self._why_unreachable(exc)
        return DaemonUnreachable(why)

    def _why_unreachable(self, exc: BaseException) -> str:
        code = exc.errno if isinstance(exc, OSError) else None
        if code == errno.ENOENT:
            return f"no devicelink socket at {self.path}: is the daemon running?"
        if code == errno.ECONNREFUSED:
            return f"nothing is listening on {self.path}: is the daemon running?"
        if code in (errno.EACCES, errno.EPERM):
            return f"permission denied on {self.path}: {_group_hint(self.path)}"
        if code in (errno.ECONNRESET, errno.EPIPE):
            return f"the devicelink daemon on {self.path} closed the connection mid-request"
        if code == errno.EAGAIN:
            return f"the devicelink daemon on {self.path} is not accepting connections (its queue is full)"
        return f"cannot talk to the devicelink daemon on {self.path}: {exc}"

    def _stream_broke(self, exc: BaseException | None) -> DaemonUnreachable:
        why = f": {exc}" if exc is not None and str(exc) else ""
        return DaemonUnreachable(f"the event stream from {self.path} ended (the daemon stopped or restarted, "
                                 f"or this app fell too far behind){why}: subscribe again")


def _group_hint(path: str) -> str:
    """What to do about a socket this user may not open, from the group it really has."""
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return f"this user may not reach it: its directory {os.path.dirname(path) or '.'} is closed to it"
    if gid == 0:
        return ("the socket's group is root (the daemon runs as root): run this as root, or run the "
                "daemon as its own user and group, as the systemd unit does (docs/systemd.md)")
    import grp

    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"is this user in the socket's group ({group})? (usermod -aG {group} USER, then log in again)"


class Client(_Base):
    """A blocking client of the socket API. Keep-alive connections are reused (and
    the client may be shared between threads); :meth:`events` holds one of its own
    while it runs."""

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(path, timeout)
        self._pool = transport.Pool(self.path)

    def token(self, *, scope: str | None = None, resource: str | None = None,
              min_ttl: int | None = None, identity: str | None = None) -> Token:
        """An access token valid for at least ``min_ttl`` seconds (the daemon's default
        is 60), carrying ``scope`` (space-separated) and meant for ``resource``.
        ``identity="device"``: the device's own token, with no user (client credentials;
        the app's policy must allow it), also while the device is not paired.
        :class:`DaemonError` ``not_paired``, ``forbidden``, ... when it cannot."""
        return self._do(_token_call(scope, resource, min_ttl, identity))

    def status(self) -> dict[str, Any]:
        """The daemon's status object (state, pairing code, account, ...; never a token)."""
        return self._do(_STATUS)

    def pair(self) -> dict[str, Any]:
        """Ask the daemon to show a new pairing code now (admin apps only); the status object."""
        return self._do(_PAIR)

    def unpair(self) -> dict[str, Any]:
        """Revoke the grant and forget the tokens (admin apps only): ``{"state","revoked",...}``."""
        return self._do(_UNPAIR)

    def factory_reset(self) -> dict[str, Any]:
        """Unpair, and with [registration] delete the device's client at the server and register
        afresh, for the next owner (admin apps only): the unpair answer."""
        return self._do(_FACTORY_RESET)

    def health(self) -> bool:
        """True when the daemon holds a valid token or is pairing."""
        return self._do(_HEALTH)

    def step_up(self, acr_values: str | list[str] | None = None, max_age: int | None = None, *,
                min_ttl: int | None = None) -> StepUp:
        """Ask for a stronger token for this app (RFC 9470): the authentication context
        ``acr_values`` and/or a sign-in no older than ``max_age`` seconds.
        ``StepUp(202, {"user_code", "verification_uri", ...})`` while the user has to
        confirm on their phone (ask again with the same arguments to see whether they
        have), ``StepUp(200, Token)`` once they have. The standing grant is untouched."""
        return self._do(_step_up_call(acr_values, max_age, min_ttl))

    def dpop_proof(self, htm: str, htu: str, access_token: str | None = None, nonce: str | None = None) -> str:
        """A DPoP proof (RFC 9449) for a ``htm`` request to ``htu``, signed by the device's key, for
        the request's ``DPoP`` header; with the request's ``access_token`` (one this app got from
        :meth:`token`, whose ``token_type`` is ``DPoP``: send it as ``Authorization: DPoP <token>``)
        and the resource server's ``nonce`` when it asked for one. A proof is good for one request."""
        return self._do(_dpop_proof_call(htm, htu, access_token, nonce))

    def events(self) -> Iterator[Event]:
        """The daemon's events as they happen (state changes, ``token_rotated``), forever.

        Never times out between events. Ends with :class:`DaemonUnreachable` when the
        connection drops (the daemon restarts): subscribe again, then re-read
        :meth:`status`, since events in between are not replayed.
        """
        conn, reader = self._subscribe(None)
        stream = self._read(conn, reader, None)
        try:
            for event in stream:
                if event is not None:
                    yield event
        finally:
            stream.close()
            conn.close()

    def wait_until_paired(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the device holds a grant; its status object. :class:`TimeoutError`
        after ``timeout`` seconds. Subscribes before it reads the status, so a pairing
        that completes in between is not missed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            conn, reader = self._subscribe(deadline)
            stream = self._read(conn, reader, deadline)
            try:
                status = self.status()
                while status.get("state") not in PAIRED_STATES:
                    if _is_paired_event(next(stream)):
                        status = self.status()
                return status
            finally:
                stream.close()
                conn.close()
        except TimeoutError:
            raise TimeoutError(f"the device was not paired within {timeout:g} s") from None

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _do(self, call: _Call) -> Any:
        try:
            response = self._pool.request(call.encode(), self.timeout, retry=call.method == "GET")
        except _TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc) from exc
        return call.parse(response)

    def _subscribe(self, deadline: float | None) -> tuple[transport.Connection, wire.ResponseReader]:
        """``GET /v1/events`` on a connection of its own, open once the answer's head
        arrived (the daemon has then registered us), within ``timeout`` and ``deadline``:
        past ``deadline``, a bare TimeoutError."""
        head_deadline = time.monotonic() + self.timeout
        if deadline is not None:
            head_deadline = min(head_deadline, deadline)
        try:
            conn = transport.Connection(self.path, head_deadline)
            try:
                conn.send(_EVENTS, head_deadline)
                reader = wire.ResponseReader()
                head = conn.receive(reader, head_deadline)
                if not 200 <= head.status < 300:
                    raise _error(transport.Response(head, conn.read_body(reader, head_deadline)))
            except BaseException:
                conn.close()
                raise
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            raise self._unreachable(TimeoutError()) from None
        except _TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc) from exc
        reader.max_body = None  # a stream: the event parser bounds each event
        return conn, reader

    def _read(self, conn: transport.Connection, reader: wire.ResponseReader,
              deadline: float | None) -> Iterator[Event | None]:
        """The events, and None for a piece without one (a keep-alive), so callers can
        look at the clock. Past ``deadline``, a bare TimeoutError."""
        from devicelink.ipc.sse import SseParser

        parser = SseParser()
        try:
            while (piece := conn.receive(reader, deadline)) is not wire.END:
                yield from parser.feed(piece) or (None,)
        except TimeoutError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise self._stream_broke(exc) from exc
        raise self._stream_broke(None)
