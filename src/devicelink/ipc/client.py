"""Ask the devicelink daemon for tokens over its Unix socket: the library local apps import.

Blocking::

    from devicelink.client import Client

    with Client() as dl:
        headers = {"Authorization": f"Bearer {dl.token(min_ttl=120).access_token}"}

and the same with ``async with AsyncClient() as dl: await dl.token(...)``. Both
speak the socket API (docs/socket-api.md) through httpx's Unix-socket
transport; the socket is ``path``, else ``$DEVICELINK_SOCKET``, else
``/run/devicelink/agent.sock``.

Two errors, so callers can tell "no daemon" from "the daemon said no":

- :class:`DaemonUnreachable`: the socket is missing, refuses us, is not ours
  to open, nobody answered in time, or the event stream broke off. The message
  names the socket path.
- :class:`DaemonError`: the daemon answered with an error. ``code`` is the
  socket API's error code (``not_paired``, ``forbidden``, ...), ``status`` the
  HTTP status and ``description`` the daemon's explanation.

Importing this module is cheap: httpx (tens of milliseconds, more on a small
board) is imported when the first client is made, asyncio only by the async
calls that need it, so an app can import the error classes anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, NamedTuple

from devicelink.errors import DeviceLinkError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_SOCKET_PATH", "SOCKET_ENV", "PAIRED_STATES",
    "Client", "AsyncClient", "Token", "Event", "StepUp",
    "DaemonError", "DaemonUnreachable", "default_socket_path",
]

DEFAULT_SOCKET_PATH = "/run/devicelink/agent.sock"
SOCKET_ENV = "DEVICELINK_SOCKET"
#: States in which the daemon holds a grant (``offline`` serves the cached token).
PAIRED_STATES = frozenset({"paired", "refreshing", "offline"})
#: Seconds per request. Longer than the daemon's own 30 s budgets for the authorization
#: server (a refresh before a token, a new code for pair, a step-up), so a slow server is
#: reported by the daemon (``upstream_unavailable``), not mistaken for a missing daemon.
DEFAULT_TIMEOUT = 45.0
#: One event (or one unterminated line) larger than this is not from a devicelink daemon.
MAX_EVENT_BYTES = 1 << 20


def default_socket_path() -> str:
    """``$DEVICELINK_SOCKET`` when set, else ``/run/devicelink/agent.sock``."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET_PATH


class DaemonUnreachable(DeviceLinkError, ConnectionError):
    """The daemon could not be asked: no socket, no permission, no answer, stream cut."""


class DaemonError(DeviceLinkError):
    """The daemon answered with an error (``{"error", "error_description"}``)."""

    def __init__(self, code: str, description: str, status: int) -> None:
        super().__init__(f"{description} ({code})" if description else code)
        self.code = code
        self.description = description
        self.status = status


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


