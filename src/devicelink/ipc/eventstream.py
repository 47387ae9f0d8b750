"""Server-sent events: one streamed answer on an h11 connection.

The head goes out at once without a content-length, so h11 frames the body
with chunked coding (RFC 9112 §7.1), or for an HTTP/1.0 client by closing the
connection (§6.3). A task then writes each chunk the iterator yields. While
the transport's buffer is over its high-water mark (``pause_writing``) the
task waits for ``resume_writing`` before pulling the next chunk, so a client
that doesn't read holds back the producer instead of making us buffer. When
the iterator ends, the last chunk is sent and the connection carries on as
keep-alive. When the client leaves (EOF, a failed write, or a close seen by
the listener's sweep) the task is cancelled; either way the iterator's
``aclose()`` is awaited exactly once, so the Api's subscription is released.
(An async generator that never got to run, because the client left at once,
runs no ``finally`` on ``aclose()``: acquire resources inside it, or return an
iterator whose ``aclose()`` releases them.)

A stream has no timeout (the Api sends its own keep-alive comments) but counts
toward the connection caps. On stop() it ends at once: the last chunk, then
close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import h11

from devicelink.ipc.canned import path_only, response_event
from devicelink.ipc.fastpath import log_answer
from devicelink.ipc.routes import Stream

if TYPE_CHECKING:
    from devicelink.ipc.connection import H11Connection

logger = logging.getLogger(__name__)


class EventStream:
    """The chunks of one :class:`Stream`, written by a task; the head by :meth:`start`."""

    def __init__(self, conn: H11Connection, stream: Stream) -> None:
        self._conn = conn
        self._stream = stream
        self._task: asyncio.Task[None] | None = None
        self._started = False  # the task has begun: cancelling it runs its cleanup
        self.ending = False  # stop(): end the stream cleanly, then close

    def start(self) -> asyncio.Task[None]:
        """Send the head now; return the task that sends the chunks."""
        conn, stream = self._conn, self._stream
        transport = conn._transport
        if transport is not None and not transport.is_closing():
            if logger.isEnabledFor(logging.DEBUG):
                log_answer(conn._method, conn._target, stream.status, conn.peer)
            # No content-length: h11 frames it chunked, or close-delimited for HTTP/1.0.
            transport.write(conn._conn.send(response_event(stream, close=not conn._keep_alive)))
        else:
            self.ending = True  # the client has gone: only close the iterator
        if not conn._keep_alive:
            self.ending = True  # stop() has begun: head, last chunk, close
        self._task = conn._loop.create_task(self._send(stream.chunks))
        return self._task

    def end_now(self) -> None:
        """The client has gone: stop pulling chunks (the task closes the iterator)."""
        task = self._task
        if task is not None and self._started and not task.cancelling():
            task.cancel()
        # Not started yet: it will find the transport closing and only close the iterator.

    def end_cleanly(self) -> None:
        """stop(): the last chunk, then close."""
        self.ending = True
        self.end_now()

    async def _send(self, chunks: AsyncIterator[bytes]) -> None:
        self._started = True
        conn = self._conn
        transport = conn._transport
        assert transport is not None
        h11_conn = conn._conn
        try:
            try:
                while not self.ending and not transport.is_closing():
                    if conn._write_paused:  # pull nothing while the client isn't reading
                        conn._writable = conn._loop.create_future()
                        await conn._writable
                        continue
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    if not isinstance(chunk, (bytes, bytearray, memoryview)):
                        raise TypeError(f"a stream chunk must be bytes, not {type(chunk).__name__}")
                    if chunk and not transport.is_closing():
                        transport.write(h11_conn.send(h11.Data(data=chunk)))
            except asyncio.CancelledError:
                if not self.ending or transport.is_closing():
                    raise  # the client left, or stop() gave up on us
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # stop(): end cleanly
            finally:
                await _aclose(chunks)
        except Exception:
            logger.exception("error in the stream of %s", path_only(conn._target))
            conn._stream_ended(failed=True)
            return
        conn._stream_ended(failed=False)


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    """Close a stream's iterator, whatever it is; a failure is the Api's bug, not ours."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.exception("error closing an event stream")
