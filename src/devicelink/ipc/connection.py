"""The h11 protocol: a connection that sent something other than a simple GET.

Modelled on uvicorn's ``H11Protocol`` (``uvicorn/protocols/http/h11_impl.py``).
A connection comes here from the fast path (:mod:`devicelink.ipc.fastpath`)
with what it read, and stays:

- Each read feeds h11 and pulls events until h11 says ``NEED_DATA`` (wait for
  more bytes) or ``PAUSED`` (a complete request is waiting for our answer;
  stop reading until we have sent it). Pipelined requests therefore sit in
  h11's buffer and are answered strictly in order.
- A complete request is answered by :mod:`devicelink.ipc.answering`; the
  connection reads no further request until it has answered.
- Limits, each answered with the JSON error shape and ``connection: close``:
  request line over 8 KiB: 414 (RFC 9112 §3); head over 16 KiB or more than
  100 header fields: 431; body over 16 KiB: 413; malformed: 400 (501 for an
  unknown transfer coding). After such an early answer we "linger": shut down
  our side, discard what the client still sends for a moment, then close.
- Timers (one per connection, re-armed only when it fires or a request
  arrives in pieces): once the first byte of a request has arrived, the whole
  request, head and body, must arrive within ``request_timeout`` or it gets
  408 and is closed (slowloris). Between requests, a keep-alive connection
  idle for ``idle_timeout`` is closed silently. Nothing times out while we
  answer.
- When h11 is idle with nothing buffered, a read that is one simple GET takes
  the fast path (h11 stays idle); while an answer from a task is pending the
  connection reads nothing.

Nothing here logs request data: not the query, not headers, not bodies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import h11

from devicelink.ipc import canned
from devicelink.ipc.answering import EOM, Answering
from devicelink.ipc.canned import MAX_BODY_BYTES, MAX_HEADER_BYTES, over_limits, protocol_error, response_event
from devicelink.ipc.eventstream import EventStream
from devicelink.ipc.fastpath import answer, simple_request
from devicelink.ipc.routes import Peer, Response

if TYPE_CHECKING:
    from devicelink.ipc.server import SocketServer

logger = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
_CONTINUE = h11.InformationalResponse(status_code=100, headers=())


class H11Connection(Answering, asyncio.BufferedProtocol):
    """One client connection: h11 state, flow control, the request and idle timers.

    ``data`` (what the fast path read), ``pending`` (the target and the Api's
    awaitable answer to a simple GET) and ``unsent`` (the rest of a fast-path
    answer) are where the fast path left the connection.
    """

    def __init__(self, server: SocketServer, peer: Peer, fd: int, data: bytes = b"",
                 pending: tuple[bytes, Awaitable[Response]] | None = None, unsent: bytes = b"") -> None:
        self._server = server
        self._api = server.api
        self.peer = peer
        self.fd = fd
        loop = server._loop
        assert loop is not None
        self._loop = loop
        self._handed = (data, pending, unsent)
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._transport: asyncio.Transport | None = None
        self._method = b""
        self._target = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._task: asyncio.Task[None] | None = None  # an Api call or a stream still running
        self._stream: EventStream | None = None
        self._writable: asyncio.Future[None] | None = None  # a stream waiting for resume_writing
        self._keep_alive = True
        self._read_paused = False
        self._write_paused = False
        self._lingering = False
        self._timer: asyncio.TimerHandle | None = None
        # Waiting for a request since (None while answering one) ...
        self._idle_since: float | None = None
        # ... whose first byte came at (None until then).
        self._request_since: float | None = None

    @property
    def busy(self) -> bool:
        """An answer is in the works (or the transport isn't set up yet): keep counting it."""
        return self._transport is None or (self._task is not None and self._stream is None)

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._server._stopping:
            pending = self._handed[1]
            if pending is not None and hasattr(pending[1], "close"):
                pending[1].close()  # type: ignore[attr-defined]  # never to be awaited
            transport.close()
            return
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self._server.idle_timeout, self._on_timer)
        # After the transport's own add_reader (queued before this call): pausing
        # from connection_made itself is undone by it on Python < 3.12.
        self._loop.call_soon(self._take_over)

    def _take_over(self) -> None:
        """Carry on where the fast path left the connection."""
        data, pending, unsent = self._handed
        self._handed = (b"", None, b"")
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if unsent:
            transport.write(unsent)
            if self._write_paused:
                self._pause_reading()  # the client isn't reading its answers
        elif pending is not None:
            self._answer_simple(*pending)
        elif data:
            self._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # An Api call still running is not cancelled: it may be a refresh
        # that other clients wait on too. Its answer is dropped in _finish.
        # A stream is ours alone: end it, which closes its iterator.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stream is not None:
            self._stream.end_now()
        self._server._connection_lost(self)

    # A BufferedProtocol, so the transport reads into one preallocated
    # buffer: asyncio 3.11's data_received path allocates 256 KiB per read,
    # which cost more than the read itself. The buffer is shared by all
    # connections of the server: buffer_updated copies out of it at once.

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if not self._lingering:
            self._received(self._server._read_buffer[:nbytes].tobytes())

    def _received(self, data: bytes) -> None:
        conn = self._conn
        if (self._request_since is None and self._task is None and self._keep_alive
                and conn.our_state is h11.IDLE and conn.their_state is h11.IDLE and not conn.trailing_data[0]):
            simple = simple_request(data)
            if simple is not None:
                target, handler, query = simple
                self._answer_simple(target, answer(self._api, handler, query, self.peer, target))
                return
        if self._request_since is None:
            self._request_since = self._loop.time()
        conn.receive_data(data)
        self._handle_events()

    def eof_received(self) -> bool:
        if self._lingering:
            return False  # the transport closes itself
        self._conn.receive_data(b"")
        self._handle_events()
        # Keep the transport open: a half-closed client still gets its answer,
        # and _handle_events or _finish close it once that is sent. After a
        # rejection there is nothing left to wait for, so close (flushing).
        return not self._lingering

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        writable, self._writable = self._writable, None
        if writable is not None:
            if not writable.done():
                writable.set_result(None)
        elif self._task is None and not self._lingering:
            self._resume()

    # -- used by SocketServer ----------------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; end a stream now; otherwise close after the answer in flight."""
        self._keep_alive = False
        if self._stream is not None:
            self._stream.end_cleanly()
        elif self._task is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def retire(self) -> None:
        """The client has closed its end and nothing is being answered: close now."""
        if self._stream is not None:
            self._stream.end_now()
        self.abort()

    # -- the h11 loop ------------------------------------------------------

    def _handle_events(self) -> None:
        """Pull events out of h11 until it needs data or waits for our answer."""
        conn = self._conn
        transport = self._transport
        assert transport is not None
        while not transport.is_closing():
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._reject(protocol_error(exc, conn.trailing_data[0]))
                return
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    transport.write(conn.send(_CONTINUE))
                if self._request_since is not None:
                    self._arm_request_timer()  # a request arriving in pieces
                return
            if event is h11.PAUSED:  # pipelined: the next request waits for this answer
                self._pause_reading()
                return
            etype = type(event)
            if etype is h11.Request:
                self._method = event.method
                self._target = event.target
                self._body_size = 0
                over = over_limits(event)
                if over is not None:
                    self._reject(over)
                    return
            elif etype is h11.Data:
                self._body_size += len(event.data)
                if self._body_size > MAX_BODY_BYTES:  # chunked bodies have no length up front
                    self._reject(canned.TOO_LARGE)
                    return
                self._body.append(event.data)
            elif etype is h11.EndOfMessage:
                self._idle_since = self._request_since = None
                if not self._dispatch():
                    return
                if self._request_since is None:
                    # Nothing pipelined behind it (_finish looked): skip the
                    # call to next_event() that would only say NEED_DATA.
                    return
            elif etype is h11.ConnectionClosed:
                if self._stream is not None:
                    self._stream.end_now()  # an SSE client that sends EOF has left
                    transport.close()
                elif self._task is None:
                    transport.close()
                return

    def _resume(self) -> None:
        """Carry on after an answer sent from a task or after write backpressure."""
        if self._read_paused:
            self._read_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
            if self._request_since is not None:
                self._request_since = self._loop.time()  # its clock ran while we weren't reading
        self._handle_events()

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def _reject(self, response: Response) -> None:
        """Answer an unusable request, then close without resetting the client."""
        transport = self._transport
        assert transport is not None
        conn = self._conn
        self._body = []
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._keep_alive = False
                out = conn.send(response_event(response, close=True))
                if self._method != b"HEAD":
                    out += conn.send(h11.Data(data=response.body))
                out += conn.send(EOM)
                transport.write(out)
            except h11.LocalProtocolError:  # h11 won't let us answer: just close
                transport.close()
                return
        # Lingering close: stop writing, drop what the client still sends for
        # a moment, then close. Closing with unread data would reset the
        # connection, and the client could lose the answer.
        self._lingering = True
        self._idle_since = self._request_since = None
        if self._timer is not None:
            self._timer.cancel()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._loop.call_later(LINGER_SECONDS, transport.close)

    # -- timers ------------------------------------------------------------

    def _arm_request_timer(self) -> None:
        """Make sure the timer fires by the deadline of the request arriving in pieces."""
        assert self._request_since is not None
        deadline = self._request_since + self._server.request_timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """408 a request that takes too long to arrive; close a connection idle too long.

        The timer is not re-armed per request (that cost a heap push and a
        cancel each time); it checks when it fires and re-arms itself then.
        """
        self._timer = None
        transport = self._transport
        if self._idle_since is None or transport is None or transport.is_closing():
            return  # answering a request; _next_cycle re-arms the timer
        now = self._loop.time()
        if self._request_since is not None and not self._read_paused:
            deadline = self._request_since + self._server.request_timeout
            if now >= deadline:
                logger.debug("request timeout (uid %d, pid %d)", self.peer.uid, self.peer.pid)
                self._reject(self._server._timeout_answer)
                return
        else:
            deadline = self._idle_since + self._server.idle_timeout
            if now >= deadline:
                transport.close()  # between requests: nothing to answer (RFC 9112 §9.5)
                return
        self._timer = self._loop.call_at(deadline, self._on_timer)