# -- the server-sent events parser (WHATWG HTML, "Parsing an event stream") --------------

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SseParser:
    """Turns the bytes of an event stream into :class:`Event` s, however they are chunked.

    Lines end in CRLF, LF or CR; ``:`` starts a comment (the daemon's keep-alives);
    ``event:``, ``data:`` (several are joined with newlines) and ``id:`` fill the
    event and a blank line dispatches it. An event without data is dropped, and so
    is one whose data is not a JSON object: the daemon sends only those, and a
    newer daemon's other kinds must not break an older app. Bytes after the last
    blank line are an unfinished event, dropped if the stream ends there.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False  # the previous chunk ended in CR: a LF now is its CRLF
        self._first_line = True
        self._name = ""
        self._data: list[str] = []
        self._size = 0
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[Event] = []
        start = 0
        for match in _LINE_END.finditer(buffer):
            self._line(buffer[start:match.start()], events)
            start = match.end()
        self._buffer = buffer[start:]
        if buffer.endswith(b"\r") and start == len(buffer):
            self._skip_lf = True  # a CR at the very end: the line is done, but a LF may follow
        if len(self._buffer) + self._size > MAX_EVENT_BYTES:
            raise DaemonError("invalid_response", f"an event larger than {MAX_EVENT_BYTES} bytes", 200)
        return events

    def _line(self, raw: bytes, events: list[Event]) -> None:
        line = raw.decode("utf-8", "replace")
        if self._first_line:
            line = line.removeprefix("\ufeff")
            self._first_line = False
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
            self._size += len(raw)
        elif field == "id" and "\0" not in value:
            self.last_id = value or None
        # "retry" and unknown fields: ignored (we never reconnect on our own)

    def _dispatch(self, events: list[Event]) -> None:
        name, data = self._name or "message", self._data
        self._name, self._data, self._size = "", [], 0
        if not data:
            return
        try:
            obj = json.loads("\n".join(data))
        except ValueError:
            return
        if isinstance(obj, dict):
            events.append(Event(name, obj, self.last_id))


# -- one description of each call, shared by the blocking and the async client ----------


def _json(response: httpx.Response) -> Any:
    if not response.is_success:
        raise _error(response)
    try:
        return response.json()
    except ValueError:
        raise DaemonError("invalid_response", "the daemon's answer is not JSON", response.status_code) from None


def _token(response: httpx.Response) -> Token:
    return Token(_json(response))


def _health(response: httpx.Response) -> bool:
    if response.status_code in (200, 503):
        return response.status_code == 200
    raise _error(response)


def _step_up(response: httpx.Response) -> StepUp:
    data = _json(response)
    if response.status_code == 200 and isinstance(data, dict) and "access_token" in data:
        data = Token(data)
    return StepUp(response.status_code, data)


def _error(response: httpx.Response) -> DaemonError:
    try:
        body = response.json()
        code, description = body["error"], body.get("error_description", "")
        if not isinstance(code, str) or not isinstance(description, str):
            raise TypeError
    except (ValueError, TypeError, KeyError, AttributeError):
        return DaemonError(
            "invalid_response",
            f"the daemon answered HTTP {response.status_code} without an error object",
            response.status_code,
        )
    return DaemonError(code, description, response.status_code)


class _Call(NamedTuple):
    method: str
    path: str
    parse: Callable[[Any], Any] = _json
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None


def _token_call(scope: str | None, resource: str | None, min_ttl: int | None) -> _Call:
    params: dict[str, str] = {}
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


_STATUS = _Call("GET", "/v1/status")
_PAIR = _Call("POST", "/v1/pair")
_UNPAIR = _Call("POST", "/v1/unpair")
_HEALTH = _Call("GET", "/v1/health", _health)
_EVENT_HEADERS = {"accept": "text/event-stream", "cache-control": "no-store"}


def _is_paired_event(event: Event | None) -> bool:
    return event is not None and event.name == "state" and event.data.get("state") in PAIRED_STATES


class _Base:
    def __init__(self, path: str | os.PathLike[str] | None, timeout: float) -> None:
        self.path = os.fspath(path) if path is not None else default_socket_path()
        self.timeout = timeout

    def _unreachable(self, exc: Exception) -> DaemonUnreachable:
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            why = f"the devicelink daemon on {self.path} did not answer within {self.timeout:g}s"
        else:
            why = self._why_unreachable(exc)
        return DaemonUnreachable(why)

    def _why_unreachable(self, exc: BaseException) -> str:
        err = _os_error(exc)
        code = err.errno if err is not None else None
        if code == errno.ENOENT:
            return f"no devicelink socket at {self.path}: is the daemon running?"
        if code == errno.ECONNREFUSED:
            return f"nothing is listening on {self.path}: is the daemon running?"
        if code in (errno.EACCES, errno.EPERM):
            return (
                f"permission denied on {self.path}: "
                "is this user in the socket's group (devicelink)?"
            )
        return f"cannot talk to the devicelink daemon on {self.path}: {err or exc}"

    def _stream_broke(self, exc: BaseException | None) -> DaemonUnreachable:
        why = f": {exc}" if exc is not None and str(exc) else ""
        return DaemonUnreachable(f"the event stream from {self.path} ended (the daemon stopped or restarted, "
                                 f"or this app fell too far behind){why}: subscribe again")

    def _stream_timeout(self, read: float | None) -> httpx.Timeout:
        import httpx

        # No read timeout by default: events may be hours apart (the daemon sends
        # a ": keep-alive" comment every ~15 s, so a dead peer still shows).
        return httpx.Timeout(self.timeout, read=read)


class Client(_Base):
    """A blocking client of the socket API. Keep-alive connections are reused;
    :meth:`events` holds one of its own while it runs."""

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        import httpx

        super().__init__(path, timeout)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.path),
            base_url="http://devicelink",
            timeout=timeout,
        )

    def token(self, *, scope: str | None = None, resource: str | None = None,
              min_ttl: int | None = None) -> Token:
        """An access token valid for at least ``min_ttl`` seconds (the daemon's default
        is 60), carrying ``scope`` (space-separated) and meant for ``resource``.
        :class:`DaemonError` ``not_paired``, ``forbidden``, ... when it cannot."""
        return self._do(_token_call(scope, resource, min_ttl))

    def status(self) -> dict[str, Any]:
        """The daemon's status object (state, pairing code, account, ...; never a token)."""
        return self._do(_STATUS)

    def pair(self) -> dict[str, Any]:
        """Ask the daemon to show a new pairing code now (admin apps only); the status object."""
        return self._do(_PAIR)

    def unpair(self) -> dict[str, Any]:
        """Revoke the grant and forget the tokens (admin apps only): ``{"state","revoked",...}``."""
        return self._do(_UNPAIR)

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

    def events(self) -> Iterator[Event]:
        """The daemon's events as they happen (state changes, ``token_rotated``), forever.

        Never times out between events. Ends with :class:`DaemonUnreachable` when the
        connection drops (the daemon restarts): subscribe again, then re-read
        :meth:`status`, since events in between are not replayed.
        """
        with self._subscribe() as stream:
            for event in stream:
                if event is not None:
                    yield event

    def wait_until_paired(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the device holds a grant; its status object. :class:`TimeoutError`
        after ``timeout`` seconds. Subscribes before it reads the status, so a pairing
        that completes in between is not missed.

        The deadline is checked whenever the daemon sends something, at least every
        keep-alive (~15 s), so it may pass by up to that much; :class:`AsyncClient`'s
        is exact.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._subscribe(read_timeout=timeout) as stream:
            status = self.status()
            while status.get("state") not in PAIRED_STATES:
                event = next(stream)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"the device was not paired within {timeout:g} s")
                if _is_paired_event(event):
                    status = self.status()
            return status

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _do(self, call: _Call) -> Any:
        import httpx

        try:
            response = self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return call.parse(response)

    @contextlib.contextmanager
    def _subscribe(self, read_timeout: float | None = None) -> Iterator[Iterator[Event | None]]:
        """``GET /v1/events``, open once its headers arrived (the daemon has then
        registered us); yields an iterator of events and of None for a chunk without
        one (a keep-alive), so callers can look at the clock."""
        import httpx

        try:
            with self._http.stream("GET", "/v1/events", headers=_EVENT_HEADERS,
                                   timeout=self._stream_timeout(read_timeout)) as response:
                if not response.is_success:
                    response.read()
                    raise _error(response)
                stream = self._read(response, read_timeout)
                try:
                    yield stream
                finally:
                    stream.close()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def _read(self, response: httpx.Response, read_timeout: float | None) -> Iterator[Event | None]:
        import httpx

        parser = SseParser()
        try:
            for chunk in response.iter_bytes():
                yield from parser.feed(chunk) or (None,)
        except httpx.ReadTimeout:
            raise TimeoutError(f"no event from {self.path} within {read_timeout:g} s") from None
        except httpx.TransportError as exc:
            raise self._stream_broke(exc) from exc
        raise self._stream_broke(None)


