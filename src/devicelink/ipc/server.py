"""The socket API over a Unix socket: asyncio, one h11.Connection per client.

Theory of operation
-------------------

Each accepted connection gets a :class:`_Connection` protocol, modelled on
uvicorn's ``H11Protocol`` (``uvicorn/protocols/http/h11_impl.py``):

- Each read feeds h11 and pulls events until h11 says ``NEED_DATA`` (wait for
  more bytes) or ``PAUSED`` (a complete request is waiting for our answer;
  stop reading until we have sent it). Pipelined requests therefore sit in
  h11's buffer and are answered strictly in order.
- Answers that need no awaiting (status, health, errors) are written from
  the same callback. The agent's coroutines (token, pair, unpair) run in a
  task each, and the connection reads no further request until the task has
  answered. Either way the whole answer goes out in one ``transport.write``.
- ``RemoteProtocolError`` is answered with h11's status hint (400; 431 for
  headers over 16 KiB) and the connection is closed. Request bodies over
  64 KiB get 413. After such an early answer we "linger": shut down our side,
  discard what the client still sends for a moment, then close, so the client
  reads the answer instead of a connection reset.
- Peer credentials are read once per connection (``SO_PEERCRED``) and passed
  to the agent. If the kernel can't tell us who is calling, we hang up.
- An idle connection (no complete request for ``idle_timeout`` seconds) is
  closed; that also bounds slow, half-sent requests.

Shutdown follows uvicorn's ``Server.shutdown``: stop accepting, unlink the
socket file, close idle connections, let in-flight requests finish (their
answers carry ``connection: close``), and after ``shutdown_timeout`` cancel the
agent calls still running and abort what is left.

Nothing here logs request data: not the query, not headers, not bodies.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import struct
from typing import Any

import h11

from devicelink.errors import ConfigError, DeviceLinkError
from devicelink.ipc import routes
from devicelink.ipc.routes import Agent, ApiError, Peer, Response

__all__ = ["SocketInUse", "SocketServer", "peer_credentials"]

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
LINGER_SECONDS = 2.0
_READ_SIZE = 64 * 1024

_SO_PEERCRED = getattr(socket, "SO_PEERCRED", None)
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}

_CLOSE = ((b"connection", b"close"),)
_EOM = h11.EndOfMessage()
_CONTINUE = h11.InformationalResponse(status_code=100, headers=())
_SERVER_ERROR = routes.error_response(
    ApiError("server_error", "internal error; see the daemon's log")
)
_TOO_LARGE = routes.error_response(
    ApiError("request_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
)
_PROTOCOL_ERRORS = {
    400: routes.error_response(ApiError("invalid_request", "malformed HTTP request")),
    431: routes.error_response(
        ApiError("invalid_request", f"request headers exceed {MAX_HEADER_BYTES} bytes"), 431
    ),
    501: routes.error_response(ApiError("invalid_request", "unsupported transfer coding"), 501),
}


class SocketInUse(DeviceLinkError):
    """Another process is already listening on the socket path."""


def peer_credentials(sock: Any) -> Peer:
    """The pid, uid and gid of the process that connected ``sock`` (Linux)."""
    if _SO_PEERCRED is None:
        raise OSError(errno.ENOTSUP, "SO_PEERCRED is not available on this platform")
    raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)
    return Peer(*_UCRED.unpack(raw))


class SocketServer:
    """Serve ``agent`` over HTTP/1.1 on a Unix socket.

    Either ``path`` (we create, chmod and later unlink the socket file) or
    ``sock``, an already bound socket such as one from systemd socket
    activation (we only listen on it and close it on stop; ``mode`` is not
    applied and the file is left to whoever made it).

    ::

        async with SocketServer(agent, "/run/devicelink/agent.sock"):
            await stop_requested.wait()
    """

    def __init__(
        self,
        agent: Agent,
        path: str | None = None,
        mode: int = 0o660,
        *,
        sock: socket.socket | None = None,
        shutdown_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        backlog: int = 128,
    ) -> None:
        if (path is None) == (sock is None):
            raise ValueError("give exactly one of path and sock")
        if sock is not None and (sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM):
            raise ValueError("sock must be an AF_UNIX SOCK_STREAM socket")
        self.agent = agent
        self.path = path if path is not None else _sock_name(sock)
        self.mode = mode
        self.shutdown_timeout = shutdown_timeout
        self.idle_timeout = idle_timeout
        self._sock = sock
        self._owns_file = sock is None
        self._backlog = backlog
        self._server: asyncio.AbstractServer | None = None
        self._file_id: tuple[int, int] | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Future[None] | None = None
        self._read_buffer = memoryview(bytearray(_READ_SIZE))
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Bind (unless given a socket) and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("the server is already running")
        self._loop = asyncio.get_running_loop()
        sock = self._sock if self._sock is not None else self._bind()
        try:
            self._server = await self._loop.create_unix_server(
                lambda: _Connection(self), sock=sock, backlog=self._backlog
            )
        except BaseException:
            if self._owns_file:
                sock.close()
                self._unlink()
            raise
        logger.info("listening on %s", self.path)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, finish in-flight requests, cancel what is left after ``timeout``."""
        server, self._server = self._server, None
        if server is None:
            return
        assert self._loop is not None
        timeout = self.shutdown_timeout if timeout is None else timeout
        server.close()
        self._unlink()
        for conn in list(self._connections):
            conn.shutdown()
        if self._connections:
            self._drained = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._drained
            except TimeoutError:
                logger.warning(
                    "%d connection(s) still busy after %.1fs; cancelling",
                    len(self._connections),
                    timeout,
                )
            self._drained = None
        # Left: agent calls on hung connections, and calls whose client went away.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for conn in list(self._connections):
            conn.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        logger.info("stopped listening on %s", self.path)

    async def __aenter__(self) -> SocketServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    # -- the socket file ---------------------------------------------------

    def _bind(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > 107:
            raise ConfigError(f"socket path {path} is longer than the 107 bytes AF_UNIX allows")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind() creates the file with 0777 & ~umask. A umask of 0177 makes
            # that 0600, so nobody but us can connect before the chmod below.
            # umask is process-wide: this runs at start-up, before the daemon
            # starts any thread that creates files.
            old_umask = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, self.mode)
            st = os.stat(path)
            self._file_id = (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _remove_stale(path: str) -> None:
        """Unlink a socket file nobody listens on; refuse anything else."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(
                f"socket path {path} exists and is not a socket; refusing to replace it"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # stale: left behind by a daemon that died
        except BlockingIOError:  # EAGAIN: a listener whose backlog is full
            raise SocketInUse(f"another process is already listening on {path}") from None
        else:
            raise SocketInUse(f"another process is already listening on {path}")
        finally:
            probe.close()
        logger.info("removing stale socket %s", path)
        os.unlink(path)

    def _unlink(self) -> None:
        """Remove our socket file, unless someone has replaced it since."""
        file_id, self._file_id = self._file_id, None
        if file_id is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == file_id:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove socket %s: %s", self.path, exc)

    # -- bookkeeping for _Connection ---------------------------------------

    def _connection_lost(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        drained = self._drained
        if drained is not None and not self._connections and not drained.done():
            drained.set_result(None)


def _sock_name(sock: socket.socket | None) -> str:
    assert sock is not None
    name = sock.getsockname()
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


class _Connection(asyncio.BufferedProtocol):
    """One client connection: h11 state, flow control, the idle timer."""

    def __init__(self, server: SocketServer) -> None:
        self._server = server
        self._agent = server.agent
        loop = server._loop
        assert loop is not None
        self._loop = loop
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._transport: asyncio.Transport | None = None
        self._peer = Peer(-1, -1, -1)
        self._method = b""
        self._target = b""
        self._body_size = 0
        self._task: asyncio.Task[None] | None = None  # an agent call still running
        self._keep_alive = True
        self._read_paused = False
        self._write_paused = False
        self._lingering = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # None while a request is being answered

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._connections.add(self)
        try:
            self._peer = peer_credentials(transport.get_extra_info("socket"))
        except OSError as exc:
            logger.warning("cannot read the peer's credentials (%s); hanging up", exc)
            transport.abort()
            return
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self._server.idle_timeout, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        # An agent call still running is not cancelled: it may be a refresh
        # that other clients wait on too. Its answer is dropped in _finish.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server._connection_lost(self)

    # A BufferedProtocol, so the transport reads into one preallocated
    # buffer: asyncio 3.11's data_received path allocates 256 KiB per read,
    # which cost more than the read itself. The buffer is shared by all
    # connections of the server: buffer_updated copies out of it at once.

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._lingering:
            return
        self._conn.receive_data(self._server._read_buffer[:nbytes].tobytes())
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
        if self._task is None and not self._lingering:
            self._resume()

    # -- used by SocketServer.stop -----------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; otherwise close after the answer in flight."""
        self._keep_alive = False
        if self._task is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

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
                self._reject(_PROTOCOL_ERRORS.get(exc.error_status_hint, _PROTOCOL_ERRORS[400]))
                return
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    transport.write(conn.send(_CONTINUE))
                return
            if event is h11.PAUSED:  # pipelined: the next request waits for this answer
                self._pause_reading()
                return
            etype = type(event)
            if etype is h11.Request:
                self._method = event.method
                self._target = event.target
                self._body_size = 0
                # h11 enforces max_incomplete_event_size only on a request that
                # arrives in pieces; count here so one big read gets 431 too.
                size = len(event.target)
                for name, value in event.headers:
                    size += len(name) + len(value)
                    # len() first: h11 < 0.16 lets any number of digits through.
                    if name == b"content-length" and (
                        len(value) > 9 or int(value) > MAX_BODY_BYTES
                    ):
                        self._reject(_TOO_LARGE)
                        return
                if size > MAX_HEADER_BYTES:
                    self._reject(_PROTOCOL_ERRORS[431])
                    return
            elif etype is h11.Data:
                # Bodies are read and dropped: no route takes one (yet).
                self._body_size += len(event.data)
                if self._body_size > MAX_BODY_BYTES:
                    self._reject(_TOO_LARGE)
                    return
            elif etype is h11.EndOfMessage:
                self._idle_since = None
                if not self._dispatch():
                    return
                # Usually nothing is pipelined behind it: skip the call to
                # next_event() that would only say NEED_DATA.
                pending, closed = conn.trailing_data
                if not pending and not closed:
                    return
            elif etype is h11.ConnectionClosed:
                if self._task is None:
                    transport.close()
                return

    def _dispatch(self) -> bool:
        """Answer the request just read. True: answered, read the next one."""
        try:
            handler, query = routes.resolve(self._method, self._target)
            if handler == "token":
                call: tuple[Any, ...] = (self._agent.token, routes.parse_token_query(query))
            elif handler == "status":
                return self._finish(routes.json_response(200, self._agent.status()))
            elif handler == "health":
                return self._finish(routes.health_response(self._agent.healthy()))
            elif handler == "pair":
                call = (self._agent.pair,)
            else:
                call = (self._agent.unpair,)
        except ApiError as err:
            return self._finish(routes.error_response(err))
        except Exception:
            logger.exception("error answering %s", _path_only(self._target))
            return self._finish(_SERVER_ERROR)
        # Stepping the coroutine by hand here, to skip the task when the agent
        # answers without waiting, measured no faster, and would run the agent
        # outside any task (asyncio.timeout() needs one).
        task = self._loop.create_task(self._answer_later(handler, *call))
        self._task = task
        self._server._tasks.add(task)
        task.add_done_callback(self._server._tasks.discard)
        # Anything pipelined behind this request stays in h11's buffer until
        # _resume; more data arriving meanwhile makes h11 say PAUSED.
        return False

    async def _answer_later(self, handler: str, method: Any, *args: Any) -> None:
        try:
            response = routes.ok_response(handler, await method(*args, self._peer))
        except ApiError as err:
            response = routes.error_response(err)
        except Exception:
            logger.exception("error answering %s", _path_only(self._target))
            response = _SERVER_ERROR
        self._task = None
        try:
            if self._finish(response):
                self._resume()
        except Exception:  # a bug here must not leave the client hanging
            logger.exception("error sending the answer to %s", _path_only(self._target))
            self.abort()

    def _finish(self, response: Response) -> bool:
        """Send ``response``; then close, or get ready for the next request.

        True when the connection stays open and the next request may be read.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        conn = self._conn
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s -> %d (pid %d, uid %d)",
                self._method.decode("ascii", "replace"),
                _path_only(self._target),
                response.status,
                self._peer.pid,
                self._peer.uid,
            )
        out = conn.send(_response_event(response, close=not self._keep_alive))
        if response.body and self._method != b"HEAD":
            out += conn.send(h11.Data(data=response.body))
        out += conn.send(_EOM)
        transport.write(out)
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            transport.close()  # MUST_CLOSE: HTTP/1.0, "connection: close", client EOF
            return False
        conn.start_next_cycle()
        self._method = self._target = b""
        self._idle_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self._server.idle_timeout, self._on_timer)
        if self._write_paused:
            # The client isn't reading its answers; read no more requests.
            self._pause_reading()
            return False
        return True

    def _resume(self) -> None:
        """Carry on after an answer sent from a task or after write backpressure."""
        if self._read_paused:
            self._read_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
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
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._keep_alive = False
                out = conn.send(_response_event(response, close=True))
                if self._method != b"HEAD":
                    out += conn.send(h11.Data(data=response.body))
                out += conn.send(_EOM)
                transport.write(out)
            except h11.LocalProtocolError:  # h11 won't let us answer: just close
                transport.close()
                return
        # Lingering close: stop writing, drop what the client still sends for
        # a moment, then close. Closing with unread data would reset the
        # connection, and the client could lose the answer.
        self._lingering = True
        self._idle_since = None
        if self._timer is not None:
            self._timer.cancel()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._loop.call_later(LINGER_SECONDS, transport.close)

    def _on_timer(self) -> None:
        """Close a connection that has not sent a complete request in idle_timeout.

        The timer is not re-armed per request (that cost a heap push and a
        cancel each time); it checks when it fires and re-arms itself then.
        """
        self._timer = None
        if self._idle_since is None or self._transport is None:
            return  # answering a request; _finish re-arms the timer
        deadline = self._idle_since + self._server.idle_timeout
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
        else:
            self._transport.close()


# h11 validates every header of a Response event it is given, each time; that
# was a fifth of the cost of a request. The events are immutable, and token
# answers differ only in their body, so the events are built once per
# (status, headers) and reused. The cache stays small: content-length is the
# only header that varies.
_response_events: dict[tuple[int, tuple[tuple[bytes, bytes], ...]], h11.Response] = {}


def _response_event(response: Response, close: bool) -> h11.Response:
    headers = response.headers + _CLOSE if close else response.headers
    key = (response.status, headers)
    event = _response_events.get(key)
    if event is None:
        if len(_response_events) >= 256:
            _response_events.clear()
        event = _response_events[key] = h11.Response(
            status_code=response.status,
            headers=headers,
            reason=routes.REASONS.get(response.status, b""),
        )
    return event


def _path_only(target: bytes) -> str:
    """The path of a request target, for logs: the query may name scopes."""
    return target.partition(b"?")[0][:200].decode("ascii", "replace")
