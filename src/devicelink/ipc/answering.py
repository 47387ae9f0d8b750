"""The answering half of an h11 connection: from a complete request to its answer.

- A complete request becomes a :class:`routes.Request` for ``api.handle``,
  which returns a ``Response`` (written from the same callback, no task), a
  ``Stream`` (:mod:`devicelink.ipc.eventstream`), or an awaitable of a
  Response, run in a task; the connection reads no further request until it
  has answered. A whole answer goes out in one ``transport.write``.
- A simple GET taken by the fast path while h11 is idle is answered the same
  way, but written as raw bytes: h11 never saw it and stays idle.
- After the answer the connection closes (HTTP/1.0, ``connection: close``,
  the client's EOF, stop()) or waits for the next request, with its idle
  clock running, unless the client isn't reading its answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import h11

from devicelink.ipc import routes
from devicelink.ipc.canned import SERVER_ERROR, path_only, raw, response_event
from devicelink.ipc.eventstream import EventStream
from devicelink.ipc.fastpath import log_answer
from devicelink.ipc.routes import Api, ApiError, Peer, Request, Response, Stream

if TYPE_CHECKING:
    from devicelink.ipc.server import SocketServer

logger = logging.getLogger(__name__)

EOM = h11.EndOfMessage()


class Answering:
    """What :class:`~devicelink.ipc.connection.H11Connection` does once a request is complete."""

    # The connection's state, set up by H11Connection.
    _server: SocketServer
    _api: Api
    _loop: asyncio.AbstractEventLoop
    _conn: h11.Connection
    _transport: asyncio.Transport | None
    peer: Peer
    _method: bytes
    _target: bytes
    _body: list[bytes]
    _task: asyncio.Task[None] | None
    _stream: EventStream | None
    _keep_alive: bool
    _write_paused: bool
    _timer: asyncio.TimerHandle | None
    _idle_since: float | None
    _request_since: float | None

    if TYPE_CHECKING:  # ... and what it does for us

        def _on_timer(self) -> None: ...
        def _pause_reading(self) -> None: ...
        def _resume(self) -> None: ...
        def abort(self) -> None: ...

    def _dispatch(self) -> bool:
        """Answer the request just read. True: answered, read the next one."""
        body = b"".join(self._body) if self._body else b""
        self._body = []
        try:
            handler, query = routes.resolve(self._method, self._target)
            result = self._api.handle(Request(handler, query, body, self.peer))
        except ApiError as err:
            return self._finish(routes.error_response(err))
        except Exception:
            logger.exception("error answering %s", path_only(self._target))
            return self._finish(SERVER_ERROR)
        if isinstance(result, Response):
            return self._finish(result)
        if isinstance(result, Stream):
            self._start_stream(result)
            return False
        if not hasattr(result, "__await__"):
            logger.error("the Api answered %s with a %s", path_only(self._target), type(result).__name__)
            return self._finish(SERVER_ERROR)
        # Stepping the coroutine by hand here, to skip the task when the Api
        # answers without waiting, measured no faster, and would run it
        # outside any task (asyncio.timeout() needs one).
        self._task = task = self._loop.create_task(self._answer_later(result))
        self._server._track(task)
        # Anything pipelined behind this request stays in h11's buffer until
        # _resume; more data arriving meanwhile makes h11 say PAUSED.
        return False

    async def _answer_later(self, pending: Awaitable[Response | Stream]) -> None:
        simple = self._conn.their_state is h11.IDLE  # a simple GET: no Stream (h11 never saw it)
        response = await self._awaited(pending, Response if simple else (Response, Stream))
        self._task = None
        try:
            if isinstance(response, Stream):
                self._start_stream(response)
            elif self._finish(response):
                self._resume()  # reads again; h11 has the EOF, if the client sent one meanwhile
        except Exception:  # a bug here must not leave the client hanging
            logger.exception("error sending the answer to %s", path_only(self._target))
            self.abort()

    async def _awaited(self, pending: Awaitable[Any], kinds: type | tuple[type, ...]) -> Any:
        """The Api's later answer; an ApiError as its error answer, anything else as 500."""
        try:
            response = await pending
            if not isinstance(response, kinds):
                raise TypeError(f"the Api's awaitable returned a {type(response).__name__}")
        except ApiError as err:
            return routes.error_response(err)
        except Exception:
            logger.exception("error answering %s", path_only(self._target))
            return SERVER_ERROR
        return response

    def _finish(self, response: Response) -> bool:
        """Send ``response``; then close, or get ready for the next request.

        True when the connection stays open and the next request may be read.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        conn = self._conn
        if logger.isEnabledFor(logging.DEBUG):
            log_answer(self._method, self._target, response.status, self.peer)
        if conn.their_state is h11.IDLE:  # the fast path: h11 never saw the request
            transport.write(raw(response, close=not self._keep_alive))
        else:
            out = conn.send(response_event(response, close=not self._keep_alive))
            if response.body and self._method != b"HEAD":
                out += conn.send(h11.Data(data=response.body))
            transport.write(out + conn.send(EOM))
        return self._next_cycle()

    def _next_cycle(self) -> bool:
        """After an answer: close, or wait for the next request."""
        conn = self._conn
        transport = self._transport
        assert transport is not None
        if not self._keep_alive or (conn.their_state is not h11.IDLE and (
                conn.our_state is not h11.DONE or conn.their_state is not h11.DONE)):
            transport.close()  # MUST_CLOSE: HTTP/1.0, "connection: close", client EOF, stop()
            return False
        if conn.their_state is not h11.IDLE:
            conn.start_next_cycle()
        self._method = self._target = b""
        now = self._idle_since = self._loop.time()
        # A pipelined request already (partly) here has its clock running.
        self._request_since = now if conn.trailing_data[0] else None
        if self._timer is None:
            self._timer = self._loop.call_later(self._server.idle_timeout, self._on_timer)
        if self._write_paused:
            self._pause_reading()  # the client isn't reading its answers; read no more requests
            return False
        return True

    # -- the fast path -----------------------------------------------------

    def _answer_simple(self, target: bytes, result: Response | Awaitable[Response]) -> None:
        """Send the answer to a simple GET, or wait for it in a task, reading nothing meanwhile."""
        self._method, self._target = b"GET", target
        self._idle_since = None
        if isinstance(result, Response):
            self._finish(result)
        else:
            self._pause_reading()  # whatever the client sends next waits for this answer
            self._task = task = self._loop.create_task(self._answer_later(result))
            self._server._track(task)

    # -- streams -----------------------------------------------------------

    def _start_stream(self, stream: Stream) -> None:
        self._idle_since = self._request_since = None  # no timeout while streaming
        self._stream = EventStream(self, stream)
        self._task = task = self._stream.start()
        self._server._track(task)

    def _stream_ended(self, failed: bool) -> None:
        """After the stream's task closed its iterator: the last chunk, then keep-alive or close."""
        stream, self._stream, self._task = self._stream, None, None
        transport = self._transport
        assert transport is not None and stream is not None
        if failed:
            # Closing without the last chunk tells the client the stream was
            # cut short (RFC 9112 §7.1), rather than that it ended.
            transport.close()
        elif transport.is_closing():
            pass
        elif stream.ending and self._write_paused:
            transport.abort()  # stop(), and the client isn't reading: don't wait for it
        else:
            transport.write(self._conn.send(EOM))
            if self._next_cycle():
                self._resume()
