"""The fast path: one simple ``GET`` alone in a read, answered without h11.

Nearly every request an app sends is one small ``GET``, alone in one read;
curl and the CLI send it on a connection of its own. h11's general machinery
was three quarters of the daemon's time per such request, and a connection
that carries one request also paid for an asyncio transport and the task
that set it up. So:

- Every admitted connection starts as a :class:`FastConnection`: the socket
  read by hand (``loop.add_reader``), no transport, no task, no h11, no timer
  of its own (:class:`IdleConnections` closes those idle for ``idle_timeout``,
  with one timer for all). Its first read is tried at once: the client
  usually sent its request before we accepted. A simple GET that the Api
  answers at once gets its answer in one ``send()``; an EOF closes it.
- Anything else is handed over, with what was read, to the h11 protocol
  (:mod:`devicelink.ipc.connection`), which then keeps the connection: another
  method, a body, HTTP/1.0, pipelining, a request in pieces, odd bytes, every
  error answer, an answer the Api gives later, and an answer the socket buffer
  can't take whole (a client that doesn't read).
- The h11 protocol takes the same fast path between requests, when h11 is
  idle with nothing buffered.

:func:`simple_get` is strict: ``GET origin-form HTTP/1.1``, exactly one
``Host``, only visible-ASCII fields, no body, ``connection``, ``expect`` or
``upgrade`` field, within the limits, and only for token, status, health and
metrics. A differential fuzz test checks that h11 reads whatever it takes as
the same single GET.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from devicelink.ipc import routes
from devicelink.ipc.canned import MAX_HEADER_BYTES, MAX_HEADERS, MAX_REQUEST_LINE_BYTES, SERVER_ERROR
from devicelink.ipc.canned import path_only, raw
from devicelink.ipc.routes import Api, ApiError, Peer, Request, Response, Stream

if TYPE_CHECKING:
    from devicelink.ipc.server import SocketServer

logger = logging.getLogger(__name__)

_SIMPLE_LINE = re.compile(rb"GET (/[\x21-\x7e]*) HTTP/1\.1")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token
_FIELD_VALUE_BYTES = bytes(range(0x20, 0x7F)) + b"\t"  # visible ASCII, space, tab (stricter than §5.5)
_NOT_SIMPLE = frozenset({b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade",
                         b"te", b"trailer"})
_SIMPLE_HANDLERS = frozenset({"token", "status", "health", "metrics"})


def simple_get(data: bytes) -> bytes | None:
    """The target of ``data`` if it is exactly one simple ``GET`` (see above), else None."""
    if (len(data) > MAX_HEADER_BYTES or data.find(b"\r\n\r\n") != len(data) - 4
            or len(data) < 4):
        return None
    lines = data[:-4].split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1 or len(lines[0]) > MAX_REQUEST_LINE_BYTES:
        return None
    line = _SIMPLE_LINE.fullmatch(lines[0])
    if line is None:
        return None
    hosts = 0
    for field in lines[1:]:
        name, colon, value = field.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None or value.translate(None, _FIELD_VALUE_BYTES):
            return None
        name = name.lower()
        if name in _NOT_SIMPLE:
            return None
        hosts += name == b"host"
    return line.group(1) if hosts == 1 else None  # RFC 9112 §3.2: exactly one Host


# An app sends the same bytes each time: what simple_get and routes.resolve made of
# them is kept (bounded; both are pure functions of the bytes).
_SIMPLE_CACHED_BYTES = 1024
_simple_requests: dict[bytes, tuple[bytes, str, bytes]] = {}


def simple_request(data: bytes) -> tuple[bytes, str, bytes] | None:
    """``(target, handler, query)`` if ``data`` is a simple GET for the fast path, else None."""
    known = _simple_requests.get(data)
    if known is not None:
        return known
    target = simple_get(data)
    if target is None:
        return None
    try:
        handler, query = routes.resolve(b"GET", target)
    except ApiError:
        return None
    if handler not in _SIMPLE_HANDLERS:
        return None
    if len(data) <= _SIMPLE_CACHED_BYTES:
        if len(_simple_requests) >= 256:
            _simple_requests.clear()
        _simple_requests[data] = (target, handler, query)
    return target, handler, query


def answer(api: Api, handler: str, query: bytes, peer: Peer, target: bytes) -> Response | Awaitable[Response]:
    """The Api's answer to a simple GET: a Response, or an awaitable of one."""
    try:
        result = api.handle(Request(handler, query, b"", peer))
    except ApiError as err:
        return routes.error_response(err)
    except Exception:
        logger.exception("error answering %s", path_only(target))
        return SERVER_ERROR
    if isinstance(result, Response) or (hasattr(result, "__await__") and not isinstance(result, Stream)):
        return result  # type: ignore[return-value]
    logger.error("the Api answered %s with a %s", path_only(target), type(result).__name__)
    return SERVER_ERROR


