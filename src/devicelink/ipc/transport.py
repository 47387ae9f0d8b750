"""The client's connections to the daemon's Unix socket, blocking and asyncio.

A request is sent and its answer read whole (:mod:`devicelink.ipc.wire` checks
it) within one timeout, connecting included: a deadline that every blocking
socket call is given what is left of, or ``asyncio.wait_for`` around the whole
exchange. A peer that answers a byte at a time cannot stretch a call past it. A connection whose answer came whole
and did not say ``close`` is kept for the next request (at most
:data:`MAX_IDLE`), unless it has become readable meanwhile: the daemon then
closed it (it closes idle ones after 30 s) or sent what nobody asked for. A
``GET`` that a kept connection ended without answering is sent once more on a
new one; a ``POST`` is not (RFC 9112 §9.3.1.1).

Errors are raised as they come: ``OSError`` (no socket, refused, reset),
``TimeoutError`` (the deadline passed) and :class:`wire.ProtocolError`. The
client library turns them into ``DaemonUnreachable`` naming the socket.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, NamedTuple

from devicelink.ipc import wire

RECV_SIZE = 65536
MAX_IDLE = 4
#: A kept connection that fails like this was closed by the daemon before it read the request.
_GONE = (wire.NoAnswer, BrokenPipeError, ConnectionResetError)


class Response(NamedTuple):
    head: wire.Head
    body: bytes

    @property
    def status(self) -> int:
        return self.head.status


def _open_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)


def _stale(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: EOF, or bytes nobody asked for."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)
    return True


class Connection:
    """One blocking connection; every call takes the deadline it must finish by, on
    ``clock`` (tests pass one of their own)."""

    def __init__(self, path: str, deadline: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = _open_socket()
        self.reused = False
        self.clock = clock
        try:
            self._timeout(deadline)
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise

    def _timeout(self, deadline: float | None) -> None:
        if deadline is None:
            self.sock.settimeout(None)
            return
        left = deadline - self.clock()
        if left <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(left)

    def send(self, data: bytes, deadline: float | None) -> None:
        self._timeout(deadline)
        self.sock.sendall(data)

    def receive(self, reader: wire.ResponseReader, deadline: float | None) -> Any:
        """The reader's next event (see :meth:`wire.ResponseReader.next_event`), reading as needed."""
        while (event := reader.next_event()) is None:
            self._timeout(deadline)
            data = self.sock.recv(RECV_SIZE)
            if data:
                reader.feed(data)
            else:
                reader.feed_eof()
        return event

    def read_answer(self, deadline: float | None, max_body: int = wire.MAX_BODY) -> tuple[Response, bool]:
        """The whole answer to the request just sent, and whether the connection may be kept."""
        reader = wire.ResponseReader(max_body)
        head = self.receive(reader, deadline)
        return Response(head, self.read_body(reader, deadline)), reader.reusable

    def read_body(self, reader: wire.ResponseReader, deadline: float | None) -> bytes:
        body = bytearray()
        while (piece := self.receive(reader, deadline)) is not wire.END:
            body += piece
        return bytes(body)

    def close(self) -> None:
        self.sock.close()


class _Idle:
    """The kept connections of a pool. ``list.pop`` and ``append`` are atomic, so
    threads may share a blocking pool without a lock."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._idle: list[Any] = []

    def _take(self) -> Any:
        """A kept connection still worth using, or None."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return None
            if not _stale(conn.sock):
                conn.reused = True
                return conn
            conn.close()

    @staticmethod
    def _again(conn: Any, exc: BaseException, retry: bool) -> bool:
        """Close ``conn`` after ``exc``; whether to send the request once more, on a new one."""
        conn.close()
        return retry and conn.reused and isinstance(exc, _GONE)

    def _give_back(self, conn: Any, reusable: bool) -> None:
        if reusable and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while (conn := self._take()) is not None:
            conn.close()


class Pool(_Idle):
    """Blocking requests over a few reused connections."""

    def request(self, data: bytes, timeout: float, retry: bool) -> Response:
        deadline = self.clock() + timeout
        while True:
            conn = self._take() or Connection(self.path, deadline, self.clock)
            try:
                conn.send(data, deadline)
                response, reusable = conn.read_answer(deadline)
            except BaseException as exc:
                if self._again(conn, exc, retry):
                    retry = False
                    continue
                raise
            self._give_back(conn, reusable)
            return response


class AsyncConnection:
    """One connection for asyncio. Deadlines are the callers' (``asyncio.wait_for``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reused = False

    @classmethod
    async def open(cls, path: str) -> AsyncConnection:
        import asyncio

        sock = _open_socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes) -> None:
        import asyncio

        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def receive(self, reader: wire.ResponseReader) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        while (event := reader.next_event()) is None:
            data = await loop.sock_recv(self.sock, RECV_SIZE)
            if data:
                reader.feed(data)
            else:
                reader.feed_eof()
        return event

    async def read_answer(self, max_body: int = wire.MAX_BODY) -> tuple[Response, bool]:
        reader = wire.ResponseReader(max_body)
        head = await self.receive(reader)
        return Response(head, await self.read_body(reader)), reader.reusable

    async def read_body(self, reader: wire.ResponseReader) -> bytes:
        body = bytearray()
        while (piece := await self.receive(reader)) is not wire.END:
            body += piece
        return bytes(body)

    def close(self) -> None:
        self.sock.close()


class AsyncPool(_Idle):
    """:class:`Pool` for one event loop: the same reuse and retry, ``timeout`` by ``asyncio.wait_for``."""

    async def request(self, data: bytes, timeout: float, retry: bool) -> Response:
        import asyncio

        # wait_for runs the exchange in a task of its own: asyncio.timeout() in the caller's
        # task would misbehave when the app drives it from anyio's cancel scopes.
        return await asyncio.wait_for(self._request(data, retry), timeout)

    async def _request(self, data: bytes, retry: bool) -> Response:
        while True:
            conn = self._take() or await AsyncConnection.open(self.path)
            try:
                await conn.send(data)
                response, reusable = await conn.read_answer()
            except BaseException as exc:
                if self._again(conn, exc, retry):
                    retry = False
                    continue
                raise
            self._give_back(conn, reusable)
            return response