class AsyncClient(_Base):
    """The same calls as :class:`Client`, awaitable; :meth:`events` is an async iterator.

    Use ``contextlib.aclosing(dl.events())`` when leaving the loop early, so the
    stream's connection is closed at once rather than when the generator is collected.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        import httpx

        super().__init__(path, timeout)
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.path),
            base_url="http://devicelink",
            timeout=timeout,
        )

    async def token(self, *, scope: str | None = None, resource: str | None = None,
                    min_ttl: int | None = None) -> Token:
        """See :meth:`Client.token`."""
        return await self._do(_token_call(scope, resource, min_ttl))

    async def status(self) -> dict[str, Any]:
        return await self._do(_STATUS)

    async def pair(self) -> dict[str, Any]:
        return await self._do(_PAIR)

    async def unpair(self) -> dict[str, Any]:
        return await self._do(_UNPAIR)

    async def health(self) -> bool:
        return await self._do(_HEALTH)

    async def step_up(self, acr_values: str | list[str] | None = None, max_age: int | None = None, *,
                      min_ttl: int | None = None) -> StepUp:
        """See :meth:`Client.step_up`."""
        return await self._do(_step_up_call(acr_values, max_age, min_ttl))

    async def events(self) -> AsyncIterator[Event]:
        """See :meth:`Client.events`."""
        async with self._subscribe() as stream:
            async for event in stream:
                if event is not None:
                    yield event

    async def wait_until_paired(self, timeout: float | None = None) -> dict[str, Any]:
        """See :meth:`Client.wait_until_paired`; here the deadline is exact."""
        import asyncio

        try:
            # wait_for runs the wait in a task of its own: asyncio.timeout in this task
            # would misfire under anyio 3 (httpx 0.23, Debian 12), see oauth/http.py.
            return await asyncio.wait_for(self._wait_until_paired(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the device was not paired within {timeout:g} s") from None

    async def _wait_until_paired(self) -> dict[str, Any]:
        async with self._subscribe() as stream:
            status = await self.status()
            while status.get("state") not in PAIRED_STATES:
                if _is_paired_event(await stream.__anext__()):
                    status = await self.status()
            return status

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _do(self, call: _Call) -> Any:
        import httpx

        try:
            response = await self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return call.parse(response)

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[Event | None]]:
        import httpx

        try:
            async with self._http.stream("GET", "/v1/events", headers=_EVENT_HEADERS,
                                         timeout=self._stream_timeout(None)) as response:
                if not response.is_success:
                    await response.aread()
                    raise _error(response)
                stream = self._read(response)
                try:
                    yield stream
                finally:
                    await stream.aclose()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    async def _read(self, response: httpx.Response) -> AsyncIterator[Event | None]:
        import httpx

        parser = SseParser()
        try:
            async for chunk in response.aiter_bytes():
                for event in parser.feed(chunk) or (None,):
                    yield event
        except httpx.TransportError as exc:
            raise self._stream_broke(exc) from exc
        raise self._stream_broke(None)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError under httpx's and httpcore's wrappers, if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