def log_answer(method: bytes, target: bytes, status: int, peer: Peer) -> None:
    logger.debug("%s %s -> %d (pid %d, uid %d)", method.decode("ascii", "replace"), path_only(target),
                 status, peer.pid, peer.uid)


class FastConnection:
    """A connection while it sends only simple GETs answered at once: its socket, read by hand."""

    __slots__ = ("_server", "_loop", "_sock", "_reading", "fd", "peer")
    busy = False  # never an answer in the works: the sweep in SocketServer may close it
    _writable = None  # as H11Connection's: no stream waits for the client to read

    def __init__(self, server: SocketServer, sock: socket.socket, peer: Peer) -> None:
        self._server = server
        self._loop: asyncio.AbstractEventLoop = server._loop  # type: ignore[assignment]
        self._sock = sock
        self._reading = False
        self.fd = sock.fileno()
        self.peer = peer

    def start(self) -> None:
        self._server._idle.touch(self)  # from now on, idle_timeout applies
        if self._read():
            self._loop.add_reader(self.fd, self._read)
            self._reading = True

    def _read(self) -> bool:
        """Read a request and answer it. True: still ours, waiting for the next read."""
        buffer = self._server._read_buffer
        try:
            nbytes = self._sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # ECONNRESET: the client has gone
            nbytes = 0
        if not nbytes:  # EOF between requests: nothing to answer
            self.close()
            return False
        data = buffer[:nbytes].tobytes()
        simple = simple_request(data)
        if simple is None:
            self._hand_over(data=data)
            return False
        target, handler, query = simple
        result = answer(self._server.api, handler, query, self.peer, target)
        if not isinstance(result, Response):
            self._hand_over(pending=(target, result))
            return False
        if logger.isEnabledFor(logging.DEBUG):
            log_answer(b"GET", target, result.status, self.peer)
        try:
            out = raw(result, close=False)
            sent = self._sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except Exception as exc:  # EPIPE, ECONNRESET: the client has gone; or a Response that isn't one
            if not isinstance(exc, OSError):
                logger.exception("error sending the answer to %s", path_only(target))
            self.close()
            return False
        if sent < len(out):
            self._hand_over(unsent=out[sent:])  # the transport buffers the rest, with flow control
            return False
        self._server._idle.touch(self)
        return True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.fd)
        self._server._idle.discard(self)

    def _hand_over(self, **state: object) -> None:
        self._stop_reading()
        self._server._hand_over(self, self._sock, **state)

    def close(self) -> None:
        self._stop_reading()
        self._server._connection_lost(self)
        self._sock.close()

    shutdown = abort = retire = close  # nothing in flight: stop() and the sweep just close


class IdleConnections:
    """Closes the fast connections idle for ``timeout``, with one timer for all of them.

    They are kept in the order of their last answer (a dict: moving one to the
    end and dropping one are O(1)), so the first is always the next to expire.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._since: dict[FastConnection, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def touch(self, conn: FastConnection) -> None:
        since = self._since
        since.pop(conn, None)
        now = since[conn] = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._timeout, self._expire)

    def discard(self, conn: FastConnection) -> None:
        self._since.pop(conn, None)

    def _expire(self) -> None:
        self._timer = None
        cutoff = self._loop.time() - self._timeout
        expired = []
        for conn, since in self._since.items():
            if since > cutoff:
                break
            expired.append(conn)
        for conn in expired:
            conn.close()  # between requests: nothing to answer (RFC 9112 §9.5)
        if self._since:
            first = next(iter(self._since.values()))
            self._timer = self._loop.call_at(first + self._timeout, self._expire)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
